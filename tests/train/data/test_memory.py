"""The in-memory input: order, resumption, augmentation, evaluation padding, resizing, errors."""

import re

import jax
import numpy as np
import pytest
import tensorflow as tf

from tests._configs import tiny_config
from train.config import ConfigError
from train.data import DataError, normalize
from train.data.memory import (
    MemoryInput,
    even_shards,
    flip_decisions,
    random_flip,
    random_translate,
    resize_images,
    resize_labels,
)

KEYS = ("image", "label")


def _memory(name: str = "digits.py", **overrides) -> MemoryInput:
    return MemoryInput(tiny_config(name, **{"input": "memory", **overrides}))


def _take(batches, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v) for k, v in next(batches).items()} for _ in range(n)]


def test_a_resumed_input_gives_the_batches_of_one_that_never_stopped():
    """Steps 3..7 of a fresh input started at step 3 are those of one started at 0, across the
    epoch boundary (5 steps of 256 per epoch), augmentation included."""
    straight = _take(_memory(batch_size=256).train_batches(KEYS, start_step=0), 8)
    resumed = _take(_memory(batch_size=256).train_batches(KEYS, start_step=3), 5)
    for a, b in zip(straight[3:], resumed, strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    assert len({b["image"].tobytes() for b in straight}) == 8  # nothing is replayed


def test_even_shards_are_tfds_even_splits():
    assert even_shards(11, 3) == ((4, 4, 3), [(0, 4), (4, 8), (8, 11)])
    assert even_shards(360, 1) == ((360,), [(0, 360)])


@pytest.mark.parametrize("shards", [1, 3])
def test_every_epoch_reads_distinct_rows_of_each_shard(shards):
    source = _memory(batch_size=96, data_shards=shards)
    spec = source.spec
    assert sum(spec.train_examples) == 1437 and len(spec.train_splits) == shards
    assert spec.steps_per_epoch == min(spec.train_examples) // (96 // shards)
    orders = [np.asarray(source.epoch_order(epoch)) for epoch in (0, 1)]
    for order in orders:
        assert order.shape == (spec.steps_per_epoch, 96)
        per_shard = order.reshape(spec.steps_per_epoch, shards, 96 // shards)
        for shard, (start, stop) in enumerate(spec.train_splits):
            rows = per_shard[:, shard].ravel()
            assert len(set(rows.tolist())) == rows.size  # no row twice in an epoch
            assert start <= rows.min() and rows.max() < stop  # the shard's own rows
    assert not np.array_equal(orders[0], orders[1])  # each epoch reshuffles


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`out[y, x] = image[y - dy, x - dx]`, zeros outside."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    return padded[2 - dy:2 - dy + h, 2 - dx:2 - dx + w]


@pytest.mark.parametrize("augment", ["none", "flip", "translate"])
def test_a_training_batch_is_its_rows_augmented_and_normalised(augment):
    source = _memory(augment=augment, translate=1, batch_size=64)
    config, stored = source.config, source.arrays("train")
    order = np.asarray(source.epoch_order(0))
    seen = set()
    for position, batch in enumerate(_take(source.train_batches(KEYS, start_step=0), 3)):
        rows = order[position]
        np.testing.assert_array_equal(batch["label"], stored["label"][rows])
        for got, raw in zip(batch["image"], stored["image"][rows].astype(np.float32),
                            strict=True):
            variants = {"identity": raw, "flipped": raw[:, ::-1]} if augment == "flip" else (
                {(dy, dx): _shifted(raw, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
                if augment == "translate" else {"identity": raw})
            match = [name for name, image in variants.items()
                     if np.allclose(got, normalize(image, config), atol=1e-5)]
            assert match, f"row {position}: not an allowed variant of its stored image"
            seen.add(match[0])
    expected = {"none": 1, "flip": 2, "translate": 9}[augment]
    assert len(seen) == expected  # every variant is drawn (192 examples)


def test_segmentation_flips_the_image_and_its_class_map_together():
    source = _memory("shapes64_seg.py", dataset="shapes64/small", batch_size=50)
    assert source.config.augment == "flip"
    stored = source.arrays("train")
    rows = np.asarray(source.epoch_order(0))[0]
    batch = _take(source.train_batches(("image", "segmentation"), start_step=0), 1)[0]
    flipped = []
    for image, labels, raw, raw_labels in zip(batch["image"], batch["segmentation"],
                                              stored["image"][rows],
                                              stored["segmentation"][rows, ..., 0], strict=True):
        as_stored = np.allclose(image, normalize(raw, source.config), atol=1e-5)
        mirrored = np.allclose(image, normalize(raw[:, ::-1], source.config), atol=1e-5)
        assert as_stored or mirrored
        expected = raw_labels[:, ::-1] if mirrored and not as_stored else raw_labels
        np.testing.assert_array_equal(labels, expected)
        flipped.append(mirrored and not as_stored)
    assert 0 < sum(flipped) < len(flipped)


def test_the_device_ops_on_known_draws():
    images = np.arange(2 * 4 * 5 * 1, dtype=np.float32).reshape(2, 4, 5, 1) + 1
    flips = np.array([True, False])
    out = np.asarray(random_flip(images, flips))
    np.testing.assert_array_equal(out[0], images[0, :, ::-1])
    np.testing.assert_array_equal(out[1], images[1])
    keys = jax.random.split(jax.random.key(0), 64)
    assert 10 < int(np.asarray(flip_decisions(keys)).sum()) < 54
    shifted = np.asarray(random_translate(np.repeat(images[:1], 64, 0), keys, 2))
    shifts = set()
    for out in shifted:
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(out, _shifted(images[0], dy, dx))]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # drawn per example


@pytest.mark.parametrize("shards,eval_batch", [(1, 64), (3, 48)])
def test_evaluation_reads_every_example_once(shards, eval_batch):
    """360 test images: 6 batches of 64 (24 padding rows), or 3 shards of 120 in batches of 16
    per shard (8 padding rows each); padding rows are blank with `valid` = 0."""
    source = _memory(data_shards=shards, batch_size=48, eval_batch_size=eval_batch)
    batches = list(source.eval_batches(KEYS))
    assert len(batches) == source.spec.eval_steps == -(-360 // shards // (eval_batch // shards))
    merged = {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in (*KEYS, "valid")}
    valid = merged["valid"] > 0
    assert valid.sum() == 360
    assert not merged["image"][~valid].any() and not merged["label"][~valid].any()
    stored = source.arrays("test")
    expected = np.asarray(normalize(stored["image"], source.config)).reshape(360, -1)
    got = merged["image"][valid].reshape(360, -1)
    order = np.lexsort(np.c_[expected, stored["label"]].T)
    got_order = np.lexsort(np.c_[got, merged["label"][valid]].T)
    np.testing.assert_allclose(got[got_order], expected[order], atol=1e-6)
    np.testing.assert_array_equal(merged["label"][valid][got_order], stored["label"][order])


def test_resizes_follow_tensorflow(rng):
    images = rng.uniform(0, 255, (2, 7, 9, 3)).astype(np.float32)
    labels = rng.integers(0, 6, (2, 7, 9, 1)).astype(np.int32)
    for size in [(14, 18), (3, 4), (5, 13), (7, 9)]:
        np.testing.assert_allclose(np.asarray(resize_images(images, size)),
                                   tf.image.resize(images, size, "bilinear").numpy(), atol=1e-3)
        np.testing.assert_array_equal(np.asarray(resize_labels(labels, size)),
                                      tf.image.resize(labels, size, "nearest").numpy())


@pytest.mark.parametrize("overrides,field", [
    ({"augment": "crop_flip"}, "config.augment"),
    ({"randaugment_layers": 2}, "config.randaugment_layers"),
    ({"eval_crop_fraction": 0.875}, "config.eval_crop_fraction"),
    ({"input": "gpu"}, "config.input"),
    ({"dataset": "cifar10"}, "config.dataset: unknown dataset 'cifar10'"),
    ({"dataset": "shapes/big"}, "config.dataset: 'shapes' has no config 'big'"),
    ({"dataset": "digits/small"}, "config.dataset: 'digits' has no config 'small'"),
    ({"dataset": "digits:0.9.0"}, "config.dataset: 'digits:0.9.0' pins version 0.9.0, but"),
])
def test_what_the_memory_input_cannot_do_is_a_config_error(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        _memory(**overrides)


@pytest.mark.parametrize("split", ["train[:50%]", "valid", "test[1.5:]", "test[:2:3]"])
def test_a_split_it_cannot_read_names_the_field(split):
    with pytest.raises(DataError, match=rf"^config.eval_split: .* got {re.escape(repr(split))}"):
        _memory(eval_split=split)


def test_a_whole_split_is_generated_once_per_process_and_read_only():
    images = [_memory(**o).arrays("test")["image"] for o in ({}, {"seed": 1},
                                                             {"dataset": "digits:1.0.0"})]
    assert all(np.shares_memory(images[0], other) for other in images[1:])
    assert not images[0].flags.writeable


def test_a_row_slice_of_a_split_is_those_rows_and_evaluates_them_once():
    source = _memory(eval_split="test[10:-300]", eval_batch_size=16)
    whole = source.arrays("test")
    sliced = source.arrays("test[10:-300]")
    assert len(sliced["label"]) == 50 and source.spec.eval_steps == 4
    np.testing.assert_array_equal(sliced["image"], whole["image"][10:-300])
    batches = list(source.eval_batches(KEYS))
    valid = np.concatenate([np.asarray(b["valid"]) for b in batches]) > 0
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[valid]
    np.testing.assert_array_equal(labels, whole["label"][10:-300])
    with pytest.raises(DataError, match=r"^config: the split 'test\[5:5\]' .* has no rows"):
        _memory(eval_split="test[5:5]").arrays("test[5:5]")
