"""Image classification (`config.task = "classification"`): softmax cross-entropy with label
smoothing and batch mixup; evaluation adds up the loss, top-1 and top-5 hits.

Batches: `image` float32 `[B, H, W, C]`, `label` int32 `[B]` (eval adds `valid`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from cbsa_jax.models import VisionTransformer
from train import config as config_lib
from train.steps import TaskDef

__all__ = ["classification"]




def _targets(labels, num_classes: int, smoothing: float):
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(onehot, smoothing) if smoothing else onehot


def classification(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
                   image_size: tuple[int, int], dtype) -> TaskDef:
    """Image classification: softmax cross-entropy (label smoothing, batch mixup); eval top-1/5.

    Batches: `image` float32 [B, H, W, C], `label` int32 [B].
    """
    model_config = config_lib.vision_model_config(config, channels=channels,
                                                  image_size=image_size)
    mixup = float(config.mixup_alpha)
    smoothing = float(config.label_smoothing)

    def build(rngs: nnx.Rngs) -> VisionTransformer:
        return VisionTransformer(model_config, num_classes=num_classes, image_size=image_size,
                                 dtype=dtype, rngs=rngs)

    def loss(model, batch, step):
        images, labels = batch["image"], batch["label"]
        targets = _targets(labels, num_classes, smoothing)
        if mixup:  # mix each example with its mirror in the batch (as timm's 'batch' mode)
            key = jax.random.fold_in(jax.random.key(config.seed), step)
            lam = jax.random.beta(key, mixup, mixup)
            images = lam * images + (1 - lam) * images[::-1]
            targets = lam * targets + (1 - lam) * targets[::-1]
        logits = model(images)
        value = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return value, {"accuracy": accuracy}

    def eval_sums(model, batch):
        labels, valid = batch["label"], batch["valid"]
        logits = model(batch["image"]).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        _, top = jax.lax.top_k(logits, min(5, num_classes))
        hit1 = (top[:, 0] == labels).astype(jnp.float32)
        hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
        return {"loss": jnp.sum(losses * valid), "top1": jnp.sum(hit1 * valid),
                "top5": jnp.sum(hit5 * valid), "count": jnp.sum(valid)}

    def finalize(sums):
        n = max(float(sums["count"]), 1.0)
        return {"loss": float(sums["loss"]) / n, "accuracy": float(sums["top1"]) / n,
                "top5": float(sums["top5"]) / n, "examples": float(sums["count"])}

    return TaskDef(build=build, loss=loss, eval_sums=eval_sums, finalize=finalize,
                   ranking="accuracy", train_keys=("image", "label"),
                   eval_keys=("image", "label"), progress="accuracy")
