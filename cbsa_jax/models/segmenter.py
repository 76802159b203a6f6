"""Semantic segmentation: a Segmenter (any of our encoders + a dense decoder) and its decoders.

    segmenter = Segmenter(encoder, decoder)
    logits = segmenter(images)          # NHWC [B, H, W, C] -> per-pixel class logits [B, H, W, K]

The segmenter pads the image with zeros at the bottom / right up to a multiple of the patch size,
encodes it, drops the cls token, applies the encoder's final norm (`head_norm`) to the patch tokens
(the reference feeds the decoder the encoder's output after its final LayerNorm), decodes them to
mask logits on the patch grid, upsamples those bilinearly to the padded size and crops the padding
away. Everything is channels-last.

Decoders map patch features `[B, gh*gw, D]` on `grid=(gh, gw)` to mask logits `[B, gh, gw, K]`
(or, with `image_size=(H, W)`, upsampled to `[B, H, W, K]`):

- `MaskTransformerDecoder` (the paper's CBT decoder with `attention="cbsa"`): K learned class
  embeddings join the patch tokens; each block is `x <- x + attn(LN x)` (no feed-forward); then a
  LayerNorm, L2-normalised patch and class features, `masks = patches . classes^T`, a LayerNorm
  over the class axis. With CBSA, the representatives pool the patch grid only; the class tokens
  take part in the token -> representative softmax S and receive the broadcast `S^T` (not
  renormalised over the representatives), exactly as the reference. `attention="softmax"` is the
  standard-attention baseline (Strudel et al.'s mask transformer without its MLPs).
- `LinearDecoder`: a per-patch linear classifier.

Every size (classes, depth, heads, head width, cells) is a parameter; `DecoderConfig` and
`DECODER_PRESETS` hold the official values (`"cbt"`: 2 blocks, 3 heads of 100, 10 x 10 cells, the
reference's hard-coded numbers) and small ones for CPU runs.

Token order: the reference appends the class embeddings after the patches and pools `w[:, :-K]`.
Every stage of CBSA except the pooling is permutation-equivariant over tokens, so this module puts
the class tokens first and pools with `prefix=K` (the existing `GridPooling`); `capture=True`
returns the tokens in the reference's order `[patches, classes]`.
"""

from __future__ import annotations

import dataclasses
import enum
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax.models.config import checked_replace
from cbsa_jax.nn import layers
from cbsa_jax.representatives import Selection

__all__ = ["DecoderKind", "DecoderConfig", "DECODER_PRESETS", "MaskTransformerDecoder",
           "LinearDecoder", "Segmenter", "build_decoder", "upsample_bilinear",
           "bilinear_matrix"]


# ----------------------------------------------------------------------------------------------
# bilinear upsampling, as torch's F.interpolate(mode="bilinear", align_corners=False)


@cache
def _bilinear_matrix(out: int, size: int) -> np.ndarray:
    scale = size / out
    src = np.maximum((np.arange(out) + 0.5) * scale - 0.5, 0.0)  # half-pixel centres, clamped
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    mat = np.zeros((out, size), np.float64)
    np.add.at(mat, (np.arange(out), lo), 1.0 - frac)
    np.add.at(mat, (np.arange(out), hi), frac)
    mat.setflags(write=False)
    return mat


def bilinear_matrix(out: int, size: int) -> np.ndarray:
    """`[out, size]` weights of 1-D linear interpolation from `size` samples to `out` with
    half-pixel centres (torch's `align_corners=False`): output i reads the source coordinate
    `max((i + 1/2) size / out - 1/2, 0)` from its two neighbours (clamped at the last sample);
    no antialiasing, also when `out < size`."""
    for name, v in (("out", out), ("size", size)):
        if not (isinstance(v, int | np.integer) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return _bilinear_matrix(int(out), int(size))


def upsample_bilinear(x, size) -> jax.Array:
    """Resize `x [B, h, w, C]` to `[B, H, W, C]`, `size = (H, W)`, bilinearly with half-pixel
    centres and no antialiasing (torch's `F.interpolate(..., mode="bilinear")`), as two small
    separable matmuls (float32 or wider)."""
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [B, h, w, C], got shape {x.shape}")
    out_h, out_w = _pair(size, "size")
    if (out_h, out_w) == tuple(x.shape[1:3]):
        return x
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    mh = jnp.asarray(bilinear_matrix(out_h, x.shape[1]), dtype)
    mw = jnp.asarray(bilinear_matrix(out_w, x.shape[2]), dtype)
    y = jnp.einsum("Hh,bhwc->bHwc", mh, x.astype(dtype))
    return jnp.einsum("Ww,bHwc->bHWc", mw, y)


def _pair(v, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int | np.integer) else tuple(v)
    if len(pair) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair, got {v!r}")
    return int(pair[0]), int(pair[1])


# ----------------------------------------------------------------------------------------------
# configuration


class DecoderKind(enum.Enum):
    CBT = "cbt"  # mask transformer with CBSA blocks (the paper's)
    SOFTMAX = "softmax"  # mask transformer with softmax attention
    LINEAR = "linear"  # per-patch linear classifier


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A segmentation decoder's architecture (the width D is the encoder's).

    Attributes:
      kind: `DecoderKind` (or its string value).
      depth, heads, dim_head: blocks, heads and head width of the mask transformer.
      cells: (rh, rw) representative cells of the CBT decoder's grid pooling.
    """

    kind: DecoderKind
    depth: int = 2
    heads: int = 3
    dim_head: int = 100
    cells: tuple[int, int] = (10, 10)

    def __post_init__(self):
        try:
            object.__setattr__(self, "kind", DecoderKind(self.kind))
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in DecoderKind)
            raise ValueError(f"decoder kind must be one of {allowed}, got {self.kind!r}") from None
        for name in ("depth", "heads", "dim_head"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"decoder {name} must be a positive integer, got {value!r}")
        cells = tuple(self.cells) if isinstance(self.cells, list | tuple) else self.cells
        if not (isinstance(cells, tuple) and len(cells) == 2
                and all(isinstance(c, int) and c >= 1 for c in cells)):
            raise ValueError(f"decoder cells must be a pair of positive integers, got "
                             f"{self.cells!r}")
        object.__setattr__(self, "cells", cells)

    def replace(self, **changes) -> DecoderConfig:
        return checked_replace(self, "decoder", **changes)


_NANO = dict(depth=2, heads=4, dim_head=16, cells=(4, 4))
DECODER_PRESETS: dict[str, DecoderConfig] = {
    # the reference's decoder: 2 blocks, 3 heads x 100, 10 x 10 representatives
    "cbt": DecoderConfig("cbt"),
    "softmax": DecoderConfig("softmax"),
    "linear": DecoderConfig("linear"),
    # CPU-sized mask transformers for the nano and pico encoders (dim 64 and 32)
    "cbt_nano": DecoderConfig("cbt", **_NANO),
    "softmax_nano": DecoderConfig("softmax", **_NANO),
    "linear_nano": DecoderConfig("linear"),
}


# ----------------------------------------------------------------------------------------------
# decoders


def _check_features(features, dim: int, grid) -> tuple[int, int]:
    grid = _pair(grid, "grid")
    if features.ndim != 3 or features.shape[-1] != dim or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"features must have shape [B, gh*gw, D] with gh*gw = "
                         f"{grid[0] * grid[1]} (grid {grid}) and D = {dim}, got shape "
                         f"{features.shape}")
    return grid


def _l2_normalize(x):
    """`x / ||x||` along channels (the reference has no epsilon; a zero vector stays zero)."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.finfo(x.dtype).tiny))


class _DecoderBlock(nnx.Module):
    """`x + attn(LN x)`: no feed-forward layer, as the reference's decoder blocks."""

    def __init__(self, dim: int, attn: nnx.Module, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.norm = layers.layer_norm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn = attn

    def __call__(self, x, *, grid, capture: bool = False):
        out = self.attn(self.norm(x), grid=grid, capture=capture)
        if not capture:
            return x + out
        out, aux = out
        return x + out, {**aux, "attn_out": out}


class MaskTransformerDecoder(nnx.Module):
    """Mask-transformer decoder: `features [B, gh*gw, D]` on `grid` -> mask logits
    `[B, gh, gw, K]` (`[B, H, W, K]` with `image_size=(H, W)`).

    Args:
      dim: D, the encoder width (there is no projection between encoder and decoder).
      num_classes: K, the number of learned class embeddings.
      depth, heads, dim_head: blocks, heads H, head width p.
      attention: "cbsa" (the CBT decoder; representatives pool the patch grid to `cells`) or
        "softmax" (standard multi-head attention with separate q, k, v, no bias).
      cells: (rh, rw) representative cells of CBSA; the patch grid must be at least this large.
    """

    def __init__(self, dim: int, num_classes: int, *, depth: int = 2, heads: int = 3,
                 dim_head: int = 100, attention: str = "cbsa", cells: tuple[int, int] = (10, 10),
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        for name, v in (("dim", dim), ("num_classes", num_classes), ("depth", depth)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if attention not in ("cbsa", "softmax"):
            raise ValueError(f"attention must be 'cbsa' or 'softmax', got {attention!r}")
        self.dim, self.num_classes, self.attention = dim, num_classes, attention
        self.cells, self.dtype = tuple(cells), dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        def attn():
            if attention == "cbsa":  # class tokens lead, so pooling skips them as a prefix
                return layers.CBSA(dim, heads, dim_head, cells=self.cells,
                                   prefix_tokens=num_classes, selection=Selection.PATCHES, **kw)
            return layers.SoftmaxAttention(dim, heads, dim_head, **kw)

        self.class_embedding = layers.param(
            rngs, nnx.initializers.truncated_normal(0.02), (1, num_classes, dim),
            (None, "classes", "embed"), param_dtype)
        self.blocks = nnx.List([_DecoderBlock(dim, attn(), **kw) for _ in range(depth)])
        self.norm = layers.layer_norm(dim, **kw)
        self.mask_norm = layers.LayerNorm(num_classes, epsilon=layers.LN_EPS, dtype=dtype,
                                          param_dtype=param_dtype, rngs=rngs,
                                          scale_metadata={"logical_axes": ("classes",)},
                                          bias_metadata={"logical_axes": ("classes",)})

    def _reference_order(self, x):
        """`[classes, patches]` -> the reference's `[patches, classes]`."""
        k = self.num_classes
        return jnp.concatenate([x[:, k:], x[:, :k]], axis=1)

    def __call__(self, features, *, grid, image_size=None, capture: bool = False):
        features = jnp.asarray(features)
        grid = _check_features(features, self.dim, grid)
        if self.attention == "cbsa" and (grid[0] < self.cells[0] or grid[1] < self.cells[1]):
            raise ValueError(f"grid {grid} has fewer patches than the decoder's "
                             f"{self.cells[0]}x{self.cells[1]} representative cells")
        b, k = features.shape[0], self.num_classes
        dtype = self.dtype or features.dtype
        classes = jnp.broadcast_to(self.class_embedding[...], (b, k, self.dim)).astype(dtype)
        x = jnp.concatenate([classes, features.astype(dtype)], axis=1)
        info = {"tokens_in": x, "layers": []}
        for block in self.blocks:
            x = block(x, grid=grid, capture=capture)
            if capture:
                x, aux = x
                info["layers"].append({**aux, "attn_out": self._reference_order(aux["attn_out"]),
                                       "tokens": self._reference_order(x)})
        x = self.norm(x).astype(jnp.promote_types(dtype, jnp.float32))
        classes, patches = _l2_normalize(x[:, :k]), _l2_normalize(x[:, k:])
        masks = self.mask_norm(jnp.einsum("bnd,bkd->bnk", patches, classes))
        masks = masks.astype(x.dtype).reshape(b, *grid, k)
        if image_size is not None:
            masks = upsample_bilinear(masks, image_size)
        if not capture:
            return masks
        info["tokens_in"] = self._reference_order(info["tokens_in"])
        return masks, info


class LinearDecoder(nnx.Module):
    """A per-patch linear classifier: `features [B, gh*gw, D]` -> `[B, gh, gw, K]` (upsampled
    to `[B, H, W, K]` with `image_size=(H, W)`)."""

    def __init__(self, dim: int, num_classes: int, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        for name, v in (("dim", dim), ("num_classes", num_classes)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.dim, self.num_classes, self.dtype = dim, num_classes, dtype
        self.kernel = layers.param(rngs, layers.DEFAULT_INIT, (dim, num_classes),
                                   ("embed", "classes"), param_dtype)
        self.bias = layers.param(rngs, nnx.initializers.zeros, (num_classes,), ("classes",),
                                 param_dtype)

    def __call__(self, features, *, grid, image_size=None, capture: bool = False):
        features = jnp.asarray(features)
        grid = _check_features(features, self.dim, grid)
        x, kernel, bias = layers.cast(self.dtype, features, self.kernel[...], self.bias[...])
        masks = (x @ kernel + bias).reshape(features.shape[0], *grid, self.num_classes)
        masks = masks.astype(jnp.promote_types(masks.dtype, jnp.float32))
        if image_size is not None:
            masks = upsample_bilinear(masks, image_size)
        return (masks, {"layers": []}) if capture else masks


def build_decoder(config: DecoderConfig | str, *, dim: int, num_classes: int, dtype=None,
                  param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
    """The decoder of `config` (a `DecoderConfig` or a `DECODER_PRESETS` name) for width `dim`."""
    if isinstance(config, str):
        if config not in DECODER_PRESETS:
            raise ValueError(f"unknown decoder {config!r}; decoders are {sorted(DECODER_PRESETS)}")
        config = DECODER_PRESETS[config]
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if config.kind is DecoderKind.LINEAR:
        return LinearDecoder(dim, num_classes, **kw)
    return MaskTransformerDecoder(
        dim, num_classes, depth=config.depth, heads=config.heads, dim_head=config.dim_head,
        attention="cbsa" if config.kind is DecoderKind.CBT else "softmax", cells=config.cells,
        **kw)


# ----------------------------------------------------------------------------------------------
# the segmenter


class Segmenter(nnx.Module):
    """`encoder` (a `VisionTransformer`) + `decoder`: NHWC images `[B, H, W, C]` -> float32
    per-pixel class logits `[B, H, W, K]`, for any H, W (padded to a patch multiple inside).

    `segmenter(images, capture=True)` returns `(logits, info)` with the encoder's per-block
    internals (`info["encoder"]`), the decoder's (`info["decoder"]`), the patch `grid` and the
    decoder's mask logits on the grid (`info["masks"]`, `[B, gh, gw, K]`).
    Call `.eval()` for inference (BatchNorm statistics of a conv stem) and `.train()` to train.
    """

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
        if getattr(decoder, "dim", encoder.config.dim) != encoder.config.dim:
            raise ValueError(f"decoder width {decoder.dim} differs from the encoder width "
                             f"{encoder.config.dim}")
        self.encoder, self.decoder = encoder, decoder
        self.patch_size = encoder.config.patch_size
        self.num_classes = decoder.num_classes

    def pad(self, images) -> tuple[jax.Array, tuple[int, int]]:
        """(images zero-padded at the bottom / right to a patch multiple, original (H, W))."""
        images = jnp.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must have shape [B, H, W, C] (NHWC), got shape "
                             f"{images.shape}")
        p, (h, w) = self.patch_size, images.shape[1:3]
        if h % p or w % p:
            images = jnp.pad(images, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        return images, (h, w)

    def features(self, images, *, capture: bool = False):
        """Patch features `[B, gh*gw, D]` of padded `images` after the encoder's final norm, and
        the grid (and, with `capture=True`, the encoder's per-block internals)."""
        tokens, grid, *captured = self.encoder.encode(images, capture=capture)
        return (self.encoder.head_norm(tokens[:, 1:]), grid, *captured)

    def __call__(self, images, *, capture: bool = False):
        padded, (h, w) = self.pad(images)
        features, grid, *encoder_info = self.features(padded, capture=capture)
        masks = self.decoder(features, grid=grid, capture=capture)
        masks, decoder_info = masks if capture else (masks, None)
        logits = upsample_bilinear(masks, padded.shape[1:3])[:, :h, :w].astype(jnp.float32)
        if not capture:
            return logits
        return logits, {"encoder": encoder_info[0], "decoder": decoder_info, "grid": grid,
                        "masks": masks}
