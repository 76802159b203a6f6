"""Run output: `metrics.jsonl`, TensorBoard event files and the progress bar (process 0 only).

Every JSON line has `step`, `split`, `loss` and `accuracy`; train lines also `lr` and
`images_per_sec`. The TensorBoard event file is written with plain file I/O and the `tensorboard`
package's record format, never through TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tqdm import tqdm

__all__ = ["MetricsWriter", "Progress", "read_jsonl"]


def _clean(value):
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN: null marks non-finite


_FILE_NUMBERS = itertools.count()  # two runs of one process within a second get two files


class _EventFile:
    """One TensorBoard event file, `logdir/events.out.tfevents.TIME.HOST.PID.N`, written
    synchronously with `open()`. (tensorboard's `EventFileWriter` opens its file through
    `tensorboard.compat.tf`, which imports TensorFlow whenever it is installed: 3-5 s at every
    start of `python -m train`, for a file of a few records.)"""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_FILE_NUMBERS)}")
        self._records = RecordWriter(open(os.path.join(logdir, name), "wb"))  # noqa: SIM115 -- closed in close()
        self.add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()


class MetricsWriter:
    """Appends JSON lines to `workdir/metrics.jsonl` and scalars to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = _EventFile(os.path.join(workdir, "tensorboard")) if enabled else None

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        line = {"step": int(step), "split": split, "time": time.time()}
        line.update({k: _clean(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
            for k, v in values.items() if math.isfinite(float(v))])
        self._tb.add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm bar over the run's steps showing loss, accuracy, images/s; tqdm adds the ETA."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step",
                        disable=not enabled, mininterval=1.0)

    def update(self, steps: int, values: Mapping[str, float] | None = None) -> None:
        if values:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self.bar.update(steps)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
