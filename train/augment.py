"""Image augmentation ops of the TensorFlow input pipeline.

Every op works on a single image ``[H, W, C]`` (not a batch) and is written with TensorFlow ops
only, so it can be called inside a ``tf.data`` ``map`` function (graph mode, ``tf.function``)
as well as eagerly. Height and width may be dynamic; the channel count must be static where an
op says so.

All randomness is **stateless**: each random op takes a ``seed``, a shape-``[2]`` ``int32`` or
``int64`` tensor, and derives every random number from it with
``tf.random.stateless_uniform`` and ``tf.random.experimental.stateless_split`` /
``stateless_fold_in``. The same seed always gives the same output, which is what lets the
training program resume an epoch exactly. Use a different seed per example and per op, e.g.
``seeds = tf.random.experimental.stateless_split(example_seed, 3)``.

Ops:

* :func:`random_resized_crop`: torchvision ``RandomResizedCrop`` (bilinear, antialias off).
* :func:`random_flip`: horizontal flip with probability 1/2.
* :func:`random_translate`: integer shift with zero padding (for tiny images).
* :func:`center_resize_crop`: evaluation transform, ``Resize(int(size / crop_fraction))`` then
  ``CenterCrop(size)``.
* :func:`rand_augment`: RandAugment (Cubuk et al. 2019) with the 14 ops of the paper and timm's
  "increasing" magnitude conventions (magnitude 0 is the identity for every op).
* :func:`to_float`: ``(image / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf

__all__ = [
    "MAX_MAGNITUDE",
    "RAND_AUGMENT_OPS",
    "center_resize_crop",
    "rand_augment",
    "random_flip",
    "random_resized_crop",
    "random_translate",
    "to_float",
]

Size = int | tuple[int, int] | Sequence[int]

#: The magnitude at which every RandAugment op reaches its maximum strength (timm, big_vision).
MAX_MAGNITUDE = 10.0

#: The 14 RandAugment ops of Cubuk et al. (2019), in the order used to index them.
RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)

_MAX_ROTATE_DEGREES = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE_FRACTION = 0.45  # timm's translate_pct: a fraction of the image width/height
_MAX_ENHANCE_DELTA = 0.9  # enhance factor 1 +- delta
_MAX_POSTERIZE_DROPPED_BITS = 4  # keep 8 .. 4 bits
_FILL_VALUE = 128.0  # fill of the affine ops, as timm / big_vision


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_seed(seed) -> tf.Tensor:
    """``seed`` as a shape-[2] int32/int64 tensor (other integer types are cast to int64)."""
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        if not seed.dtype.is_integer:
            raise TypeError(f"seed must be an integer tensor, got {seed.dtype}")
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"seed must have shape [2], got {seed.shape}")
    return seed


def _as_size(size: Size) -> tuple[int, int]:
    """``size`` (int or (h, w)) as a pair of positive Python ints."""
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def _check_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {image.shape}")
    return image


def _static_channels(image: tf.Tensor) -> int:
    channels = image.shape[-1]
    if channels is None:
        raise ValueError("the number of channels of the image must be static")
    return int(channels)


def _height_width(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


def _resize_bilinear(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize of ``[H, W, C]`` to ``[h, w, C]`` float32 (half-pixel centres, no
    antialiasing: torch's ``interpolate(mode="bilinear", align_corners=False)``)."""
    out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
    return tf.cast(out, tf.float32)


# ---------------------------------------------------------------------------------------------
# Geometric ops


def random_resized_crop(
    image,
    seed,
    *,
    size: Size,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tf.Tensor:
    """A random crop, resized: torchvision's ``RandomResizedCrop`` (bilinear, antialias off).

    As ``RandomResizedCrop.get_params``: up to ``attempts`` times, an area fraction is drawn
    uniformly from ``scale`` and an aspect ratio (width / height) log-uniformly from ``ratio``;
    ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area / ratio))`` (round half to even, as
    Python's ``round``); the first candidate with ``0 < h <= H`` and ``0 < w <= W`` is placed at a
    uniformly random integer offset. If none fits, the fallback is a central crop: the whole
    image with its aspect ratio clamped to ``ratio`` (``h = round(W / min(ratio))`` or
    ``w = round(H * max(ratio))``), at offset ``((H - h) // 2, (W - w) // 2)``. The crop is then
    resized bilinearly with half-pixel centres and no antialiasing.

    All candidates are drawn at once (vectorised), so the random numbers differ from torch's,
    but the distribution is the same.

    Args:
      image: ``[H, W, C]`` uint8 or float image.
      seed: shape-``[2]`` int32/int64 stateless seed.
      size: output size, an int (square) or ``(h, w)``.
      scale: range of the crop's area as a fraction of the image's area.
      ratio: range of the crop's aspect ratio ``width / height``.
      attempts: number of tries before the fallback (Python int >= 0).

    Returns:
      ``[h, w, C]`` float32, in the input's value range (0..255 for uint8 input).
    """
    image = _check_image(image)
    seed = _as_seed(seed)
    out_h, out_w = _as_size(size)
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1], got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < ratio[0] <= ratio[1], got {ratio}")
    attempts = int(attempts)
    if attempts < 0:
        raise ValueError(f"attempts must be >= 0, got {attempts}")

    height, width = _height_width(image)
    h_f = tf.cast(height, tf.float64)
    w_f = tf.cast(width, tf.float64)

    # Fallback: central crop with the aspect ratio clamped to `ratio` (torchvision).
    in_ratio = w_f / h_f
    min_ratio, max_ratio = float(ratio[0]), float(ratio[1])
    fb_h = tf.where(
        in_ratio < min_ratio,
        tf.cast(tf.round(w_f / min_ratio), tf.int32),
        height,
    )
    fb_w = tf.where(
        in_ratio > max_ratio,
        tf.cast(tf.round(h_f * max_ratio), tf.int32),
        width,
    )
    top = (height - fb_h) // 2
    left = (width - fb_w) // 2
    crop_h, crop_w = fb_h, fb_w

    if attempts > 0:
        seeds = tf.random.experimental.stateless_split(seed, 4)
        area = h_f * w_f
        target_area = area * tf.random.stateless_uniform(
            [attempts], seed=seeds[0], minval=scale[0], maxval=scale[1], dtype=tf.float64
        )
        log_ratio = tf.random.stateless_uniform(
            [attempts],
            seed=seeds[1],
            minval=math.log(min_ratio),
            maxval=math.log(max_ratio),
            dtype=tf.float64,
        )
        aspect = tf.exp(log_ratio)
        cand_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
        cand_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
        fits = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
        # Uniform integer offsets in [0, H - h] and [0, W - w].
        u_top = tf.random.stateless_uniform([attempts], seed=seeds[2], dtype=tf.float64)
        u_left = tf.random.stateless_uniform([attempts], seed=seeds[3], dtype=tf.float64)
        span_h = tf.maximum(height - cand_h, 0)
        span_w = tf.maximum(width - cand_w, 0)
        cand_top = tf.minimum(
            tf.cast(tf.floor(u_top * tf.cast(span_h + 1, tf.float64)), tf.int32), span_h
        )
        cand_left = tf.minimum(
            tf.cast(tf.floor(u_left * tf.cast(span_w + 1, tf.float64)), tf.int32), span_w
        )
        first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        any_fits = tf.reduce_any(fits)
        crop_h = tf.where(any_fits, cand_h[first], crop_h)
        crop_w = tf.where(any_fits, cand_w[first], crop_w)
        top = tf.where(any_fits, cand_top[first], top)
        left = tf.where(any_fits, cand_left[first], left)

    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([crop_h, crop_w, -1]))
    out = _resize_bilinear(crop, (out_h, out_w))
    out.set_shape([out_h, out_w, image.shape[-1]])
    return out


def random_flip(image, seed) -> tf.Tensor:
    """Flip an image left-right with probability 1/2.

    Args:
      image: ``[H, W, C]`` image of any dtype.
      seed: shape-``[2]`` int32/int64 stateless seed.

    Returns:
      ``[H, W, C]``, same dtype: ``image`` or ``image[:, ::-1]``.
    """
    image = _check_image(image)
    seed = _as_seed(seed)
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    out = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    out.set_shape(image.shape)
    return out


def random_translate(image, seed, *, max_shift: int) -> tf.Tensor:
    """Shift an image by a random whole number of pixels, padding with zeros.

    The shifts ``dy`` (down) and ``dx`` (right) are drawn independently and uniformly from the
    integers in ``[-max_shift, max_shift]``: ``out[y, x] = image[y - dy, x - dx]`` where that is
    inside the image, else 0. Meant for tiny images (e.g. 8x8 digits) where a resized crop
    destroys too much.

    Args:
      image: ``[H, W, C]`` image of any numeric dtype.
      seed: shape-``[2]`` int32/int64 stateless seed.
      max_shift: the largest shift in pixels (int >= 0); 0 is the identity.

    Returns:
      ``[H, W, C]``, same dtype as ``image``.
    """
    image = _check_image(image)
    seed = _as_seed(seed)
    if isinstance(max_shift, int) and max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    max_shift = tf.cast(max_shift, tf.int32)
    shifts = tf.random.stateless_uniform(
        [2], seed=seed, minval=-max_shift, maxval=max_shift + 1, dtype=tf.int32
    )
    height, width = _height_width(image)
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    begin = tf.stack([max_shift - shifts[0], max_shift - shifts[1], 0])
    out = tf.slice(padded, begin, tf.stack([height, width, -1]))
    out.set_shape(image.shape)
    return out


def center_resize_crop(image, *, size: Size, crop_fraction: float = 0.875) -> tf.Tensor:
    """Evaluation transform: torchvision ``Resize(int(size / crop_fraction))`` then
    ``CenterCrop(size)``, bilinear (half-pixel centres, no antialiasing).

    For an int ``size`` the shorter side is resized to ``s = int(size / crop_fraction)`` and the
    longer one to ``int(s * long / short)``, as torchvision. For ``(h, w)`` the image is resized,
    keeping its aspect ratio, to the smallest such size that covers
    ``(int(h / crop_fraction), int(w / crop_fraction))`` (the same rule when ``h == w``). The
    centre crop starts at ``round((H' - h) / 2)``, ``round((W' - w) / 2)`` (half to even, as
    torchvision's ``CenterCrop``).

    Args:
      image: ``[H, W, C]`` uint8 or float image.
      size: output size, an int (square) or ``(h, w)``.
      crop_fraction: the fraction of the resized image kept, in ``(0, 1]``.

    Returns:
      ``[h, w, C]`` float32, in the input's value range (0..255 for uint8 input).
    """
    image = _check_image(image)
    out_h, out_w = _as_size(size)
    if not (0.0 < crop_fraction <= 1.0):
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    target_h = int(out_h / crop_fraction)
    target_w = int(out_w / crop_fraction)

    height, width = _height_width(image)
    h_f = tf.cast(height, tf.float64)
    w_f = tf.cast(width, tf.float64)
    # Which side binds: the one needing the larger scale factor (the shorter side when h == w).
    height_binds = target_h * w_f >= target_w * h_f
    new_h = tf.where(height_binds, target_h, tf.cast(tf.floor(target_w * h_f / w_f), tf.int32))
    new_w = tf.where(height_binds, tf.cast(tf.floor(target_h * w_f / h_f), tf.int32), target_w)

    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bilinear", antialias=False
    )
    top = tf.cast(tf.round(tf.cast(new_h - out_h, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - out_w, tf.float64) / 2.0), tf.int32)
    out = tf.slice(resized, tf.stack([top, left, 0]), [out_h, out_w, -1])
    out = tf.cast(out, tf.float32)
    out.set_shape([out_h, out_w, image.shape[-1]])
    return out


# ---------------------------------------------------------------------------------------------
# RandAugment. Every op maps a float32 [H, W, C] image with integer values in 0..255 to the same,
# given a float32 scalar magnitude in [0, 10] and a sign (+1 or -1, used by symmetric ops).


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """``[H, W, 1]`` luma (ITU-R 601-2, as PIL's ``convert("L")``), rounded; a 1-channel image
    is its own grayscale."""
    if image.shape[-1] == 1:
        return image
    weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
    return tf.round(tf.reduce_sum(image * weights, axis=-1, keepdims=True))


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor * (image - degenerate)``, rounded, clipped."""
    out = degenerate + factor * (image - degenerate)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def _enhance_factor(magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return 1.0 + sign * magnitude / MAX_MAGNITUDE * _MAX_ENHANCE_DELTA


def _affine(image: tf.Tensor, transform: Sequence[tf.Tensor]) -> tf.Tensor:
    """Apply an output->input map ``[a0, a1, a2, b0, b1, b2]`` (see
    ``tf.raw_ops.ImageProjectiveTransformV3``), bilinear, points outside filled with 128."""
    height, width = _height_width(image)
    transform = tf.stack([tf.cast(t, tf.float32) for t in transform] + [0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.stack([height, width]),
        fill_value=tf.constant(_FILL_VALUE, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def _identity(image, magnitude, sign):
    del magnitude, sign
    return image


def _auto_contrast(image, magnitude, sign):
    """Stretch each channel to 0..255 (PIL ``ImageOps.autocontrast`` without cutoff)."""
    del magnitude, sign
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor((image - lo) * scale), 0.0, 255.0)
    return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL ``ImageOps.equalize`` of one ``[H, W]`` channel (float values 0..255)."""
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 256
    safe_step = tf.maximum(step, 1)
    exclusive_cumsum = tf.cumsum(hist, exclusive=True)
    lut = tf.minimum((exclusive_cumsum + step // 2) // safe_step, 255)
    equalized = tf.cast(tf.gather(lut, values), tf.float32)
    return tf.where(step > 0, equalized, channel)


def _equalize(image, magnitude, sign):
    del magnitude, sign
    channels = [_equalize_channel(image[:, :, c]) for c in range(image.shape[-1])]
    return tf.stack(channels, axis=-1)


def _rotate(image, magnitude, sign):
    """Rotate counter-clockwise by ``sign * magnitude / 10 * 30`` degrees about the centre."""
    angle = sign * magnitude / MAX_MAGNITUDE * _MAX_ROTATE_DEGREES * (math.pi / 180.0)
    height, width = _height_width(image)
    h1 = tf.cast(height, tf.float32) - 1.0
    w1 = tf.cast(width, tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    return _affine(image, [cos, -sin, x_offset, sin, cos, y_offset])


def _solarize(image, magnitude, sign):
    """Invert the pixels ``>= 256 - int(magnitude / 10 * 256)``."""
    del sign
    threshold = 256.0 - tf.floor(magnitude / MAX_MAGNITUDE * 256.0)
    return tf.where(image < threshold, image, 255.0 - image)


def _color(image, magnitude, sign):
    """Saturation (PIL ``ImageEnhance.Color``); the identity on 1-channel images."""
    return _blend(_grayscale(image), image, _enhance_factor(magnitude, sign))


def _posterize(image, magnitude, sign):
    """Keep the ``8 - int(magnitude / 10 * 4)`` most significant bits."""
    del sign
    dropped = tf.floor(magnitude / MAX_MAGNITUDE * _MAX_POSTERIZE_DROPPED_BITS)
    step = tf.pow(2.0, dropped)
    return tf.floor(image / step) * step


def _contrast(image, magnitude, sign):
    """PIL ``ImageEnhance.Contrast``: blend with the (rounded) mean grey level."""
    mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
    return _blend(mean, image, _enhance_factor(magnitude, sign))


def _brightness(image, magnitude, sign):
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(tf.zeros_like(image), image, _enhance_factor(magnitude, sign))


def _sharpness(image, magnitude, sign):
    """PIL ``ImageEnhance.Sharpness``: blend with the ``SMOOTH``-filtered image (borders kept)."""
    channels = image.shape[-1]
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(
        image[tf.newaxis], kernel, strides=[1, 1, 1, 1], padding="VALID"
    )[0]
    smooth = tf.pad(tf.round(smooth), [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(smooth[1:-1, 1:-1, :1], tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior, smooth, image)
    return _blend(degenerate, image, _enhance_factor(magnitude, sign))


def _shear_x(image, magnitude, sign):
    """``out[y, x] = in[y, x + s * y]`` with ``s = sign * magnitude / 10 * 0.3`` (PIL affine)."""
    shear = sign * magnitude / MAX_MAGNITUDE * _MAX_SHEAR
    return _affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0])


def _shear_y(image, magnitude, sign):
    """``out[y, x] = in[y + s * x, x]`` with ``s = sign * magnitude / 10 * 0.3``."""
    shear = sign * magnitude / MAX_MAGNITUDE * _MAX_SHEAR
    return _affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0])


def _translate_x(image, magnitude, sign):
    """``out[y, x] = in[y, x + t]`` with ``t = sign * magnitude / 10 * 0.45 * W`` pixels."""
    _, width = _height_width(image)
    shift = sign * magnitude / MAX_MAGNITUDE * _MAX_TRANSLATE_FRACTION * tf.cast(width, tf.float32)
    return _affine(image, [1.0, 0.0, shift, 0.0, 1.0, 0.0])


def _translate_y(image, magnitude, sign):
    """``out[y, x] = in[y + t, x]`` with ``t = sign * magnitude / 10 * 0.45 * H`` pixels."""
    height, _ = _height_width(image)
    shift = sign * magnitude / MAX_MAGNITUDE * _MAX_TRANSLATE_FRACTION * tf.cast(height, tf.float32)
    return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, shift])


_OPS: dict[str, Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "Identity": _identity,
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Rotate": _rotate,
    "Solarize": _solarize,
    "Color": _color,
    "Posterize": _posterize,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}
assert tuple(_OPS) == RAND_AUGMENT_OPS


def rand_augment(
    image,
    seed,
    *,
    num_layers: int = 2,
    magnitude: float = 9,
    ops: Sequence[str] | None = None,
) -> tf.Tensor:
    """RandAugment (Cubuk et al. 2019) with timm's "increasing" magnitude conventions.

    ``num_layers`` times, one op is chosen uniformly (with replacement) from ``ops`` and applied
    at ``magnitude`` (clipped to ``[0, 10]``); symmetric ops get a random sign. With ``m =
    magnitude / 10``:

    * Identity; AutoContrast (per-channel stretch to 0..255); Equalize (per-channel histogram
      equalisation, PIL's algorithm; the identity on images too small for it);
    * Rotate by ``+-30 m`` degrees about the centre; ShearX / ShearY by ``+-0.3 m``;
      TranslateX / TranslateY by ``+-0.45 m`` of the width / height (so it suits 32x32 images);
      all bilinear, with the area outside the image filled with 128;
    * Solarize: invert pixels ``>= 256 - int(256 m)``; Posterize: keep ``8 - int(4 m)`` bits;
    * Color, Contrast, Brightness, Sharpness: PIL's ``ImageEnhance`` with factor ``1 +- 0.9 m``.

    Magnitude 0 is the identity for every op except AutoContrast and Equalize. On a 1-channel
    image Color is the identity and Contrast uses that channel as the grey level.

    Args:
      image: ``[H, W, C]`` uint8 image, ``C`` static and 1 or 3, ``H, W >= 3``.
      seed: shape-``[2]`` int32/int64 stateless seed.
      num_layers: number of ops applied in sequence (Python int >= 0); 0 is the identity.
      magnitude: strength in ``[0, 10]`` (Python number or float scalar tensor).
      ops: names of the ops to choose from (a subset of :data:`RAND_AUGMENT_OPS`, repeats
        allowed); default all 14.

    Returns:
      ``[H, W, C]`` uint8.
    """
    image = _check_image(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"rand_augment expects a uint8 image, got {image.dtype}")
    channels = _static_channels(image)
    if channels not in (1, 3):
        raise ValueError(f"rand_augment supports 1 or 3 channels, got {channels}")
    seed = _as_seed(seed)
    num_layers = int(num_layers)
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    names = RAND_AUGMENT_OPS if ops is None else tuple(ops)
    if not names:
        raise ValueError("ops must not be empty")
    unknown = [name for name in names if name not in _OPS]
    if unknown:
        raise ValueError(f"unknown RandAugment ops {unknown}; known: {RAND_AUGMENT_OPS}")
    if num_layers == 0:
        return image

    magnitude = tf.clip_by_value(tf.cast(magnitude, tf.float32), 0.0, MAX_MAGNITUDE)
    out = tf.cast(image, tf.float32)
    for layer in range(num_layers):
        op_seed, sign_seed = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, layer), 2
            )
        )
        index = tf.random.stateless_uniform(
            [], seed=op_seed, minval=0, maxval=len(names), dtype=tf.int32
        )
        sign = tf.where(tf.random.stateless_uniform([], seed=sign_seed) < 0.5, -1.0, 1.0)

        def branch(fn, x=out, sign=sign):
            def apply():
                y = fn(x, magnitude, sign)
                y.set_shape(x.shape)
                return y

            return apply

        out = tf.switch_case(index, [branch(_OPS[name]) for name in names])
        out.set_shape(image.shape)
    return _to_uint8(out)


# ---------------------------------------------------------------------------------------------
# Normalisation


def to_float(image, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """Normalise: ``(image / 255 - mean) / std`` per channel, as float32.

    Args:
      image: ``[..., C]`` uint8 image, or float with values in 0..255 (e.g. the output of
        :func:`random_resized_crop` on a uint8 image).
      mean: per-channel means of ``image / 255`` (length ``C``, or 1 to broadcast).
      std: per-channel standard deviations of ``image / 255`` (same length rules).

    Returns:
      float32, the shape of ``image``.
    """
    image = tf.convert_to_tensor(image)
    mean_t = tf.constant(mean, tf.float32)
    std_t = tf.constant(std, tf.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean_t) / std_t
