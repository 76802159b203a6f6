"""`train.metrics`: the JSON lines, and TensorBoard event files that TensorBoard's own loader reads
and that are written without importing TensorFlow."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from tests._util import REPO
from train.metrics import MetricsWriter, read_jsonl


def _events(workdir):
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
    return files, [list(LegacyEventFileLoader(f).Load()) for f in files]


def test_tensorboard_reads_every_finite_scalar_at_its_step(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    writer.write(1, "train", {"loss": 2.5, "accuracy": 0.25})
    writer.write(2, "test", {"loss": float("nan"), "accuracy": 0.5})
    writer.close()
    writer.close()  # closing twice is harmless
    files, (events,) = _events(tmp_path)
    assert len(files) == 1
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(1, "train/loss", 2.5), (1, "train/accuracy", 0.25),
                       (2, "test/accuracy", 0.5)]  # NaN is left out of TensorBoard
    assert [line["loss"] for line in read_jsonl(tmp_path / "metrics.jsonl")] == [2.5, None]


def test_two_writers_in_one_second_write_two_files(tmp_path):
    """A resumed run in the same process (the tests do it) must not overwrite the first file."""
    for step in (1, 2):
        writer = MetricsWriter(str(tmp_path))
        writer.write(step, "train", {"loss": float(step)})
        writer.close()
    files, events = _events(tmp_path)
    assert len(files) == 2
    assert [[e.step for e in file_events[1:]] for file_events in events] == [[1], [2]]


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(str(tmp_path / "run"), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="without TensorFlow installed the check cannot fail")
def test_writing_events_does_not_import_tensorflow(tmp_path):
    """tensorboard's own EventFileWriter imports TensorFlow when it is installed (seconds at
    every start of `python -m train`); ours must not, with TensorFlow installed here."""
    code = ("import sys\n"
            "from train.metrics import MetricsWriter\n"
            f"w = MetricsWriter({str(tmp_path)!r})\n"
            "w.write(1, 'train', {'loss': 1.0})\n"
            "w.close()\n"
            "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, check=True)
    assert out.stdout.strip() == "False", "writing an event file imported TensorFlow"
    assert len(_events(tmp_path)[0]) == 1
