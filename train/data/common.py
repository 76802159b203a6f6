"""What both input pipelines share: the errors, the dataset's facts for a task, the per-process
shard plan, normalisation constants, the class-map check and host rows -> global arrays.

Plain numpy and JAX; imports no TensorFlow (the TFDS pipeline imports this, not the reverse).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

__all__ = ["DataError", "DataSpec", "Input", "Features", "task_facts", "make_spec",
           "check_class_map", "mean_std", "normalize", "device_batch", "image_size"]


class DataError(ValueError):
    """A dataset that cannot be found or read; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the training program needs to know about a dataset, for this process.

    The data are split into `shard_count` shards (`config.data_shards`, default one per
    process); each process reads its `shards` and concatenates their batches in shard order, so
    the global batch is the same whatever the number of processes that read it.
    """

    name: str
    num_classes: int  # classes (classification, per-pixel classes) or vocabulary (language)
    channels: int  # image channels (0 for language)
    image_size: tuple[int, ...]  # (H, W); for language (sequence length + 1,)
    shards: tuple[int, ...]  # the shards this process reads
    # what every shard reads: a TFDS split string (config.input = "tfds") or a (start, stop)
    # row range of the split's arrays (config.input = "memory")
    train_splits: tuple
    eval_splits: tuple
    train_examples: tuple[int, ...]  # per shard
    eval_examples: tuple[int, ...]
    shard_batch: int  # examples of one shard in a global batch
    shard_eval_batch: int

    @property
    def local_batch(self) -> int:
        return self.shard_batch * len(self.shards)

    @property
    def local_eval_batch(self) -> int:
        return self.shard_eval_batch * len(self.shards)

    @property
    def steps_per_epoch(self) -> int:
        """Equal on every process: the smallest shard decides (drop remainder)."""
        return min(self.train_examples) // self.shard_batch

    @property
    def eval_steps(self) -> int:
        return math.ceil(max(self.eval_examples) / self.shard_eval_batch)


class Input(Protocol):
    """An opened dataset (`train.data.open_input`): the same calls for both pipelines.

    Batches hold the keys asked for (the eval ones also `valid`, float32, 0 on padding); with
    a `sharding` they are global `jax.Array`s of it, built from this process's rows, else
    arrays of this process's rows (numpy or on the default device).
    """

    @property
    def spec(self) -> DataSpec: ...

    @property
    def features(self) -> tuple[str, ...]:
        """The names of the stored features (e.g. `mask` for the attention-map scores)."""

    def train_batches(self, keys: Sequence[str], sharding=None, *,
                      start_step: int) -> Iterator[dict]:
        """Every training batch from step `start_step` on, forever; a pure function of
        (`config.seed`, step), so a resumed run sees the batches of one that never stopped."""

    def eval_batches(self, keys: Sequence[str], sharding=None) -> Iterator[dict]:
        """`spec.eval_steps` batches holding every example of the eval split once."""

    def examples(self, split: str, keys: Sequence[str], *, batch_size: int,
                 limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The stored features of `split` (its first `limit` examples), unprocessed: numpy
        batches in the stored order and size (images uint8 at their stored resolution)."""


#: A dataset's features for `task_facts`: name -> (shape of one example, number of classes of
#: a class label or None).
Features = Mapping[str, tuple[tuple, int | None]]


def image_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """`config.image_size` as (H, W)."""
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _require(features: Features, config, *keys: str) -> None:
    missing = [k for k in keys if k not in features]
    if missing:
        raise DataError(f"config.dataset: {config.dataset!r} has no {missing} feature(s), which "
                        f"task {config.task!r} reads (features: {list(features.keys())})")


def task_facts(features: Features, config: ml_collections.ConfigDict
               ) -> tuple[int, int, tuple[int, ...]]:
    """(num_classes, channels, example size) of a dataset with `features` for `config.task`."""
    size = image_size(config)
    if config.task == "classification":
        _require(features, config, "image", "label")
        if features["label"][1] is None:
            raise DataError(f"config.dataset: the 'label' of {config.dataset!r} is not a class "
                            f"label (no number of classes)")
        return int(features["label"][1]), int(features["image"][0][-1]), size
    if config.task == "segmentation":
        seg = config.segmentation
        _require(features, config, "image", seg.label_key)
        classes = seg.num_classes
        if not classes:
            if "label" not in features or features["label"][1] is None:
                raise DataError(f"config.segmentation.num_classes: {config.dataset!r} has no "
                                f"'label' ClassLabel to count classes from; set it")
            classes = int(features["label"][1]) + 1  # + background (0)
        return int(classes), int(features["image"][0][-1]), size
    lang = config.language
    _require(features, config, lang.tokens_key)
    shape = tuple(features[lang.tokens_key][0])
    if len(shape) != 1 or shape[0] is None or shape[0] < 2:
        raise DataError(f"config.language.tokens_key: {lang.tokens_key!r} must be a fixed-length "
                        f"1-D sequence of at least 2 tokens, got shape {shape}")
    return int(lang.vocab_size), 0, shape


SplitPlan = Callable[[str, int], tuple[tuple[int, ...], list]]


def make_spec(config: ml_collections.ConfigDict, features: Features, split_plan: SplitPlan, *,
              process_index: int, process_count: int) -> DataSpec:
    """The `DataSpec` of a dataset with `features` for this process. `split_plan(split, count)`
    gives (examples per shard, what each shard reads) of `split` cut into `count` shards."""
    num_classes, channels, size = task_facts(features, config)
    shard_count = config.data_shards or process_count
    if shard_count % process_count:
        raise DataError(f"config.data_shards {shard_count} is not divisible by the "
                        f"{process_count} processes")
    eval_batch = config.eval_batch_size or config.batch_size
    for name, value in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch)):
        if value % shard_count:
            raise DataError(f"config.{name} {value} is not divisible by the {shard_count} data "
                            f"shards (config.data_shards, default: one per process)")
    train_sizes, train_splits = split_plan(config.train_split, shard_count)
    eval_sizes, eval_splits = split_plan(config.eval_split, shard_count)
    shard_batch = config.batch_size // shard_count
    if min(train_sizes) < shard_batch:
        raise DataError(f"config.batch_size {config.batch_size} exceeds the training split "
                        f"({sum(train_sizes)} examples in {shard_count} shards)")
    per_process = shard_count // process_count
    return DataSpec(
        name=config.dataset, num_classes=num_classes, channels=channels, image_size=size,
        shards=tuple(range(process_index * per_process, (process_index + 1) * per_process)),
        train_splits=tuple(train_splits), eval_splits=tuple(eval_splits),
        train_examples=train_sizes, eval_examples=eval_sizes, shard_batch=shard_batch,
        shard_eval_batch=eval_batch // shard_count)


def check_class_map(labels: np.ndarray, config: ml_collections.ConfigDict,
                    num_classes: int) -> None:
    """Raise DataError when a class map holds a label >= the number of classes (or < 0) other
    than the ignore value: such a pixel would silently count nowhere."""
    ignore = config.segmentation.ignore_index
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore)
    if bad.any():
        values = sorted(set(np.unique(labels[bad]).tolist()))
        raise DataError(f"config.segmentation: {config.dataset!r} has per-pixel labels "
                        f"{values[:10]} outside [0, {num_classes}) that are not the ignore "
                        f"value {ignore} (set config.segmentation.num_classes, ignore_index or "
                        f"reduce_zero_label)")


def mean_std(config: ml_collections.ConfigDict, channels: int
             ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`config.mean` and `config.std` per channel (one value serves every channel)."""
    mean = list(config.mean) * channels if len(config.mean) == 1 else list(config.mean)
    std = list(config.std) * channels if len(config.std) == 1 else list(config.std)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def normalize(images, config: ml_collections.ConfigDict) -> jax.Array:
    """`(images / 255 - config.mean) / config.std` per channel: the model's input, float32, for
    images `[..., H, W, C]` (uint8, or float in 0..255)."""
    mean, std = mean_std(config, images.shape[-1])
    pixels = jnp.asarray(images, jnp.float32)
    return (pixels / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def device_batch(batch: Mapping[str, np.ndarray], keys: Sequence[str],
                 sharding) -> dict[str, jax.Array]:
    """The global arrays of `keys` of `sharding` from this process's rows of a batch."""
    return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keys}
