"""``shapes``: one geometric shape per image on a textured background, generated in numpy.

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
  the image side are fields of :class:`Size` (:data:`CONFIGS`: ``default`` and ``small``,
  1,000 / 200; ``tfds.builder("shapes/small")``).
  Labels cycle through the classes (``label = index % 5``), so every split is
  exactly balanced.
* Features:

  - ``image``: ``uint8`` ``(S, S, 3)``;
  - ``label``: :class:`tfds.features.ClassLabel` with names :data:`CLASS_NAMES`;
  - ``mask``: ``uint8`` ``(S, S, 1)``, 1 on the shape's pixels, 0 elsewhere;
  - ``index``: ``int64``, the example's index within its split.

  ``image`` and ``mask`` are ``tfds.features.Tensor`` stored as raw bytes (not PNG):
  they decode to the same ``uint8`` arrays, and writing them is much faster.

``shapes64`` (:mod:`train.datasets.shapes64`) draws several shapes per image with the same
rasteriser and backgrounds. :func:`split_arrays` gives a whole split as arrays (no TensorFlow);
the TFDS builder :class:`train.datasets.builders.shapes.Shapes` writes the same examples.

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
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "VERSION",
    "CLASS_NAMES",
    "CONFIGS",
    "IMAGE_SIZE",
    "MAX_SIZE_FRACTION",
    "MIN_COLOUR_DISTANCE",
    "MIN_SIZE_FRACTION",
    "NUM_TEST",
    "NUM_TRAIN",
    "SEED",
    "SPLITS",
    "SPLIT_IDS",
    "Size",
    "chunked",
    "generate_batch",
    "generate_example",
    "split_arrays",
]

VERSION = "1.0.0"  # of what it generates: its TFDS builder's version
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
IMAGE_SIZE = 32
NUM_TRAIN = 10_000
NUM_TEST = 2_000
SEED = 1_234_567
SPLIT_IDS: dict[str, int] = {"train": 0, "test": 1}
SPLITS: tuple[str, ...] = tuple(SPLIT_IDS)

MIN_SIZE_FRACTION = 0.4
MAX_SIZE_FRACTION = 0.75
MIN_COLOUR_DISTANCE = 80

_CROSS_ARM = 0.95  # half-length of a cross arm, in circumradii
_CROSS_HALF_WIDTH = 0.3  # half-width of a cross arm, in circumradii
_STAR_INNER_RATIO = 0.5  # inner / outer radius of the five-pointed star
_NOISE_CELLS = 4  # the smooth background noise is a (cells+1)^2 grid, upsampled
_COLOUR_CANDIDATES = 128  # random shape colours drawn per example, tried in order
_CHUNK = 500  # examples rasterised together (`chunked`)


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


@dataclasses.dataclass(frozen=True)
class Size:
    """The image side and the number of examples per split of one config."""

    image_size: int = IMAGE_SIZE
    num_train: int = NUM_TRAIN
    num_test: int = NUM_TEST

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test}


#: ``default`` (32 px, 10,000 / 2,000) and ``small`` (32 px, 1,000 / 200, for smoke tests); the
#: first ``n`` examples of ``small`` equal those of ``default``.
CONFIGS: dict[str, Size] = {"default": Size(), "small": Size(num_train=1_000, num_test=200)}


def split_arrays(split: str, config: str | Size = "default", *,
                 generate=generate_batch, configs: dict | None = None) -> dict[str, np.ndarray]:
    """Every example of ``split`` of ``config`` as arrays (``generate_batch``'s features), in index
    order. ``generate`` and ``configs`` let ``shapes64`` reuse this with its own."""
    configs = CONFIGS if configs is None else configs
    if isinstance(config, str):
        if config not in configs:
            raise ValueError(f"config must be one of {sorted(configs)}, got {config!r}")
        config = configs[config]
    sizes = config.split_sizes()
    if split not in sizes:
        raise ValueError(f"split must be one of {tuple(sizes)}, got {split!r}")
    chunks = [generate(split, indices, config.image_size) for indices in chunked(sizes[split])]
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def chunked(num_examples: int) -> Iterator[range]:
    """The indices `0..num_examples-1` in the ranges that are rasterised together: the
    rasteriser's per-pixel temporaries stay small (a whole split at once needs gigabytes and runs
    several times slower), and every example depends on its index only."""
    for start in range(0, num_examples, _CHUNK):
        yield range(start, min(start + _CHUNK, num_examples))
