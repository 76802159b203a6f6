"""The TFDS input (`config.input = "tfds"`): TFDS + tf.data, per-process splits, exact
resumption. Imports TensorFlow; `train.data.open_input` imports this module only for this input.

Training batches are a pure function of (seed, epoch, position): every epoch reshuffles with its
own seed and every example's augmentation draws from a stateless seed folded from its position,
so resuming at step s rebuilds the epoch and skips the batches already seen; nothing about the
iterator needs saving beyond the step. Evaluation reads each process's share of the split once,
pads every process to the same number of batches and marks padding with `valid = 0`, so no example
is dropped or counted twice. What a batch holds depends on `config.task` (see `train_batches`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train import augment
from train.data.common import (
    DataError,
    DataSpec,
    Features,
    check_class_map,
    device_batch,
    make_spec,
    mean_std,
)
from train.datasets import builders as local_datasets

__all__ = ["TFDSInput", "load_builder", "data_spec", "train_batches", "eval_batches",
           "normalize"]

tf.config.set_visible_devices([], "GPU")  # the input pipeline never takes accelerator memory


def load_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared builder of `config.dataset` (local builders are generated offline)."""
    name = config.dataset
    if name.split("/")[0].split(":")[0] in local_datasets.LOCAL_BUILDERS:
        try:
            return local_datasets.prepare(name, config.data_dir)
        except (OSError, tf.errors.OpError) as e:
            raise DataError(f"config.data_dir: cannot prepare {name!r} in {config.data_dir}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    try:
        builder = tfds.builder(name, data_dir=config.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"config.dataset: unknown dataset {name!r} (not a local builder "
                        f"{local_datasets.LOCAL_BUILDERS} nor a TFDS dataset)") from None
    if not builder.is_prepared():
        download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir,
                                                       try_download_gcs=False)
        try:
            builder.download_and_prepare(download_config=download_config)
        except Exception as e:  # missing manual files, no network, ...
            raise DataError(f"config.dataset: cannot prepare {name!r} in "
                            f"{config.data_dir or '~/tensorflow_datasets'}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return builder


def _split_sizes(builder, split: str, count: int) -> tuple[tuple[int, ...], list]:
    shares = [tfds.split_for_jax_process(split, process_index=i, process_count=count)
              for i in range(count)]
    try:
        sizes = tuple(int(builder.info.splits[s].num_examples) for s in shares)
    except (KeyError, ValueError, TypeError):
        sizes = ()
    if not sizes or not all(sizes):  # no split metadata (e.g. tfds.testing.mock_data): count
        sizes = tuple(int(builder.as_dataset(split=s).reduce(0, lambda n, _: n + 1))
                      for s in shares)
    return sizes, shares


def _features(builder) -> Features:
    """(shape, classes) of every feature of `builder`, for `common.task_facts`."""
    return {name: (tuple(getattr(feature, "shape", ())), getattr(feature, "num_classes", None))
            for name, feature in builder.info.features.items()}


def data_spec(builder, config: ml_collections.ConfigDict, *, process_index: int,
              process_count: int) -> DataSpec:
    """Sizes, classes and channels of the dataset, and this process's shards and batches."""
    for split in (config.train_split, config.eval_split):
        if builder.info.splits and split.split("[")[0] not in builder.info.splits:
            raise DataError(f"config: split {split!r} is not in {config.dataset!r} (splits: "
                            f"{list(builder.info.splits.keys())})")
    return make_spec(config, _features(builder), functools.partial(_split_sizes, builder),
                     process_index=process_index, process_count=process_count)


def normalize(image, config) -> tf.Tensor:
    """`(image / 255 - config.mean) / config.std` per channel (one value serves every channel):
    the model's input, float32, for an image or a batch (uint8 or float in 0..255)."""
    return augment.to_float(image, *mean_std(config, image.shape[-1]))


def _resize_to(image, size):
    if tuple(image.shape[:2]) == tuple(size):
        return tf.cast(image, tf.float32)
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")


def _class_map(example, config) -> tf.Tensor:
    """The per-pixel class map `[H, W, 1]` as float32 (exact small integers), with ADE-style
    `reduce_zero_label` (0 -> ignore, k -> k - 1) applied."""
    seg = config.segmentation
    labels = tf.cast(example[seg.label_key], tf.float32)
    if labels.shape.rank == 2:
        labels = labels[..., None]
    labels = labels[..., :1]  # a class map stored as an RGB image (scene_parse150) repeats it
    if seg.reduce_zero_label:
        labels = tf.where(labels == 0, float(seg.ignore_index), labels - 1)
    return labels


def _resize_labels(labels, size):
    if tuple(labels.shape[:2]) == tuple(size):
        return labels
    return tf.image.resize(labels, size, method="nearest")


def _train_map(config, spec: DataSpec):
    size = spec.image_size

    @tf.autograph.experimental.do_not_convert  # plain TF ops: skip autograph's slow rewrite
    def classification(seed, example):
        image = example["image"]
        seeds = tf.random.experimental.stateless_split(seed, 3)
        if config.augment == "crop_flip":
            image = augment.random_resized_crop(image, seeds[0], size=size,
                                                scale=tuple(config.crop_scale))
            image = augment.random_flip(image, seeds[1])
        else:
            image = _resize_to(image, size)
            if config.augment == "flip":
                image = augment.random_flip(image, seeds[1])
            elif config.augment == "translate":
                image = augment.random_translate(image, seeds[1], max_shift=config.translate)
        if config.randaugment_layers:
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            image = augment.rand_augment(image, seeds[2], num_layers=config.randaugment_layers,
                                         magnitude=config.randaugment_magnitude)
        image = tf.ensure_shape(normalize(image, config), (*size, spec.channels))
        return {"image": image, "label": tf.cast(example["label"], tf.int32)}

    @tf.autograph.experimental.do_not_convert
    def segmentation(seed, example):
        # image and class map move together: one flip decision for both channels stacks
        image = _resize_to(example["image"], size)
        labels = _resize_labels(_class_map(example, config), size)
        if config.augment == "flip":
            both = augment.random_flip(tf.concat([image, labels], axis=-1), seed)
            image, labels = both[..., :-1], both[..., -1:]
        image = tf.ensure_shape(normalize(image, config), (*size, spec.channels))
        return {"image": image, "segmentation": tf.cast(labels[..., 0], tf.int32)}

    @tf.autograph.experimental.do_not_convert
    def language(seed, example):
        del seed
        return {"tokens": tf.cast(example[config.language.tokens_key], tf.int32)}

    return {"classification": classification, "segmentation": segmentation,
            "language": language}[config.task]


def _eval_map(config, spec: DataSpec):
    size = spec.image_size

    @tf.autograph.experimental.do_not_convert
    def classification(example):
        image = example["image"]
        if config.eval_crop_fraction < 1:
            image = augment.center_resize_crop(image, size=size,
                                               crop_fraction=config.eval_crop_fraction)
        else:
            image = _resize_to(image, size)
        image = tf.ensure_shape(normalize(image, config), (*size, spec.channels))
        return {"image": image, "label": tf.cast(example["label"], tf.int32),
                "valid": tf.constant(1.0, tf.float32)}

    @tf.autograph.experimental.do_not_convert
    def segmentation(example):
        image = tf.ensure_shape(normalize(_resize_to(example["image"], size), config),
                                (*size, spec.channels))
        labels = _resize_labels(_class_map(example, config), size)
        return {"image": image, "segmentation": tf.cast(labels[..., 0], tf.int32),
                "valid": tf.constant(1.0, tf.float32)}

    @tf.autograph.experimental.do_not_convert
    def language(example):
        return {"tokens": tf.cast(example[config.language.tokens_key], tf.int32),
                "valid": tf.constant(1.0, tf.float32)}

    return {"classification": classification, "segmentation": segmentation,
            "language": language}[config.task]


def _blank(config, spec: DataSpec) -> dict[str, tf.Tensor]:
    """One padding example of the eval batches (`valid` = 0)."""
    if config.task == "language":
        out = {"tokens": tf.zeros(spec.image_size, tf.int32)}
    else:
        out = {"image": tf.zeros((*spec.image_size, spec.channels), tf.float32)}
        if config.task == "classification":
            out["label"] = tf.constant(0, tf.int32)
        else:
            out["segmentation"] = tf.fill(spec.image_size, config.segmentation.ignore_index)
    return {**out, "valid": tf.constant(0.0, tf.float32)}


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


def _epoch(builder, config, spec: DataSpec, epoch: int, shard: int) -> tf.data.Dataset:
    n = spec.steps_per_epoch * spec.shard_batch
    epoch_seed = [config.seed, epoch * 65_536 + shard]
    shuffle_seed = (config.seed * 1_000_003 + epoch * 7_919 + shard) % 2**31
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = builder.as_dataset(split=spec.train_splits[shard], shuffle_files=True,
                            read_config=read_config)
    ds = ds.shuffle(min(config.shuffle_buffer, max(spec.train_examples)), seed=shuffle_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(n).enumerate()
    fn = _train_map(config, spec)
    ds = ds.map(lambda i, ex: fn(tf.random.experimental.stateless_fold_in(
        tf.constant(epoch_seed, tf.int64), i), ex), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(spec.shard_batch, drop_remainder=True)


def _check_class_map(batch: dict, config, spec: DataSpec) -> dict:
    if config.task == "segmentation":
        check_class_map(batch["segmentation"], config, spec.num_classes)
    return batch


def _concat(*batches):
    return {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]}


def train_batches(builder, config, spec: DataSpec, *,
                  start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of every global training batch from step `start_step` on, forever.

    Each item holds the task's arrays (classification: `image` float32 [local_batch, H, W, C],
    `label` int32 [local_batch]; segmentation: `image`, `segmentation` int32 [local_batch, H, W];
    language: `tokens` int32 [local_batch, T + 1]) and `epoch`, `position` (ints; position: the
    batch's index within its epoch).
    """
    steps = spec.steps_per_epoch
    epoch, skip = divmod(start_step, steps)
    while True:
        shards = [_epoch(builder, config, spec, epoch, shard) for shard in spec.shards]
        ds = shards[0] if len(shards) == 1 else tf.data.Dataset.zip(tuple(shards)).map(_concat)
        ds = ds.skip(skip).prefetch(2).with_options(_options())
        for position, batch in enumerate(ds.as_numpy_iterator(), start=skip):
            yield {**_check_class_map(batch, config, spec), "epoch": epoch,
                   "position": position}
        epoch, skip = epoch + 1, 0


def eval_batches(builder, config, spec: DataSpec) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of every evaluation batch: `spec.eval_steps` batches on every
    process, each the task's arrays plus `valid` (float32, 0 for padding examples)."""
    shards = []
    for shard in spec.shards:
        ds = builder.as_dataset(split=spec.eval_splits[shard], shuffle_files=False)
        ds = ds.map(_eval_map(config, spec), num_parallel_calls=tf.data.AUTOTUNE)
        pad = spec.eval_steps * spec.shard_eval_batch - spec.eval_examples[shard]
        if pad:
            blank = _blank(config, spec)
            ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad))
        shards.append(ds.batch(spec.shard_eval_batch, drop_remainder=True))
    ds = shards[0] if len(shards) == 1 else tf.data.Dataset.zip(tuple(shards)).map(_concat)
    batches = ds.prefetch(2).with_options(_options()).as_numpy_iterator()
    return (_check_class_map(batch, config, spec) for batch in batches)


class TFDSInput:
    """`train.data.Input` over a TFDS builder (prepared on opening): tf.data on the host, each
    process's rows made global arrays with `jax.make_array_from_process_local_data`."""

    def __init__(self, config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1):
        self.config = config
        self.builder = load_builder(config)
        self._process = (process_index, process_count)

    @functools.cached_property
    def spec(self) -> DataSpec:
        return data_spec(self.builder, self.config, process_index=self._process[0],
                         process_count=self._process[1])

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.builder.info.features.keys())

    def train_batches(self, keys: Sequence[str], sharding=None, *, start_step: int):
        for batch in train_batches(self.builder, self.config, self.spec, start_step=start_step):
            yield _select(batch, keys, sharding)

    def eval_batches(self, keys: Sequence[str], sharding=None):
        for batch in eval_batches(self.builder, self.config, self.spec):
            yield _select(batch, (*keys, "valid"), sharding)

    def examples(self, split: str, keys: Sequence[str], *, batch_size: int,
                 limit: int | None = None):
        ds = self.builder.as_dataset(split=split, shuffle_files=False)
        if limit is not None:
            ds = ds.take(limit)
        ds = ds.map(lambda example: {k: example[k] for k in keys})
        yield from ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def _select(batch: dict, keys: Sequence[str], sharding) -> dict:
    if sharding is None:
        return {k: batch[k] for k in keys}
    return device_batch(batch, keys, sharding)
