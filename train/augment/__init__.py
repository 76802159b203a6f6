"""Image augmentation ops of the TensorFlow input pipeline: geometric ops and normalisation
(`train.augment.geometric`) and RandAugment (`train.augment.randaugment`).

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

from train.augment.geometric import (
    center_resize_crop,
    random_flip,
    random_resized_crop,
    random_translate,
    to_float,
)
from train.augment.randaugment import MAX_MAGNITUDE, RAND_AUGMENT_OPS, rand_augment

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
