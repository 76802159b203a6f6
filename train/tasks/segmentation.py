"""Semantic segmentation: the task (`config.task = "segmentation"`), its loss and its metrics.

The task trains a `cbsa_jax.models.Segmenter` (the encoder of `config.model` + the decoder of
`config.segmentation.decoder`) with per-pixel cross-entropy (float32, over the valid pixels; the
ignore value counts nowhere). Evaluation adds up the loss, the number of valid pixels and a
`[K, K]` confusion matrix over the eval split; `finalize` turns them into `loss`, `miou` (the
ranking metric), `pixel_accuracy` and `iou_<k>` per class. Batches: `image` float32
`[B, H, W, C]`, `segmentation` int32 `[B, H, W]` (eval adds `valid`).

The metrics are pure functions of arrays (jit-able, no TensorFlow):

- `confusion_matrix(labels, predictions, num_classes, ignore_index=...)`: `[K, K]` int32 counts,
  row = true class, column = predicted class, over the valid pixels (labels in [0, K); the ignore
  value and padding never count);
- `iou_per_class(confusion)`: intersection / union per class, NaN where a class occurs in neither
  the labels nor the predictions;
- `mean_iou(confusion)`: the mean of the per-class IoU over the classes that occur (union > 0), as
  mmsegmentation's `nanmean`;
- `pixel_accuracy(confusion)`: correct / valid pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cbsa_jax.models import Segmenter, VisionTransformer, decoder_config
from cbsa_jax.models.segmenter import build_decoder
from cbsa_jax.training import TaskDef
from train import config as config_lib

__all__ = ["IGNORE_INDEX", "confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy",
           "pixel_cross_entropy", "summarize", "segmentation", "segmentation_decoder_config"]

IGNORE_INDEX = 255  # ADE20K's "other" after the usual label shift; never a class


def confusion_matrix(labels, predictions, num_classes: int, *, ignore_index: int = IGNORE_INDEX,
                     weights=None) -> jax.Array:
    """`[K, K]` int32 counts of (true, predicted) pairs over the valid pixels.

    Args:
      labels: int `[...]` true classes; pixels outside [0, K) (e.g. `ignore_index`) are skipped.
      predictions: int `[...]` predicted classes in [0, K), same shape.
      num_classes: K.
      weights: optional 0/1 mask broadcastable to `labels` (e.g. `[B, 1, 1]` marking padded
        examples); zero entries are skipped.
    """
    labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels and predictions must have the same shape, got {labels.shape} "
                         f"and {predictions.shape}")
    k = int(num_classes)
    valid = (labels >= 0) & (labels < k) & (labels != ignore_index)
    if weights is not None:
        valid &= jnp.broadcast_to(jnp.asarray(weights) > 0, labels.shape)
    index = jnp.where(valid, k * labels.astype(jnp.int32) + predictions.astype(jnp.int32), k * k)
    # index k*k (an invalid pixel) lies outside [0, length) and is dropped by bincount
    return jnp.bincount(index.reshape(-1), length=k * k).astype(jnp.int32).reshape(k, k)


def _as_float(confusion):
    confusion = jnp.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [K, K] matrix, got shape {confusion.shape}")
    return confusion.astype(jnp.promote_types(confusion.dtype, jnp.float32))


def iou_per_class(confusion) -> jax.Array:
    """`[K]` intersection over union; NaN for a class absent from labels and predictions."""
    c = _as_float(confusion)
    inter = jnp.diagonal(c)
    union = c.sum(axis=0) + c.sum(axis=1) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), jnp.nan)


def mean_iou(confusion) -> jax.Array:
    """Mean IoU over the classes that occur (in the labels or the predictions); NaN if none."""
    iou = iou_per_class(confusion)
    present = ~jnp.isnan(iou)
    return jnp.where(present.any(), jnp.sum(jnp.where(present, iou, 0)) /
                     jnp.maximum(present.sum(), 1), jnp.nan)


def pixel_accuracy(confusion) -> jax.Array:
    """Correctly classified / valid pixels (NaN when there are none)."""
    c = _as_float(confusion)
    total = c.sum()
    return jnp.where(total > 0, jnp.trace(c) / jnp.where(total > 0, total, 1), jnp.nan)


def pixel_cross_entropy(logits, labels, *, ignore_index: int = IGNORE_INDEX, weights=None):
    """(sum of per-pixel cross-entropies, number of valid pixels), both float32.

    `logits [..., K]` (computed in float32 whatever their dtype), `labels [...]` int; pixels with
    a label outside [0, K) (the ignore value) contribute nothing; `weights` as in
    `confusion_matrix`.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    k = logits.shape[-1]
    valid = (labels >= 0) & (labels < k) & (labels != ignore_index)
    if weights is not None:
        valid &= jnp.broadcast_to(jnp.asarray(weights) > 0, labels.shape)
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid.astype(jnp.float32))


def summarize(confusion) -> dict[str, float | list[float | None]]:
    """`miou`, `pixel_accuracy` and `iou_per_class` (None for an absent class) of a host confusion
    matrix, in float64 (a whole split's counts may exceed float32's exact integers)."""
    c = np.asarray(confusion, np.float64)
    inter = np.diagonal(c)
    union = c.sum(axis=0) + c.sum(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    present = union > 0
    total = c.sum()
    return {"miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_accuracy": float(np.trace(c) / total) if total > 0 else float("nan"),
            "iou_per_class": [None if np.isnan(v) else float(v) for v in iou]}


# ----------------------------------------------------------------------------------------------
# the task


def segmentation_decoder_config(config: ml_collections.ConfigDict):
    """The `DecoderConfig` of `config.segmentation` (a nano encoder gets the nano widths)."""
    seg = config.segmentation
    dec = decoder_config(seg.decoder, config.model.name)
    return dec if dec.kind.value == "linear" else dec.replace(depth=seg.decoder_depth)


def segmentation(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
                 image_size: tuple[int, int], dtype) -> TaskDef:
    """The segmentation `TaskDef`: per-pixel cross-entropy; eval mIoU, pixel accuracy, IoUs."""
    model_config = config_lib.vision_model_config(config, channels=channels,
                                                  image_size=image_size)
    dec_config = segmentation_decoder_config(config)
    grid = model_config.grid_for(image_size, name="config.image_size")
    if dec_config.kind.value == "cbt" and (grid[0] < dec_config.cells[0]
                                           or grid[1] < dec_config.cells[1]):
        raise ValueError(f"config.image_size {tuple(image_size)} gives a {grid[0]}x{grid[1]} "
                         f"patch grid, fewer patches than the decoder's "
                         f"{dec_config.cells[0]}x{dec_config.cells[1]} representative cells")
    ignore = int(config.segmentation.ignore_index)
    k = int(num_classes)

    def build(rngs: nnx.Rngs) -> Segmenter:
        # the encoder's classifier is unused; one class keeps it small
        encoder = VisionTransformer(model_config, num_classes=1, image_size=image_size,
                                    dtype=dtype, rngs=rngs)
        decoder = build_decoder(dec_config, dim=model_config.dim, num_classes=k, dtype=dtype,
                                rngs=rngs)
        return Segmenter(encoder, decoder)

    def loss(model, batch, step):
        del step
        labels = batch["segmentation"]
        logits = model(batch["image"])
        total, pixels = pixel_cross_entropy(logits, labels, ignore_index=ignore)
        valid = (labels >= 0) & (labels < k) & (labels != ignore)
        hits = jnp.sum(((jnp.argmax(logits, -1) == labels) & valid).astype(jnp.float32))
        n = jnp.maximum(pixels, 1.0)
        return total / n, {"accuracy": hits / n}

    def eval_sums(model, batch):
        labels, weights = batch["segmentation"], batch["valid"][:, None, None]
        logits = model(batch["image"])
        total, pixels = pixel_cross_entropy(logits, labels, ignore_index=ignore, weights=weights)
        confusion = confusion_matrix(labels, jnp.argmax(logits, -1), k, ignore_index=ignore,
                                     weights=weights)
        return {"loss": total, "pixels": pixels, "confusion": confusion,
                "count": jnp.sum(batch["valid"])}

    def finalize(sums):
        pixels = float(sums["pixels"])
        s = summarize(sums["confusion"])
        out = {"loss": float(sums["loss"]) / max(pixels, 1.0), "miou": s["miou"],
               "pixel_accuracy": s["pixel_accuracy"], "pixels": pixels,
               "examples": float(sums["count"])}
        out.update({f"iou_{c}": float("nan") if v is None else v
                    for c, v in enumerate(s["iou_per_class"])})
        return out

    return TaskDef(build=build, loss=loss, eval_sums=eval_sums, finalize=finalize,
                   ranking="miou", train_keys=("image", "segmentation"),
                   eval_keys=("image", "segmentation"), progress="accuracy")
