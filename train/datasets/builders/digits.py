"""TFDS builder ``digits`` (:mod:`train.datasets.digits`): scikit-learn's 8x8 digits."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from train.datasets import digits
from train.datasets.builders._common import SplitsBuilder

__all__ = ["Digits"]


class Digits(SplitsBuilder):
    """scikit-learn's 8x8 handwritten digits (1,797 images) with a stratified split.

    Registered under the TFDS name ``digits``. Splits ``train`` (1,437) and ``test``
    (360). Features ``image`` (``uint8``, ``(8, 8, 1)``, 0..255), ``label``
    (``ClassLabel``, names ``'0'``..``'9'``) and ``index`` (``int64``, row in
    ``sklearn.datasets.load_digits()``). Supervised keys ``("image", "label")``.
    """

    SOURCE = digits
    VERSION = tfds.core.Version(digits.VERSION)
    code_path: ClassVar[epath.Path] = epath.Path(__file__)  # see SplitsBuilder

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
                    "image": tfds.features.Image(shape=digits.IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=digits.CLASS_NAMES),
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
