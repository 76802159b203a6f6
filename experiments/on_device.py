"""`python -m experiments.on_device --out DIR`: the convergence comparisons on one accelerator,
in one prepared call, within a time budget.

    python -m experiments.on_device --out DIR [--workdir runs/on_device] [--budget-s 420]
                                    [--jobs 4] [--only JOB,...] [--runs-from FILE,...]
                                    [--compare-args ARGS]

A lent GPU comes for minutes, bare and without TensorFlow, so everything it should train is
planned here: the comparisons of `docs/results` (the shapes64 nanos at the picos' 100 epochs;
each family's second size, `pico`, on MNIST; the finished ones: the shapes64 picos at 100
epochs, shapes64, shapes64_seg, the MNIST representatives sweep), split
into jobs (`JOBS`: one `experiments.compare` per model, decoder or sweep point, with the
committed recipes, so that the records match the CPU's) and run `--jobs` at a time as separate
processes sharing the device (`XLA_PYTHON_CLIENT_PREALLOCATE=false`), on the in-memory input
the configs default to, in `--workdir` (checkpoints and logs stay there). At `--budget-s` the
jobs still running get SIGTERM (a run saves its checkpoint and stops; what it has not finished
is lost with the machine).

Whatever finished lands in `DIR/NAME.json`, one file per comparison (the partial record of
`experiments.compare`: the recipe, this machine and the finished runs of all its jobs),
rewritten whenever a job ends, and `DIR/on_device.json` says how every job ended (with the end
of its log). Only these files are written to `DIR`, so that all of them come back from a lent
machine (which returns a few files of `$OUT`, not a tree of checkpoints). Back on the
CPU, `python -m experiments.compare ... --runs-from DIR/NAME.json --results docs/results` with
the same recipe keeps those runs, trains what is missing and times every row's step there (the
jobs run with `--speed-rounds 0`: a table's speeds are timed side by side on one machine).
`--runs-from` takes the records of runs already finished elsewhere (`docs/results/NAME.json`,
`docs/results/partial/NAME.json`): each goes to the jobs of its comparison, which train only
what it lacks. Imports nothing that needs TensorFlow. `--compare-args` appends flags to every
job (a smoke test on the CPU: tiny overrides such as `--config.num_train_steps=2`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from cbsa_jax.reporting import parse_list, write_json
from experiments._runs import run_name

__all__ = ["Job", "JOBS", "main", "merge", "run_jobs"]

#: MNIST's committed recipe (docs/results/mnist.json): 80 epochs, evaluated every 4.
MNIST80 = ("--config.num_epochs=80", "--config.eval_every_steps=320",
           "--config.checkpoint_every_steps=320")


@dataclasses.dataclass(frozen=True)
class Job:
    """One `experiments.compare` process: `name` (its folder and log), the comparison it adds
    runs to (`config`, whose file name names the record unless `record` does: compare's
    `--name`, a follow-up of the config's comparison) and its flags."""

    name: str
    config: str
    flags: tuple[str, ...]
    record: str = ""

    @property
    def comparison(self) -> str:
        return self.record or os.path.splitext(os.path.basename(self.config))[0]


#: The four families of the comparisons, at their second size (the frontier of issue 24).
PICO = ("cbt_pico", "crate_pico", "tost_pico", "vit_pico")

#: The four families at the size of the shapes64 and MNIST tables.
NANO = ("cbt_nano", "crate_nano", "tost_nano", "vit_nano")

#: The shapes64 models trained longer: 100 epochs, evaluated every 5 (the recipe of
#: docs/results/shapes64_pico100.json, whose ToST and ViT picos gained 3.5 and 4.2 points
#: after a 60-epoch curve that had already flattened).
LONGER100 = ("--config.num_epochs=100", "--config.eval_every_steps=1200",
           "--config.checkpoint_every_steps=1200")

#: In priority order: what is not yet measured at convergence comes first (the shapes64 nanos
#: at the picos' 100 epochs, so that the frontier compares both sizes at one budget; each
#: family's second size at the committed recipe on MNIST), then the tables the CPU has
#: finished: with --runs-from they train nothing.
JOBS: tuple[Job, ...] = (
    *(Job(f"shapes64_nano100_{m}", "configs/shapes64.py",
          ("--models", m, "--seeds", "3", *LONGER100), record="shapes64_nano100")
      for m in NANO),
    *(Job(f"shapes64_pico100_{m}", "configs/shapes64.py",
          ("--models", m, "--seeds", "3", *LONGER100), record="shapes64_pico100")
      for m in PICO),
    *(Job(f"mnist_{m}", "configs/mnist.py", ("--models", m, "--seeds", "3", *MNIST80))
      for m in PICO),
    *(Job(f"shapes64_{m}", "configs/shapes64.py", ("--models", m, "--seeds", "3"))
      for m in (*PICO, *NANO)),
    *(Job(f"shapes64_seg_{d}", "configs/shapes64_seg.py",
          ("--models", "cbt_nano", "--decoders", d, "--seeds", "3"))
      for d in ("cbt", "softmax", "linear")),
    *(Job(f"mnist_cells{k}", "configs/mnist.py",
          ("--models", "", "--sweep-cells", str(k), "--seeds", "3", *MNIST80))
      for k in (2, 4, 14)),
)


LOG_TAIL = 3000  # characters of each job's log kept in on_device.json
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the jobs' working folder


def _command(job: Job, workdir: str, extra: Sequence[str], runs_from: Sequence[str] = ()
             ) -> list[str]:
    kept = ["--runs-from", ",".join(runs_from)] if runs_from else []
    named = ["--name", job.record] if job.record else []
    return [sys.executable, "-m", "experiments.compare", "--config", job.config, *named,
            *job.flags,
            "--speed-rounds", "0", "--out", os.path.join(workdir, job.name), *kept, *extra]


def _record(workdir: str, job: Job) -> dict | None:
    """The job's comparison record (whole or partial), if it finished a run."""
    folder = os.path.join(workdir, job.name, job.comparison)
    for name in (f"{job.comparison}.json", f"{job.comparison}.partial.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def merge(workdir: str, out: str, jobs: Sequence[Job], command: str) -> dict[str, int]:
    """Write `out/NAME.json` per comparison: the finished runs of all its jobs (in `workdir`), a
    partial record that `--runs-from` reads; returns the runs per comparison."""
    counts = {}
    for comparison in dict.fromkeys(job.comparison for job in jobs):
        records = [r for job in jobs if job.comparison == comparison
                   and (r := _record(workdir, job)) is not None]
        if not records:
            continue
        recipes = {json.dumps(r["recipe"], sort_keys=True) for r in records}
        if len(recipes) > 1:
            raise ValueError(f"{comparison}: its jobs ran different recipes")
        runs: dict[str, dict] = {}  # each run once (every job keeps the --runs-from runs),
        for record in records:  # a copy trained here before a restored one
            for run in record["runs"]:
                key = run_name(run)
                if key not in runs or "restored_from" in runs[key]:
                    runs[key] = run
        write_json(os.path.join(out, f"{comparison}.json"),  # the jobs' machine: this process
                   {"benchmark": "experiments.compare", "partial": True, "name": comparison,
                    "config": records[0]["config"], "dataset": records[0].get("dataset"),
                    "dataset_version": records[0].get("dataset_version"),
                    "recipe": records[0]["recipe"],
                    "machine": records[0].get("machine"), "command": command,
                    "runs": list(runs.values())})
        counts[comparison] = len(runs)
    return counts


def run_jobs(commands: dict[str, list[str]], *, budget_s: float, parallel: int, logs: str,
             on_exit=lambda name: None, on_tick=lambda: None, tick_s: float = 15.0,
             stop=lambda: False, env: dict | None = None, grace_s: float = 90.0,
             poll_s: float = 1.0) -> dict[str, dict]:
    """Run `commands` (name -> argv, in the repository's root), `parallel` at a time in order,
    each logging to `logs/NAME.log`; at `budget_s`, or once `stop()` is true, the running ones
    get SIGTERM (after `grace_s` more, SIGKILL) and those not started are skipped. `on_exit(name)`
    after each ends, `on_tick()` every `tick_s` while some run. Whatever ends this function (an
    exception too), no job is left running. Returns per name its `status` (`finished`, `failed`,
    `stopped`, `skipped`), return code and wall seconds."""
    os.makedirs(logs, exist_ok=True)
    start = ticked = time.monotonic()
    pending = list(commands)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    report: dict[str, dict] = {}
    stopping_since = None
    try:
        while running or (pending and stopping_since is None):
            if stopping_since is None and (time.monotonic() - start >= budget_s or stop()):
                stopping_since = time.monotonic()
                for proc, _ in running.values():
                    proc.send_signal(signal.SIGTERM)
            stopping = stopping_since is not None
            if stopping and time.monotonic() - stopping_since >= grace_s:
                for proc, _ in running.values():
                    proc.kill()
            while pending and len(running) < parallel and not stopping:
                name = pending.pop(0)
                with open(os.path.join(logs, f"{name}.log"), "w") as log:
                    proc = subprocess.Popen(commands[name], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=REPO)
                running[name] = (proc, time.monotonic())
            for name, (proc, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                status = ("finished" if proc.returncode == 0 else
                          "stopped" if stopping else "failed")
                report[name] = {"status": status, "returncode": proc.returncode,
                                "wall_seconds": round(time.monotonic() - began, 1)}
                on_exit(name)
            if running:
                if time.monotonic() - ticked >= tick_s:
                    ticked = time.monotonic()
                    on_tick()
                time.sleep(poll_s)
    finally:  # an error here must not leave the jobs holding the device
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name in pending:
        report[name] = {"status": "skipped", "returncode": None, "wall_seconds": 0.0}
    return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.on_device", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where the records land (e.g. $OUT)")
    p.add_argument("--workdir", default=os.path.join("runs", "on_device"),
                   help="the jobs' comparisons (runs, checkpoints, logs): a new or empty folder")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="seconds after which running jobs are stopped and no more start")
    p.add_argument("--jobs", type=int, default=4, help="jobs at a time")
    p.add_argument("--only", default=None,
                   help=f"comma-separated jobs (default all: {', '.join(j.name for j in JOBS)})")
    p.add_argument("--runs-from", default=None,
                   help="comma-separated records of runs finished elsewhere (a comparison's "
                        "NAME.json or partial record), each for the jobs of its comparison")
    p.add_argument("--compare-args", default="",
                   help="flags appended to every job's experiments.compare (one string)")
    args = p.parse_args(argv)
    if not args.budget_s > 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    names = parse_list(args.only)
    unknown = sorted(set(names or ()) - {j.name for j in JOBS})
    if unknown or names == []:
        p.error(f"--only: expected some of {[j.name for j in JOBS]}, got {unknown or 'none'}")
    args.selected = [j for j in JOBS if names is None or j.name in names]
    args.kept = {}  # comparison -> its records, as absolute paths (the jobs run elsewhere)
    for path in parse_list(args.runs_from) or ():
        try:
            with open(path) as f:
                name = json.load(f)["name"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--runs-from: {path} is not a comparison's record ({e})")
        if name not in {j.comparison for j in args.selected}:
            p.error(f"--runs-from: {path} is a record of {name!r}, which no selected job runs")
        args.kept.setdefault(name, []).append(os.path.abspath(path))
    if os.path.isdir(args.workdir) and os.listdir(args.workdir):
        p.error(f"--workdir: {args.workdir} is not empty (compare would read an earlier call's "
                "runs back as this call's, whatever recipe made them); give a new folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the jobs; this process itself never touches JAX's devices, which on a GPU would
    take most of its memory from the jobs (JAX preallocates 75% per process by default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out, workdir = os.path.abspath(args.out), os.path.abspath(args.workdir)
    os.makedirs(out, exist_ok=True)
    command = " ".join(["python -m experiments.on_device", *map(shlex.quote, argv)])
    jobs = {job.name: job for job in args.selected}
    commands = {name: _command(job, workdir, shlex.split(args.compare_args),
                               args.kept.get(job.comparison, ()))
                for name, job in jobs.items()}
    logs = os.path.join(workdir, "logs")
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()

    def save(name=None):  # a call cut short keeps what finished by then
        try:
            counts = merge(workdir, out, args.selected, command)
        except (OSError, ValueError) as e:  # the jobs go on; main's last merge says it again
            print(f"error: merging the records: {e}", file=sys.stderr, flush=True)
            return
        if name:
            print(f"{name} ended; runs so far: {counts}", flush=True)

    stopped = []  # SIGTERM to this process: stop the jobs as at the budget, keep what finished
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    try:
        report = run_jobs(commands, budget_s=args.budget_s, parallel=args.jobs, logs=logs,
                          on_exit=save, on_tick=save, stop=lambda: bool(stopped), env=env)
    finally:
        signal.signal(signal.SIGTERM, previous)
    counts = merge(workdir, out, args.selected, command)
    machine = None  # as the jobs saw it: this process never starts a JAX backend (see main)
    for comparison in counts:
        with open(os.path.join(out, f"{comparison}.json")) as f:
            machine = machine or json.load(f)["machine"]
    for name in jobs:
        path = os.path.join(logs, f"{name}.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                report[name]["log_tail"] = f.read()[-LOG_TAIL:]
    write_json(os.path.join(out, "on_device.json"),
               {"benchmark": "experiments.on_device", "command": command,
                "machine": machine, "budget_s": args.budget_s, "parallel": args.jobs,
                "wall_seconds": round(time.perf_counter() - started, 1), "runs": counts,
                "jobs": {name: {**report[name], "argv": commands[name][1:]} for name in jobs}})
    print(json.dumps({"runs": counts, "jobs": {k: v["status"] for k, v in report.items()}}),
          flush=True)
    return 1 if any(v["status"] == "failed" for v in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
