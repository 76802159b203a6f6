"""The official PyTorch CBSA / CRATE / ToST checkpoints, and the CBT segmentation decoder.

    from cbsa_jax.convert import cbt_from_torch
    model = cbt_from_torch("cbt_tiny.pth", image_size=224, patch_size=16, num_classes=1000,
                           dim=192, depth=12, heads=3, dim_head=64)
    logits = model(images_nhwc)

`state_dict` is a mapping from PyTorch key to numpy array, or a `.pth` / `.pth.tar` path (read by
`cbsa_jax.convert.formats.load_torch_state_dict`, torch not needed).

Converted models reproduce the reference's token selection for grid pooling by default
(`Selection.REFERENCE`, see `cbsa_jax.representatives.Selection`), so they give the reference's
logits; pass `selection="patches"` to pool the true patch tokens instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from cbsa_jax.convert.formats import load_torch_state_dict
from cbsa_jax.convert.mapping import IDENTITY, Transform, assign
from cbsa_jax.models.config import AttentionKind, ModelConfig
from cbsa_jax.models.segmenter import MaskTransformerDecoder
from cbsa_jax.models.vit import VisionTransformer, conv_widths
from cbsa_jax.representatives import Selection

__all__ = ["torch_key_map", "reference_from_torch", "cbt_from_torch", "cbt_decoder_key_map",
           "cbt_decoder_from_torch", "CBT_DECODER_CELLS"]

def torch_key_map(config: ModelConfig) -> dict[str, tuple[tuple, Transform]]:
    """PyTorch key -> (path in `nnx.state(model)`, transform) for the reference ViT of `config`."""
    d, h, p = config.dim, config.heads, config.dim_head
    if config.patch_embed.value != "conv":
        raise ValueError("reference checkpoints use patch_embed='conv'")
    heads_in: Transform = lambda w: w.T.reshape(d, h, p)  # noqa: E731  [H*p, D] -> U [D, H, p]
    heads_out: Transform = lambda w: w.T.reshape(h, p, d)  # noqa: E731  [D, H*p] -> [H, p, D]
    per_head: Transform = lambda v: v.reshape(h)  # noqa: E731
    keys: dict[str, tuple[tuple, Transform]] = {
        "cls_token": (("cls_token",), IDENTITY),
        "pos_embedding": (("pos_embedding",), IDENTITY),
        "mlp_head.0.weight": (("head_norm", "scale"), IDENTITY),
        "mlp_head.0.bias": (("head_norm", "bias"), IDENTITY),
        "mlp_head.1.weight": (("head_kernel",), lambda w: w.T),
        "mlp_head.1.bias": (("head_bias",), IDENTITY),
    }
    n_convs = len(conv_widths(config.dim, config.patch_size))
    for i in range(n_convs):
        base = f"to_patch_embedding.proj.{2 * i}"
        keys[f"{base}.0.weight"] = (("patch_embed", "convs", i, "kernel"),
                                    lambda w: w.transpose(2, 3, 1, 0))
        for src, dst in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
                         ("running_var", "var")):
            keys[f"{base}.1.{src}"] = (("patch_embed", "norms", i, dst), IDENTITY)
    attn_in = {"cbsa": "proj", "mssa": "qkv", "tssa": "qkv"}[config.attention.value]
    for layer in range(config.depth):
        src, dst = f"transformer.layers.{layer}", ("blocks", layer)
        for j, norm in ((0, "norm1"), (1, "norm2")):
            keys[f"{src}.{j}.norm.weight"] = ((*dst, norm, "scale"), IDENTITY)
            keys[f"{src}.{j}.norm.bias"] = ((*dst, norm, "bias"), IDENTITY)
        keys[f"{src}.0.fn.{attn_in}.weight"] = ((*dst, "attn", "proj", 0), heads_in)
        keys[f"{src}.0.fn.to_out.weight"] = ((*dst, "attn", "out_kernel"), heads_out)
        keys[f"{src}.0.fn.to_out.bias"] = ((*dst, "attn", "out_bias"), IDENTITY)
        if config.attention is AttentionKind.CBSA:
            keys[f"{src}.0.fn.step_x"] = ((*dst, "attn", "step_x"), per_head)
            keys[f"{src}.0.fn.step_rep"] = ((*dst, "attn", "step_rep"), per_head)
        elif config.attention is AttentionKind.TSSA:
            keys[f"{src}.0.fn.temp"] = ((*dst, "attn", "temp"), per_head)
        keys[f"{src}.1.fn.weight"] = ((*dst, "ffn", "weight"), IDENTITY)
    return keys


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


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

CBT_DECODER_CELLS = (10, 10)  # the reference's blocks hard-code 10 x 10 representatives
_CBT_DECODER_DEFAULTS = {"num_classes": 150, "heads": 3, "dim_head": 100}  # its other constants


def cbt_decoder_key_map(*, depth: int, heads: int, dim_head: int, dim: int
                        ) -> dict[str, tuple[tuple, Transform]]:
    """PyTorch key -> (path in `nnx.state(decoder)`, transform) for the reference decoder."""
    heads_in: Transform = lambda w: w.T.reshape(dim, heads, dim_head)  # noqa: E731
    heads_out: Transform = lambda w: w.T.reshape(heads, dim_head, dim)  # noqa: E731
    per_head: Transform = lambda v: v.reshape(heads)  # noqa: E731  [H, 1, 1] -> [H]
    keys: dict[str, tuple[tuple, Transform]] = {"cls_emb": (("class_embedding",), IDENTITY)}
    for norm, dst in (("decoder_norm", "norm"), ("mask_norm", "mask_norm")):
        keys[f"{norm}.weight"] = ((dst, "scale"), IDENTITY)
        keys[f"{norm}.bias"] = ((dst, "bias"), IDENTITY)
    for layer in range(depth):
        src, dst = f"net.layers.{layer}", ("blocks", layer)
        keys[f"{src}.norm.weight"] = ((*dst, "norm", "scale"), IDENTITY)
        keys[f"{src}.norm.bias"] = ((*dst, "norm", "bias"), IDENTITY)
        keys[f"{src}.fn.proj.weight"] = ((*dst, "attn", "proj", 0), heads_in)
        keys[f"{src}.fn.to_out.weight"] = ((*dst, "attn", "out_kernel"), heads_out)
        keys[f"{src}.fn.to_out.bias"] = ((*dst, "attn", "out_bias"), IDENTITY)
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
    weights = load_torch_state_dict(state_dict)
    s = _decoder_sizes(weights)
    key_map = cbt_decoder_key_map(depth=s["depth"], heads=s["heads"], dim_head=s["dim_head"],
                                  dim=s["dim"])
    return assign(lambda: MaskTransformerDecoder(
        s["dim"], s["num_classes"], depth=s["depth"], heads=s["heads"], dim_head=s["dim_head"],
        attention="cbsa", cells=tuple(cells), dtype=dtype, param_dtype=param_dtype,
        rngs=nnx.Rngs(0)), weights, key_map)
