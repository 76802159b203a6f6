"""RandAugment (Cubuk et al. 2019) for the TensorFlow input pipeline, with the 14 ops of the
paper and timm's "increasing" magnitude conventions (magnitude 0 is the identity for every op).

Every op maps a single ``[H, W, C]`` image and draws its randomness from a stateless seed (see
``train.augment``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from train.augment.geometric import _as_seed, _check_image, _height_width, _static_channels

__all__ = ["MAX_MAGNITUDE", "RAND_AUGMENT_OPS", "rand_augment"]

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
