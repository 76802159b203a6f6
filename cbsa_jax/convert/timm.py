"""Pretrained softmax ViTs: timm (`.pth` / `.safetensors`), AugReg / vit_jax and big_vision
(`.npz`, also the stacked-block layout), and their adaptation to the paper's attention.

`vit_from_timm(path, heads=..., image_size=..., attention="softmax" | "adapted")` reads the
weights (`cbsa_jax.convert.formats`), infers the architecture from them, resizes the position
embedding when the image size differs and builds a `VisionTransformer`; `adapt` swaps a model's
softmax attention for pooled-query (agent) attention on the same q, k, v; `save_timm` writes a
model back in timm's layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax.convert.formats import (
    load_npz,
    load_safetensors,
    load_torch_state_dict,
    save_safetensors,
)
from cbsa_jax.convert.mapping import IDENTITY, Transform, assign
from cbsa_jax.models.config import AttentionKind, FFNKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.models.vit import VisionTransformer
from cbsa_jax.representatives import Selection

__all__ = ["LAYOUTS", "load_vit_weights", "detect_layout", "timm_key_map", "augreg_key_map",
           "resample_pos_embedding", "vit_config_from_weights", "load_vit", "vit_from_timm",
           "adapt", "timm_state_dict", "save_timm"]

LAYOUTS = ("timm", "augreg", "big_vision")


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
    ident = (IDENTITY, IDENTITY)
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
        "cls": (("cls_token",), IDENTITY),
        "embedding/kernel": (("patch_embed", "kernel"), lambda k: k.reshape(-1, d)),
        "embedding/bias": (("patch_embed", "bias"), IDENTITY),
        ("pos_embedding" if bv else "Transformer/posembed_input/pos_embedding"): (
            ("pos_embedding",), with_cls if bv else IDENTITY),
        "Transformer/encoder_norm/scale": (("head_norm", "scale"), IDENTITY),
        "Transformer/encoder_norm/bias": (("head_norm", "bias"), IDENTITY),
        "head/kernel": (("head_kernel",), IDENTITY),
        "head/bias": (("head_bias",), IDENTITY),
    }
    for i in range(config.depth):
        src, dst = f"Transformer/encoderblock_{i}", ("blocks", i)
        for norm, ours in zip(norms, ("norm1", "norm2"), strict=True):
            keys[f"{src}/{norm}/scale"] = ((*dst, ours, "scale"), IDENTITY)
            keys[f"{src}/{norm}/bias"] = ((*dst, ours, "bias"), IDENTITY)
        for j, name in enumerate(("query", "key", "value")):
            keys[f"{src}/{attn}/{name}/kernel"] = ((*dst, "attn", "proj", j), IDENTITY)
            if config.qkv_bias:
                keys[f"{src}/{attn}/{name}/bias"] = ((*dst, "attn", "qkv_bias", j), IDENTITY)
        keys[f"{src}/{attn}/out/kernel"] = ((*dst, "attn", "out_kernel"), IDENTITY)
        keys[f"{src}/{attn}/out/bias"] = ((*dst, "attn", "out_bias"), IDENTITY)
        for j, (w, b) in enumerate((("w1", "b1"), ("w2", "b2"))):
            keys[f"{src}/{mlp}/Dense_{j}/kernel"] = ((*dst, "ffn", w), IDENTITY)
            keys[f"{src}/{mlp}/Dense_{j}/bias"] = ((*dst, "ffn", b), IDENTITY)
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
