"""The TFDS builders of the shipped data sets, one per file; importing this package registers
them with TFDS (the numpy sources they write are in :mod:`train.datasets`).

Training programs prepare them with :func:`prepare`, which never asks TFDS to fetch a pre-built
copy from GCS::

    from train.datasets import builders

    builder = builders.prepare("shapes", data_dir="/path/to/tfds")  # or data_dir=None
    train_ds = builder.as_dataset(split="train", as_supervised=True)

Preparing is a no-op when the data already exist in ``data_dir``. Configs (``"shapes/small"``,
``"shapes64/small"``, ``"stdlib_bytes/small"``) can be named as usual.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from train.datasets import LOCAL_BUILDERS
from train.datasets.builders.digits import Digits
from train.datasets.builders.mnist5k import Mnist5k
from train.datasets.builders.shapes import Shapes
from train.datasets.builders.shapes64 import Shapes64
from train.datasets.builders.stdlib import StdlibBytes

__all__ = ["BUILDERS", "LOCAL_BUILDERS", "prepare"]

#: TFDS name -> builder class (their import registered them).
BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits": Digits, "mnist5k": Mnist5k, "shapes": Shapes, "shapes64": Shapes64,
    "stdlib_bytes": StdlibBytes}
assert tuple(BUILDERS) == LOCAL_BUILDERS


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
