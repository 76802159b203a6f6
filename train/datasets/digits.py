"""``digits``: scikit-learn's bundled 8x8 handwritten digits, as numpy arrays.

The data are the 1,797 real images returned by :func:`sklearn.datasets.load_digits`
(the UCI "Optical Recognition of Handwritten Digits" test set, shipped inside the
scikit-learn wheel), so preparing this dataset needs no download at all.

* Split: a fixed stratified split,
  ``train_test_split(test_size=0.2, stratify=y, random_state=0)``, giving
  ``train`` = 1,437 and ``test`` = 360 examples with (nearly) the same class
  proportions in both.
* Features:

  - ``image``: ``uint8`` ``(8, 8, 1)``; the original 0..16 grey levels rescaled to
    0..255 as ``round(v * 255 / 16)``.
  - ``label``: :class:`tfds.features.ClassLabel` with the 10 names ``'0'`` .. ``'9'``.
  - ``index``: ``int64``, the row of the example in ``load_digits()``, so that every
    stored example can be traced back to the original data.

Deterministic. :func:`split_arrays` gives a whole split as arrays (no TensorFlow); the TFDS
builder :class:`train.datasets.builders.digits.Digits` writes the same examples.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = [
    "VERSION",
    "CLASS_NAMES",
    "IMAGE_SHAPE",
    "NUM_EXAMPLES",
    "SPLIT_RANDOM_STATE",
    "TEST_FRACTION",
    "SPLITS",
    "load",
    "scale_to_uint8",
    "split_arrays",
    "split_indices",
    "stratified_split",
]

VERSION = "1.0.0"  # of what it generates: its TFDS builder's version
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
IMAGE_SHAPE: tuple[int, int, int] = (8, 8, 1)
NUM_EXAMPLES = 1_797
TEST_FRACTION = 0.2
SPLIT_RANDOM_STATE = 0
SPLITS: tuple[str, ...] = ("train", "test")
_MAX_GREY_LEVEL = 16


def scale_to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps sklearn's 0..16 grey levels to 0..255: ``round(v * 255 / 16)`` as ``uint8``."""
    scaled = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / _MAX_GREY_LEVEL))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def stratified_split(labels: np.ndarray, test_size, random_state: int) -> dict[str, np.ndarray]:
    """Sorted row indices of a fixed stratified train / test split of ``labels``.

    ``test_size`` is a fraction or a count, as for :func:`sklearn.model_selection.train_test_split`;
    returns ``{"train": ..., "test": ...}``, disjoint index arrays covering all rows.
    """
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=test_size,
        stratify=labels,
        random_state=random_state,
    )
    return {"train": np.sort(train_idx), "test": np.sort(test_idx)}


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the sorted ``load_digits`` row indices of the fixed stratified split.

    Args:
        labels: the ``(1797,)`` label vector of ``load_digits()``.

    Returns:
        ``{"train": ..., "test": ...}`` with disjoint index arrays covering all rows.
    """
    return stratified_split(labels, TEST_FRACTION, SPLIT_RANDOM_STATE)


def load() -> tuple[np.ndarray, np.ndarray]:
    """All ``(1797, 8, 8, 1)`` uint8 images (0..255) and ``(1797,)`` int64 labels."""
    bunch = load_digits()
    return scale_to_uint8(bunch.images)[..., None], np.asarray(bunch.target, dtype=np.int64)


def split_arrays(split: str) -> dict[str, np.ndarray]:
    """Every example of ``split`` as arrays: ``image`` uint8 ``[n, 8, 8, 1]``, ``label`` int64
    ``[n]``, ``index`` int64 ``[n]`` (the row in ``load_digits()``), in index order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = load()
    rows = split_indices(labels)[split].astype(np.int64)
    return {"image": images[rows], "label": labels[rows], "index": rows}
