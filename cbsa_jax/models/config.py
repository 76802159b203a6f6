"""The typed description of a vision transformer, validated when it is made."""

from __future__ import annotations

import dataclasses
import enum

from cbsa_jax.representatives import Selection

__all__ = ["AttentionKind", "FFNKind", "PatchEmbedKind", "Pool", "ModelConfig"]


class AttentionKind(enum.Enum):
    CBSA = "cbsa"  # the reference CBSA layer (softmax contraction, S^T broadcast)
    CBSA_EXACT = "cbsa_exact"  # exact contraction and broadcast, learned step sizes
    MSSA = "mssa"  # CRATE
    TSSA = "tssa"  # ToST
    SOFTMAX = "softmax"  # standard multi-head attention, separate q, k, v
    LINEAR = "linear"  # first-order CBSA with all tokens: tied linear attention
    CHANNEL = "channel"  # cross-covariance attention
    AGENT = "agent"  # agent attention with separate q, k, v


class FFNKind(enum.Enum):
    ISTA = "ista"  # CRATE's sparsification step, no residual
    MLP = "mlp"  # ViT MLP with residual


class PatchEmbedKind(enum.Enum):
    CONV = "conv"  # the reference's conv3x3-stride-2 + BatchNorm stem (patch 8 or 16)
    LINEAR = "linear"  # CRATE's LayerNorm -> Dense -> LayerNorm on flattened patches
    PROJECTION = "projection"  # ViT's (timm's) Dense on flattened patches, no LayerNorm


class Pool(enum.Enum):
    CLS = "cls"
    MEAN = "mean"  # mean of all tokens, cls included
    PATCH_MEAN = "patch_mean"  # mean of the patch tokens (timm's global_pool="avg")


_ENUMS = {"attention": AttentionKind, "ffn": FFNKind, "patch_embed": PatchEmbedKind,
          "pool": Pool, "selection": Selection, "other_attention": AttentionKind}


def coerce_enums(config, enums: dict) -> None:
    """Turn the enum fields of a frozen dataclass into their enums (strings are accepted); a bad
    value raises ValueError naming the field and the allowed values."""
    for name, kind in enums.items():
        value = getattr(config, name)
        try:
            object.__setattr__(config, name, kind(value))
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in kind)
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def check_positive_ints(config, names) -> None:
    """ValueError naming the first field of `names` that is not a positive integer."""
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def checked_replace(config, what: str, **changes):
    """`dataclasses.replace(config, **changes)` (validated again by its `__post_init__`); an
    unknown field raises ValueError naming it and listing the fields of the `what` config."""
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} config fields {unknown}; fields are {fields}")
    return dataclasses.replace(config, **changes)


def lookup(presets: dict, name: str, what: str, **overrides):
    """`presets[name]` (case and '-' / '_' insensitive) with `overrides` applied through its
    validating `replace`; an unknown name raises ValueError listing the presets."""
    key = name.lower().replace("-", "_")
    if key not in presets:
        raise ValueError(f"unknown {what} {name!r}; presets are {sorted(presets)}")
    return presets[key].replace(**overrides) if overrides else presets[key]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a vision transformer. Strings are accepted for the enum fields.

    Attributes:
      attention, ffn: the block's layers.
      dim, depth, heads, dim_head: width D, number of blocks, heads H, head width p.
      patch_size, patch_embed, channels: the patch embedding.
      patch_norm: LayerNorm over each flattened patch before the linear embedding (CRATE's); turn
        it off for tiny patches, where it erases each patch's mean intensity.
      cells: (rh, rw) grid-pooling cells of CBSA / agent attention (m = rh * rw).
      selection: which tokens pooling reads (`Selection.REFERENCE` for converted checkpoints).
      eps: distortion of the exact and first-order contractions.
      mlp_ratio: hidden width of the ViT MLP, in units of dim.
      pool: cls token or token mean before the head.
      qkv_bias: biases on the q, k, v projections of softmax and agent attention (timm's ViTs).
      norm_eps: epsilon of every LayerNorm of the blocks and the head (timm's ViTs: 1e-6).
      attention_blocks: how many leading blocks use `attention`; the others use
        `other_attention` (None: every block). A pretrained softmax ViT adapted in its first k
        blocks is `attention="agent", attention_blocks=k`.
    """

    attention: AttentionKind
    dim: int
    depth: int
    heads: int
    dim_head: int = 64
    ffn: FFNKind = FFNKind.ISTA
    patch_size: int = 16
    patch_embed: PatchEmbedKind = PatchEmbedKind.CONV
    channels: int = 3
    patch_norm: bool = True
    cells: tuple[int, int] = (8, 8)
    selection: Selection = Selection.PATCHES
    eps: float = 1.0
    mlp_ratio: float = 4.0
    pool: Pool = Pool.CLS
    qkv_bias: bool = False
    norm_eps: float = 1e-5
    attention_blocks: int | None = None
    other_attention: AttentionKind = AttentionKind.SOFTMAX

    def __post_init__(self):
        coerce_enums(self, _ENUMS)
        check_positive_ints(self, ("dim", "depth", "heads", "dim_head", "patch_size", "channels"))
        cells = tuple(self.cells) if isinstance(self.cells, list | tuple) else self.cells
        if not (isinstance(cells, tuple) and len(cells) == 2
                and all(isinstance(c, int) and c >= 1 for c in cells)):
            raise ValueError(f"cells must be a pair of positive integers, got {self.cells!r}")
        object.__setattr__(self, "cells", cells)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be a bool, got {self.qkv_bias!r}")
        if not (isinstance(self.norm_eps, int | float) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        k = self.attention_blocks
        if k is not None and not (isinstance(k, int) and not isinstance(k, bool)
                                  and 0 <= k <= self.depth):
            raise ValueError(f"attention_blocks must be None or an integer in [0, depth = "
                             f"{self.depth}], got {k!r}")
        conv_ok = self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0
        if self.patch_embed is PatchEmbedKind.CONV and not conv_ok:
            raise ValueError(f"patch_size must be a power of two >= 2 with patch_embed='conv', "
                             f"got {self.patch_size}; use patch_embed='linear' for other sizes")

    def block_attention(self, index: int) -> AttentionKind:
        """The attention of block `index` (0-based)."""
        if self.attention_blocks is None or index < self.attention_blocks:
            return self.attention
        return self.other_attention

    @property
    def pools_tokens(self) -> bool:
        kinds = {self.block_attention(i) for i in range(self.depth)}
        return bool(kinds & {AttentionKind.CBSA, AttentionKind.CBSA_EXACT, AttentionKind.AGENT})

    def replace(self, **changes) -> ModelConfig:
        return checked_replace(self, "model", **changes)

    def grid_for(self, image_size, *, name: str = "image_size") -> tuple[int, int]:
        """The patch grid (gh, gw) for an image of (height, width); validates divisibility and
        that the grid has at least as many patches as representative cells."""
        h, w = image_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"{name} (height, width) = ({h}, {w}) must be divisible by the "
                             f"patch size {p}")
        grid = (h // p, w // p)
        if self.pools_tokens and (grid[0] < self.cells[0] or grid[1] < self.cells[1]):
            raise ValueError(
                f"{name} ({h}, {w}) gives a {grid[0]}x{grid[1]} patch grid, too few tokens for "
                f"the {self.cells[0]}x{self.cells[1]} representatives (cells); use larger "
                f"images, a smaller patch_size or fewer cells")
        return grid
