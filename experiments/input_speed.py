"""`python -m experiments.input_speed --json docs/results/input_speed.json`: the in-memory input
(`config.input="memory"`) against the TFDS input (tf.data on the host), in the training program.

    python -m experiments.input_speed [--configs digits,mnist] [--steps 300] [--rounds 3] \\
        [--data_dir DIR] [--json OUT] [--config.FIELD=VALUE ...]

For each shipped config (`configs/NAME.py`, with the `--config.FIELD=VALUE` overrides, recorded in
the JSON), both inputs train the same `--steps` steps from
scratch with `train.loop.run` (one fresh workdir per run, evaluated once at the end), in
`--rounds` rounds whose order alternates (memory then tfds, then tfds then memory, ...), so that
a drift of the machine's speed reaches both alike. The TFDS builder is prepared in `--data_dir`
before anything is timed. Per run: the median train images/s of its logged windows after the
first (which holds the compilation) and the run's wall clock; per config and input, the
medians over the rounds and the ratio memory / tfds (above 1: the memory input is faster).
Needs TensorFlow and tensorflow-datasets (the TFDS side).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

from cbsa_jax.reporting import machine_info, parse_list, table, write_json
from train import cli, loop
from train import config as config_lib
from train import data as data_lib
from train import mesh as mesh_lib
from train.metrics import read_jsonl

__all__ = ["main", "run_config", "window_speed"]

INPUTS = ("memory", "tfds")


def run_config(name: str, input_name: str, *, steps: int, data_dir: str,
               overrides: dict[str, str] | None = None):
    """`configs/NAME.py` with `overrides` (`--config.FIELD` values), `input_name`, `steps` steps,
    a log window every tenth of them and one evaluation and checkpoint at the end."""
    path = os.path.join(os.path.dirname(config_lib.DEFAULT_CONFIG), f"{name}.py")
    config = cli.load_config(path, overrides or {})
    config.input, config.data_dir = input_name, data_dir
    config.num_train_steps = steps
    config.log_every_steps = max(1, steps // 10)
    config.eval_every_steps = config.checkpoint_every_steps = steps
    config.progress = False
    return config_lib.validate(config)


def window_speed(metrics_path: str) -> float:
    """The median train images/s of a run's logged windows after the first."""
    speeds = [line["images_per_sec"] for line in read_jsonl(metrics_path)
              if line["split"] == "train" and line.get("images_per_sec")]
    if len(speeds) < 2:
        raise ValueError(f"{metrics_path}: fewer than two train windows logged")
    return float(np.median(speeds[1:]))


def _measure(name: str, input_name: str, *, steps: int, data_dir: str, root: str,
             index: int, overrides: dict[str, str]) -> dict:
    config = run_config(name, input_name, steps=steps, data_dir=data_dir, overrides=overrides)
    workdir = os.path.join(root, f"{name}_{input_name}_{index}")
    started = time.perf_counter()
    summary = loop.run(config, workdir)
    wall = time.perf_counter() - started
    return {"config": name, "input": input_name, "round": index,
            "images_per_sec": window_speed(os.path.join(workdir, "metrics.jsonl")),
            "wall_seconds": wall, "test_accuracy": float(summary["final_eval"]["accuracy"])}


def summarize(runs: list[dict]) -> list[dict]:
    """Per config: the medians of each input over the rounds, and memory / tfds."""
    rows = []
    for name in dict.fromkeys(r["config"] for r in runs):
        row: dict = {"config": name}
        for input_name in INPUTS:
            mine = [r for r in runs if r["config"] == name and r["input"] == input_name]
            row[f"{input_name}_images_per_sec"] = float(np.median([r["images_per_sec"]
                                                                   for r in mine]))
            row[f"{input_name}_wall_seconds"] = float(np.median([r["wall_seconds"]
                                                                 for r in mine]))
            row[f"{input_name}_runs"] = len(mine)
        row["speed_ratio"] = row["memory_images_per_sec"] / row["tfds_images_per_sec"]
        row["wall_ratio"] = row["memory_wall_seconds"] / row["tfds_wall_seconds"]
        rows.append(row)
    return rows


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    p = cli.ArgumentParser(prog="python -m experiments.input_speed", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="digits,mnist", help="shipped configs, comma-separated")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary one)")
    p.add_argument("--json", default=None)
    args, overrides = cli.parse(p, argv)
    args.configs = parse_list(args.configs)
    if not args.configs:
        p.error("--configs: give at least one config name")
    if args.steps < 20:
        p.error(f"--steps must be >= 20 (two log windows at least), got {args.steps}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
    except SystemExit as e:
        return cli.exit_code(e)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:  # as python -m train: one CPU device per core, before JAX starts
        mesh_lib.split_host(*(run_config(name, "memory", steps=args.steps, data_dir="",
                                         overrides=overrides) for name in args.configs))
    except ValueError as e:  # a ConfigError, or CBSA_JAX_HOST_DEVICES
        return cli.fail(e)
    started = time.perf_counter()
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or os.path.join(tmp, "tfds")
        try:
            for name in args.configs:  # prepare the TFDS builders before anything is timed
                spec = data_lib.open_input(run_config(name, "tfds", steps=args.steps,
                                                      data_dir=data_dir,
                                                      overrides=overrides)).spec
                print(f"{name}: {spec.steps_per_epoch} steps per epoch", flush=True)
        except cli.BAD_INPUT as e:
            return cli.fail(str(e))
        runs = []
        for index in range(args.rounds):
            for name in args.configs:
                order = INPUTS if index % 2 == 0 else INPUTS[::-1]
                for input_name in order:
                    runs.append(_measure(name, input_name, steps=args.steps, data_dir=data_dir,
                                         root=tmp, index=index, overrides=overrides))
    rows = summarize(runs)
    print(table(rows, [
        ("config", "<", lambda r: r["config"]),
        ("memory images/s", ">", lambda r: f"{r['memory_images_per_sec']:,.0f}"),
        ("tfds images/s", ">", lambda r: f"{r['tfds_images_per_sec']:,.0f}"),
        ("memory / tfds", ">", lambda r: f"{r['speed_ratio']:.2f}"),
        ("wall s memory / tfds", ">",
         lambda r: f"{r['memory_wall_seconds']:.0f} / {r['tfds_wall_seconds']:.0f}"),
    ]))
    write_json(args.json, {
        "benchmark": "experiments.input_speed",
        "command": "python -m experiments.input_speed " + " ".join(argv),
        "machine": machine, "config": {k: v for k, v in vars(args).items()},
        "overrides": overrides,
        "rows": rows, "runs": runs, "wall_s": time.perf_counter() - started,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
