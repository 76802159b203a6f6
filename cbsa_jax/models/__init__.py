"""Vision transformers (CBT, CRATE, ToST, softmax ViT) and the preset registry."""

from cbsa_jax.models.config import AttentionKind, FFNKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.models.presets import PRESETS, create, get_config
from cbsa_jax.models.vit import ConvPatchEmbed, LinearPatchEmbed, VisionTransformer

__all__ = [
    "PRESETS",
    "AttentionKind",
    "ConvPatchEmbed",
    "FFNKind",
    "LinearPatchEmbed",
    "ModelConfig",
    "PatchEmbedKind",
    "Pool",
    "VisionTransformer",
    "create",
    "get_config",
]
