"""TFDS builder ``shapes``: one geometric shape per image on a textured background.

Synthetic RGB images (default ``32 x 32 x 3``, ``uint8``), rasterised with pure numpy
(no downloads). Every image shows exactly one filled shape of one of the classes
:data:`CLASS_NAMES` (circle, square, triangle, cross, star):

* size: the diameter of the shape's circumscribed circle is uniform in
  [:data:`MIN_SIZE_FRACTION`, :data:`MAX_SIZE_FRACTION`] of the image side;
* position: uniform such that the whole shape lies inside the image;
* rotation: uniform over the shape's symmetry period (circles are not rotated);
* colour: one random solid colour, at least :data:`MIN_COLOUR_DISTANCE` (Euclidean,
  RGB 0..255) away from *every* background pixel, so that it always stands out;
* background: a random mean colour, plus smooth random colour noise (a coarse random
  grid, bilinearly upsampled), plus either stripes or a checkerboard (random period,
  orientation, phase and colour offset) of moderate contrast.

Shapes are drawn without anti-aliasing: a pixel belongs to the shape iff its centre
does, and then it has exactly the shape colour.

* Splits: ``train`` (10,000 examples) and ``test`` (2,000) by default; the sizes and
  the image side are fields of :class:`ShapesConfig` (``tfds.builder("shapes/small")``
  gives 1,000 / 200; a custom ``ShapesConfig`` can be passed as ``config=``).
  Labels cycle through the classes (``label = index % 5``), so every split is
  exactly balanced.
* Features:

  - ``image``: ``uint8`` ``(S, S, 3)``;
  - ``label``: :class:`tfds.features.ClassLabel` with names :data:`CLASS_NAMES`;
  - ``mask``: ``uint8`` ``(S, S, 1)``, 1 on the shape's pixels, 0 elsewhere;
  - ``index``: ``int64``, the example's index within its split.

  ``image`` and ``mask`` are ``tfds.features.Tensor`` stored as raw bytes (not PNG):
  they decode to the same ``uint8`` arrays, and writing them is much faster.

The same file defines the builder ``shapes64`` (:class:`Shapes64`,
:func:`generate_multi_batch`): 64 x 64 scenes of 1 to 3 shapes of distinct classes on the
same backgrounds, later shapes occluding earlier ones, with ``label`` = the class with the
most visible pixels, a per-pixel class map ``segmentation`` (0 = background, 1..5 = class + 1)
and ``mask`` = its foreground; ``train`` 8,000 / ``test`` 1,000 (``shapes64/small``: 500 / 100).

Generation is deterministic and independent of order: all random numbers of example
``index`` of split ``split`` come from
``np.random.default_rng([SEED, SPLIT_IDS[split], index])`` and the rasterisation
(vectorised over the pixels of a chunk of examples) is elementwise, so an example does
not depend on which other examples are generated with it; examples ``0..n-1`` are the
same for every config with the same image side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SIZE",
    "MAX_SIZE_FRACTION",
    "MIN_COLOUR_DISTANCE",
    "MIN_SIZE_FRACTION",
    "NUM_TEST",
    "NUM_TRAIN",
    "SEED",
    "SPLIT_IDS",
    "MAX_OBJECTS",
    "MIN_CENTRE_SEPARATION",
    "MULTI_IMAGE_SIZE",
    "MULTI_MAX_SIZE_FRACTION",
    "MULTI_MIN_SIZE_FRACTION",
    "MULTI_NUM_TEST",
    "MULTI_NUM_TRAIN",
    "MULTI_SEED",
    "Shapes",
    "Shapes64",
    "ShapesConfig",
    "generate_batch",
    "generate_example",
    "generate_multi_batch",
    "generate_multi_example",
]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
IMAGE_SIZE = 32
NUM_TRAIN = 10_000
NUM_TEST = 2_000
SEED = 1_234_567
SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}

MIN_SIZE_FRACTION = 0.4
MAX_SIZE_FRACTION = 0.75
MIN_COLOUR_DISTANCE = 80

_CROSS_ARM = 0.95  # half-length of a cross arm, in circumradii
_CROSS_HALF_WIDTH = 0.3  # half-width of a cross arm, in circumradii
_STAR_INNER_RATIO = 0.5  # inner / outer radius of the five-pointed star
_NOISE_CELLS = 4  # the smooth background noise is a (cells+1)^2 grid, upsampled
_COLOUR_CANDIDATES = 128  # random shape colours drawn per example, tried in order
_CHUNK = 500  # examples rasterised together by the builder


def _regular_polygon(num_vertices: int) -> np.ndarray:
    """``(n, 2)`` vertices of a regular polygon with circumradius 1, one vertex up."""
    angles = np.pi / 2 + 2 * np.pi * np.arange(num_vertices) / num_vertices
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _star() -> np.ndarray:
    """``(10, 2)`` vertices of a five-pointed star with outer radius 1."""
    radii = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER_RATIO)
    angles = np.pi / 2 + np.pi * np.arange(10) / 5
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _cross() -> np.ndarray:
    """``(12, 2)`` vertices of a plus sign whose corners lie within radius 1."""
    a, w = _CROSS_ARM, _CROSS_HALF_WIDTH
    return np.array(
        [
            (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w),
            (-a, w), (-a, -w), (-w, -w), (-w, -a), (w, -a), (w, -w),
        ]
    )  # fmt: skip


# Per class: unit-circumradius polygon (``None``: a disc) and rotation period (radians).
_SHAPES: dict[str, tuple[np.ndarray | None, float]] = {
    "circle": (None, 0.0),
    "square": (_regular_polygon(4), np.pi / 2),
    "triangle": (_regular_polygon(3), 2 * np.pi / 3),
    "cross": (_cross(), np.pi / 2),
    "star": (_star(), 2 * np.pi / 5),
}
assert tuple(_SHAPES) == CLASS_NAMES


def _padded_templates() -> np.ndarray:
    """``(num_classes, V, 2)`` polygons, padded by repeating their first vertex.

    A repeated vertex adds zero-length edges, which never cross a scan line, so the
    padding does not change the even-odd test. The disc's entry is unused (zeros).
    """
    polygons = [p for p, _ in _SHAPES.values() if p is not None]
    num_vertices = max(len(p) for p in polygons)
    templates = np.zeros((len(CLASS_NAMES), num_vertices, 2))
    for label, (polygon, _) in enumerate(_SHAPES.values()):
        if polygon is not None:
            pad = np.repeat(polygon[:1], num_vertices - len(polygon), axis=0)
            templates[label] = np.concatenate([polygon, pad])
    return templates


_TEMPLATES = _padded_templates()
_IS_DISC = np.array([polygon is None for polygon, _ in _SHAPES.values()])
_ROTATION_PERIOD = np.array([period for _, period in _SHAPES.values()])


class _Params(NamedTuple):
    """Random parameters of a batch of examples (leading axis: example)."""

    label: np.ndarray  # (B,) int
    mean: np.ndarray  # (B, 3) background mean colour
    noise: np.ndarray  # (B, cells+1, cells+1, 3) coarse background noise
    theta: np.ndarray  # (B,) pattern orientation
    frequency: np.ndarray  # (B,) pattern periods per image side
    phase: np.ndarray  # (B, 2) pattern phases along u and v, in periods
    checker: np.ndarray  # (B,) bool: checkerboard (else stripes)
    offset: np.ndarray  # (B, 3) pattern colour offset (+/-)
    candidates: np.ndarray  # (B, _COLOUR_CANDIDATES, 3) integer-valued shape colours
    radius: np.ndarray  # (B,) circumradius in pixels
    centre: np.ndarray  # (B, 2) shape centre (x, y) in pixels
    angle: np.ndarray  # (B,) rotation


_NUM_UNIFORM = 14 + 3 * _COLOUR_CANDIDATES  # see `_params`
_NUM_NORMAL = 3 * (_NOISE_CELLS + 1) ** 2 + 3


def _random_numbers(
    split_id: int, indices: Sequence[int], seed: int = SEED, num_uniform: int = _NUM_UNIFORM
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: all its uniform and normal random numbers, from its own generator."""
    uniform = np.empty((len(indices), num_uniform))
    normal = np.empty((len(indices), _NUM_NORMAL))
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, split_id, int(index)])
        uniform[row] = rng.random(num_uniform)
        normal[row] = rng.standard_normal(_NUM_NORMAL)
    return uniform, normal


def _params(uniform: np.ndarray, normal: np.ndarray, label: np.ndarray, image_size: int) -> _Params:
    """Maps each example's random numbers (one row each) to its parameters."""
    u = uniform
    cells = _NOISE_CELLS + 1
    noise = normal[:, : 3 * cells**2].reshape(-1, cells, cells, 3)
    direction = normal[:, 3 * cells**2 :]
    amplitude = 12.0 + 18.0 * u[:, 9]
    fraction = MIN_SIZE_FRACTION + (MAX_SIZE_FRACTION - MIN_SIZE_FRACTION) * u[:, 10]
    radius = fraction * image_size / 2
    return _Params(
        label=label,
        mean=40.0 + 175.0 * u[:, 0:3],
        noise=noise * (8.0 + 10.0 * u[:, 3, None, None, None]),
        theta=np.pi * u[:, 4],
        frequency=1.5 + 3.0 * u[:, 5],
        phase=u[:, 6:8],
        checker=u[:, 8] < 0.5,
        offset=direction / np.linalg.norm(direction, axis=1, keepdims=True) * amplitude[:, None],
        radius=radius,
        centre=radius[:, None] + (image_size - 2 * radius[:, None]) * u[:, 11:13],
        angle=_ROTATION_PERIOD[label] * u[:, 13],
        candidates=np.floor(256.0 * u[:, 14:]).reshape(-1, _COLOUR_CANDIDATES, 3),
    )


def _bilinear_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Resamples ``(B, g, g, C)`` grids bilinearly onto ``(B, size, size, C)`` pixels."""
    g = grid.shape[1]
    pos = (np.arange(size) + 0.5) * (g - 1) / size
    lo = np.minimum(pos.astype(np.int64), g - 2)
    t = (pos - lo)[:, None, None]
    rows = grid[:, lo] * (1 - t) + grid[:, lo + 1] * t  # (B, size, g, C)
    t = t[:, 0]
    return rows[:, :, lo] * (1 - t) + rows[:, :, lo + 1] * t


def _backgrounds(p: _Params, size: int) -> np.ndarray:
    """``(B, size, size, 3)`` integer-valued float backgrounds in 0..255."""
    coords = (np.arange(size) + 0.5) / size
    x, y = coords[None, None, :], coords[None, :, None]
    cos, sin = np.cos(p.theta)[:, None, None], np.sin(p.theta)[:, None, None]
    frequency = p.frequency[:, None, None]
    u = frequency * (x * cos + y * sin) + p.phase[:, 0, None, None]  # in periods
    v = frequency * (y * cos - x * sin) + p.phase[:, 1, None, None]
    pattern = np.where(u - np.floor(u) < 0.5, 1.0, -1.0)  # square waves
    across = np.where(v - np.floor(v) < 0.5, 1.0, -1.0)
    pattern = np.where(p.checker[:, None, None], pattern * across, pattern)
    smooth = _bilinear_upsample(p.noise, size)
    background = p.mean[:, None, None] + smooth + pattern[..., None] * p.offset[:, None, None]
    return np.rint(np.clip(background, 0.0, 255.0))


def _shape_colours(p: _Params, backgrounds: np.ndarray) -> np.ndarray:
    """Per example, its first candidate colour far enough from every background pixel.

    Candidates are tested in order, each only for the examples still undecided; an
    example none of whose candidates qualifies (very rare) gets the candidate farthest
    from its background. All values are integers, so the distances are exact.
    """
    num_examples = len(backgrounds)
    pixels = backgrounds.reshape(num_examples, -1, 3)
    sq_dist = np.full((num_examples, _COLOUR_CANDIDATES), -1.0)
    choice = np.full(num_examples, -1)
    undecided = np.arange(num_examples)
    for k in range(_COLOUR_CANDIDATES):
        diff = pixels[undecided] - p.candidates[undecided, k, None]
        sq_dist[undecided, k] = (diff * diff).sum(-1).min(-1)
        far = sq_dist[undecided, k] >= MIN_COLOUR_DISTANCE**2
        choice[undecided[far]] = k
        undecided = undecided[~far]
        if not undecided.size:
            break
    choice[undecided] = np.argmax(sq_dist[undecided], axis=1)
    return p.candidates[np.arange(num_examples), choice]


def _shape_masks(p: _Params, size: int) -> np.ndarray:
    """``(B, size, size)`` bool: pixels whose centre lies inside the example's shape."""
    coords = np.arange(size) + 0.5
    x = coords[None, None, :] - p.centre[:, 0, None, None]  # (B, 1, size)
    y = coords[None, :, None] - p.centre[:, 1, None, None]  # (B, size, 1)
    disc = x**2 + y**2 <= p.radius[:, None, None] ** 2

    # Rotated and scaled vertices, (B, 1, 1, V) each.
    cos, sin = np.cos(p.angle)[:, None], np.sin(p.angle)[:, None]
    template_x, template_y = _TEMPLATES[p.label, :, 0], _TEMPLATES[p.label, :, 1]
    scale = p.radius[:, None]
    x0 = ((template_x * cos - template_y * sin) * scale)[:, None, None]
    y0 = ((template_x * sin + template_y * cos) * scale)[:, None, None]
    # Even-odd rule, vectorised over (example, row, column, edge).
    x1, y1 = np.roll(x0, -1, axis=-1), np.roll(y0, -1, axis=-1)
    px, py = x[..., None], y[..., None]
    straddles = (y0 > py) != (y1 > py)
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    crosses = straddles & (px < x0 + (py - y0) * (x1 - x0) / dy)
    polygon = np.count_nonzero(crosses, axis=-1) % 2 == 1
    return np.where(_IS_DISC[p.label][:, None, None], disc, polygon)


def generate_batch(
    split: str, indices: Sequence[int], image_size: int = IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Generates the examples ``indices`` of ``split``, vectorised over the batch.

    Every example depends only on its own ``(split, index)``, not on the batch.

    Returns:
        ``{"image": uint8 (B, S, S, 3), "label": int64 (B,), "mask": uint8
        (B, S, S, 1), "index": int64 (B,)}``.
    """
    labels = np.asarray(indices, dtype=np.int64) % len(CLASS_NAMES)
    p = _params(*_random_numbers(SPLIT_IDS[split], indices), labels, image_size)
    backgrounds = _backgrounds(p, image_size)
    colours = _shape_colours(p, backgrounds)
    inside = _shape_masks(p, image_size)[..., None]
    return {
        "image": np.where(inside, colours[:, None, None], backgrounds).astype(np.uint8),
        "label": labels,
        "mask": inside.astype(np.uint8),
        "index": np.asarray(indices, dtype=np.int64),
    }


def generate_example(split: str, index: int, image_size: int = IMAGE_SIZE) -> dict[str, Any]:
    """Generates example ``index`` of ``split``; same as ``generate_batch`` entries."""
    batch = generate_batch(split, [index], image_size)
    return {key: value[0] for key, value in batch.items()}


# ------------------------------------------------------------------ shapes64: several objects

MULTI_IMAGE_SIZE = 64
MULTI_NUM_TRAIN = 8_000
MULTI_NUM_TEST = 1_000
MULTI_SEED = 7_654_321
MAX_OBJECTS = 3
MULTI_MIN_SIZE_FRACTION = 0.2  # diameter of the disc of equal area, in image sides
MULTI_MAX_SIZE_FRACTION = 0.4
MIN_CENTRE_SEPARATION = 0.75  # centre distance, in sums of the two circumradii

_CENTRE_TRIES = 16  # random centres drawn per object, the first far enough from the others wins
_OBJECT_UNIFORM = 2 + 2 * _CENTRE_TRIES + 3 * _COLOUR_CANDIDATES
_MULTI_NUM_UNIFORM = _NUM_UNIFORM + 1 + len(CLASS_NAMES) + MAX_OBJECTS * _OBJECT_UNIFORM


def _unit_areas() -> np.ndarray:
    """``(num_classes,)`` area of each class's shape at circumradius 1 (shoelace; disc: pi)."""
    areas = np.full(len(CLASS_NAMES), np.pi)
    for label, (polygon, _) in enumerate(_SHAPES.values()):
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


def generate_multi_batch(
    split: str, indices: Sequence[int], image_size: int = MULTI_IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Generates the ``shapes64`` examples ``indices`` of ``split``, vectorised over the batch.

    Each example: the textured background of ``shapes``, then 1 to :data:`MAX_OBJECTS`
    objects of distinct classes drawn in order (later ones occlude earlier ones), each with
    its own size, position, rotation and colour (far from the background and from the
    earlier objects' colours). Every example depends only on its own ``(split, index)``.

    Returns:
        ``{"image": uint8 (B, S, S, 3), "label": int64 (B,) the class with the most visible
        pixels (ties: the smaller class), "segmentation": uint8 (B, S, S, 1) 0 = background,
        1 + class on the objects, "mask": uint8 (B, S, S, 1) segmentation > 0,
        "index": int64 (B,)}``.
    """
    num = len(indices)
    num_classes = len(CLASS_NAMES)
    uniform, normal = _random_numbers(SPLIT_IDS[split], indices, MULTI_SEED, _MULTI_NUM_UNIFORM)
    # The background fields of `_params`; its object fields are replaced per object below.
    base = _params(uniform[:, :_NUM_UNIFORM], normal, np.zeros(num, np.int64), image_size)
    image = _backgrounds(base, image_size)
    extra = uniform[:, _NUM_UNIFORM:]
    count = 1 + np.minimum((MAX_OBJECTS * extra[:, 0]).astype(np.int64), MAX_OBJECTS - 1)
    classes = np.argsort(extra[:, 1 : 1 + num_classes], axis=1)  # a random order of classes
    segmentation = np.zeros((num, image_size, image_size), np.uint8)
    avoid = image.reshape(num, -1, 3)  # colours every new object must stand out from
    centres, radii, placed = np.zeros((num, 0, 2)), np.zeros((num, 0)), np.zeros((num, 0), bool)
    for k in range(MAX_OBJECTS):
        u = extra[:, 1 + num_classes + k * _OBJECT_UNIFORM :][:, :_OBJECT_UNIFORM]
        active = k < count
        label = classes[:, k]
        fraction = MULTI_MIN_SIZE_FRACTION + (
            MULTI_MAX_SIZE_FRACTION - MULTI_MIN_SIZE_FRACTION
        ) * u[:, 0]
        radius = fraction * image_size / 2 * _RADIUS_PER_AREA_RADIUS[label]
        tries = u[:, 2 : 2 + 2 * _CENTRE_TRIES].reshape(num, _CENTRE_TRIES, 2)
        centre = _place(radius, tries, image_size, centres, radii, placed)
        p = base._replace(
            label=label,
            radius=radius,
            centre=centre,
            angle=_ROTATION_PERIOD[label] * u[:, 1],
            candidates=np.floor(256.0 * u[:, 2 + 2 * _CENTRE_TRIES :]).reshape(
                num, _COLOUR_CANDIDATES, 3
            ),
        )
        colour = _shape_colours(p, avoid)
        inside = _shape_masks(p, image_size) & active[:, None, None]
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


def generate_multi_example(
    split: str, index: int, image_size: int = MULTI_IMAGE_SIZE
) -> dict[str, Any]:
    """Generates ``shapes64`` example ``index`` of ``split``; as ``generate_multi_batch``."""
    batch = generate_multi_batch(split, [index], image_size)
    return {key: value[0] for key, value in batch.items()}


def _raw_uint8(shape: tuple[int, ...]) -> tfds.features.Tensor:
    """A fixed-shape ``uint8`` feature stored as raw bytes.

    Much faster to write and read than PNG-encoded ``tfds.features.Image`` (about 2x
    faster preparation) at ~4 KB per 32x32 example.
    """
    return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Config of :class:`Shapes`: image side and the number of examples per split."""

    image_size: int = IMAGE_SIZE
    num_train: int = NUM_TRAIN
    num_test: int = NUM_TEST

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test}


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic single-shape classification / segmentation images (TFDS name ``shapes``).

    Each ``32 x 32`` RGB image (``uint8``) shows one filled circle, square, triangle,
    cross or star of random size (40%-75% of the side), position, rotation and colour on
    a random striped or checkered, noisy background. Splits ``train`` (10,000) and
    ``test`` (2,000), exactly class-balanced. Features ``image``, ``label``
    (``ClassLabel`` over :data:`CLASS_NAMES`), ``mask`` (``uint8`` ``(32, 32, 1)``, 1 on
    the shape) and ``index`` (``int64``). Supervised keys ``("image", "label")``.

    Configs: ``default`` (32 px, 10,000 / 2,000) and ``small`` (32 px, 1,000 / 200, for
    smoke tests); the first ``n`` examples of ``small`` equal those of ``default``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9.10 locates a builder's source through `importlib_resources`, which it
    # only declares as a dependency for Python < 3.9; state the path explicitly.
    code_path: ClassVar[epath.Path] = epath.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="32x32 images, 10,000 train / 2,000 test."),
        ShapesConfig(
            name="small",
            description="32x32 images, 1,000 train / 200 test (smoke tests).",
            num_train=1_000,
            num_test=200,
        ),
    ]

    @property
    def _config(self) -> ShapesConfig:
        config = self.builder_config
        assert isinstance(config, ShapesConfig)
        return config

    DESCRIPTION = (
        "Synthetic RGB images, each showing exactly one filled geometric shape "
        f"({', '.join(CLASS_NAMES)}) of random size, position, rotation and "
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
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
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

    def _generate_batch(self, split: str, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return generate_batch(split, indices, self._config.image_size)

    def _generate_examples(
        self, split: str, num_examples: int
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for start in range(0, num_examples, _CHUNK):
            indices = range(start, min(start + _CHUNK, num_examples))
            batch = self._generate_batch(split, indices)
            for row, index in enumerate(indices):
                yield index, {key: value[row] for key, value in batch.items()}


class Shapes64(Shapes):
    """Synthetic multi-object scenes with a per-pixel class map (TFDS name ``shapes64``).

    Each ``64 x 64`` RGB image (``uint8``) shows 1 to 3 objects of distinct classes among
    :data:`CLASS_NAMES` (each with the area of a disc of diameter 20%-40% of the side; centres
    apart by at least :data:`MIN_CENTRE_SEPARATION` of the summed circumradii; later objects
    occluding earlier ones) on the textured background of ``shapes``. Features ``image``,
    ``label`` (the class of the object with the most visible pixels), ``segmentation``
    (``uint8`` ``(64, 64, 1)``: 0 background, 1..5 the class + 1), ``mask`` (``uint8``
    ``(64, 64, 1)``, the foreground: segmentation > 0) and ``index``. Supervised keys
    ``("image", "label")``.

    Configs: ``default`` (8,000 train / 1,000 test; a CPU-affordable training set at 256
    patches per image) and ``small`` (500 / 100, for smoke tests); the first ``n`` examples
    of ``small`` equal those of ``default``. See :func:`generate_multi_batch`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    code_path: ClassVar[epath.Path] = epath.Path(__file__)
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="default",
            description="64x64 scenes of 1-3 shapes, 8,000 train / 1,000 test.",
            image_size=MULTI_IMAGE_SIZE,
            num_train=MULTI_NUM_TRAIN,
            num_test=MULTI_NUM_TEST,
        ),
        ShapesConfig(
            name="small",
            description="64x64 scenes of 1-3 shapes, 500 train / 100 test (smoke tests).",
            image_size=MULTI_IMAGE_SIZE,
            num_train=500,
            num_test=100,
        ),
    ]

    DESCRIPTION = (
        "Synthetic RGB scenes of 1 to 3 filled geometric shapes of distinct classes "
        f"({', '.join(CLASS_NAMES)}) on a random textured background, later shapes "
        "occluding earlier ones; label = the class with the most visible pixels, "
        "with the per-pixel class map (0 = background) and the foreground mask."
    )
    PIXEL_MAPS: ClassVar[tuple[str, ...]] = ("segmentation", "mask")

    def _generate_batch(self, split: str, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return generate_multi_batch(split, indices, self._config.image_size)
