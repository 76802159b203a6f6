"""Vision transformers (CBT, CRATE, ToST, softmax ViT) and the preset registry."""

from cbsa_jax.models.config import AttentionKind, FFNKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.models.presets import (
    PRESETS,
    create,
    create_segmenter,
    decoder_config,
    get_config,
)
from cbsa_jax.models.segmenter import (
    DECODER_PRESETS,
    DecoderConfig,
    DecoderKind,
    LinearDecoder,
    MaskTransformerDecoder,
    Segmenter,
)
from cbsa_jax.models.vit import ConvPatchEmbed, LinearPatchEmbed, VisionTransformer

__all__ = [
    "DECODER_PRESETS",
    "PRESETS",
    "DecoderConfig",
    "DecoderKind",
    "LinearDecoder",
    "MaskTransformerDecoder",
    "Segmenter",
    "create_segmenter",
    "decoder_config",
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
