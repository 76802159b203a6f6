"""The preset registry: named `ModelConfig`s and `create`.

| family | preset names | attention / ffn | widths |
|---|---|---|---|
| CBT (the paper) | cbt_{pico,nano,tiny,small,base,large} | CBSA / ISTA | 192, 384, 768, 1024 |
| CBT, exact step | cbt_exact_{pico,nano,tiny,small} | exact CBSA / ISTA | as CBT |
| CRATE (official) | crate_{pico,nano,tiny,small,base,large} | MSSA / ISTA | 384, 576, 768, 1024 |
| CRATE at CBT widths (the reference's) | crate_cbt_{tiny,small,base,large} | MSSA / ISTA | as CBT |
| ToST at CBT widths (reference) | tost_{pico,nano,tiny,small,base,large} | TSSA / ISTA | as CBT |
| softmax ViT | vit_{pico,nano,tiny,small,base,large} | softmax / MLP | as CBT |
| timm's ViT (pretrained) | vit_timm_{pico,nano,tiny,small,base,large} | softmax / MLP | as CBT |

Official CRATE uses the linear patch embedding, the others the reference's conv stem; the
`vit_timm` presets are timm's architecture (plain patch projection, qkv bias, LayerNorm eps
1e-6), which `cbsa_jax.convert.vit_from_timm` / `save_timm` read and write. `nano`
presets (dim 64, depth 4, 4 heads of 16, a 2-block conv stem for 4 x 4 patches, 4 x 4
representative cells) are for CPU runs; every nano uses the same stem, for fair comparisons.
`pico` presets halve the nano's width (dim 32, 2 heads of 16, the stem's widths halved with it):
the second size of each family on a CPU budget, for accuracy against FLOPs and parameters along
a frontier rather than at one point.

`create_segmenter(encoder, num_classes=..., decoder="cbt" | "softmax" | "linear")` puts any of
these encoders under a segmentation decoder (`cbsa_jax.models.segmenter`).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from cbsa_jax.models.config import ModelConfig, lookup
from cbsa_jax.models.segmenter import DECODER_PRESETS, DecoderConfig, Segmenter, build_decoder
from cbsa_jax.models.vit import VisionTransformer

__all__ = ["PRESETS", "CPU_SIZES", "create", "get_config", "create_segmenter", "decoder_config"]

_WIDTHS = {  # dim, depth, heads (head width 64)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
_NANO = dict(dim=64, depth=4, heads=4, dim_head=16, patch_size=4, cells=(4, 4))
_PICO = {**_NANO, "dim": 32, "heads": 2}
#: The sizes for CPU runs (4 x 4 patches, natural at 32 x 32; the CPU-sized decoders).
CPU_SIZES = ("pico", "nano")
_CRATE = {  # the official CRATE widths: dim, depth, heads, head width
    "tiny": (384, 12, 6, 64),
    "small": (576, 12, 12, 48),
    "base": (768, 12, 12, 64),
    "large": (1024, 24, 16, 64),
}


def _family(attention: str, **extra) -> dict[str, ModelConfig]:
    out = {size: ModelConfig(attention, dim=d, depth=n, heads=h, **extra)
           for size, (d, n, h) in _WIDTHS.items()}
    out["nano"] = ModelConfig(attention, **{**_NANO, **extra})
    out["pico"] = ModelConfig(attention, **{**_PICO, **extra})
    return out


def _build() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for size, cfg in _family("cbsa").items():
        presets[f"cbt_{size}"] = cfg
    for size, cfg in _family("cbsa_exact").items():
        if size in (*CPU_SIZES, "tiny", "small"):
            presets[f"cbt_exact_{size}"] = cfg
    for size, cfg in _family("mssa").items():
        if size not in CPU_SIZES:
            presets[f"crate_cbt_{size}"] = cfg
    for size, (d, n, h, p) in _CRATE.items():
        presets[f"crate_{size}"] = ModelConfig("mssa", dim=d, depth=n, heads=h, dim_head=p,
                                               patch_embed="linear")
    presets["crate_nano"] = ModelConfig("mssa", **_NANO)
    presets["crate_pico"] = ModelConfig("mssa", **_PICO)
    for size, cfg in _family("tssa").items():
        presets[f"tost_{size}"] = cfg
    for size, cfg in _family("softmax", ffn="mlp").items():
        presets[f"vit_{size}"] = cfg
    for size, cfg in _family("softmax", ffn="mlp", patch_embed="projection", qkv_bias=True,
                             norm_eps=1e-6).items():
        presets[f"vit_timm_{size}"] = cfg
    return presets


PRESETS: dict[str, ModelConfig] = _build()


def get_config(name: str, **overrides) -> ModelConfig:
    """The preset's `ModelConfig` with `overrides` applied (validated)."""
    return lookup(PRESETS, name, "model preset", **overrides)


def create(name: str, *, num_classes: int, image_size=224, seed: int = 0,
           rngs: nnx.Rngs | None = None, dtype=None, param_dtype=jnp.float32,
           **overrides) -> VisionTransformer:
    """Build the preset `name` (e.g. "cbt_tiny") for `num_classes` at `image_size`.

    `overrides` replace `ModelConfig` fields (e.g. `patch_size=8, cells=(4, 4)`); `dtype` is the
    compute dtype (e.g. `jnp.bfloat16`), `param_dtype` the storage dtype.
    """
    config = get_config(name, **overrides)
    return VisionTransformer(config, num_classes=num_classes, image_size=image_size,
                             dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs if rngs is not None else nnx.Rngs(seed))


def decoder_config(decoder: str | DecoderConfig, encoder: str = "") -> DecoderConfig:
    """A `DecoderConfig`, or the `DECODER_PRESETS` entry `decoder`. A bare kind ("cbt",
    "softmax", "linear") takes the CPU-sized `<kind>_nano` widths for a nano or pico encoder and the
    reference's (2 blocks, 3 heads of 100, 10 x 10 cells) otherwise."""
    if isinstance(decoder, DecoderConfig):
        return decoder
    key = str(decoder).lower().replace("-", "_")
    if encoder.lower().endswith(CPU_SIZES) and f"{key}_nano" in DECODER_PRESETS:
        key = f"{key}_nano"
    if key not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder {decoder!r}; decoders are {sorted(DECODER_PRESETS)}")
    return DECODER_PRESETS[key]


def create_segmenter(name: str, *, num_classes: int, decoder: str | DecoderConfig = "cbt",
                     image_size=224, seed: int = 0, rngs: nnx.Rngs | None = None, dtype=None,
                     param_dtype=jnp.float32, decoder_overrides: dict | None = None,
                     **overrides) -> Segmenter:
    """A `Segmenter`: the encoder preset `name` (e.g. "cbt_tiny", "vit_nano") + a decoder
    (`decoder_config(decoder, name)`, e.g. "cbt", "softmax", "linear") for `num_classes`.

    `overrides` replace encoder `ModelConfig` fields, `decoder_overrides` `DecoderConfig`
    fields (e.g. `{"cells": (8, 8)}`). `image_size` sizes the encoder's position table; other
    sizes interpolate it.
    """
    rngs = rngs if rngs is not None else nnx.Rngs(seed)
    config = get_config(name, **overrides)
    dec = decoder_config(decoder, name)
    dec = dec.replace(**decoder_overrides) if decoder_overrides else dec
    # the encoder's classifier is unused; one class keeps it small
    encoder = VisionTransformer(config, num_classes=1, image_size=image_size, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
    return Segmenter(encoder, build_decoder(dec, dim=config.dim, num_classes=num_classes,
                                            dtype=dtype, param_dtype=param_dtype, rngs=rngs))
