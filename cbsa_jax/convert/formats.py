"""Reading and writing checkpoint files without their frameworks: torch's `.pth` zip format,
`.safetensors` and big_vision / AugReg `.npz`.

Every reader returns a flat `{key: numpy array}`. Torch files are read with torch when it is
installed and otherwise by a small reader of torch's zip format that rebuilds only tensors and
plain containers (no arbitrary code runs); a `{"state_dict": ...}` (or `"model"`) wrapper and
DataParallel `module.` prefixes are removed. Which key goes where in a model is the business of
`cbsa_jax.convert.official` and `cbsa_jax.convert.timm`.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

__all__ = ["load_torch_state_dict", "load_safetensors", "save_safetensors", "load_npz"]

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy() if storage.size else np.zeros((), storage.dtype)
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *_unused):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds tensors as numpy arrays; refuses every other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._cache: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict"):
            return {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list,
                    "dict": dict}[name]
        raise pickle.UnpicklingError(
            f"checkpoint contains {module}.{name}, which this reader does not load; install "
            f"torch to read it, or pass a {{key: numpy array}} mapping")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        if key not in self._cache:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            self._cache[key] = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype)
        return self._cache[key]


def _read_torch_zip(path: str) -> object:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch zip checkpoint (torch >= 1.6 format); install "
                         f"torch to read legacy files")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        except KeyError:
            byteorder = "little"
        with archive.open(pkl[0]) as f:
            return _TorchUnpickler(f, archive, prefix, byteorder).load()


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_state_dict(source: str | os.PathLike | Mapping, *,
                          reader: str = "auto") -> dict[str, np.ndarray]:
    """A flat `{key: numpy array}` from a `.pth` path or a mapping, unwrapped and de-prefixed.

    `reader`: "auto" (torch when installed, else the builtin reader), "torch" or "builtin".
    A file the reader cannot read (not a checkpoint, truncated, or holding code: the builtin
    reader rebuilds tensors and containers only) raises one ValueError naming the file.
    """
    if reader not in ("auto", "torch", "builtin"):
        raise ValueError(f"reader must be 'auto', 'torch' or 'builtin', got {reader!r}")
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"state_dict path {path} does not exist")
        torch = None
        if reader != "builtin":
            try:
                import torch
            except ImportError:
                if reader == "torch":
                    raise
        try:
            if torch is None:
                obj = _read_torch_zip(path)
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as e:
            # a file neither reader can read (not a checkpoint, truncated, or holding objects
            # beyond tensors and containers): one ValueError of one line, whichever reader ran
            first = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"{path} is not a torch checkpoint this can read "
                             f"({type(e).__name__}: {first})") from None
    elif isinstance(source, Mapping):
        obj = source
    else:
        raise ValueError(
            f"state_dict must be a mapping or a .pth path, got {type(source).__name__}")
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state_dict mapping")
    out = {}
    for key, value in obj.items():
        key = str(key)
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = _to_numpy(value)
    return out



# ----------------------------------------------------------------------------------------------
# .safetensors and .npz

_NPZ_PREFIXES = ("params/img/", "params/", "opt/target/")
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{name: numpy array}` of a `.safetensors` file, read without torch or the safetensors
    package: an 8-byte little-endian header length, a JSON header `{name: {dtype, shape,
    data_offsets}}` (offsets into the buffer that follows), the raw little-endian buffer.
    bfloat16 tensors come back as float32."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"safetensors path {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError(f"{path} is not a safetensors file (header length {n} exceeds the file)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    buffer = memoryview(raw)[8 + n:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        kind, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if kind == "BF16":
            bits = np.frombuffer(buffer[start:end], np.dtype("<u2")).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif kind in _SAFETENSORS_DTYPES:
            dtype = np.dtype(_SAFETENSORS_DTYPES[kind]).newbyteorder("<")
            array = np.frombuffer(buffer[start:end], dtype).astype(dtype.newbyteorder("="))
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {kind}, which this reader does not "
                             f"load (supported: BF16, {', '.join(_SAFETENSORS_DTYPES)})")
        if array.size != int(np.prod(shape)) or end > len(buffer):
            raise ValueError(f"{path}: tensor {name}: data_offsets {[start, end]} do not hold "
                             f"shape {list(shape)} of {kind}")
        out[name] = array.reshape(shape)
    return out


def save_safetensors(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write `{name: numpy array}` as a `.safetensors` file (the format `load_safetensors` reads;
    names sorted, buffers 8-byte aligned as the format recommends)."""
    codes = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        if array.dtype not in codes:
            raise ValueError(f"save_safetensors: {name} has dtype {array.dtype}, not one of "
                             f"{sorted(str(d) for d in codes)}")
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.fspath(path), "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for data in chunks:
            f.write(data)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{name: numpy array}` of a big_vision / AugReg `.npz` (no pickle), with the `params/img/`,
    `params/` or `opt/target/` prefix removed and bfloat16 (saved as 2-byte void) as float32."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"npz path {path} does not exist")
    out = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            value = data[key]
            if value.dtype.kind == "V" and value.dtype.itemsize == 2:
                value = (value.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            name = key
            for prefix in _NPZ_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            out[name] = value
    return out
