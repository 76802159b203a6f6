"""`train.data.open_input`: the memory and TFDS inputs agree, and the memory input needs no
TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests._configs import CONFIGS, tiny_config, tiny_flags
from tests._util import REPO, xla_flags
from train import data, loop
from train.datasets import builders

INPUTS = ("memory", "tfds")

#: A `sitecustomize` that makes TensorFlow and TFDS look uninstalled: no finder finds them, so
#: `import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec` answers None.
NO_TENSORFLOW = '''
import sys

_ABSENT = ("tensorflow", "tensorflow_datasets")


class _Without:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _ABSENT:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [_Without(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory):
    """TFDS data_dirs with `shapes64/small` and `stdlib_bytes/small` prepared."""
    path = str(tmp_path_factory.mktemp("tfds_small"))
    for name in ("shapes64/small", "stdlib_bytes/small"):
        builders.prepare(name, path)
    return path


def _eval_rows(config, keys) -> tuple[data.DataSpec, np.ndarray]:
    """(spec, every valid eval row flattened to one line, rows sorted)."""
    source = data.open_input(config)
    lines = []
    for batch in source.eval_batches(keys):
        valid = np.asarray(batch["valid"]) > 0
        parts = [np.asarray(batch[k], np.float64)[valid].reshape(int(valid.sum()), -1)
                 for k in keys]
        lines.append(np.concatenate(parts, axis=1))
    rows = np.concatenate(lines)
    return source.spec, rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name,overrides,keys", [
    ("digits.py", {"image_size": 12, "data_shards": 3, "batch_size": 48, "eval_batch_size": 48},
     ("image", "label")),
    ("shapes64_seg.py", {"dataset": "shapes64/small", "image_size": 32, "batch_size": 50,
                         "segmentation.reduce_zero_label": True,
                         "segmentation.num_classes": 5}, ("image", "segmentation")),
    ("lm_stdlib.py", {"dataset": "stdlib_bytes/small"}, ("tokens",)),
], ids=["digits-upsampled-3-shards", "shapes64-seg-downsampled", "stdlib-bytes"])
def test_both_inputs_evaluate_the_same_examples(data_dir, small_dirs, name, overrides, keys):
    """The same shard sizes and batches per epoch, and the same examples (resized, normalised,
    class maps mapped) in the eval batches, whatever their order."""
    directory = data_dir if name == "digits.py" else small_dirs
    (a, rows_a), (b, rows_b) = (
        _eval_rows(tiny_config(name, **{"data_dir": directory, **overrides, "input": kind}),
                   keys) for kind in INPUTS)
    for field in ("num_classes", "channels", "image_size", "shards", "train_examples",
                  "eval_examples", "shard_batch", "shard_eval_batch", "steps_per_epoch",
                  "eval_steps"):
        assert getattr(a, field) == getattr(b, field), field
    assert rows_a.shape == rows_b.shape == (sum(a.eval_examples), rows_a.shape[1])
    np.testing.assert_allclose(rows_a, rows_b, atol=1e-4)


def test_both_inputs_give_the_same_stored_examples(data_dir):
    stored = {}
    for kind in INPUTS:
        source = data.open_input(tiny_config(data_dir=data_dir, input=kind))
        assert {"image", "label"} <= set(source.features)
        batches = list(source.examples("test", ("image", "label"), batch_size=100))
        assert [len(b["label"]) for b in batches] == [100, 100, 100, 60]
        images = np.concatenate([b["image"] for b in batches])
        assert images.dtype == np.uint8 and images.shape == (360, 8, 8, 1)
        lines = np.c_[images.reshape(360, -1), np.concatenate([b["label"] for b in batches])]
        stored[kind] = lines[np.lexsort(lines.T[::-1])]
    np.testing.assert_array_equal(stored["memory"], stored["tfds"])


def test_both_inputs_train_digits_to_the_same_accuracy(data_dir, tmp_path):
    """A short training (300 steps of 32, about 7 epochs) of one block on each input, from the
    same initialisation: the inputs differ only in their shuffles and augmentation draws, samples
    of one distribution, so their test accuracies differ by noise. On 360 test images an
    accuracy near 0.75 has a binomial standard error of about 0.023, a difference of two about
    0.032; the tolerance, 0.08, is 2.5 of those. A broken input (wrong labels, images or
    normalisation) stays near chance (0.1), far below the floor of 0.6."""
    accuracy = {}
    for kind in INPUTS:
        summary = loop.run(tiny_config(data_dir=data_dir, input=kind, num_train_steps=300),
                           str(tmp_path / kind))
        accuracy[kind] = summary["final_eval"]["accuracy"]
    assert min(accuracy.values()) > 0.6, accuracy
    assert abs(accuracy["memory"] - accuracy["tfds"]) <= 0.08, accuracy


def test_without_tensorflow_the_shipped_sets_train_and_tfds_is_one_clear_line(tmp_path):
    """With TensorFlow and TFDS uninstalled (as on the lent GPU machines): `python -m train`
    trains configs/digits.py (the memory input, its default) and checkpoints,
    `train.tools.look_inside` reads its images, and `--config.input=tfds` exits 2 saying why."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {**os.environ, "XLA_FLAGS": xla_flags(),
           "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
           "JAX_COMPILATION_CACHE_DIR": os.environ["CBSA_JAX_TEST_XLA_CACHE"]}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)

    absent = run("-c", "import tensorflow")
    assert absent.returncode == 1 and "No module named 'tensorflow'" in absent.stderr
    workdir = tmp_path / "run"
    trained = run("-m", "train", "--config", os.path.join(CONFIGS, "digits.py"),
                  "--workdir", str(workdir), *tiny_flags())
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout.strip().splitlines()[-1])["step"] == 3
    assert os.listdir(workdir / "checkpoints") == ["3"]
    looked = run("-m", "train.tools.look_inside", "--workdir", str(workdir),
                 "--out", str(tmp_path / "look"), "--num_images", "2")
    assert looked.returncode == 0, looked.stderr
    assert (tmp_path / "look" / "interpret.json").exists()
    refused = run("-m", "train", "--workdir", str(tmp_path / "tfds"), "--config.input=tfds",
                  *tiny_flags())
    err = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(err) == 1, refused.stderr
    assert err[0].startswith("error: config.input='tfds' needs TensorFlow"), err


def test_each_tfds_process_reads_its_shard_of_the_one_process_batch(data_dir):
    """The TFDS input with `data_shards=2`: process i of 2 reads shard i, and the two
    processes' rows, process 0's first, are the rows one process reads, at every training step
    (from step 0, and from a resumed step across an epoch boundary: 5 steps an epoch here) and
    in every evaluation batch. (The memory input holds the whole split in every process and
    takes its rows through the sharding; it, and the jobs themselves, gloo collectives and a
    global batch built from each process's rows, are the 2 x 4 processes of
    test_distributed.py, whose every step's loss is one process's.)"""
    config = tiny_config(data_dir=data_dir, input="tfds", data_shards=2, batch_size=64,
                         eval_batch_size=64)
    keys = ("image", "label")
    one = data.open_input(config)
    two = [data.open_input(config, process_index=i, process_count=2) for i in range(2)]
    assert [len(p.spec.shards) for p in two] == [1, 1] and len(one.spec.shards) == 2

    def steps(source, start, count):
        iterator = source.train_batches(keys, start_step=start)
        return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(count)]

    for start in (0, 4):
        whole = steps(one, start, 3)
        parts = [steps(p, start, 3) for p in two]
        for step, batch in enumerate(whole):
            for key in keys:
                joined = np.concatenate([part[step][key] for part in parts])
                np.testing.assert_array_equal(joined, batch[key], err_msg=f"{start + step} {key}")
    whole = list(one.eval_batches(keys))
    parts = [list(p.eval_batches(keys)) for p in two]
    assert len(whole) == len(parts[0]) == len(parts[1]) == one.spec.eval_steps
    for step, batch in enumerate(whole):
        for key in (*keys, "valid"):
            joined = np.concatenate([np.asarray(part[step][key]) for part in parts])
            np.testing.assert_array_equal(joined, np.asarray(batch[key]))
