"""What the comparison programs share: one training run per workdir, resumable, whose measured
result is kept beside it (`result.json`), so that rerunning a comparison reads finished runs back
and continues an interrupted one from its last checkpoint; and the models' train steps timed side
by side in one process (`measure_step_times`), measured once and kept (`kept_step_times`)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from cbsa_jax.reporting import count_params, machine_info, write_json
from cbsa_jax.training import release_host_memory
from train import cli, loop
from train import config as config_lib
from train import data as data_lib

__all__ = ["RESULT", "Interrupted", "train_once", "parse", "run_name", "earlier_results",
           "restore_result", "measure_step_times", "kept_step_times"]

RESULT = "result.json"
#: `{"wall_seconds": [...]}`: a run's sittings that stopped early (in `train_once`'s workdir)
SITTINGS = "sittings.json"


class Interrupted(RuntimeError):
    """A run that stopped before its last step (SIGTERM); its checkpoint resumes it."""


def _sittings(workdir: str) -> list[float]:
    """The wall seconds of the run's earlier sittings that a SIGTERM ended (`SITTINGS`)."""
    path = os.path.join(workdir, SITTINGS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(s) for s in json.load(f)["wall_seconds"]]


def train_once(config, workdir: str, measure: Callable[[dict], dict]) -> dict:
    """`workdir/result.json` if the run finished before; else train (or resume) `config` there
    with `train.loop.run`, `measure(summary)` the finished run, add `wall_seconds` (the wall
    clock of every sitting it took: a sitting that stops early appends its own to
    `workdir/sittings.json`, and `sittings` counts them) and `machine` (where it finished) and
    keep the result; the heap's free memory goes back to the system after the run and after its
    measurement (`release_host_memory`). Raises `Interrupted` if the run stopped early."""
    path = os.path.join(workdir, RESULT)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    os.makedirs(workdir, exist_ok=True)  # `loop.run` makes it too, but may stop before
    earlier = _sittings(workdir)
    started = time.perf_counter()
    summary = loop.run(config, workdir)
    release_host_memory()  # this run's buffers, before the next program of the process
    if summary["stopped_by"] != "finished" or summary["step"] < summary["total_steps"]:
        write_json(os.path.join(workdir, SITTINGS),
                   {"wall_seconds": [*earlier, round(time.perf_counter() - started, 1)]})
        raise Interrupted(f"{workdir}: stopped at step {summary['step']} of "
                          f"{summary['total_steps']} ({summary['stopped_by']}); rerun to resume")
    result = measure(summary)
    release_host_memory()
    result["wall_seconds"] = round(sum(earlier) + time.perf_counter() - started, 1)
    result["sittings"] = len(earlier) + 1
    result["machine"] = machine_info()  # where it finished: a comparison's runs may not share one
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    with open(path) as f:  # as a later comparison reads it back (JSON has no tuples)
        return json.load(f)


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_name(run: Mapping) -> str:
    """A comparison's name for one of its runs: the last two parts of its workdir, `ROW/seedS`."""
    return "/".join(str(run["workdir"]).replace(os.sep, "/").split("/")[-2:])


def earlier_results(paths: Sequence[str], recipe: Mapping, dataset_version: str | None = None,
                    mass: float | None = None) -> dict[str, tuple[dict, str]]:
    """The finished runs that earlier comparisons' JSON files (`paths`: each with `recipe` and
    `runs`, a finished comparison's or a partial one's) record, by `run_name`, each with the
    file it came from (a later file wins). The files must have been made with `recipe` (the
    comparison's shared config, as JSON), on the data set's `dataset_version` (where it has one,
    the file must state it) and, where the file records one, with the same attention `mass`;
    else `ConfigError` names what differs."""
    found: dict[str, tuple[dict, str]] = {}
    for path in paths:
        try:
            with open(path) as f:
                payload = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise config_lib.ConfigError(f"--runs-from: cannot read {path} ({e})") from e
        if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list) \
                or "recipe" not in payload:
            raise config_lib.ConfigError(f"--runs-from: {path} is not a comparison's JSON "
                                         "(expected its 'recipe' and 'runs')")
        made_on = payload.get("dataset_version")
        if dataset_version and made_on != dataset_version:
            raise config_lib.ConfigError(
                f"--runs-from: {path} was made on "
                f"{f'version {made_on}' if made_on else 'an unrecorded version'} of the data "
                f"set, this comparison trains on {dataset_version}")
        if mass is not None and payload.get("mass", mass) != mass:
            raise config_lib.ConfigError(f"--runs-from: {path} measured the attention Jaccard at "
                                         f"--mass {payload['mass']}, this comparison at {mass}")
        theirs, ours = _flat(payload["recipe"]), _flat(recipe)
        differ = sorted(k for k in theirs.keys() | ours.keys()
                        if theirs.get(k, "<absent>") != ours.get(k, "<absent>"))
        if differ:
            raise config_lib.ConfigError(
                f"--runs-from: {path} was made with another recipe (fields {', '.join(differ)}: "
                f"{[theirs.get(k, '<absent>') for k in differ]} there, "
                f"{[ours.get(k, '<absent>') for k in differ]} here)")
        for run in payload["runs"]:  # runs kept before they named their machine: the file's
            if not isinstance(run, dict) or "workdir" not in run:
                raise config_lib.ConfigError(f"--runs-from: {path} holds a run without its "
                                             "'workdir'")
            found[run_name(run)] = ({"machine": payload.get("machine"), **run}, path)
    return found


def restore_result(workdir: str, result: Mapping, source: str) -> None:
    """Keep `result` (an earlier comparison's run, from the file `source`) as `workdir`'s
    finished run, which `train_once` then reads back instead of training."""
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, RESULT),
               {**result, "workdir": workdir, "restored_from": source})


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


def measure_step_times(configs: Mapping[str, object], *, rounds: int) -> dict[str, dict]:
    """Per key of `configs`: the median wall and process CPU seconds of its run's train step (the
    step `python -m train` compiles, on the first batch of its own input), every step timed in
    the same process, in `rounds` interleaved rounds (one step of each per round) after one
    warm-up step each, so that whatever else the machine does hits all of them alike; and its
    batch size, images (or sequences) per second from the wall median, and its parameters."""
    steps, batches, leaves, params, sizes = {}, {}, {}, {}, {}
    for key, config in configs.items():
        source = data_lib.open_input(config)
        spec = source.spec
        exp = loop.experiment(config, num_classes=spec.num_classes, channels=spec.channels,
                              image_size=spec.image_size, steps_per_epoch=spec.steps_per_epoch)
        state = jax.jit(exp.task.init, out_shardings=exp.state_sharding)(jax.random.key(0))
        params[key] = count_params(exp.model(state))
        batches[key] = next(source.train_batches(exp.task.definition.train_keys,
                                                 exp.batch_sharding, start_step=0))
        sizes[key] = int(config.batch_size)
        steps[key] = exp.train_step()
        leaves[key] = steps[key].flatten(state)
        leaves[key], metrics = steps[key](leaves[key], batches[key])  # compile, warm up
        jax.block_until_ready(metrics)
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for key in configs:
            c0, w0 = time.process_time(), time.perf_counter()
            leaves[key], metrics = steps[key](leaves[key], batches[key])
            jax.block_until_ready((leaves[key], metrics))
            cpu[key].append(time.process_time() - c0)
            wall[key].append(time.perf_counter() - w0)
    out = {}
    for key in configs:
        step_wall = float(np.median(wall[key]))
        out[key] = {"step_cpu_seconds": float(np.median(cpu[key])),
                    "step_wall_seconds": step_wall, "batch_size": sizes[key],
                    "per_sec": sizes[key] / step_wall, "parameters": params[key],
                    "cpu_seconds": cpu[key], "wall_seconds": wall[key]}
    return out


def kept_step_times(path: str, configs: Mapping[str, object], *, rounds: int) -> dict[str, dict]:
    """`measure_step_times(configs)`, measured once and kept in `path` (JSON: the machine, the
    rounds and the `steps`; a file holding only the steps, as written before, is read too): read
    back while it holds every key of `configs`, else all of them are timed again together (a step
    timed alone, in another sitting, would not be comparable)."""
    if os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        steps = kept.get("steps", kept)
        if set(configs) <= set(steps):
            return steps
    steps = measure_step_times(configs, rounds=rounds)
    release_host_memory()  # every timed model's state and buffers
    write_json(path, {"rounds": rounds, "machine": machine_info(), "steps": steps})
    return steps
