"""``shapes64``: 64 x 64 scenes of 1 to 3 shapes of distinct classes, generated in numpy.

The shapes, colours and textured backgrounds of :mod:`train.datasets.shapes`: a main object,
placed off the image centre, and up to two smaller distractors drawn over it (and over each
other), so that the labelled class is the one a glance at the scene finds, the other objects are
clutter to ignore, and a central box does not find the foreground. Features:
``image`` uint8 ``(64, 64, 3)``; ``label`` the class with the most visible pixels;
``segmentation`` uint8 ``(64, 64, 1)``, a per-pixel class map (0 = background, 1..5 = class + 1);
``mask`` uint8 ``(64, 64, 1)``, its foreground; ``index``.
Splits ``train`` 12,000 / ``test`` 1,000 (config ``small``: 500 / 100, for smoke tests; the first
``n`` examples of ``small`` equal those of ``default``).

Every example depends only on ``(split, index)``, as in ``shapes``. :func:`split_arrays` gives a
whole split as arrays (no TensorFlow); the TFDS builder
:class:`train.datasets.builders.shapes64.Shapes64` writes the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from train.datasets import shapes

__all__ = [
    "VERSION",
    "CLASS_NAMES",
    "CONFIGS",
    "IMAGE_SIZE",
    "DISTRACTOR_SIZE_FRACTION",
    "MAIN_MIN_OFFSET",
    "MAIN_SIZE_FRACTION",
    "MAX_OBJECTS",
    "MIN_CENTRE_SEPARATION",
    "NUM_TEST",
    "NUM_TRAIN",
    "SEED",
    "SPLITS",
    "generate_batch",
    "generate_example",
    "split_arrays",
]

VERSION = "3.0.0"  # of what it generates: its TFDS builder's version
CLASS_NAMES: tuple[str, ...] = shapes.CLASS_NAMES  # label = the largest visible shape's class
SPLITS: tuple[str, ...] = shapes.SPLITS
IMAGE_SIZE = 64
NUM_TRAIN = 12_000
NUM_TEST = 1_000
SEED = 7_654_321
MAX_OBJECTS = 3
# Sizes: the diameter of the disc of equal area, in image sides. The first object (the main
# one) is drawn from the larger range, the others (distractors, drawn over it) from the smaller,
# so that the class with the most visible pixels is a property of the scene a model can see
# rather than a close call between two shapes of similar area.
MAIN_SIZE_FRACTION = (0.3, 0.45)
DISTRACTOR_SIZE_FRACTION = (0.12, 0.2)
MIN_CENTRE_SEPARATION = 0.75  # centre distance, in sums of the two circumradii
# The main object's centre lies off the image centre: along one axis (either, at random) its
# offset is at least this fraction of the largest offset that keeps the object inside, so that an
# image-blind central box is a weak segmentation of the foreground.
MAIN_MIN_OFFSET = 0.7

_CENTRE_TRIES = 16  # random centres drawn per object, the first far enough from the others wins
_OBJECT_UNIFORM = 2 + 2 * _CENTRE_TRIES + 3 * shapes._COLOUR_CANDIDATES
_NUM_UNIFORM_MULTI = (shapes._NUM_UNIFORM + 1 + len(shapes.CLASS_NAMES)
                      + MAX_OBJECTS * _OBJECT_UNIFORM)


def _unit_areas() -> np.ndarray:
    """``(num_classes,)`` area of each class's shape at circumradius 1 (shoelace; disc: pi)."""
    areas = np.full(len(shapes.CLASS_NAMES), np.pi)
    for label, (polygon, _) in enumerate(shapes._SHAPES.values()):
        if polygon is not None:
            x, y = polygon[:, 0], polygon[:, 1]
            areas[label] = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return areas


# Circumradius of each class per unit of area-equivalent radius: sized by area, no class is
# larger on average, so "the largest object" does not favour discs.
_RADIUS_PER_AREA_RADIUS = np.sqrt(np.pi / _unit_areas())


def _place(
    radius: np.ndarray,
    tries: np.ndarray,
    image_size: int,
    centres: np.ndarray,
    radii: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """``(B, 2)`` centres: per example its first try far enough from the placed objects.

    Args:
        radius: ``(B,)`` circumradius of the new object.
        tries: ``(B, T, 2)`` uniforms, mapped to centres that keep the object inside.
        centres, radii, active: ``(B, k, 2)``, ``(B, k)``, ``(B, k)`` the objects placed so
            far (inactive ones are ignored).

    A try is far enough when its distance to every placed centre is at least
    :data:`MIN_CENTRE_SEPARATION` times the sum of the two circumradii; an example none of
    whose tries qualifies (rare) takes the try with the largest such ratio.
    """
    candidates = radius[:, None, None] + (image_size - 2 * radius[:, None, None]) * tries
    distance = np.linalg.norm(candidates[:, :, None] - centres[:, None], axis=-1)  # (B, T, k)
    ratio = distance / (radius[:, None, None] + radii[:, None])
    ratio = np.where(active[:, None], ratio, np.inf).min(axis=-1, initial=np.inf)  # (B, T)
    ok = ratio >= MIN_CENTRE_SEPARATION
    choice = np.where(ok.any(axis=1), ok.argmax(axis=1), ratio.argmax(axis=1))
    return candidates[np.arange(len(radius)), choice]


def _off_centre(radius: np.ndarray, u: np.ndarray, image_size: int) -> np.ndarray:
    """``(B, 2)`` centres in the outer band of where an object of circumradius ``radius`` fits.

    ``u``: ``(B, 4)`` uniforms: which axis is off centre, its side, how far along the band
    (:data:`MAIN_MIN_OFFSET` to 1 of the largest offset ``image_size / 2 - radius``), and the
    other axis's offset (uniform over where the object fits).
    """
    reach = image_size / 2 - radius  # the largest offset from the image centre that fits
    band = MAIN_MIN_OFFSET + (1.0 - MAIN_MIN_OFFSET) * u[:, 2]
    far = np.where(u[:, 1] < 0.5, -band, band)
    free = 2.0 * u[:, 3] - 1.0
    along_x = u[:, 0] < 0.5
    offset = np.stack([np.where(along_x, far, free), np.where(along_x, free, far)], axis=1)
    return image_size / 2 + reach[:, None] * offset


def generate_batch(
    split: str, indices: Sequence[int], image_size: int = IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Generates the ``shapes64`` examples ``indices`` of ``split``, vectorised over the batch.

    Each example: the textured background of ``shapes``, then 1 to :data:`MAX_OBJECTS`
    objects of distinct classes drawn in order (later ones occlude earlier ones): the main one
    sized in :data:`MAIN_SIZE_FRACTION` and placed off centre (:func:`_off_centre`), the
    distractors sized in :data:`DISTRACTOR_SIZE_FRACTION` and placed apart from the objects
    before them (:func:`_place`), each with its own rotation and colour (far from the background
    and from the earlier objects' colours). Every example depends only on its own
    ``(split, index)``.

    Returns:
        ``{"image": uint8 (B, S, S, 3), "label": int64 (B,) the class with the most visible
        pixels (ties: the smaller class), "segmentation": uint8 (B, S, S, 1) 0 = background,
        1 + class on the objects, "mask": uint8 (B, S, S, 1) segmentation > 0,
        "index": int64 (B,)}``.
    """
    num = len(indices)
    num_classes = len(shapes.CLASS_NAMES)
    uniform, normal = shapes._random_numbers(shapes.SPLIT_IDS[split], indices, SEED,
                                             _NUM_UNIFORM_MULTI)
    # The background fields of `shapes._params`; its object fields are replaced per object below.
    base = shapes._params(uniform[:, :shapes._NUM_UNIFORM], normal, np.zeros(num, np.int64),
                          image_size)
    image = shapes._backgrounds(base, image_size)
    extra = uniform[:, shapes._NUM_UNIFORM:]
    count = 1 + np.minimum((MAX_OBJECTS * extra[:, 0]).astype(np.int64), MAX_OBJECTS - 1)
    classes = np.argsort(extra[:, 1 : 1 + num_classes], axis=1)  # a random order of classes
    segmentation = np.zeros((num, image_size, image_size), np.uint8)
    avoid = image.reshape(num, -1, 3)  # colours every new object must stand out from
    centres, radii, placed = np.zeros((num, 0, 2)), np.zeros((num, 0)), np.zeros((num, 0), bool)
    for k in range(MAX_OBJECTS):
        u = extra[:, 1 + num_classes + k * _OBJECT_UNIFORM :][:, :_OBJECT_UNIFORM]
        active = k < count
        label = classes[:, k]
        low, high = MAIN_SIZE_FRACTION if k == 0 else DISTRACTOR_SIZE_FRACTION
        fraction = low + (high - low) * u[:, 0]
        radius = fraction * image_size / 2 * _RADIUS_PER_AREA_RADIUS[label]
        tries = u[:, 2 : 2 + 2 * _CENTRE_TRIES].reshape(num, _CENTRE_TRIES, 2)
        if k == 0:
            centre = _off_centre(radius, tries[:, :2].reshape(num, 4), image_size)
        else:
            centre = _place(radius, tries, image_size, centres, radii, placed)
        p = base._replace(
            label=label,
            radius=radius,
            centre=centre,
            angle=shapes._ROTATION_PERIOD[label] * u[:, 1],
            candidates=np.floor(256.0 * u[:, 2 + 2 * _CENTRE_TRIES :]).reshape(
                num, shapes._COLOUR_CANDIDATES, 3
            ),
        )
        colour = shapes._shape_colours(p, avoid)
        inside = shapes._shape_masks(p, image_size) & active[:, None, None]
        image = np.where(inside[..., None], colour[:, None, None], image)
        segmentation = np.where(inside, (label + 1).astype(np.uint8)[:, None, None], segmentation)
        avoid = np.concatenate([avoid, np.where(active[:, None], colour, avoid[:, 0])[:, None]], 1)
        centres = np.concatenate([centres, centre[:, None]], axis=1)
        radii = np.concatenate([radii, radius[:, None]], axis=1)
        placed = np.concatenate([placed, active[:, None]], axis=1)
    visible = np.stack([(segmentation == c + 1).sum(axis=(1, 2)) for c in range(num_classes)], 1)
    return {
        "image": image.astype(np.uint8),
        "label": visible.argmax(axis=1).astype(np.int64),
        "segmentation": segmentation[..., None],
        "mask": (segmentation > 0).astype(np.uint8)[..., None],
        "index": np.asarray(indices, dtype=np.int64),
    }


def generate_example(
    split: str, index: int, image_size: int = IMAGE_SIZE
) -> dict[str, Any]:
    """Generates ``shapes64`` example ``index`` of ``split``; as ``generate_multi_batch``."""
    batch = generate_batch(split, [index], image_size)
    return {key: value[0] for key, value in batch.items()}


#: ``default`` (12,000 / 1,000) and ``small`` (500 / 100).
CONFIGS: dict[str, shapes.Size] = {
    "default": shapes.Size(IMAGE_SIZE, NUM_TRAIN, NUM_TEST),
    "small": shapes.Size(IMAGE_SIZE, 500, 100),
}


def split_arrays(split: str, config: str | shapes.Size = "default") -> dict[str, np.ndarray]:
    """Every example of ``split`` of ``config`` as arrays (``generate_batch``'s features)."""
    return shapes.split_arrays(split, config, generate=generate_batch, configs=CONFIGS)
