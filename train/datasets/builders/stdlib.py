"""TFDS builder ``stdlib_bytes`` (:mod:`train.datasets.stdlib`): byte windows of the Python
standard library's own sources."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from train.datasets import stdlib
from train.datasets.builders._common import examples

__all__ = ["StdlibBytes", "StdlibBytesConfig"]


@dataclasses.dataclass
class StdlibBytesConfig(tfds.core.BuilderConfig):
    """``seq_len``: bytes per input sequence; ``max_files``: keep the first files only;
    ``max_file_bytes``: keep the first bytes of each file only."""

    seq_len: int = 256
    max_files: int | None = None
    max_file_bytes: int | None = None


class StdlibBytes(tfds.core.GeneratorBasedBuilder):
    """Byte windows of the Python standard library's ``.py`` sources (no download).

    Registered as ``stdlib_bytes``; one config per entry of :data:`stdlib.CONFIGS` (``default``:
    256 bytes, every non-test file; ``small``: 64 bytes, the first 4 KiB of the first 24 files,
    for tests; ``seq4096``, ``seq65536``: long windows). Splits ``train`` / ``test`` by path
    hash.
    """

    VERSION = tfds.core.Version(stdlib.VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [  # made from the numpy source's table, so that the two cannot drift
        StdlibBytesConfig(name=name, **dataclasses.asdict(windows),
                          description=stdlib.describe(windows))
        for name, windows in stdlib.CONFIGS.items()
    ]
    DEFAULT_CONFIG_NAME = "default"
    code_path: ClassVar[epath.Path] = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        seq_len = self.builder_config.seq_len
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Byte sequences of the Python standard library's own .py sources on the "
                f"preparing machine (Python {platform.python_version()}), tests and "
                "site-packages excluded, split by a SHA-256 hash of the relative path; windows "
                f"of {seq_len} + 1 bytes (inputs and shifted targets), stride {seq_len}."),
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(seq_len + 1,), dtype=np.uint8),
                "offset": tfds.features.Scalar(dtype=np.int64),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://docs.python.org/3/library/",
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # the sources are on this machine
        config = self.builder_config
        windows = stdlib.Windows(config.seq_len, config.max_files, config.max_file_bytes)
        root = stdlib.stdlib_root()
        files = stdlib.split_files(windows, root)
        arrays = {split: stdlib.split_arrays(split, windows, root) for split in stdlib.SPLITS}
        meta = self.info.metadata
        meta["python_version"] = platform.python_version()
        meta["stdlib"] = str(root)
        meta["seq_len"] = config.seq_len
        for split, paths in files.items():
            meta[f"{split}_files"] = len(paths)
            meta[f"{split}_bytes"] = len(stdlib.split_stream(root, paths, config.max_file_bytes))
        return {split: self._generate_examples(a) for split, a in arrays.items()}

    def _generate_examples(self, arrays) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from examples(arrays, np.arange(len(arrays["tokens"])))
