"""Image classification (`config.task = "classification"`): `cbsa_jax.training.classification`
configured from the run's config (label smoothing, mixup, seed) for its vision model.

Batches: `image` float32 `[B, H, W, C]`, `label` int32 `[B]` (eval adds `valid`).
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from cbsa_jax import training
from cbsa_jax.models import VisionTransformer
from cbsa_jax.training import TaskDef
from train import config as config_lib

__all__ = ["classification"]


def classification(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
                   image_size: tuple[int, int], dtype) -> TaskDef:
    """The classification `TaskDef` of `config.model` for `channels`-channel images of
    `image_size`: softmax cross-entropy (label smoothing, batch mixup); eval top-1 / top-5."""
    model_config = config_lib.vision_model_config(config, channels=channels,
                                                  image_size=image_size)

    def build(rngs: nnx.Rngs) -> VisionTransformer:
        return VisionTransformer(model_config, num_classes=num_classes, image_size=image_size,
                                 dtype=dtype, rngs=rngs)

    return training.classification(build, num_classes=num_classes,
                                   label_smoothing=float(config.label_smoothing),
                                   mixup_alpha=float(config.mixup_alpha), seed=int(config.seed))
