"""TFDS builder ``shapes`` (:mod:`train.datasets.shapes`): one shape per image."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from train.datasets import shapes
from train.datasets.builders._common import examples

__all__ = ["Shapes", "ShapesConfig"]


def _raw_uint8(shape: tuple[int, ...]) -> tfds.features.Tensor:
    """A fixed-shape ``uint8`` feature stored as raw bytes: faster to write and read than
    PNG-encoded ``tfds.features.Image``, and these images are small."""
    return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Config of :class:`Shapes`: image side and the number of examples per split."""

    image_size: int = shapes.IMAGE_SIZE
    num_train: int = shapes.NUM_TRAIN
    num_test: int = shapes.NUM_TEST

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test}


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic single-shape classification / segmentation images (TFDS name ``shapes``).

    Each ``32 x 32`` RGB image (``uint8``) shows one filled circle, square, triangle,
    cross or star of random size (40%-75% of the side), position, rotation and colour on
    a random striped or checkered, noisy background. Splits ``train`` (10,000) and
    ``test`` (2,000), exactly class-balanced. Features ``image``, ``label`` (``ClassLabel``
    over :data:`train.datasets.shapes.CLASS_NAMES`), ``mask`` (``uint8`` ``(32, 32, 1)``, 1
    on the shape) and ``index`` (``int64``). Supervised keys ``("image", "label")``.

    Configs: ``default`` (32 px, 10,000 / 2,000) and ``small`` (32 px, 1,000 / 200, for
    smoke tests); the first ``n`` examples of ``small`` equal those of ``default``.
    """

    VERSION = tfds.core.Version(shapes.VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9.10 locates a builder's source through `importlib_resources`, which it
    # only declares as a dependency for Python < 3.9; state the path explicitly.
    code_path: ClassVar[epath.Path] = epath.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="32x32 images, 10,000 train / 2,000 test.",
                     **dataclasses.asdict(shapes.CONFIGS["default"])),
        ShapesConfig(name="small",
                     description="32x32 images, 1,000 train / 200 test (smoke tests).",
                     **dataclasses.asdict(shapes.CONFIGS["small"])),
    ]

    @property
    def _config(self) -> ShapesConfig:
        config = self.builder_config
        assert isinstance(config, ShapesConfig)
        return config

    DESCRIPTION = (
        "Synthetic RGB images, each showing exactly one filled geometric shape "
        f"({', '.join(shapes.CLASS_NAMES)}) of random size, position, rotation and "
        "colour on a random textured (noise plus stripes or checkerboard) "
        "background, with the shape's pixel mask."
    )
    PIXEL_MAPS: ClassVar[tuple[str, ...]] = ("mask",)  # uint8 (S, S, 1) features

    def _info(self) -> tfds.core.DatasetInfo:
        size = self._config.image_size
        maps = {name: _raw_uint8((size, size, 1)) for name in self.PIXEL_MAPS}
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": _raw_uint8((size, size, 3)),
                    "label": tfds.features.ClassLabel(names=shapes.CLASS_NAMES),
                    **maps,
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # Everything is generated locally.
        return {
            split: self._generate_examples(split, num)
            for split, num in self._config.split_sizes().items()
        }

    GENERATE = staticmethod(shapes.generate_batch)  # (split, indices, image_size) -> arrays

    def _generate_examples(
        self, split: str, num_examples: int
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for indices in shapes.chunked(num_examples):
            yield from examples(self.GENERATE(split, indices, self._config.image_size))
