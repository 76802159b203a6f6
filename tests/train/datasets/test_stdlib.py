"""The ``stdlib_bytes`` TFDS builder: real bytes of this Python's stdlib, deterministic, split by
path hash, fixed lengths, its provenance recorded."""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import pytest
import tensorflow_datasets as tfds

from train.datasets import builders as datasets
from train.datasets import stdlib
from train.datasets.builders.stdlib import StdlibBytes


def _load(builder, split):
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tfds.disable_progress_bar()
    builder = datasets.prepare("stdlib_bytes/small", str(tmp_path_factory.mktemp("stdlib")))
    return builder, {split: _load(builder, split) for split in ("train", "test")}


def test_examples_are_the_stdlib_bytes(small):
    builder, data = small
    config = builder.builder_config
    root = stdlib.stdlib_root()
    files = stdlib.source_files(root, config.max_files)
    for split, arrays in data.items():
        paths = [p for p in files if stdlib.split_of(p) == split]
        stream = np.frombuffer(stdlib.split_stream(root, paths, config.max_file_bytes), np.uint8)
        tokens, offsets = arrays["tokens"], arrays["offset"]
        assert tokens.dtype == np.uint8 and tokens.shape[1] == config.seq_len + 1 == 65
        assert len(tokens) == (len(stream) - 1) // config.seq_len > 0
        order = np.argsort(offsets)
        np.testing.assert_array_equal(offsets[order], np.arange(len(tokens)) * config.seq_len)
        for i in order[:: max(len(order) // 7, 1)]:
            np.testing.assert_array_equal(tokens[i], stream[offsets[i]: offsets[i] + 65])
    text = bytes(data["train"]["tokens"][np.argmin(data["train"]["offset"])])
    assert text.startswith(b'"""')  # __future__.py's docstring: real source text


def test_split_is_by_path_hash():
    files = stdlib.source_files()
    assert files == sorted(files) and len(files) > 100
    assert not any(part in stdlib.EXCLUDED_DIRS for f in files for part in f.split("/")[:-1])
    assert all(f.endswith(".py") for f in files)
    for path in files[:50]:
        digest = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)
        assert stdlib.split_of(path) == ("test" if digest % 10 == 0 else "train")
    fraction = np.mean([stdlib.split_of(f) == "test" for f in files])
    assert 0.05 < fraction < 0.15


def test_metadata_records_python_and_bytes(small):
    builder, data = small
    meta = builder.info.metadata
    assert meta["python_version"] == platform.python_version()
    assert meta["train_files"] + meta["test_files"] == 24
    for split in ("train", "test"):
        assert (meta[f"{split}_bytes"] - 1) // 64 == len(data[split]["tokens"])


def test_preparation_is_deterministic(small, tmp_path):
    _, data = small
    again = datasets.prepare("stdlib_bytes/small", str(tmp_path))
    for split in ("train", "test"):
        other = _load(again, split)
        a, b = np.argsort(data[split]["offset"]), np.argsort(other["offset"])
        np.testing.assert_array_equal(data[split]["tokens"][a], other["tokens"][b])


def test_windows_overlap_by_one_byte():
    w = stdlib.windows(bytes(range(10)), 3)
    np.testing.assert_array_equal(w, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    assert stdlib.windows(b"ab", 3).shape == (0, 4)


def test_builder_configs_are_made_from_the_source_configs():
    configs = {c.name: c for c in StdlibBytes.BUILDER_CONFIGS}
    assert list(configs) == list(stdlib.CONFIGS)
    for name, windows in stdlib.CONFIGS.items():
        c = configs[name]
        assert stdlib.Windows(c.seq_len, c.max_files, c.max_file_bytes) == windows
        assert c.description == stdlib.describe(windows)
    assert (stdlib.CONFIGS["seq4096"].seq_len, stdlib.CONFIGS["seq65536"].seq_len) == (4096, 65536)
    assert stdlib.describe(stdlib.CONFIGS["small"]) == (
        "64-byte windows of the first 4096 bytes of the first 24 files.")
