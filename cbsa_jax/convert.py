"""Load the official PyTorch CBSA / CRATE / ToST checkpoints into `cbsa_jax` models.

    from cbsa_jax.convert import cbt_from_torch
    model = cbt_from_torch("cbt_tiny.pth", image_size=224, patch_size=16, num_classes=1000,
                           dim=192, depth=12, heads=3, dim_head=64)
    logits = model(images_nhwc)

`state_dict` is a mapping from PyTorch key to numpy array, or a `.pth` / `.pth.tar` path. Files are
read with torch when it is installed and otherwise by a small reader of torch's zip format that
rebuilds only tensors and plain containers (no arbitrary code runs). A `{"state_dict": ...}` (or
`"model"`) wrapper and DataParallel `module.` prefixes are removed.

Converted models reproduce the reference's token selection for grid pooling by default
(`Selection.REFERENCE`, see `cbsa_jax.representatives.Selection`), so they give the reference's
logits; pass `selection="patches"` to pool the true patch tokens instead.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax.models.config import AttentionKind, FFNKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.models.vit import VisionTransformer, conv_widths
from cbsa_jax.representatives import Selection

__all__ = ["assign", "load_torch_state_dict", "cbt_from_torch", "reference_from_torch",
           "torch_key_map"]

# ----------------------------------------------------------------------------------------------
# reading .pth files

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
        if torch is None:
            obj = _read_torch_zip(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
# the key map

Transform = Callable[[np.ndarray], np.ndarray]
_IDENTITY: Transform = lambda a: a  # noqa: E731


def torch_key_map(config: ModelConfig) -> dict[str, tuple[tuple, Transform]]:
    """PyTorch key -> (path in `nnx.state(model)`, transform) for the reference ViT of `config`."""
    d, h, p = config.dim, config.heads, config.dim_head
    if config.patch_embed.value != "conv":
        raise ValueError("reference checkpoints use patch_embed='conv'")
    heads_in: Transform = lambda w: w.T.reshape(d, h, p)  # noqa: E731  [H*p, D] -> U [D, H, p]
    heads_out: Transform = lambda w: w.T.reshape(h, p, d)  # noqa: E731  [D, H*p] -> [H, p, D]
    per_head: Transform = lambda v: v.reshape(h)  # noqa: E731
    keys: dict[str, tuple[tuple, Transform]] = {
        "cls_token": (("cls_token",), _IDENTITY),
        "pos_embedding": (("pos_embedding",), _IDENTITY),
        "mlp_head.0.weight": (("head_norm", "scale"), _IDENTITY),
        "mlp_head.0.bias": (("head_norm", "bias"), _IDENTITY),
        "mlp_head.1.weight": (("head_kernel",), lambda w: w.T),
        "mlp_head.1.bias": (("head_bias",), _IDENTITY),
    }
    n_convs = len(conv_widths(config.dim, config.patch_size))
    for i in range(n_convs):
        base = f"to_patch_embedding.proj.{2 * i}"
        keys[f"{base}.0.weight"] = (("patch_embed", "convs", i, "kernel"),
                                    lambda w: w.transpose(2, 3, 1, 0))
        for src, dst in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                         ("running_var", "var")):
            keys[f"{base}.1.{src}"] = (("patch_embed", "norms", i, dst), _IDENTITY)
    attn_in = {"cbsa": "proj", "mssa": "qkv", "tssa": "qkv"}[config.attention.value]
    for layer in range(config.depth):
        src, dst = f"transformer.layers.{layer}", ("blocks", layer)
        for j, norm in ((0, "norm1"), (1, "norm2")):
            keys[f"{src}.{j}.norm.weight"] = ((*dst, norm, "scale"), _IDENTITY)
            keys[f"{src}.{j}.norm.bias"] = ((*dst, norm, "bias"), _IDENTITY)
        keys[f"{src}.0.fn.{attn_in}.weight"] = ((*dst, "attn", "proj", 0), heads_in)
        keys[f"{src}.0.fn.to_out.weight"] = ((*dst, "attn", "out_kernel"), heads_out)
        keys[f"{src}.0.fn.to_out.bias"] = ((*dst, "attn", "out_bias"), _IDENTITY)
        if config.attention is AttentionKind.CBSA:
            keys[f"{src}.0.fn.step_x"] = ((*dst, "attn", "step_x"), per_head)
            keys[f"{src}.0.fn.step_rep"] = ((*dst, "attn", "step_rep"), per_head)
        elif config.attention is AttentionKind.TSSA:
            keys[f"{src}.0.fn.temp"] = ((*dst, "attn", "temp"), per_head)
        keys[f"{src}.1.fn.weight"] = ((*dst, "ffn", "weight"), _IDENTITY)
    return keys


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def assign(factory: Callable[[], nnx.Module], weights: Mapping[str, np.ndarray],
           key_map: Mapping[str, tuple[tuple, Transform]], *,
           ignore: Callable[[str], bool] = lambda key: False,
           keep_init: Callable[[tuple], bool] | None = None) -> nnx.Module:
    """Build `factory()` with every parameter taken from `weights` through `key_map`; eval mode.

    `key_map` maps a source key to (path in `nnx.state(model)`, transform), or to (tuple of
    paths, transform returning one array per path) for a fused source (timm's qkv). Every source
    key must be mapped (or `ignore`d) and every mapped key present with the right shape;
    otherwise one ValueError lists every unknown, missing and mis-shaped key with both shapes.
    The model is
    built abstractly (`nnx.eval_shape`, nothing allocated) unless `keep_init` names parameter
    paths that may keep their initial value (e.g. a new head); those are then initialised.
    A model parameter that no key covers and `keep_init` does not allow is a bug in the key
    map and raises AssertionError.
    """
    model = nnx.eval_shape(factory) if keep_init is None else factory()
    graphdef, state = nnx.split(model)
    targets = dict(nnx.to_flat_state(state))
    unknown = sorted(k for k in weights if k not in key_map and not ignore(k))
    missing = sorted(k for k in key_map if k not in weights)
    mismatched, assigned = [], set()
    for key, (path, transform) in key_map.items():
        if key not in weights:
            continue
        paths = path if path and isinstance(path[0], tuple) else (path,)
        for p in paths:
            if p not in targets:
                raise AssertionError(f"key map sends {key} to {'.'.join(map(str, p))}, which the "
                                     f"model does not have")
        variables = [targets[p] for p in paths]
        try:
            values = transform(weights[key])
            values = [np.asarray(v) for v in (values if len(paths) > 1 else (values,))]
        except ValueError:
            values = None
        if values is None or len(values) != len(paths) or any(
                v.shape != var.shape for v, var in zip(values, variables, strict=True)):
            expects = " + ".join(str(tuple(var.shape)) for var in variables)
            where = ", ".join(".".join(map(str, p)) for p in paths)
            mismatched.append(f"{key}: checkpoint {tuple(np.shape(weights[key]))}, model expects "
                              f"{expects} at {where}")
            continue
        for v, var in zip(values, variables, strict=True):
            var.set_value(jnp.asarray(v, var.dtype))
        assigned.update(paths)
    problems = []
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if missing:
        problems.append(f"missing keys {missing}")
    if mismatched:
        problems.append("mis-shaped keys: " + "; ".join(mismatched))
    if problems:
        raise ValueError("state_dict does not match the model: " + " | ".join(problems))
    unset = sorted(".".join(map(str, p)) for p in targets
                   if p not in assigned and not (keep_init is not None and keep_init(p)))
    if unset:  # a key map that forgot a parameter is a bug here, not in the checkpoint
        raise AssertionError(f"model parameters not covered by the key map: {unset}")
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def reference_from_torch(state_dict, *, attention: str = "cbsa", image_size, patch_size: int,
                         num_classes: int, dim: int, depth: int, heads: int, dim_head: int,
                         selection: Selection | str = Selection.REFERENCE, dtype=None,
                         param_dtype=np.float32) -> VisionTransformer:
    """Any of the reference `VisionTransformer`s (attention "cbsa", "mssa" or "tssa") in eval mode.

    Raises ValueError listing every unknown, missing or mis-shaped key.
    """
    if attention not in ("cbsa", "mssa", "tssa"):
        raise ValueError(f"attention must be 'cbsa', 'mssa' or 'tssa', got {attention!r}")
    config = ModelConfig(attention, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                         patch_size=patch_size, patch_embed="conv", selection=selection)
    weights = load_torch_state_dict(state_dict)
    return assign(lambda: VisionTransformer(
        config, num_classes=num_classes, image_size=image_size, dtype=dtype,
        param_dtype=param_dtype, rngs=nnx.Rngs(0)), weights, torch_key_map(config),
        ignore=_ignored)


def cbt_from_torch(state_dict, *, image_size, patch_size: int, num_classes: int, dim: int,
                   depth: int, heads: int, dim_head: int,
                   selection: Selection | str = Selection.REFERENCE, dtype=None,
                   param_dtype=np.float32) -> VisionTransformer:
    """A CBT (CBSA + ISTA) model from the official PyTorch weights, in eval mode.

    `model(images_nhwc)` returns the reference's logits (NCHW inputs must be transposed to NHWC).
    """
    return reference_from_torch(state_dict, attention="cbsa", image_size=image_size,
                                patch_size=patch_size, num_classes=num_classes, dim=dim,
                                depth=depth, heads=heads, dim_head=dim_head, selection=selection,
                                dtype=dtype, param_dtype=param_dtype)


# ----------------------------------------------------------------------------------------------
# the CBT segmentation decoder (the reference's CBSA_semantic_segmentation `MaskTransformer`)

__all__ += ["cbt_decoder_key_map", "cbt_decoder_from_torch"]

CBT_DECODER_CELLS = (10, 10)  # the reference's blocks hard-code 10 x 10 representatives
_CBT_DECODER_DEFAULTS = {"num_classes": 150, "heads": 3, "dim_head": 100}  # its other constants


def cbt_decoder_key_map(*, depth: int, heads: int, dim_head: int, dim: int
                        ) -> dict[str, tuple[tuple, Transform]]:
    """PyTorch key -> (path in `nnx.state(decoder)`, transform) for the reference decoder."""
    heads_in: Transform = lambda w: w.T.reshape(dim, heads, dim_head)  # noqa: E731
    heads_out: Transform = lambda w: w.T.reshape(heads, dim_head, dim)  # noqa: E731
    per_head: Transform = lambda v: v.reshape(heads)  # noqa: E731  [H, 1, 1] -> [H]
    keys: dict[str, tuple[tuple, Transform]] = {"cls_emb": (("class_embedding",), _IDENTITY)}
    for norm, dst in (("decoder_norm", "norm"), ("mask_norm", "mask_norm")):
        keys[f"{norm}.weight"] = ((dst, "scale"), _IDENTITY)
        keys[f"{norm}.bias"] = ((dst, "bias"), _IDENTITY)
    for layer in range(depth):
        src, dst = f"net.layers.{layer}", ("blocks", layer)
        keys[f"{src}.norm.weight"] = ((*dst, "norm", "scale"), _IDENTITY)
        keys[f"{src}.norm.bias"] = ((*dst, "norm", "bias"), _IDENTITY)
        keys[f"{src}.fn.proj.weight"] = ((*dst, "attn", "proj", 0), heads_in)
        keys[f"{src}.fn.to_out.weight"] = ((*dst, "attn", "out_kernel"), heads_out)
        keys[f"{src}.fn.to_out.bias"] = ((*dst, "attn", "out_bias"), _IDENTITY)
        keys[f"{src}.fn.step_x"] = ((*dst, "attn", "step_x"), per_head)
        keys[f"{src}.fn.step_rep"] = ((*dst, "attn", "step_rep"), per_head)
    return keys


def _decoder_sizes(weights: Mapping[str, np.ndarray]) -> dict[str, int]:
    """depth, dim, num_classes, heads, dim_head of a reference decoder state dict, read from the
    shapes (the reference's constants where the keys that carry them are absent: the key check
    then names what is missing)."""
    sizes = dict(_CBT_DECODER_DEFAULTS)
    layer_ids = {int(k.split(".")[2]) for k in weights
                 if k.startswith("net.layers.") and k.split(".")[2].isdigit()}
    sizes["depth"] = max(layer_ids) + 1 if layer_ids else 1
    emb = weights.get("cls_emb")
    if emb is not None and np.ndim(emb) == 3:
        sizes["num_classes"], sizes["dim"] = int(emb.shape[1]), int(emb.shape[2])
    else:
        for key in ("decoder_norm.weight", "net.layers.0.norm.weight"):
            if key in weights and np.ndim(weights[key]) == 1:
                sizes["dim"] = int(weights[key].shape[0])
                break
        else:
            raise ValueError("state_dict does not match the model: missing keys ['cls_emb', "
                             "'decoder_norm.weight'] (cannot read the decoder width)")
    step = weights.get("net.layers.0.fn.step_x")
    if step is not None and np.ndim(step) >= 1 and np.shape(step)[0] >= 1:
        sizes["heads"] = int(np.shape(step)[0])
    proj = weights.get("net.layers.0.fn.proj.weight")
    if proj is not None and np.ndim(proj) == 2 and proj.shape[0] % sizes["heads"] == 0:
        sizes["dim_head"] = int(proj.shape[0]) // sizes["heads"]
    return sizes


def cbt_decoder_from_torch(state_dict, *, cells: tuple[int, int] = CBT_DECODER_CELLS, dtype=None,
                           param_dtype=np.float32):
    """The official CBT segmentation decoder (`MaskTransformer` of the reference's
    `CBSA_semantic_segmentation`) as a `cbsa_jax.models.MaskTransformerDecoder`, in eval mode.

    `state_dict`: the decoder's state dict (a `{key: array}` mapping or a `.pth` path; keys as
    the reference names them, e.g. `cls_emb`, `net.layers.0.fn.proj.weight`, `mask_norm.bias`).
    Width, depth, classes, heads and head width are read from the shapes; the reference's
    10 x 10 representative cells are its constant (`cells`).

    `decoder(features, grid=(gh, gw))` maps patch features `[B, gh*gw, D]` (the encoder's
    output after its final norm, cls dropped) to mask logits `[B, gh, gw, K]`;
    `decoder(features, grid=..., image_size=(H, W))` upsamples them to `[B, H, W, K]` as the
    reference does (bilinear, half-pixel centres, no antialiasing). Any grid with at least
    `cells` patches per side works, square or not.

    Raises ValueError listing every unknown, missing or mis-shaped key.
    """
    from cbsa_jax.models.segmenter import MaskTransformerDecoder

    weights = load_torch_state_dict(state_dict)
    s = _decoder_sizes(weights)
    key_map = cbt_decoder_key_map(depth=s["depth"], heads=s["heads"], dim_head=s["dim_head"],
                                  dim=s["dim"])
    return assign(lambda: MaskTransformerDecoder(
        s["dim"], s["num_classes"], depth=s["depth"], heads=s["heads"], dim_head=s["dim_head"],
        attention="cbsa", cells=tuple(cells), dtype=dtype, param_dtype=param_dtype,
        rngs=nnx.Rngs(0)), weights, key_map)


# ----------------------------------------------------------------------------------------------
# pretrained softmax ViTs: timm (.pth / .safetensors), AugReg / vit_jax and big_vision (.npz)

__all__ += ["load_safetensors", "save_safetensors", "load_npz", "load_vit_weights",
            "detect_layout", "timm_key_map", "augreg_key_map", "resample_pos_embedding",
            "vit_config_from_weights", "load_vit", "vit_from_timm", "adapt",
            "timm_state_dict", "save_timm"]

LAYOUTS = ("timm", "augreg", "big_vision")
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


def load_vit_weights(source) -> dict[str, np.ndarray]:
    """A flat `{key: numpy array}` of a pretrained ViT: a mapping, or a `.npz`, `.safetensors`
    or torch (`.pth`, `.bin`, `.pth.tar`) path. Stacked (scanned) big_vision blocks
    `Transformer/encoderblock/...` `[depth, ...]` are split into `encoderblock_{i}`."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if path.endswith(".npz"):
            weights = load_npz(path)
        elif path.endswith(".safetensors"):
            weights = load_safetensors(path)
        else:
            weights = load_torch_state_dict(path)
    else:
        weights = load_torch_state_dict(source)
    scanned = "Transformer/encoderblock/"
    if any(k.startswith(scanned) for k in weights):
        flat = {}
        for key, value in weights.items():
            if key.startswith(scanned):
                rest = key[len(scanned):]
                for i in range(np.shape(value)[0]):
                    flat[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
            else:
                flat[key] = value
        weights = flat
    return weights


def detect_layout(weights: Mapping[str, np.ndarray]) -> str:
    """"timm", "augreg" (vit_jax) or "big_vision", from the keys."""
    keys = list(weights)
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "timm"
    if any("/MultiHeadDotProductAttention_1/" in k for k in keys):
        return "augreg"
    if any("/MultiHeadDotProductAttention_0/" in k for k in keys):
        return "big_vision"
    raise ValueError(f"cannot tell the checkpoint layout from its keys (expected timm "
                     f"'blocks.N....' or big_vision / AugReg 'Transformer/encoderblock_N/...'); "
                     f"first keys: {sorted(keys)[:8]}")


def _check_vit_config(config: ModelConfig) -> None:
    """Pretrained softmax ViTs need the plain patch projection, MLP blocks and a q/k/v layer."""
    problems = []
    if config.patch_embed is not PatchEmbedKind.PROJECTION:
        problems.append(f"patch_embed must be 'projection', got {config.patch_embed.value!r}")
    if config.ffn is not FFNKind.MLP:
        problems.append(f"ffn must be 'mlp', got {config.ffn.value!r}")
    kinds = {config.block_attention(i) for i in range(config.depth)}
    if not kinds <= {AttentionKind.SOFTMAX, AttentionKind.AGENT}:
        problems.append(f"attention must be 'softmax' or 'agent' in every block, got "
                        f"{sorted(k.value for k in kinds)}")
    if config.pool is Pool.MEAN:
        problems.append("pool must be 'cls' or 'patch_mean', got 'mean'")
    if problems:
        raise ValueError("the model config cannot hold a pretrained ViT: " + "; ".join(problems))


# entries: source key -> (path or tuple of paths, forward transform, inverse transform)
_Entry = tuple[tuple, Transform, Callable]


def _timm_entries(config: ModelConfig) -> dict[str, _Entry]:
    _check_vit_config(config)
    d, h, p, c, s = config.dim, config.heads, config.dim_head, config.channels, config.patch_size
    ident = (_IDENTITY, _IDENTITY)
    transpose = (lambda w: w.T, lambda w: w.T)
    patch = (lambda w: w.transpose(2, 3, 1, 0).reshape(s * s * c, d),  # OIHW -> (p1 p2 c), D
             lambda k: k.reshape(s, s, c, d).transpose(3, 2, 0, 1))
    qkv = (lambda w: tuple(part.T.reshape(d, h, p) for part in w.reshape(3, h * p, d)),
           lambda *us: np.concatenate([u.reshape(d, h * p).T for u in us], axis=0))
    qkv_b = (lambda b: tuple(b.reshape(3, h, p)),
             lambda *bs: np.concatenate([b.reshape(h * p) for b in bs]))
    out = (lambda w: w.T.reshape(h, p, d), lambda k: k.reshape(h * p, d).T)
    head_norm = "fc_norm" if config.pool is Pool.PATCH_MEAN else "norm"
    entries: dict[str, _Entry] = {
        "cls_token": (("cls_token",), *ident),
        "pos_embed": (("pos_embedding",), *ident),
        "patch_embed.proj.weight": (("patch_embed", "kernel"), *patch),
        "patch_embed.proj.bias": (("patch_embed", "bias"), *ident),
        f"{head_norm}.weight": (("head_norm", "scale"), *ident),
        f"{head_norm}.bias": (("head_norm", "bias"), *ident),
        "head.weight": (("head_kernel",), *transpose),
        "head.bias": (("head_bias",), *ident),
    }
    for i in range(config.depth):
        src, dst = f"blocks.{i}", ("blocks", i)
        for norm in ("norm1", "norm2"):
            entries[f"{src}.{norm}.weight"] = ((*dst, norm, "scale"), *ident)
            entries[f"{src}.{norm}.bias"] = ((*dst, norm, "bias"), *ident)
        entries[f"{src}.attn.qkv.weight"] = (tuple((*dst, "attn", "proj", j) for j in range(3)),
                                             *qkv)
        if config.qkv_bias:
            entries[f"{src}.attn.qkv.bias"] = (
                tuple((*dst, "attn", "qkv_bias", j) for j in range(3)), *qkv_b)
        entries[f"{src}.attn.proj.weight"] = ((*dst, "attn", "out_kernel"), *out)
        entries[f"{src}.attn.proj.bias"] = ((*dst, "attn", "out_bias"), *ident)
        for layer, (w, b) in (("fc1", ("w1", "b1")), ("fc2", ("w2", "b2"))):
            entries[f"{src}.mlp.{layer}.weight"] = ((*dst, "ffn", w), *transpose)
            entries[f"{src}.mlp.{layer}.bias"] = ((*dst, "ffn", b), *ident)
    return entries


def timm_key_map(config: ModelConfig) -> dict[str, tuple[tuple, Transform]]:
    """timm key -> (path in `nnx.state(model)`, transform) for a ViT of `config` (the fused
    `qkv` goes to the three head projections, so its path is a tuple of three paths)."""
    return {key: (path, forward) for key, (path, forward, _) in _timm_entries(config).items()}


def augreg_key_map(config: ModelConfig, layout: str = "augreg"
                   ) -> dict[str, tuple[tuple, Transform]]:
    """Flax key -> (path, transform) for AugReg / vit_jax (`layout="augreg"`) or big_vision
    `.npz` ViTs. Their q/k/v/out kernels are already per head ([D, H, hd], [H, hd, D]); the
    big_vision position embedding `[1, N, D]` has no cls slot (it is added before the cls token),
    so its cls entry becomes 0."""
    if layout not in ("augreg", "big_vision"):
        raise ValueError(f"layout must be 'augreg' or 'big_vision', got {layout!r}")
    _check_vit_config(config)
    if config.pool is not Pool.CLS:
        raise ValueError("big_vision / AugReg checkpoints load with pool='cls' (class token)")
    d = config.dim
    bv = layout == "big_vision"
    attn, mlp = ("MultiHeadDotProductAttention_0", "MlpBlock_0") if bv else (
        "MultiHeadDotProductAttention_1", "MlpBlock_3")
    norms = ("LayerNorm_0", "LayerNorm_1") if bv else ("LayerNorm_0", "LayerNorm_2")
    with_cls: Transform = lambda pe: np.concatenate(  # noqa: E731
        [np.zeros((1, 1, d), pe.dtype), pe], axis=1)
    keys: dict[str, tuple[tuple, Transform]] = {
        "cls": (("cls_token",), _IDENTITY),
        "embedding/kernel": (("patch_embed", "kernel"), lambda k: k.reshape(-1, d)),
        "embedding/bias": (("patch_embed", "bias"), _IDENTITY),
        ("pos_embedding" if bv else "Transformer/posembed_input/pos_embedding"): (
            ("pos_embedding",), with_cls if bv else _IDENTITY),
        "Transformer/encoder_norm/scale": (("head_norm", "scale"), _IDENTITY),
        "Transformer/encoder_norm/bias": (("head_norm", "bias"), _IDENTITY),
        "head/kernel": (("head_kernel",), _IDENTITY),
        "head/bias": (("head_bias",), _IDENTITY),
    }
    for i in range(config.depth):
        src, dst = f"Transformer/encoderblock_{i}", ("blocks", i)
        for norm, ours in zip(norms, ("norm1", "norm2"), strict=True):
            keys[f"{src}/{norm}/scale"] = ((*dst, ours, "scale"), _IDENTITY)
            keys[f"{src}/{norm}/bias"] = ((*dst, ours, "bias"), _IDENTITY)
        for j, name in enumerate(("query", "key", "value")):
            keys[f"{src}/{attn}/{name}/kernel"] = ((*dst, "attn", "proj", j), _IDENTITY)
            if config.qkv_bias:
                keys[f"{src}/{attn}/{name}/bias"] = ((*dst, "attn", "qkv_bias", j), _IDENTITY)
        keys[f"{src}/{attn}/out/kernel"] = ((*dst, "attn", "out_kernel"), _IDENTITY)
        keys[f"{src}/{attn}/out/bias"] = ((*dst, "attn", "out_bias"), _IDENTITY)
        for j, (w, b) in enumerate((("w1", "b1"), ("w2", "b2"))):
            keys[f"{src}/{mlp}/Dense_{j}/kernel"] = ((*dst, "ffn", w), _IDENTITY)
            keys[f"{src}/{mlp}/Dense_{j}/bias"] = ((*dst, "ffn", b), _IDENTITY)
    return keys


def resample_pos_embedding(pe, old_grid: tuple[int, int], new_grid: tuple[int, int],
                           prefix_tokens: int = 1, method: str = "bilinear") -> np.ndarray:
    """Resize a learned position embedding `[1, prefix + gh*gw, D]` to `new_grid`.

    The `prefix_tokens` leading entries (cls) are kept; the patch entries are reshaped to the
    old grid and interpolated (`method`: "bilinear", as timm for `.npz` weights and big_vision,
    with half-pixel centres and no antialiasing; or "bicubic", JAX's Keys cubic) to
    `[1, prefix + nh*nw, D]` (float32). The identity when the grids agree.
    """
    pe = np.asarray(pe)
    (gh, gw), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[1] != prefix_tokens + gh * gw:
        raise ValueError(f"pe must have shape [1, prefix_tokens + gh*gw, D] = [1, "
                         f"{prefix_tokens + gh * gw}, D] for old_grid {tuple(old_grid)}, got "
                         f"{pe.shape}")
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
    if (gh, gw) == (nh, nw):
        return pe
    d = pe.shape[-1]
    grid = jnp.asarray(pe[0, prefix_tokens:], jnp.float32).reshape(gh, gw, d)
    resized = jax.image.resize(grid, (nh, nw, d), method=method, antialias=False)
    patches = np.asarray(resized).reshape(1, nh * nw, d)
    return np.concatenate([pe[:, :prefix_tokens].astype(np.float32), patches], axis=1)


_POS_KEYS = {"timm": "pos_embed", "augreg": "Transformer/posembed_input/pos_embedding",
             "big_vision": "pos_embedding"}


def _source_grid(weights, layout: str) -> tuple[int, int, int] | None:
    """(prefix entries, gh, gw) of the checkpoint's position embedding (square grids), or None
    when it is absent or not of that form (the key check then reports it)."""
    pe = weights.get(_POS_KEYS[layout])
    if pe is None or np.ndim(pe) != 3:
        return None
    t = pe.shape[1]
    prefixes = (0,) if layout == "big_vision" else (1, 0)  # timm: cls slot, or no_embed_class
    for prefix in prefixes:
        g = math.isqrt(max(t - prefix, 0))
        if g >= 1 and g * g == t - prefix:
            return prefix, g, g
    return None


def vit_config_from_weights(weights: Mapping[str, np.ndarray], *, heads: int | None = None,
                            layout: str | None = None) -> tuple[ModelConfig, int, tuple]:
    """(softmax `ModelConfig`, num_classes, checkpoint image size) read from the shapes: width,
    depth, patch size, channels, MLP width, classes, qkv bias, pooling. timm shapes do not carry
    the number of heads: pass `heads` (big_vision / AugReg kernels do)."""
    layout = detect_layout(weights) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def need(key, ndim):
        if key not in weights or np.ndim(weights[key]) != ndim:
            found = "missing" if key not in weights else f"shape {np.shape(weights[key])}"
            raise ValueError(f"state_dict does not match a ViT: key {key!r} ({found}) must be "
                             f"a {ndim}-d array; it gives the model's sizes")
        return np.shape(weights[key])

    if layout == "timm":
        dim, channels, ph, pw = need("patch_embed.proj.weight", 4)
        depth_keys = {k.split(".")[1] for k in weights if k.startswith("blocks.")}
        hidden = need("blocks.0.mlp.fc1.weight", 2)[0]
        qkv_bias = "blocks.0.attn.qkv.bias" in weights
        classes = np.shape(weights["head.weight"])[0] if "head.weight" in weights else None
        pool = Pool.PATCH_MEAN if "fc_norm.weight" in weights else Pool.CLS
        if heads is None:
            raise ValueError("heads is required for timm checkpoints (their shapes do not "
                             "carry the number of heads)")
    else:
        ph, pw, channels, dim = need("embedding/kernel", 4)
        depth_keys = {k.split("/")[1] for k in weights
                      if k.startswith("Transformer/encoderblock_")}
        attn = "MultiHeadDotProductAttention_0" if layout == "big_vision" else \
            "MultiHeadDotProductAttention_1"
        mlp = "MlpBlock_0" if layout == "big_vision" else "MlpBlock_3"
        block = "Transformer/encoderblock_0"
        kernel_heads = need(f"{block}/{attn}/query/kernel", 3)[1]
        heads = kernel_heads if heads is None else heads
        hidden = need(f"{block}/{mlp}/Dense_0/kernel", 2)[1]
        qkv_bias = f"{block}/{attn}/query/bias" in weights
        classes = np.shape(weights["head/kernel"])[-1] if "head/kernel" in weights else None
        pool = Pool.CLS
        if "cls" not in weights:
            raise ValueError("state_dict does not match the model: missing keys ['cls'] (a "
                             "ViT without a class token, e.g. big_vision pool_type 'gap' or "
                             "'map', is not supported)")
    if ph != pw:
        raise ValueError(f"non-square patches {ph}x{pw} are not supported")
    if not (isinstance(heads, int) and heads >= 1 and dim % heads == 0):
        raise ValueError(f"heads must be a positive integer dividing the width {dim} read from "
                         f"the patch embedding, got {heads!r}")
    depth = len(depth_keys)
    config = ModelConfig("softmax", dim=int(dim), depth=depth, heads=heads,
                         dim_head=int(dim) // heads, ffn="mlp", patch_size=int(ph),
                         patch_embed="projection", channels=int(channels),
                         mlp_ratio=int(hidden) / int(dim), pool=pool, qkv_bias=qkv_bias,
                         norm_eps=1e-6)
    if int(int(dim) * config.mlp_ratio) != hidden:
        raise ValueError(f"MLP width {hidden} is not representable as dim * mlp_ratio")
    source = _source_grid(weights, layout)
    size = (source[1] * int(ph), source[2] * int(ph)) if source else None
    return config, classes, size


def load_vit(weights: Mapping[str, np.ndarray], config: ModelConfig, *, num_classes: int,
             image_size, layout: str | None = None, dtype=None,
             param_dtype=np.float32) -> VisionTransformer:
    """A `VisionTransformer` of `config` (eval mode) from pretrained softmax-ViT `weights` in
    any of `LAYOUTS` (detected from the keys when `layout` is None).

    The position embedding is resampled bilinearly when `image_size` gives another grid. A
    head of another `num_classes` than the checkpoint's (or none) starts at zero.
    Raises ValueError listing every unknown, missing and mis-shaped key.
    """
    layout = detect_layout(weights) if layout is None else layout
    key_map = (timm_key_map(config) if layout == "timm"
               else augreg_key_map(config, layout))
    weights = dict(weights)
    size = image_size if not isinstance(image_size, int) else (image_size, image_size)
    grid = config.grid_for(tuple(size))
    source = _source_grid(weights, layout)
    pos_key = _POS_KEYS[layout]
    if source is not None:
        prefix, gh, gw = source
        pe = resample_pos_embedding(weights[pos_key], (gh, gw), grid, prefix)
        if layout == "timm" and prefix == 0:  # no_embed_class: cls gets no position
            pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
        weights[pos_key] = pe
    timm = layout == "timm"
    kernel_key, bias_key = ("head.weight", "head.bias") if timm else ("head/kernel", "head/bias")
    head = weights.get(kernel_key)
    if head is None or np.ndim(head) != 2 or np.shape(head)[0 if timm else 1] != num_classes:
        # a new head starts at zero (big_vision's head_zeroinit): nothing is drawn at random
        shape = (num_classes, config.dim) if timm else (config.dim, num_classes)
        weights[kernel_key] = np.zeros(shape, np.float32)
        weights[bias_key] = np.zeros(num_classes, np.float32)
    return assign(lambda: VisionTransformer(
        config, num_classes=num_classes, image_size=size, dtype=dtype, param_dtype=param_dtype,
        rngs=nnx.Rngs(0)), weights, key_map)


_ATTENTION_NAMES = {"softmax": AttentionKind.SOFTMAX, "adapted": AttentionKind.AGENT,
                    "agent": AttentionKind.AGENT}


def vit_from_timm(state_dict, *, heads: int | None = None, image_size=None,
                  attention: str = "softmax", selection: Selection | str = Selection.PATCHES,
                  attention_blocks: int | None = None, cells: tuple[int, int] = (8, 8),
                  num_classes: int | None = None, dtype=None,
                  param_dtype=np.float32) -> VisionTransformer:
    """A pretrained softmax ViT as our `VisionTransformer`, in eval mode.

    `state_dict`: timm keys (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, ...) as a
    mapping or a `.pth` / `.safetensors` path, or a big_vision / AugReg `.npz` (layout detected
    from the keys). Width, depth, patch size, MLP width, classes and qkv bias are read from the
    shapes; `heads` is needed for timm layouts. `image_size` defaults to the checkpoint's; another
    size resamples the position embedding (bilinear). `attention="adapted"` runs the pooled-query
    layer (`AttentionKind.AGENT`: queries pooled to `cells`, softmax over all keys, read back by
    a softmax over the representatives) in every block, or in the first `attention_blocks`;
    `selection="reference"` reproduces the official code's token selection. `num_classes` other
    than the checkpoint's gives a new head, zero-initialised. `model(images_nhwc) -> logits`.
    """
    if attention not in _ATTENTION_NAMES:
        raise ValueError(f"attention must be one of {sorted(_ATTENTION_NAMES)}, got "
                         f"{attention!r}")
    weights = load_vit_weights(state_dict)
    layout = detect_layout(weights)
    config, classes, source_size = vit_config_from_weights(weights, heads=heads, layout=layout)
    kind = _ATTENTION_NAMES[attention]
    config = config.replace(attention=kind, selection=selection, cells=tuple(cells),
                            attention_blocks=attention_blocks if kind is not
                            AttentionKind.SOFTMAX else None)
    if image_size is None:
        if source_size is None:
            raise ValueError("image_size is required: the checkpoint's position embedding does "
                             "not give a square grid")
        image_size = source_size
    num_classes = classes if num_classes is None else num_classes
    if num_classes is None:
        raise ValueError("num_classes is required: the checkpoint has no classifier head")
    return load_vit(weights, config, num_classes=num_classes, image_size=image_size,
                    layout=layout, dtype=dtype, param_dtype=param_dtype)


def adapt(model: VisionTransformer, *, attention: str = "adapted", blocks: int | None = None,
          selection: Selection | str | None = None,
          cells: tuple[int, int] | None = None) -> VisionTransformer:
    """The same weights under another attention in every block, or in the first `blocks`: a
    softmax ViT becomes the pooled-query (agent) ViT and back. Only layers with the same
    parameters are interchangeable (softmax and agent attention, with the same qkv bias); the
    model's other blocks keep its attention."""
    kind = _ATTENTION_NAMES.get(attention)
    if kind is None:
        raise ValueError(f"attention must be one of {sorted(_ATTENTION_NAMES)}, got "
                         f"{attention!r}")
    base = model.config
    kinds = {base.block_attention(i) for i in range(base.depth)}
    if len(kinds) != 1:
        raise ValueError(f"adapt needs a model with one attention in every block, got "
                         f"{sorted(k.value for k in kinds)}")
    changes = dict(attention=kind, attention_blocks=blocks, other_attention=kinds.pop())
    if selection is not None:
        changes["selection"] = selection
    if cells is not None:
        changes["cells"] = tuple(cells)
    config = base.replace(**changes)
    _check_vit_config(config)
    graphdef, state = nnx.split(model)
    dtype = model.cls_token[...].dtype
    target = nnx.eval_shape(lambda: VisionTransformer(
        config, num_classes=model.num_classes, image_size=model.image_size, dtype=model.dtype,
        param_dtype=dtype, rngs=nnx.Rngs(0)))
    new_graphdef, new_state = nnx.split(target)
    ours = {p: v.shape for p, v in nnx.to_flat_state(state)}
    theirs = {p: v.shape for p, v in nnx.to_flat_state(new_state)}
    if ours != theirs:
        diff = sorted(".".join(map(str, p)) for p in set(ours) ^ set(theirs))
        raise ValueError(f"attention {attention!r} has other parameters than the model's: {diff}")
    adapted = nnx.merge(new_graphdef, state)
    adapted.eval()
    return adapted


def timm_state_dict(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The model's parameters under timm's ViT keys (float32 numpy), the inverse of
    `timm_key_map`: `vit_from_timm(timm_state_dict(model), heads=...)` rebuilds it."""
    config = model.config
    if config.norm_eps != 1e-6:
        raise ValueError(f"timm ViTs use LayerNorm eps 1e-6; this model uses {config.norm_eps}")
    flat = {p: np.asarray(v.get_value(), np.float32)
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = {}
    for key, (path, _, inverse) in _timm_entries(config).items():
        paths = path if isinstance(path[0], tuple) else (path,)
        out[key] = np.ascontiguousarray(inverse(*(flat[p] for p in paths)), np.float32)
    return out


def save_timm(model: VisionTransformer, path: str | os.PathLike) -> None:
    """Write the model in timm's layout as `.safetensors` or `.npz` (no torch needed)."""
    path = os.fspath(path)
    weights = timm_state_dict(model)
    if path.endswith(".safetensors"):
        save_safetensors(weights, path)
    elif path.endswith(".npz"):
        np.savez(path, **weights)
    else:
        raise ValueError(f"path must end with .safetensors or .npz, got {path!r}")
