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

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax.models.config import AttentionKind, ModelConfig
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

    `key_map` maps a source key to (path in `nnx.state(model)`, transform). Every source key must
    be mapped (or `ignore`d) and every mapped key present with the right shape; otherwise one
    ValueError lists every unknown, missing and mis-shaped key with both shapes. The model is
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
        if path not in targets:
            raise AssertionError(f"key map sends {key} to {'.'.join(map(str, path))}, which the "
                                 f"model does not have")
        variable = targets[path]
        try:
            value = np.asarray(transform(weights[key]))
        except ValueError:
            value = None
        if value is None or value.shape != variable.shape:
            mismatched.append(f"{key}: checkpoint {tuple(np.shape(weights[key]))}, model expects "
                              f"{tuple(variable.shape)} at {'.'.join(map(str, path))}")
            continue
        variable.set_value(jnp.asarray(value, variable.dtype))
        assigned.add(path)
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
