"""Vision transformers (CBT, CRATE, ToST, softmax ViT) and the preset registry; decoder-only
language models (`cbsa_jax.models.lm`: causal CBSA, softmax, linear) and their presets."""

from cbsa_jax.models.config import AttentionKind, FFNKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.models.lm import LM_PRESETS, LanguageModel, LMConfig, create_lm, get_lm_config
from cbsa_jax.models.presets import (
    CPU_SIZES,
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
    "LM_PRESETS",
    "LMConfig",
    "LanguageModel",
    "create_lm",
    "get_lm_config",
    "PRESETS",
    "CPU_SIZES",
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
