"""``stdlib_bytes``: byte sequences of the Python standard library's own sources, as arrays.

A real text corpus that is already on every machine that runs this code: the ``.py`` files under
``sysconfig.get_paths()["stdlib"]`` of the Python that prepares the dataset. Nothing is downloaded.

* Files: every ``*.py`` file below the stdlib directory, in sorted order of its relative POSIX
  path, **excluding** third-party and test code: any path with a directory ``site-packages``,
  ``dist-packages``, ``test``, ``tests``, ``idle_test`` or ``__pycache__`` (the test suites are
  more than half of the bytes and largely repetitive). On CPython 3.11.7 that leaves 734 files,
  12.1 MB. The ``small`` config keeps the first 4 KiB of the first 24 files (for tests); the
  ``seq4096`` and ``seq65536`` configs cut the same files into long windows (long contexts).
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

Deterministic (same Python, same files, same examples in the same order). :func:`split_arrays`
gives a whole split as arrays (no TensorFlow); the TFDS builder
:class:`train.datasets.builders.stdlib.StdlibBytes` writes the same examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sysconfig
from pathlib import Path

import numpy as np

__all__ = [
    "VERSION",
    "CONFIGS",
    "EXCLUDED_DIRS",
    "SEPARATOR",
    "SPLITS",
    "TEST_MODULUS",
    "Windows",
    "describe",
    "source_files",
    "split_arrays",
    "split_files",
    "split_of",
    "split_stream",
    "windows",
]

EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
TEST_MODULUS = 10
SEPARATOR = b"\x00"
VERSION = "1.0.0"  # of what it generates: its TFDS builder's version
SPLITS: tuple[str, ...] = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Windows:
    """``seq_len``: bytes per input sequence; ``max_files``: keep the first files only;
    ``max_file_bytes``: keep the first bytes of each file only."""

    seq_len: int = 256
    max_files: int | None = None
    max_file_bytes: int | None = None


#: ``default``: 256 bytes, every non-test file; ``small``: 64 bytes, the first 4 KiB of the
#: first 24 files (tests); ``seq4096`` and ``seq65536``: windows of 4,096 and 65,536 bytes of
#: every non-test file (long contexts). The TFDS builder's configs are made from this table.
CONFIGS: dict[str, Windows] = {
    "default": Windows(seq_len=256),
    "small": Windows(seq_len=64, max_files=24, max_file_bytes=4096),
    "seq4096": Windows(seq_len=4096),
    "seq65536": Windows(seq_len=65536),
}


def describe(config: Windows) -> str:
    """One line saying what a config's windows hold."""
    if config.max_files is None and config.max_file_bytes is None:
        files = "every non-test stdlib .py file"
    else:
        files = (f"the first {config.max_file_bytes or 'all'} bytes of the first "
                 f"{config.max_files or 'all'} files")
    return f"{config.seq_len}-byte windows of {files}."


def stdlib_root() -> Path:
    """This Python's standard-library directory."""
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


def split_files(config: Windows, root: Path | None = None) -> dict[str, list[str]]:
    """The relative paths of each split's files, in stream order."""
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for path in source_files(root, config.max_files):
        by_split[split_of(path)].append(path)
    return by_split


def split_arrays(split: str, config: str | Windows = "default",
                 root: Path | None = None) -> dict[str, np.ndarray]:
    """Every window of ``split``: ``tokens`` uint8 ``[n, seq_len + 1]`` and ``offset`` int64
    ``[n]`` (the window's start in the split's stream), in stream order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {config!r}")
        config = CONFIGS[config]
    root = stdlib_root() if root is None else Path(root)
    stream = split_stream(root, split_files(config, root)[split], config.max_file_bytes)
    tokens = windows(stream, config.seq_len)
    return {"tokens": tokens, "offset": np.arange(len(tokens), dtype=np.int64) * config.seq_len}
