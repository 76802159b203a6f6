"""TFDS builder ``digits``: scikit-learn's bundled 8x8 handwritten digits.

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

Preparation is deterministic. See :func:`train.datasets.prepare` for how to prepare
it without any network access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SHAPE",
    "NUM_EXAMPLES",
    "SPLIT_RANDOM_STATE",
    "TEST_FRACTION",
    "stratified_split",
    "Digits",
    "scale_to_uint8",
    "split_indices",
]

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
IMAGE_SHAPE: tuple[int, int, int] = (8, 8, 1)
NUM_EXAMPLES = 1_797
TEST_FRACTION = 0.2
SPLIT_RANDOM_STATE = 0
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


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (1,797 images) with a stratified split.

    Registered under the TFDS name ``digits``. Splits ``train`` (1,437) and ``test``
    (360). Features ``image`` (``uint8``, ``(8, 8, 1)``, 0..255), ``label``
    (``ClassLabel``, names ``'0'``..``'9'``) and ``index`` (``int64``, row in
    ``sklearn.datasets.load_digits()``). Supervised keys ``("image", "label")``.
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
                "The 1,797 8x8 grey-level handwritten digit images bundled with "
                "scikit-learn (sklearn.datasets.load_digits), rescaled from 0..16 to "
                "0..255, with a fixed stratified 80/20 train/test split "
                "(random_state=0)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=(
                "@misc{alpaydin1998optical,\n"
                "  author = {Alpaydin, E. and Kaynak, C.},\n"
                "  title = {Optical Recognition of Handwritten Digits},\n"
                "  year = {1998},\n"
                "  howpublished = {UCI Machine Learning Repository},\n"
                "  doi = {10.24432/C50P49}\n"
                "}"
            ),
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # The data ship with scikit-learn; nothing is downloaded.
        bunch = load_digits()
        images = scale_to_uint8(bunch.images)[..., None]  # (1797, 8, 8, 1)
        labels = np.asarray(bunch.target, dtype=np.int64)
        return {
            split: self._generate_examples(images, labels, indices)
            for split, indices in split_indices(labels).items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: Sequence[int]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in indices:
            i = int(i)
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}
