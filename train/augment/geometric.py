"""Geometric image ops and normalisation of the TensorFlow input pipeline.

Every op works on a single image ``[H, W, C]`` (not a batch) and is written with TensorFlow ops
only, so it can be called inside a ``tf.data`` ``map`` function (graph mode, ``tf.function``)
as well as eagerly. Height and width may be dynamic; the channel count must be static where an
op says so. All randomness is stateless (see ``train.augment``).

* :func:`random_resized_crop`: torchvision ``RandomResizedCrop`` (bilinear, antialias off).
* :func:`random_flip`: horizontal flip with probability 1/2.
* :func:`random_translate`: integer shift with zero padding (for tiny images).
* :func:`center_resize_crop`: evaluation transform, ``Resize(int(size / crop_fraction))`` then
  ``CenterCrop(size)``.
* :func:`to_float`: ``(image / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

__all__ = ["center_resize_crop", "random_flip", "random_resized_crop", "random_translate",
           "to_float"]

Size = int | tuple[int, int] | Sequence[int]


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
