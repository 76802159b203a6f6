"""What the builders share: turning a split's arrays into TFDS examples."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["SplitsBuilder", "examples"]


def examples(arrays: Mapping[str, np.ndarray], keys: np.ndarray | None = None
             ) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(key, example)` for every row of `arrays` (features with a leading example axis); the
    key is the row's `index` feature unless `keys` are given (TFDS orders the stored examples by
    their keys' hashes, so the same keys give the same prepared files)."""
    keys = arrays["index"] if keys is None else keys
    for row, key in enumerate(np.asarray(keys)):
        yield int(key), {name: value[row] for name, value in arrays.items()}


class SplitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose every split is `SOURCE.split_arrays(split)` for split in `SOURCE.SPLITS`
    (a numpy source module of `train.datasets`), keyed by the `index` feature."""

    SOURCE: ClassVar[ModuleType]
    VERSION = tfds.core.Version("1.0.0")  # each subclass: its SOURCE's
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    # Each builder states its `code_path = epath.Path(__file__)`: TFDS 4.9.10 locates a builder's
    # source through `importlib_resources`, which it only declares for Python < 3.9.

    def _split_generators(self, dl_manager: tfds.download.DownloadManager
                          ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # the data are on this machine
        return {split: self._generate_examples(self.SOURCE.split_arrays(split))
                for split in self.SOURCE.SPLITS}

    def _generate_examples(self, arrays) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from examples(arrays)
