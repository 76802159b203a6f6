"""What the fault tests share: starting `python -m train` in other processes, watching a run's
files while it goes, and reading back what it recorded."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

from tests._configs import tiny_config, tiny_flags
from tests._util import REPO, xla_flags
from train import loop

__all__ = ["env", "start", "train_command", "steps_done", "committed_steps", "tmp_checkpoints",
           "final_metrics", "train_steps", "line_count", "wait_for", "error_lines",
           "corrupt_checkpoint", "TASK_RUNS", "TASK_STEPS", "TaskRuns"]


def env(*, devices: int | None = None) -> dict[str, str]:
    """The environment of a `python -m train` child: this checkout first on the path, the test
    session's compilation cache (so children reuse what the tests compiled), and `devices`
    virtual CPU devices (None: the test process's own XLA_FLAGS)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = REPO
    cache = os.environ.get("CBSA_JAX_TEST_XLA_CACHE")
    if cache:
        out["JAX_COMPILATION_CACHE_DIR"] = cache
    if devices is not None:
        out["XLA_FLAGS"] = xla_flags(devices)
    return out


def train_command(workdir, flags: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "--workdir", str(workdir), *extra, *flags]


def start(command: list[str], log_path, environment: dict[str, str]) -> subprocess.Popen:
    """Start `command` from the repository root, stdout and stderr into `log_path`."""
    log = open(log_path, "w")  # noqa: SIM115 -- the child owns it until it ends
    return subprocess.Popen(command, cwd=REPO, env=environment, stdout=log,
                            stderr=subprocess.STDOUT)


def _lines(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                pass
    return out


def steps_done(workdir) -> int:
    """The last training step recorded in `metrics.jsonl` (0 before the first)."""
    return max((m["step"] for m in _lines(workdir) if m["split"] == "train"), default=0)


def committed_steps(workdir) -> list[int]:
    """The checkpoints Orbax finished (renamed from their temporary directory)."""
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def tmp_checkpoints(workdir) -> list[str]:
    """Checkpoints being written (Orbax's temporary directories)."""
    path = os.path.join(workdir, "checkpoints")
    return sorted(n for n in os.listdir(path) if "tmp" in n) if os.path.isdir(path) else []


def final_metrics(workdir, keys=("loss", "accuracy")) -> dict:
    """`{(split, step): (values of keys)}`, the last line of each: replayed steps overwrite the
    lines of the run that was interrupted."""
    return {(m["split"], m["step"]): tuple(m.get(k) for k in keys) for m in _lines(workdir)}


def train_steps(workdir, first_line: int = 0) -> list[int]:
    """The training steps recorded from line `first_line` of `metrics.jsonl` on."""
    return [m["step"] for m in _lines(workdir)[first_line:] if m["split"] == "train"]


def line_count(workdir) -> int:
    return len(_lines(workdir))


def wait_for(condition, procs, timeout: float = 240.0, poll: float = 0.005) -> bool:
    """Poll `condition()` until it holds (True), a process of `procs` ends or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if any(p.poll() is not None for p in procs):
            return bool(condition())
        time.sleep(poll)
    return False


def error_lines(text: str) -> list[str]:
    """The lines a program printed as errors: ours (`error: ...`), Python's tracebacks, C++
    check failures and fatal log lines."""
    marks = ("error:", "Traceback", "*** Check failure", "Fatal Python error")
    return [line for line in text.splitlines()
            if line.startswith(marks) or re.match(r"F\d{4} ", line)]


def corrupt_checkpoint(path) -> None:
    """Truncate every file of the saved state in checkpoint directory `path` to one byte."""
    for root, _, files in os.walk(os.path.join(path, "state")):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(1)


#: The config file and the overrides of each task's small run: 8 steps, a checkpoint every 2,
#: an evaluation every 4.
TASK_RUNS = {
    "segmentation": ("shapes64_seg.py", {"dataset": "shapes64/small", "batch_size": 10,
                                         "eval_batch_size": 50, "image_size": 32,
                                         "segmentation.decoder_depth": 1}),
    "language": ("lm_stdlib.py", {"dataset": "stdlib_bytes/small", "batch_size": 8,
                                  "model.name": "lm_cbsa_nano"}),
}
TASK_STEPS = {"num_train_steps": 8, "checkpoint_every_steps": 2, "eval_every_steps": 4}


class TaskRuns:
    """`runs[task]`: the workdir of the task's finished small run, trained on first use;
    `config(task)` and `flags(task)` its config (and more overrides) and command-line flags."""

    def __init__(self, tmp_path_factory):
        self._factory = tmp_path_factory
        self._data_dir = None
        self._done = {}

    def overrides(self, task: str) -> dict:
        if self._data_dir is None:
            self._data_dir = str(self._factory.mktemp("tfds_tasks"))
        return {**TASK_RUNS[task][1], **TASK_STEPS, "data_dir": self._data_dir}

    def config(self, task: str, **more):
        return tiny_config(TASK_RUNS[task][0], **{**self.overrides(task), **more})

    def flags(self, task: str) -> list[str]:
        return tiny_flags(**self.overrides(task))

    def __getitem__(self, task: str) -> str:
        if task not in self._done:
            workdir = str(self._factory.mktemp(f"{task}_run"))
            with contextlib.redirect_stdout(io.StringIO()):
                loop.run(self.config(task), workdir)
            self._done[task] = workdir
        return self._done[task]
