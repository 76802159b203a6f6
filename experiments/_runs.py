"""What the comparison programs share: one training run per workdir, resumable, whose measured
result is kept beside it (`result.json`), so that rerunning a comparison reads finished runs back
and continues an interrupted one from its last checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence

from train import cli, loop
from train import config as config_lib

__all__ = ["RESULT", "Interrupted", "train_once", "parse"]

RESULT = "result.json"


class Interrupted(RuntimeError):
    """A run that stopped before its last step (SIGTERM); its checkpoint resumes it."""


def train_once(config, workdir: str, measure: Callable[[dict], dict]) -> dict:
    """`workdir/result.json` if the run finished before; else train (or resume) `config` there
    with `train.loop.run`, `measure(summary)` the finished run, add `wall_seconds` (this
    sitting's share) and keep the result. Raises `Interrupted` if the run stopped early."""
    path = os.path.join(workdir, RESULT)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    started = time.perf_counter()
    summary = loop.run(config, workdir)
    if summary["stopped_by"] != "finished" or summary["step"] < summary["total_steps"]:
        raise Interrupted(f"{workdir}: stopped at step {summary['step']} of "
                          f"{summary['total_steps']} ({summary['stopped_by']}); rerun to resume")
    result = measure(summary)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def parse(p: argparse.ArgumentParser, argv: Sequence[str], *, out: str, copied: str
          ) -> tuple[argparse.Namespace, dict[str, str]]:
    """Add `--out DIR` (default `out`) and `--results DIR` (where the `copied` files are copied
    too) to `p`; return `argv`'s flags and its `--config.FIELD` overrides. Bad flags exit 2 with
    the usage (argparse)."""
    p.add_argument("--out", default=out)
    p.add_argument("--results", default=None,
                   help=f"also copy {copied} here (e.g. docs/results)")
    try:
        return cli.parse(p, argv)
    except config_lib.ConfigError as e:
        p.error(str(e))
