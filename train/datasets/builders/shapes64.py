"""TFDS builder ``shapes64`` (:mod:`train.datasets.shapes64`): scenes of 1 to 3 shapes."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from train.datasets import shapes, shapes64
from train.datasets.builders.shapes import Shapes, ShapesConfig

__all__ = ["Shapes64"]


class Shapes64(Shapes):
    """Synthetic multi-object scenes with a per-pixel class map (TFDS name ``shapes64``).

    Each ``64 x 64`` RGB image (``uint8``) shows 1 to 3 objects of distinct classes among
    :data:`train.datasets.shapes.CLASS_NAMES`: a main object with the area of a disc of diameter
    30%-45% of the side, placed off the image centre (along one axis at least
    :data:`train.datasets.shapes64.MAIN_MIN_OFFSET` of the largest offset at which it fits), and
    up to two distractors of 12%-20% drawn over it (centres apart by
    at least :data:`train.datasets.shapes64.MIN_CENTRE_SEPARATION` of the summed circumradii;
    later objects occluding earlier ones) on the textured background of ``shapes``. Features
    ``image``, ``label`` (the class of the object with the most visible pixels),
    ``segmentation`` (``uint8`` ``(64, 64, 1)``: 0 background, 1..5 the class + 1), ``mask``
    (``uint8`` ``(64, 64, 1)``, the foreground: segmentation > 0) and ``index``. Supervised keys
    ``("image", "label")``.

    Configs: ``default`` (12,000 train / 1,000 test) and ``small`` (500 / 100, for smoke
    tests); the first ``n`` examples of ``small`` equal those of ``default``. See
    :func:`train.datasets.shapes64.generate_batch`.
    """

    VERSION = tfds.core.Version(shapes64.VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "A main object (40%-55% of the side) and smaller distractors (15%-25%) instead "
                 "of three objects of one size range, so that the label is visible rather than a "
                 "close call; 12,000 training scenes instead of 8,000.",
        "3.0.0": "The main object (30%-45% of the side) placed off the image centre and the "
                 "distractors 12%-20%, so that an image-blind central box is a weak segmentation "
                 "of the foreground (mean Jaccard 0.36 on 2.0.0's test split, 0.21 on 3.0.0's).",
    }
    code_path: ClassVar[epath.Path] = epath.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="default",
            description="64x64 scenes of 1-3 shapes, 12,000 train / 1,000 test.",
            **dataclasses.asdict(shapes64.CONFIGS["default"]),
        ),
        ShapesConfig(
            name="small",
            description="64x64 scenes of 1-3 shapes, 500 train / 100 test (smoke tests).",
            **dataclasses.asdict(shapes64.CONFIGS["small"]),
        ),
    ]

    DESCRIPTION = (
        "Synthetic RGB scenes of 1 to 3 filled geometric shapes of distinct classes "
        f"({', '.join(shapes.CLASS_NAMES)}) on a random textured background, later shapes "
        "occluding earlier ones; label = the class with the most visible pixels, "
        "with the per-pixel class map (0 = background) and the foreground mask."
    )
    PIXEL_MAPS: ClassVar[tuple[str, ...]] = ("segmentation", "mask")

    GENERATE = staticmethod(shapes64.generate_batch)
