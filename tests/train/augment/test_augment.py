"""Tests of the image augmentation ops of the input pipeline (``train.augment``).

Every op is run eagerly and, in ``test_graph_mode_matches_eager`` / ``test_tf_data_map``, inside
``tf.function`` and a ``tf.data`` ``map`` with dynamic image sizes. Expected values come from
small numpy references (bilinear resize with half-pixel centres, PIL's equalize) or are
computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from train import augment

GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _seed(i: int, dtype=tf.int32) -> tf.Tensor:
    return tf.constant([i, 12345], dtype)


def _random_uint8(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _coord_image(height: int, width: int) -> np.ndarray:
    """float32 ``[H, W, 2]``: channel 0 is the row index, channel 1 the column index."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols], axis=-1).astype(np.float32)


def _np_resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Reference bilinear resize, half-pixel centres, no antialiasing (torch ``interpolate``
    with ``align_corners=False``)."""
    image = image.astype(np.float64)
    in_h, in_w = image.shape[:2]

    def axis(n_out: int, n_in: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    fy = fy[:, None, None]
    fx = fx[None, :, None]
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _np_shift(image: np.ndarray, dy: int, dx: int, fill=0) -> np.ndarray:
    """``out[y, x] = image[y - dy, x - dx]`` inside the image, else ``fill``."""
    h, w = image.shape[:2]
    out = np.full_like(image, fill)
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    yi, xi = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[ys, xs] = image[yi, xi]
    return out


def _np_equalize(image: np.ndarray) -> np.ndarray:
    """PIL's ``ImageOps.equalize``, per channel, as in Pillow's source."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        nonzero = hist[hist > 0]
        step = (nonzero.sum() - nonzero[-1]) // 256 if len(nonzero) > 1 else 0
        if step == 0:
            out[..., c] = channel
            continue
        lut = []
        n = step // 2
        for i in range(256):
            lut.append(min(n // step, 255))
            n += hist[i]
        out[..., c] = np.asarray(lut, np.uint8)[channel]
    return out


def _n_distinct(arrays) -> int:
    return len({np.asarray(a).tobytes() for a in arrays})


# ---------------------------------------------------------------------------------------------
# random_resized_crop


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((32, 32, 3), 16, (16, 16, 3)),
        ((24, 40, 1), (10, 14), (10, 14, 1)),
        ((40, 24, 3), (20, 8), (20, 8, 3)),
    ],
)
def test_random_resized_crop_shape_dtype_range(shape, size, expected):
    image = _random_uint8(shape)
    out = augment.random_resized_crop(image, _seed(0), size=size)
    assert out.dtype == tf.float32
    assert tuple(out.shape) == expected
    assert 0.0 <= out.numpy().min() and out.numpy().max() <= 255.0
    # Float input in [0, 1] stays in [0, 1].
    out_f = augment.random_resized_crop(image.astype(np.float32) / 255.0, _seed(0), size=size)
    assert out_f.dtype == tf.float32
    assert 0.0 <= out_f.numpy().min() and out_f.numpy().max() <= 1.0
    np.testing.assert_allclose(out_f.numpy() * 255.0, out.numpy(), atol=1e-3)


def test_random_resized_crop_full_image_is_plain_resize():
    image = _random_uint8((12, 12, 3), seed=1)
    for i in range(3):
        out = augment.random_resized_crop(image, _seed(i), size=(7, 5), scale=(1, 1), ratio=(1, 1))
        np.testing.assert_allclose(out.numpy(), _np_resize_bilinear(image, 7, 5), atol=1e-3)


def _recover_box(out: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The crop ``(top, left, h, w)`` behind a resized crop of ``_coord_image(height, width)``,
    checking on the way that the output is a bilinear resize of a crop inside the image."""
    out_h, out_w = out.shape[:2]
    rows, cols = out[..., 0], out[..., 1]
    # Rows encode y only, columns x only; both strictly increasing; all inside the image.
    np.testing.assert_allclose(rows, rows[:, :1].repeat(out_w, axis=1), atol=1e-4)
    np.testing.assert_allclose(cols, cols[:1, :].repeat(out_h, axis=0), atol=1e-4)
    assert np.all(np.diff(rows[:, 0]) > 0) and np.all(np.diff(cols[0]) > 0)
    assert rows.min() >= 0 and rows.max() <= height - 1
    assert cols.min() >= 0 and cols.max() <= width - 1
    # out[i] = top + (i + 0.5) * h / out_h - 0.5 (no clamping when every crop side >= out).
    h = (rows[-1, 0] - rows[0, 0]) / (out_h - 1) * out_h
    w = (cols[0, -1] - cols[0, 0]) / (out_w - 1) * out_w
    top = rows[0, 0] - (0.5 * h / out_h - 0.5)
    left = cols[0, 0] - (0.5 * w / out_w - 0.5)
    for value in (h, w, top, left):
        assert abs(value - round(value)) < 1e-3
    top, left, h, w = (round(v) for v in (top, left, h, w))
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    return top, left, h, w


@pytest.mark.parametrize("seed", range(16))
def test_random_resized_crop_crops_inside_with_torchvision_params(seed):
    height, width = 64, 48
    scale, ratio = (0.1, 0.5), (3 / 4, 4 / 3)
    out = augment.random_resized_crop(
        _coord_image(height, width), _seed(seed), size=4, scale=scale, ratio=ratio
    ).numpy()
    _, _, h, w = _recover_box(out, height, width)
    # w = round(sqrt(A r)), h = round(sqrt(A / r)) with A / (H W) in scale, r in ratio:
    # (w - 1/2)(h - 1/2) <= A <= (w + 1/2)(h + 1/2), and likewise for r = w / h.
    area = height * width
    assert (w + 0.5) * (h + 0.5) >= scale[0] * area and (w - 0.5) * (h - 0.5) <= scale[1] * area
    assert (w - 0.5) / (h + 0.5) <= ratio[1] and (w + 0.5) / (h - 0.5) >= ratio[0]


@pytest.mark.parametrize(
    ("scale", "ratio", "hw"),
    [
        # A = 0.3 * 64 * 48 = 921.6: w = h = round(30.36) = 30.
        (0.3, 1.0, (30, 30)),
        # A = 768, r = 2: w = round(39.19) = 39, h = round(19.60) = 20.
        (0.25, 2.0, (20, 39)),
        # A = 3072 * 0.5, r = 1/2: w = round(27.71) = 28, h = round(55.43) = 55.
        (0.5, 0.5, (55, 28)),
    ],
)
def test_random_resized_crop_exact_size_random_position(scale, ratio, hw):
    height, width = 64, 48
    image = _coord_image(height, width)
    positions = set()
    for i in range(6):
        out = augment.random_resized_crop(
            image, _seed(i), size=(4, 3), scale=(scale, scale), ratio=(ratio, ratio)
        ).numpy()
        top, left, h, w = _recover_box(out, height, width)
        assert (h, w) == hw
        positions.add((top, left))
    assert len(positions) >= 5


def test_random_resized_crop_varies_with_seed_and_covers_scales():
    image = _coord_image(64, 48)
    outs = [augment.random_resized_crop(image, _seed(i), size=4).numpy() for i in range(24)]
    assert _n_distinct(outs) >= 22
    spans = [o[-1, 0, 0] - o[0, 0, 0] for o in outs]
    # Both small crops (area fraction near 0.08) and large ones (near 1) occur.
    assert min(spans) < 20 and max(spans) > 35


@pytest.mark.parametrize(
    ("shape", "scale", "ratio", "box"),
    [
        # Square image, ratio 3: h = round(8 / 3) = 3 rows at top (8 - 3) // 2 = 2.
        ((8, 8), (1.0, 1.0), (3.0, 3.0), (2, 0, 3, 8)),
        # Landscape 6x12 (ratio 2), ratio 1/2: w = round(6 * 0.5) = 3 at left (12 - 3) // 2 = 4.
        ((6, 12), (1.0, 1.0), (0.5, 0.5), (0, 4, 6, 3)),
        # Landscape 6x12 with ratio 1: an 8x8 candidate doesn't fit; 6x6 at left 3.
        ((6, 12), (1.0, 1.0), (1.0, 1.0), (0, 3, 6, 6)),
        # Twice the area never fits; the image's ratio 2 is in the range: the whole image.
        ((6, 12), (2.0, 2.0), (1.0, 4.0), (0, 0, 6, 12)),
    ],
)
def test_random_resized_crop_fallback_is_center_crop(shape, scale, ratio, box):
    image = _random_uint8((*shape, 3), seed=2)
    top, left, h, w = box
    expected = _np_resize_bilinear(image[top : top + h, left : left + w], 5, 7)
    for i in range(3):
        out = augment.random_resized_crop(image, _seed(i), size=(5, 7), scale=scale, ratio=ratio)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)
    # attempts=0 goes straight to the fallback whatever the scale.
    out = augment.random_resized_crop(
        image, _seed(0), size=(5, 7), scale=(0.1, 0.2), ratio=ratio, attempts=0
    )
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)


def test_random_resized_crop_rejects_bad_arguments():
    image = _random_uint8((8, 8, 3))
    with pytest.raises(ValueError):
        augment.random_resized_crop(image, _seed(0), size=4, scale=(0.5, 0.1))
    with pytest.raises(ValueError):
        augment.random_resized_crop(image, _seed(0), size=4, ratio=(0.0, 1.0))
    with pytest.raises(ValueError):
        augment.random_resized_crop(image, tf.constant([1, 2, 3]), size=4)


# ---------------------------------------------------------------------------------------------
# random_flip


@pytest.mark.parametrize("shape", [(5, 7, 3), (6, 4, 1)])
def test_random_flip_is_identity_or_mirror_and_both_occur(shape):
    image = _random_uint8(shape, seed=3)
    flipped = 0
    for i in range(32):
        out = augment.random_flip(image, _seed(i))
        assert out.dtype == tf.uint8 and tuple(out.shape) == shape
        out = out.numpy()
        is_same, is_mirror = np.array_equal(out, image), np.array_equal(out, image[:, ::-1])
        assert is_same != is_mirror
        flipped += is_mirror
    assert 6 <= flipped <= 26


# ---------------------------------------------------------------------------------------------
# random_translate


@pytest.mark.parametrize(("shape", "dtype"), [((8, 8, 1), np.uint8), ((6, 9, 3), np.float32)])
def test_random_translate_is_an_integer_shift_with_zero_fill(shape, dtype):
    image = (np.arange(math.prod(shape)).reshape(shape) % 250 + 1).astype(dtype)  # no zeros
    max_shift = 2
    shifts = set()
    for i in range(40):
        out = augment.random_translate(image, _seed(i), max_shift=max_shift)
        assert out.dtype == tf.as_dtype(dtype) and tuple(out.shape) == shape
        out = out.numpy()
        matches = [
            (dy, dx)
            for dy in range(-max_shift, max_shift + 1)
            for dx in range(-max_shift, max_shift + 1)
            if np.array_equal(out, _np_shift(image, dy, dx))
        ]
        assert len(matches) == 1
        dy, dx = matches[0]
        shifts.add((dy, dx))
        # The vacated rows / columns are zero and nothing else is.
        zero_rows = slice(0, dy) if dy > 0 else slice(shape[0] + dy, shape[0])
        zero_cols = slice(0, dx) if dx > 0 else slice(shape[1] + dx, shape[1])
        assert np.all(out[zero_rows] == 0) and np.all(out[:, zero_cols] == 0)
        assert (
            np.count_nonzero(out == 0)
            == out.size - (shape[0] - abs(dy)) * (shape[1] - abs(dx)) * shape[2]
        )
    assert {dy for dy, _ in shifts} == set(range(-max_shift, max_shift + 1))
    assert {dx for _, dx in shifts} == set(range(-max_shift, max_shift + 1))


def test_random_translate_zero_shift_is_identity():
    image = _random_uint8((8, 8, 1), seed=4)
    for i in range(5):
        out = augment.random_translate(image, _seed(i), max_shift=0)
        np.testing.assert_array_equal(out.numpy(), image)


# ---------------------------------------------------------------------------------------------
# center_resize_crop


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((37, 53, 3), 16, (16, 16, 3)),
        ((20, 11, 1), (8, 6), (8, 6, 1)),
        ((9, 9, 3), 32, (32, 32, 3)),
    ],
)
def test_center_resize_crop_constant_colour_and_size(shape, size, expected):
    colour = np.array([10, 200, 77][: shape[-1]], np.uint8)
    image = np.broadcast_to(colour, shape).copy()
    out = augment.center_resize_crop(image, size=size)
    assert out.dtype == tf.float32 and tuple(out.shape) == expected
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(colour, expected), atol=1e-3)


@pytest.mark.parametrize(
    ("shape", "size", "crop_fraction", "resized", "offset"),
    [
        # Shorter side 6 -> int(4 / 0.8) = 5, longer int(5 * 8 / 6) = 6; crop at
        # (round(0.5), round(1.0)) = (0, 1) (round half to even).
        ((6, 8), 4, 0.8, (5, 6), (0, 1)),
        # Shorter side 7 -> 5, longer int(5 * 10 / 7) = 7; crop at (round(0.5), round(1.5)),
        # i.e. (0, 2), not floor((7 - 4) / 2) = 1.
        ((7, 10), 4, 0.8, (5, 7), (0, 2)),
        ((10, 7), 4, 0.8, (7, 5), (2, 0)),
        # Portrait: shorter side 37 -> int(16 / 0.875) = 18, longer int(18 * 50 / 37) = 24.
        ((50, 37), 16, 0.875, (24, 18), (4, 1)),
        # (h, w) = (4, 8) on a square image: the width binds: int(8 / 0.5) = 16 -> 16x16;
        # crop at (round(6), round(4)).
        ((10, 10), (4, 8), 0.5, (16, 16), (6, 4)),
        # crop_fraction 1 on an image already of the size: the identity.
        ((7, 5), (7, 5), 1.0, (7, 5), (0, 0)),
    ],
)
def test_center_resize_crop_matches_manual_resize_and_crop(
    shape, size, crop_fraction, resized, offset
):
    image = _random_uint8((*shape, 2), seed=5)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    full = _np_resize_bilinear(image, *resized)
    expected = full[offset[0] : offset[0] + out_h, offset[1] : offset[1] + out_w]
    out = augment.center_resize_crop(image, size=size, crop_fraction=crop_fraction)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)


def test_center_resize_crop_rejects_bad_crop_fraction():
    with pytest.raises(ValueError):
        augment.center_resize_crop(_random_uint8((8, 8, 3)), size=4, crop_fraction=1.5)


# ---------------------------------------------------------------------------------------------
# rand_augment


@pytest.mark.parametrize("shape", [(32, 32, 3), (12, 20, 3), (8, 8, 1), (9, 16, 1)])
def test_rand_augment_shape_dtype(shape):
    image = _random_uint8(shape, seed=6)
    outs = [augment.rand_augment(image, _seed(i)) for i in range(6)]
    for out in outs:
        assert out.dtype == tf.uint8 and tuple(out.shape) == shape
    assert _n_distinct(outs) >= 4


def test_rand_augment_every_op_keeps_shape_and_dtype():
    for shape in [(8, 8, 1), (10, 13, 3)]:
        image = _random_uint8(shape, seed=7)
        for name in augment.RAND_AUGMENT_OPS:
            out = augment.rand_augment(image, _seed(0), num_layers=1, magnitude=9, ops=[name])
            assert out.dtype == tf.uint8 and tuple(out.shape) == shape, name


def test_rand_augment_num_layers_zero_is_identity():
    image = _random_uint8((16, 16, 3), seed=8)
    for i in range(3):
        out = augment.rand_augment(image, _seed(i), num_layers=0, magnitude=10)
        np.testing.assert_array_equal(out.numpy(), image)


@pytest.mark.parametrize(
    "ops",
    [
        GEOMETRIC_OPS,
        tuple(op for op in augment.RAND_AUGMENT_OPS if op not in ("AutoContrast", "Equalize")),
    ],
)
def test_rand_augment_magnitude_zero_is_identity(ops):
    for shape in [(32, 32, 3), (9, 14, 1)]:
        image = _random_uint8(shape, seed=9)
        for i in range(6):
            out = augment.rand_augment(image, _seed(i), num_layers=3, magnitude=0, ops=ops)
            np.testing.assert_array_equal(out.numpy(), image)


def test_rand_augment_output_is_one_of_the_single_op_outputs():
    image = _random_uint8((16, 16, 3), seed=10)
    possible = {}  # output bytes -> op name, over both signs
    for name in augment.RAND_AUGMENT_OPS:
        for i in range(6):
            out = _single(image, name, 10, i)
            possible[out.tobytes()] = name
    assert len(set(possible.values())) >= 13  # (AutoContrast may equal Identity)
    chosen = []
    for i in range(40):
        out = augment.rand_augment(image, _seed(i), num_layers=1, magnitude=10).numpy()
        assert out.tobytes() in possible
        chosen.append(possible[out.tobytes()])
    assert len(set(chosen)) >= 9


def _single(image, name, magnitude, seed=0):
    return augment.rand_augment(
        image, _seed(seed), num_layers=1, magnitude=magnitude, ops=[name]
    ).numpy()


def _both_signs(image, name, magnitude):
    """The outputs of a symmetric op over 16 seeds; both signs must occur."""
    outs = [_single(image, name, magnitude, i) for i in range(16)]
    distinct = list({out.tobytes(): out for out in outs}.values())
    assert len(distinct) >= 2, name
    return distinct


def test_rand_augment_solarize_and_posterize():
    image = _random_uint8((16, 16, 3), seed=11)
    np.testing.assert_array_equal(_single(image, "Solarize", 10), 255 - image)
    # Magnitude 5: threshold 256 - 128 = 128.
    expected = np.where(image < 128, image, 255 - image)
    np.testing.assert_array_equal(_single(image, "Solarize", 5), expected)
    np.testing.assert_array_equal(_single(image, "Posterize", 10), image & 0xF0)  # keep 4 bits
    np.testing.assert_array_equal(_single(image, "Posterize", 5), image & 0xFC)  # keep 6 bits


def test_rand_augment_brightness_contrast_color():
    image = _random_uint8((16, 16, 3), seed=12)
    f = image.astype(np.float64)

    def blend(degenerate, factor):
        return np.clip(np.round(degenerate + factor * (f - degenerate)), 0, 255).astype(np.uint8)

    outs = _both_signs(image, "Brightness", 10)
    assert len(outs) == 2
    expected = [blend(0.0, 0.1), blend(0.0, 1.9)]
    for e in expected:  # up to float32 rounding of the factor at .5 boundaries
        assert any(np.abs(o.astype(int) - e).max() <= 1 for o in outs)

    grey = np.round(f @ np.array([0.299, 0.587, 0.114]))[..., None]
    outs = _both_signs(image, "Color", 5)
    expected = [blend(grey, 0.55), blend(grey, 1.45)]
    assert len(outs) == 2
    for e in expected:
        assert any(np.abs(o.astype(int) - e).max() <= 1 for o in outs)

    mean = np.floor(grey.mean() + 0.5)
    outs = _both_signs(image, "Contrast", 10)
    expected = [blend(mean, 0.1), blend(mean, 1.9)]
    assert len(outs) == 2
    for e in expected:
        assert any(np.abs(o.astype(int) - e).max() <= 1 for o in outs)


def test_rand_augment_colour_ops_on_grey_images():
    grey1 = _random_uint8((12, 12, 1), seed=13)
    grey3 = np.repeat(grey1, 3, axis=-1)
    for i in range(4):
        np.testing.assert_array_equal(_single(grey1, "Color", 10, i), grey1)
        np.testing.assert_array_equal(_single(grey3, "Color", 10, i), grey3)
        # Contrast on one channel uses the channel itself as grey level, as on the RGB copy.
        np.testing.assert_array_equal(
            _single(grey1, "Contrast", 10, i), _single(grey3, "Contrast", 10, i)[..., :1]
        )


def test_rand_augment_autocontrast_and_equalize():
    rng = np.random.default_rng(14)
    image = rng.integers(50, 101, size=(32, 32, 3), dtype=np.uint8)
    image[..., 2] = 77  # a constant channel is left alone
    out = _single(image, "AutoContrast", 9)
    assert out[..., :2].min(axis=(0, 1)).tolist() == [0, 0]
    assert out[..., :2].max(axis=(0, 1)).tolist() == [255, 255]
    np.testing.assert_array_equal(out[..., 2], image[..., 2])
    order = np.argsort(image[..., 0].ravel(), kind="stable")
    assert np.all(np.diff(out[..., 0].ravel()[order].astype(int)) >= 0)  # monotone

    skewed = (rng.beta(2, 8, size=(32, 32, 3)) * 255).astype(np.uint8)
    out = _single(skewed, "Equalize", 9)
    np.testing.assert_array_equal(out, _np_equalize(skewed))
    assert out.max() > 240 and not np.array_equal(out, skewed)
    # 8x8 images are too small for PIL's equalize (step 0): unchanged.
    tiny = _random_uint8((8, 8, 1), seed=15)
    np.testing.assert_array_equal(_single(tiny, "Equalize", 9), tiny)


def test_rand_augment_sharpness_keeps_borders_and_constants():
    image = _random_uint8((10, 12, 3), seed=16)
    for out in _both_signs(image, "Sharpness", 10):
        assert not np.array_equal(out, image)
        for border in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
            np.testing.assert_array_equal(out[border], image[border])
    flat = np.full((10, 12, 3), 99, np.uint8)
    np.testing.assert_array_equal(_single(flat, "Sharpness", 10), flat)


@pytest.mark.parametrize(("name", "axis"), [("TranslateX", 1), ("TranslateY", 0)])
def test_rand_augment_translate_moves_by_45_percent_with_fill_128(name, axis):
    image = _random_uint8((20, 20, 3), seed=17)
    shift = 9  # 0.45 * 20
    outs = _both_signs(image, name, 10)
    assert len(outs) == 2
    for sign in (1, -1):
        d = (sign * shift, 0) if axis == 0 else (0, sign * shift)
        expected = _np_shift(image, *d, fill=128)
        assert any(np.array_equal(out, expected) for out in outs)


def test_rand_augment_rotate_and_shear():
    zeros = np.zeros((32, 32, 3), np.uint8)
    for out in _both_signs(zeros, "Rotate", 10):
        assert np.all(out[0, 0] == 128) and np.all(out[-1, -1] == 128)  # corners leave
        assert np.all(out[12:20, 12:20] == 0)  # the centre stays
    image = _random_uint8((16, 16, 3), seed=18)
    for out in _both_signs(image, "ShearX", 10):
        np.testing.assert_array_equal(out[0], image[0])  # row 0 doesn't move
        assert not np.array_equal(out[-1], image[-1])
    for out in _both_signs(image, "ShearY", 10):
        np.testing.assert_array_equal(out[:, 0], image[:, 0])  # column 0 doesn't move
        assert not np.array_equal(out[:, -1], image[:, -1])


def test_rand_augment_magnitude_may_be_a_tensor():
    image = _random_uint8((12, 12, 3), seed=22)
    for i in range(3):
        np.testing.assert_array_equal(
            augment.rand_augment(image, _seed(i), magnitude=tf.constant(7.0)).numpy(),
            augment.rand_augment(image, _seed(i), magnitude=7).numpy(),
        )


def test_rand_augment_rejects_bad_inputs():
    with pytest.raises(TypeError):
        augment.rand_augment(np.zeros((8, 8, 3), np.float32), _seed(0))
    with pytest.raises(ValueError):
        augment.rand_augment(np.zeros((8, 8, 2), np.uint8), _seed(0))
    with pytest.raises(ValueError):
        augment.rand_augment(np.zeros((8, 8, 3), np.uint8), _seed(0), ops=["Invert"])


# ---------------------------------------------------------------------------------------------
# Determinism, graph mode


def _all_random_ops(image, seed):
    """Every random op on ``image`` (uint8 [H, W, 3]) with sub-seeds of ``seed``."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    return (
        augment.random_resized_crop(image, seeds[0], size=(6, 5)),
        augment.random_flip(image, seeds[1]),
        augment.random_translate(image, seeds[2], max_shift=3),
        augment.rand_augment(image, seeds[3]),
        augment.center_resize_crop(image, size=(6, 5)),
    )


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_same_seed_same_output_different_seeds_differ(dtype):
    image = _random_uint8((14, 18, 3), seed=19)
    first = [o.numpy() for o in _all_random_ops(image, _seed(7, dtype))]
    again = [o.numpy() for o in _all_random_ops(image, _seed(7, dtype))]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    others = [[o.numpy() for o in _all_random_ops(image, _seed(i, dtype))] for i in range(8)]
    for k, name in enumerate(["crop", "flip", "translate", "rand_augment"]):
        n = _n_distinct([first[k]] + [o[k] for o in others])
        assert n >= (2 if name == "flip" else 6), name


def test_graph_mode_matches_eager():
    """Each op under ``tf.function`` with dynamic height and width equals the eager result."""
    spec = tf.TensorSpec([None, None, 3], tf.uint8)

    @tf.function(input_signature=[spec, tf.TensorSpec([2], tf.int32)])
    def graph_ops(image, seed):
        return _all_random_ops(image, seed)

    for shape in [(14, 18, 3), (20, 11, 3)]:
        image = _random_uint8(shape, seed=20)
        for i in range(2):
            eager = _all_random_ops(image, _seed(i))
            graph = graph_ops(image, _seed(i))
            for e, g in zip(eager, graph, strict=True):
                assert e.dtype == g.dtype
                np.testing.assert_array_equal(e.numpy(), g.numpy())


def test_tf_data_map():
    """A ``tf.data`` pipeline of 1-channel digits-like images, seeded per example."""
    images = _random_uint8((4, 8, 8, 1), seed=21)
    base = tf.constant([3, 4], tf.int64)

    def preprocess(index, image):
        seed = tf.random.experimental.stateless_fold_in(base, index)
        seeds = tf.random.experimental.stateless_split(seed, 2)
        image = augment.rand_augment(image, seeds[0], num_layers=2, magnitude=9)
        image = augment.random_translate(image, seeds[1], max_shift=1)
        return augment.to_float(image, (0.5,), (0.5,))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(4, dtype=tf.int64), images))
    out = np.stack(list(ds.map(preprocess).as_numpy_iterator()))
    assert out.shape == (4, 8, 8, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack(list(ds.map(preprocess).as_numpy_iterator())))
    for i in range(4):
        np.testing.assert_array_equal(out[i], preprocess(tf.constant(i, tf.int64), images[i]))
    assert out.min() >= -1.0 and out.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# to_float


def test_to_float_known_values():
    image = np.array([[[0, 128, 255], [51, 255, 0]]], np.uint8)  # [1, 2, 3]
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = np.array(
        [
            [
                [(0 - 0.1) / 0.5, (128 / 255 - 0.2) / 0.25, (1 - 0.3) / 2.0],
                [(0.2 - 0.1) / 0.5, (1 - 0.2) / 0.25, (0 - 0.3) / 2.0],
            ]
        ]
    )
    out = augment.to_float(image, mean, std)
    assert out.dtype == tf.float32 and tuple(out.shape) == (1, 2, 3)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    # A float image with the same values gives the same result.
    np.testing.assert_allclose(
        augment.to_float(image.astype(np.float32), mean, std).numpy(), expected, atol=1e-6
    )
    grey = augment.to_float(np.array([[[0], [255]]], np.uint8), (0.5,), (0.5,))
    np.testing.assert_allclose(grey.numpy(), [[[-1.0], [1.0]]], atol=1e-6)
