"""TFDS builder ``stdlib_bytes``: byte sequences of the Python standard library's own sources.

A real text corpus that is already on every machine that runs this code: the ``.py`` files under
``sysconfig.get_paths()["stdlib"]`` of the Python that prepares the dataset. Nothing is downloaded.

* Files: every ``*.py`` file below the stdlib directory, in sorted order of its relative POSIX
  path, **excluding** third-party and test code: any path with a directory ``site-packages``,
  ``dist-packages``, ``test``, ``tests``, ``idle_test`` or ``__pycache__`` (the test suites are
  more than half of the bytes and largely repetitive). On CPython 3.11.7 that leaves 734 files,
  12.1 MB. The ``small`` config keeps the first 4 KiB of the first 24 files (for tests).
* Split: by a hash of the relative path, so a file never contributes to both splits and the
  assignment does not depend on which other files exist: ``test`` when
  ``int(sha256(path)[:8], 16) % TEST_MODULUS == 0`` (about 1 file in 10), else ``train``.
* Examples: per split, the files' bytes are concatenated in sorted order, each file followed by
  one ``\\x00`` separator (a byte that never occurs in Python source), and cut into windows of
  ``seq_len + 1`` bytes with stride ``seq_len`` (consecutive windows share one byte, so every
  byte but the first is a prediction target exactly once); the last partial window is dropped.
  Features: ``tokens`` (``uint8 [seq_len + 1]``: inputs ``tokens[:-1]``, targets ``tokens[1:]``)
  and ``offset`` (``int64``, the window's start in the split's stream).
* The sources differ between Python versions, so ``info.metadata`` records the Python version,
  the stdlib path, and per split the number of files and of bytes (``metadata.json`` in the
  prepared directory). A directory prepared by one Python is reused as is by another.

Preparation is deterministic (same Python, same files, same examples in the same order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "EXCLUDED_DIRS",
    "SEPARATOR",
    "TEST_MODULUS",
    "StdlibBytes",
    "StdlibBytesConfig",
    "source_files",
    "split_of",
    "split_stream",
    "windows",
]

EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
TEST_MODULUS = 10
SEPARATOR = b"\x00"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None, max_files: int | None = None) -> list[str]:
    """The sorted relative POSIX paths of the stdlib's ``.py`` files, tests excluded."""
    root = stdlib_root() if root is None else Path(root)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())
    paths = [p for p in paths if not EXCLUDED_DIRS.intersection(p.split("/")[:-1])]
    return paths if max_files is None else paths[:max_files]


def split_of(path: str) -> str:
    """``"test"`` for about one relative path in ``TEST_MODULUS`` (by SHA-256), else ``"train"``."""
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()
    return "test" if int(digest[:8], 16) % TEST_MODULUS == 0 else "train"


def split_stream(root: Path, paths: list[str], max_file_bytes: int | None = None) -> bytes:
    """The files' bytes in the given order (each cut to its first ``max_file_bytes`` if given),
    each followed by ``SEPARATOR``."""
    return b"".join((root / p).read_bytes()[:max_file_bytes] + SEPARATOR for p in paths)


def windows(stream: bytes, seq_len: int) -> np.ndarray:
    """``[num, seq_len + 1]`` uint8 windows of ``stream`` with stride ``seq_len``."""
    data = np.frombuffer(stream, np.uint8)
    num = max((len(data) - 1) // seq_len, 0)
    index = np.arange(num)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return data[index] if num else np.zeros((0, seq_len + 1), np.uint8)


@dataclasses.dataclass
class StdlibBytesConfig(tfds.core.BuilderConfig):
    """``seq_len``: bytes per input sequence; ``max_files``: keep the first files only;
    ``max_file_bytes``: keep the first bytes of each file only."""

    seq_len: int = 256
    max_files: int | None = None
    max_file_bytes: int | None = None


class StdlibBytes(tfds.core.GeneratorBasedBuilder):
    """Byte windows of the Python standard library's ``.py`` sources (no download).

    Registered as ``stdlib_bytes``; configs ``default`` (256 bytes, every non-test file) and
    ``small`` (64 bytes, the first 4 KiB of the first 24 files; for tests). Splits ``train`` /
    ``test`` by path hash.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        StdlibBytesConfig(name="default", seq_len=256,
                          description="256-byte windows of every non-test stdlib .py file."),
        StdlibBytesConfig(name="small", seq_len=64, max_files=24, max_file_bytes=4096,
                          description="64-byte windows of the first 4 KiB of the first 24 files "
                                      "(tests)."),
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
        root = stdlib_root()
        files = source_files(root, self.builder_config.max_files)
        by_split = {"train": [], "test": []}
        for path in files:
            by_split[split_of(path)].append(path)
        streams = {split: split_stream(root, paths, self.builder_config.max_file_bytes)
                   for split, paths in by_split.items()}
        meta = self.info.metadata
        meta["python_version"] = platform.python_version()
        meta["stdlib"] = str(root)
        meta["seq_len"] = self.builder_config.seq_len
        for split, paths in by_split.items():
            meta[f"{split}_files"] = len(paths)
            meta[f"{split}_bytes"] = len(streams[split])
        return {split: self._generate_examples(stream) for split, stream in streams.items()}

    def _generate_examples(self, stream: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
        seq_len = self.builder_config.seq_len
        for i, window in enumerate(windows(stream, seq_len)):
            yield i, {"tokens": window, "offset": i * seq_len}
