"""`python -m experiments.compare --config CONFIG --out DIR`: models side by side with one recipe.

    python -m experiments.compare --config configs/mnist.py \\
        --models cbt_nano,crate_nano,tost_nano,vit_nano --seeds 3 --seeds-for cbt_nano,vit_nano \\
        --sweep-cells 2,4,8,14 --out runs/compare [--config.FIELD=VALUE ...]
    python -m experiments.compare --config configs/shapes64_seg.py --models cbt_nano \\
        --decoders cbt,softmax,linear --seeds 3 --out runs/compare

Trains every model of `--models` with the config's recipe and budget (only `model.name`, `seed`
and, for a segmentation config, `segmentation.decoder` change), one run at a time, `--seeds` seeds
each (models outside `--seeds-for`, when it is given, get one), every encoder with every decoder
of `--decoders` (segmentation configs only; default the config's), and with `--sweep-cells` the
`--sweep-model` (CBT) at square representative cells k x k for each k (m = k^2 representatives; as
many seeds as the sweep model gets; the config's decoder). For each run it records, from the run
itself:

- parameters (`cbsa_jax.reporting.count_params`; the decoder's apart) and forward FLOPs per image
  (XLA's cost analysis of the compiled batch-1 forward at the run's image size, channels and
  classes);
- the median of the `images_per_sec` lines of its `metrics.jsonl` (`images_per_sec_in_run`:
  compile and evaluation pauses fall in a few windows only, but whatever else the machine did
  during the run counts);
- final and best value of the task's ranking metric on the eval split (the eval lines of
  `metrics.jsonl`): test accuracy for classification, mIoU for segmentation (with the final pixel
  accuracy), and whether it reached its plateau (a row: its seeds' mean curve);
- for classification, emergent segmentation (`train.tools.attention_jaccard.evaluate`: Jaccard of
  the cls attention of the last layer against the dataset's `mask`, with the image-blind centre
  box and everything).

Train images/s, the table's speed: before training, the train step of every row (each model,
decoder and cells, its lowest seed's config) is compiled and timed side by side in one process,
`--speed-rounds` interleaved rounds of one step each on its own first batch
(`experiments._runs.measure_step_times`), so that the machine's other work hits every row alike;
measured once and kept in `DIR/NAME/step_times.json` (timed again, all rows together, when a row
is added). `--speed-rounds 0` skips it: the rows then show the runs' own medians.

Everything lands in `DIR/NAME/` (NAME: `--name`, by default the config file's name, so that a
comparison with another budget of the same config can sit beside it): one workdir per run
(`MODEL[_DECODER_decoder][_cellsKxK]/seedS`, holding `result.json` once finished), and
`NAME.json` (every run, per-row mean +- std over seeds, the sweep, the data set's version,
machine, command, wall clock),
`NAME.md` (the tables) and `NAME.png` (the ranking metric against forward FLOPs, marker area by
parameters; the sweep beside it),
copied to `--results DIR` too when given (e.g. `docs/results`, where README tables come from).
Rerunning resumes: finished runs (their `result.json`) are read back, an interrupted one continues
from its last checkpoint (SIGTERM saves one and stops the comparison; rerun to go on). Before the
first run and after each, the runs finished so far (every planned run with its `result.json`, and
the `--runs-from` runs outside the plan) are recorded in `DIR/NAME/NAME.partial.json` (and
`RESULTS/partial/NAME.json`), with the `table` and `sweep` rows whose every seed has finished,
removed once the whole comparison is written unless it holds runs outside it. `--runs-from FILE,...`
takes an earlier comparison's JSON, whole or partial, made with the same recipe, data set version
and `--mass` (else it stops and names what differs): its finished runs become this comparison's
(`result.json` in their workdirs, marked `restored_from`) instead of being trained again. So a
comparison goes on in another sitting or on another machine from the committed record alone, and a
sweep or more seeds extend a committed table without training its runs again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx

from cbsa_jax.models import PRESETS
from cbsa_jax.reporting import (
    cost_analysis,
    count_params,
    fmt,
    machine_info,
    parse_list,
    table,
    write_json,
)
from experiments._runs import (
    RESULT,
    Interrupted,
    earlier_results,
    kept_step_times,
    parse,
    restore_result,
    run_name,
    train_once,
)
from experiments.results_readme import last_fifth_cell
from train import cli, datasets, loop
from train import config as config_lib
from train import data as data_lib
from train import mesh as mesh_lib
from train.metrics import read_jsonl
from train.tools import attention_jaccard

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["main", "RunSpec", "plan", "aggregate", "representatives", "forward_gflops"]

DEFAULT_MODELS = "cbt_nano,crate_nano,tost_nano,vit_nano"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison. `cells` None: the config's representatives;
    `decoder` None: a classifier (segmentation runs always name their decoder)."""

    model: str
    seed: int
    cells: tuple[int, int] | None = None
    decoder: str | None = None

    @property
    def row(self) -> str:
        """The table row it belongs to: every seed of one model, decoder and cells."""
        cells = "" if self.cells is None else f"_cells{self.cells[0]}x{self.cells[1]}"
        decoder = "" if self.decoder is None else f"_{self.decoder}_decoder"
        return f"{self.model}{decoder}{cells}"

    @property
    def name(self) -> str:
        return f"{self.row}/seed{self.seed}"


def plan(models, seeds: int, seeds_for, sweep_cells, sweep_model: str, config_cells,
         decoders=(None,), sweep_decoder: str | None = None
         ) -> tuple[list[RunSpec], list[RunSpec]]:
    """(table runs, sweep runs): every model with every decoder (`(None,)`: classifiers). A sweep
    point (`sweep_model` with `sweep_decoder`) gets as many seeds as the sweep model gets in the
    table; the point at the config's own cells is the table's runs."""

    def count(model):
        return seeds if seeds_for is None or model in seeds_for else 1

    table = [RunSpec(m, s, None, d) for m in models for d in decoders for s in range(count(m))]
    sweep = []
    for k in sweep_cells or ():
        cells = None if (k, k) == tuple(config_cells) else (k, k)
        sweep.extend(RunSpec(sweep_model, s, cells, sweep_decoder)
                     for s in range(count(sweep_model)))
    return table, sweep


def run_config(base, spec: RunSpec):
    """The base config with this run's model, seed, cells and decoder, validated."""
    config = base.copy_and_resolve_references()
    config.model.name, config.seed = spec.model, spec.seed
    if spec.cells is not None:
        config.model.cells = spec.cells
    if spec.decoder is not None:
        config.segmentation.decoder = spec.decoder
    return config_lib.validate(config)


def forward_gflops(model, image_shape) -> float:
    """XLA's FLOPs of `model`'s compiled batch-1 forward on `image_shape` [H, W, C], in G."""
    graphdef, state = nnx.split(model)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    compiled = jax.jit(forward).lower(state, images).compile()
    return cost_analysis(compiled)["flops"] / 1e9


PLATEAU_FRACTION = 0.2  # the last fifth of the training steps
PLATEAU_RANGE = 0.005  # test accuracy moves by less than half a point there


def plateau(evals: list[tuple[int, float]], total_steps: int) -> dict:
    """Whether test accuracy has reached its plateau: the range (max - min) of the accuracies
    evaluated in the last `PLATEAU_FRACTION` of the steps (from the last evaluation at or before
    its start), `holds` when below `PLATEAU_RANGE`. `evals` are (step, accuracy) pairs."""
    start = (1 - PLATEAU_FRACTION) * total_steps
    before = [(s, a) for s, a in evals if s <= start]
    window = before[-1:] + [(s, a) for s, a in evals if s > start]
    accuracies = [a for _, a in window]
    spread = max(accuracies) - min(accuracies) if len(window) >= 2 else None
    return {"from_step": window[0][0] if window else None, "evaluations": len(window),
            "range": spread, "holds": spread is not None and spread < PLATEAU_RANGE}


def mean_curve(curves: list[list]) -> list[tuple[int, float]]:
    """The seeds' mean of a metric at the steps every curve evaluated (`[(step, value), ...]`
    each), in step order."""
    common = set.intersection(*({step for step, _ in curve} for curve in curves))
    return [(step, float(np.mean([dict(map(tuple, curve))[step] for curve in curves])))
            for step in sorted(common)]


def row_plateau(results: list[dict]) -> dict:
    """The plateau of a row (one model, several seeds): `plateau` of the seeds' mean curve, the
    number the table reports (`plateau_range`, `plateau_holds`), and the largest range of a
    single seed's curve beside it (`plateau_worst_seed`)."""
    seeds = [r.get("plateau", {}).get("range") for r in results]
    worst = max((x for x in seeds if x is not None), default=None)
    if any("curve" not in r for r in results):
        return {"plateau_range": None, "plateau_holds": False, "plateau_worst_seed": worst}
    mean = plateau(mean_curve([r["curve"] for r in results]), results[0]["steps"])
    return {"plateau_range": mean["range"], "plateau_holds": mean["holds"],
            "plateau_worst_seed": worst}


def _from_metrics(path: str, eval_split: str, total_steps: int, metric: str) -> dict:
    """Final and best `metric`, its curve and plateau, and the final eval line's other numbers
    (`final_eval`), from a run's metrics.jsonl."""
    lines = read_jsonl(path)
    evals = [line for line in lines if line["split"] == eval_split and line.get(metric)
             is not None]
    speeds = [line["images_per_sec"] for line in lines
              if line["split"] == "train" and line.get("images_per_sec")]
    if not evals:
        raise ValueError(f"{path}: no {eval_split} {metric} logged")
    curve = [(line["step"], line[metric]) for line in evals]
    return {"metric": metric, f"final_{metric}": curve[-1][1], "final_step": curve[-1][0],
            f"best_{metric}": max(value for _, value in curve),
            "curve": [list(point) for point in curve],
            "plateau": plateau(curve, total_steps),
            "final_eval": {k: v for k, v in evals[-1].items()
                           if isinstance(v, int | float) and k not in ("step", "time")},
            "images_per_sec_in_run": float(np.median(speeds)) if speeds else None,
            "train_windows": len(speeds)}


def run_one(config, workdir: str, *, mass: float) -> dict:
    """Train (or resume, or read back) one run and measure it; returns its result."""
    def measure(summary: dict) -> dict:
        exp, state, _ = loop.load_experiment(workdir)
        model = exp.model(state)
        result = {"model": config.model.name, "seed": config.seed,
                  "cells": list(config_lib.model_config(config).cells),
                  "workdir": workdir, "steps": summary["total_steps"],
                  "params": count_params(model),
                  "gflops_per_image": forward_gflops(model, (*exp.image_size, exp.channels)),
                  **_from_metrics(os.path.join(workdir, "metrics.jsonl"), config.eval_split,
                                  summary["total_steps"], exp.task.ranking)}
        if config.task == "segmentation":
            result["decoder"] = config.segmentation.decoder
            result["decoder_params"] = count_params(model.decoder)
            return result
        source = data_lib.open_input(config)
        if "mask" in source.features:
            result["segmentation"] = attention_jaccard.evaluate(exp, state, mass=mass,
                                                                source=source)
        return result

    return train_once(config, workdir, measure)


def representatives(model_config) -> int | None:
    """m, the representatives per head of a model that pools tokens (else None)."""
    return int(np.prod(model_config.cells)) if model_config.pools_tokens else None


def _stats(values) -> dict:
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not values.size:
        return {"mean": None, "std": None, "n": 0}
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": int(values.size)}


def _ranking_metric(results) -> str:
    """The metric the runs rank by; results kept before it was recorded are classifiers'."""
    return next(iter(results), {}).get("metric", "accuracy")


def aggregate(results: list[dict], representatives, metric: str = "accuracy",
              speed: dict | None = None) -> dict:
    """One table row from the runs of one model (several seeds), ranked by `metric`; its train
    images/s from `speed` (its entry of `measure_step_times`), else the runs' own medians."""
    in_runs = _stats([r.get("images_per_sec_in_run", r.get("images_per_sec"))
                      for r in results])["mean"]
    first = results[0]
    seg = [r.get("segmentation") or {} for r in results]
    decoder = {"decoder": first["decoder"], "decoder_params": first["decoder_params"],
               "pixel_accuracy": _stats([r["final_eval"].get("pixel_accuracy")
                                         for r in results])} if "decoder" in first else {}
    return {"model": first["model"], **decoder, "cells": first["cells"],
            "representatives": representatives,
            "seeds": [r["seed"] for r in results], "params": first["params"],
            "gflops_per_image": first["gflops_per_image"],
            "images_per_sec": in_runs if speed is None else speed["per_sec"],
            "images_per_sec_in_runs": in_runs,
            "step_seconds": None if speed is None else speed["step_wall_seconds"],
            f"final_{metric}": _stats([r[f"final_{metric}"] for r in results]),
            f"best_{metric}": _stats([r[f"best_{metric}"] for r in results]),
            "jaccard": _stats([s.get("cls_attention") for s in seg]),
            "jaccard_best_head": _stats([s.get("cls_attention_best_head") for s in seg]),
            "jaccard_assignment": _stats([s.get("assignment") for s in seg]),
            **row_plateau(results),
            "wall_seconds": sum(r.get("wall_seconds", 0.0) for r in results)}


def _pm(stats: dict, spec: str = ".3f") -> str:
    if stats["mean"] is None:
        return "-"
    text = format(stats["mean"], spec)
    return f"{text} +- {format(stats['std'], spec)}" if stats["n"] > 1 else text


METRIC_NAMES = {"accuracy": "accuracy", "miou": "mIoU"}


def _columns(sweep: bool, metric: str = "accuracy", segmentation: bool = False):
    reps = ("m", ">", lambda r: str(r["representatives"] or "-"))
    shown = METRIC_NAMES.get(metric, metric)
    if segmentation:  # no cls attention to score: the decoder and the pixel accuracy instead
        model = [("decoder", "<", lambda r: r["decoder"]), reps,
                 ("decoder params", ">", lambda r: f"{r['decoder_params']:,}")]
        task = [("final pixel accuracy", ">", lambda r: _pm(r["pixel_accuracy"]))]
    else:
        model = [reps]
        task = [("Jaccard, cls attention", ">", lambda r: _pm(r["jaccard"])),
                ("Jaccard, best head", ">", lambda r: _pm(r["jaccard_best_head"]))]
    cols = [("model", "<", lambda r: r["model"]), *model,
            ("params", ">", lambda r: f"{r['params']:,}"),
            ("GFLOPs / image", ">", lambda r: fmt(r["gflops_per_image"], ".4f")),
            ("train images/s", ">", lambda r: fmt(r["images_per_sec"], ".0f")),
            (f"final {shown}", ">", lambda r: _pm(r[f"final_{metric}"])),
            (f"best {shown}", ">", lambda r: _pm(r[f"best_{metric}"])),
            *task,
            ("last-fifth range", ">", last_fifth_cell),
            ("seeds", ">", lambda r: str(len(r["seeds"])))]
    if sweep:
        cols = [reps, ("cells", ">", lambda r: "x".join(map(str, r["cells"]))),
                *[c for c in cols if c[0] not in ("model", "m")]]
    return cols


def _where(run: dict) -> str:
    """The machine a run finished on, as the table names it (its processor and device)."""
    return f"{run['machine'].get('processor')} ({run['machine'].get('device')})"


def markdown(payload: dict) -> str:
    lines = [f"# {payload['name']}: {payload['dataset']}, recipe {payload['recipe_summary']}", "",
             f"Command: `{payload['command']}`; {payload['machine']['date']}, "
             f"{payload['machine']['cpu_count']} CPU cores; wall clock of the last sitting "
             f"{payload['wall_seconds'] / 60:.1f} min, of all runs "
             f"{payload['runs_wall_seconds'] / 60:.1f} min.", ""]
    where = [_where(run) for run in payload.get("runs", ()) if run.get("machine")]
    if len(set(where)) > 1:  # gathered from several sittings' machines (--runs-from)
        unrecorded = len(payload["runs"]) - len(where)
        lines += ["Runs finished on: " + ", ".join(
            f"{w} ({where.count(w)})" for w in dict.fromkeys(where))
            + (f"; {unrecorded} without a recorded machine" if unrecorded else "")
            + ".", ""]
    metric = payload.get("metric", "accuracy")
    segmentation = payload.get("task") == "segmentation"
    if payload["table"]:
        lines += [table(payload["table"], _columns(False, metric, segmentation)), ""]
    speed = payload.get("speed") or {}
    if speed.get("steps"):
        lines += [f"Train images/s: {speed['method']}, {speed['rounds']} interleaved rounds "
                  "before training.", ""]
    base = payload.get("baselines") or {}
    if base:
        lines += ["Image-blind masks, same Jaccard: centre box "
                  f"{fmt(base.get('center'), '.3f')}, everything "
                  f"{fmt(base.get('everything'), '.3f')}.", ""]
    if payload["sweep"]:
        lines += [f"Representatives sweep ({payload['sweep'][0]['model']}):", "",
                  table(payload["sweep"], _columns(True, metric, segmentation)), ""]
    return "\n".join(lines)


def plot(payload: dict, path: str) -> None:
    panels = 1 + bool(payload["sweep"])
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    rows = payload["table"]
    metric = payload.get("metric", "accuracy")
    final, shown = f"final_{metric}", METRIC_NAMES.get(metric, metric)
    if rows:
        biggest = max(r["params"] for r in rows)
        for r in rows:
            x, y = r["gflops_per_image"], r[final]["mean"]
            ax.scatter([x], [y], s=600 * r["params"] / biggest, alpha=0.6)
            ax.errorbar([x], [y], yerr=[r[final]["std"]], fmt="none", c="k", lw=1)
            label = r["model"] + (f" + {r['decoder']} decoder" if r.get("decoder") else "")
            ax.annotate(f"{label}\n{r['params'] / 1e3:.0f}k params", (x, y), fontsize=8,
                        xytext=(6, 6), textcoords="offset points")
    ax.set(xlabel="forward GFLOPs per image (XLA)", ylabel=f"final {shown} (eval split)",
           title=f"{payload['name']} ({payload['dataset']}); marker area: parameters")
    if payload["sweep"]:
        ax = axes[0, 1]
        sweep = payload["sweep"]
        m = [r["representatives"] for r in sweep]
        ax.plot(m, [r[final]["mean"] for r in sweep], "o-", label=f"final {shown}")
        if any(r["jaccard"]["mean"] is not None for r in sweep):
            ax.plot(m, [r["jaccard"]["mean"] for r in sweep], "s--",
                    label="Jaccard, cls attention")
        if payload["baselines"].get("center") is not None:
            ax.axhline(payload["baselines"]["center"], ls=":", c="grey",
                       label="Jaccard, centre box (image-blind)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(m, [str(v) for v in m])
        ax.set(xlabel="representatives m", title=f"{sweep[0]['model']}: representatives sweep")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]):
    """(flags, `--config.FIELD` overrides); bad flags exit 2 with the usage (argparse)."""
    p = cli.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the shared recipe (configs/NAME.py)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated presets ('' none)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per model")
    p.add_argument("--seeds-for", default=None,
                   help="comma-separated models that get --seeds seeds (default: all); the "
                        "others get seed 0 only")
    p.add_argument("--sweep-cells", default=None,
                   help="comma-separated k: also train --sweep-model with k x k cells")
    p.add_argument("--sweep-model", default="cbt_nano")
    p.add_argument("--decoders", default=None,
                   help="segmentation configs: comma-separated decoders to train on every model "
                        "(default: the config's segmentation.decoder)")
    p.add_argument("--mass", type=float, default=0.6,
                   help="attention_jaccard's attention mass")
    p.add_argument("--runs-from", default=None,
                   help="comma-separated JSON files of earlier comparisons with the same recipe "
                        "(NAME.json or a partial one): their finished runs are kept as this "
                        "comparison's instead of being trained again")
    p.add_argument("--name", default=None,
                   help="the comparison's name: its folder in --out and its files NAME.json, .md "
                        "and .png (default: the config file's name)")
    p.add_argument("--speed-rounds", type=int, default=5,
                   help="interleaved rounds timing every row's train step side by side before "
                        "training (0: the runs' own images/s)")
    args, overrides = parse(p, argv, out="runs/compare", copied="NAME.json, NAME.md and NAME.png")
    args.models = parse_list(args.models) or []
    args.seeds_for = parse_list(args.seeds_for)
    args.decoders = parse_list(args.decoders)
    args.runs_from = parse_list(args.runs_from) or []
    try:
        args.sweep_cells = parse_list(args.sweep_cells, int)
    except ValueError:
        p.error(f"--sweep-cells: expected comma-separated integers, got {args.sweep_cells!r}")
    if args.name is None:
        args.name = os.path.splitext(os.path.basename(args.config))[0]
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
        p.error(f"--name: expected a file name of letters, digits, '_', '.' and '-', got "
                f"{args.name!r}")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.speed_rounds < 0:
        p.error(f"--speed-rounds must be >= 0, got {args.speed_rounds}")
    if any(k < 1 for k in args.sweep_cells or ()):
        p.error(f"--sweep-cells must be positive integers, got {args.sweep_cells}")
    if not 0 < args.mass <= 1:  # NaN fails too
        p.error(f"--mass must be in (0, 1], got {args.mass}")
    if not args.models and not args.sweep_cells:
        p.error("nothing to do: give --models and/or --sweep-cells")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out: {args.out} is a file, not a directory")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
    except SystemExit as e:
        return cli.exit_code(e)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        base = cli.load_config(args.config, overrides)
        if base.task not in ("classification", "segmentation"):
            raise config_lib.ConfigError(f"--config: compare trains image classifiers and "
                                         f"segmenters, the config's task is {base.task!r}")
        unknown = sorted(set(args.models + [args.sweep_model]) - set(PRESETS))
        if unknown:
            raise config_lib.ConfigError(f"--models: unknown presets {unknown}")
        segmentation = base.task == "segmentation"
        if args.decoders is not None and not segmentation:
            raise config_lib.ConfigError("--decoders: only for a segmentation config, the "
                                         f"config's task is {base.task!r}")
        unknown = sorted(set(args.decoders or ()) - set(config_lib.DECODERS))
        if unknown or args.decoders == []:
            raise config_lib.ConfigError(f"--decoders: expected some of {config_lib.DECODERS}, "
                                         f"got {unknown or 'none'}")
        decoder = base.segmentation.decoder if segmentation else None
        table_runs, sweep_runs = plan(args.models, args.seeds, args.seeds_for, args.sweep_cells,
                                      args.sweep_model, base.model.cells or (),
                                      args.decoders or (decoder,), decoder)
        configs = {spec: run_config(base, spec) for spec in [*table_runs, *sweep_runs]}
        recipe = json.loads(base.to_json())
        version = datasets.version(base.dataset)
        earlier = earlier_results(args.runs_from, recipe, version, args.mass)
        mesh_lib.split_host(*configs.values())  # as python -m train: one CPU device per core
    except ValueError as e:  # a ConfigError, or CBSA_JAX_HOST_DEVICES
        return cli.fail(e)
    name = args.name
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    for spec in configs:
        workdir = os.path.join(out, spec.name)
        if spec.name in earlier and not os.path.exists(os.path.join(workdir, RESULT)):
            restore_result(workdir, *earlier[spec.name])
            print(f"{name}: {spec.name} kept from {earlier[spec.name][1]}", flush=True)
    partial = [os.path.join(out, f"{name}.partial.json")]
    if args.results:
        partial.append(os.path.join(args.results, "partial", f"{name}.json"))
    outside = [run for key, (run, _) in earlier.items()  # kept in the record, not trained here
               if key not in {spec.name for spec in configs}]

    def rows(specs, key, done: dict[RunSpec, dict]) -> list[dict]:
        """The table rows of `specs` grouped by `key` (the seeds of one row), from the runs in
        `done`; a row some of whose runs have not finished is left out."""
        groups: dict = {}
        for spec in specs:
            groups.setdefault(key(spec), []).append(spec)
        metric = _ranking_metric(done.values())
        return [aggregate([done[s] for s in group],
                          representatives(config_lib.model_config(configs[group[0]])), metric,
                          speeds.get(group[0].row))
                for group in groups.values() if all(s in done for s in group)]

    def tables(done: dict[RunSpec, dict]) -> dict[str, list[dict]]:
        return {"table": rows(table_runs, lambda s: (s.model, s.decoder), done),
                "sweep": rows(sweep_runs, lambda s: s.cells, done)}

    def record_partial() -> None:
        """The runs finished so far, for `--runs-from` in another sitting: every planned run
        with its result (in plan order, those the loop has not reached too) and the
        `--runs-from` runs outside the plan; and the table and sweep rows whose every seed has
        finished, for a look at the results before the comparison ends."""
        done = {}
        for spec in configs:
            path = os.path.join(out, spec.name, RESULT)
            if os.path.exists(path):
                with open(path) as f:
                    done[spec] = json.load(f)
        if not done and not outside:  # nothing finished yet: no record
            return
        for path in partial:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_json(path, {"benchmark": "experiments.compare", "partial": True, "name": name,
                              "config": args.config, "dataset": base.dataset,
                              "dataset_version": version, "mass": args.mass, "recipe": recipe,
                              "machine": machine_info(),
                              "command": " ".join(["python -m experiments.compare", *argv]),
                              **tables(done), "runs": [*done.values(), *outside]})

    started = time.perf_counter()
    speeds: dict[str, dict] = {}
    if args.speed_rounds:
        first = {}  # each row's lowest seed
        for spec in sorted(configs, key=lambda s: s.seed):
            first.setdefault(spec.row, configs[spec])
        print(f"{name}: timing the train steps of {len(first)} rows side by side", flush=True)
        speeds = kept_step_times(os.path.join(out, "step_times.json"), first,
                                 rounds=args.speed_rounds)
    record_partial()  # the runs kept from an earlier sitting or --runs-from, on record at once
    results: dict[RunSpec, dict] = {}
    for i, spec in enumerate(dict.fromkeys([*table_runs, *sweep_runs])):
        print(f"[{i + 1}/{len(configs)}] {name}: {spec.name}", flush=True)
        try:
            results[spec] = run_one(configs[spec], os.path.join(out, spec.name), mass=args.mass)
        except Interrupted as e:
            print(f"interrupted: {e}", file=sys.stderr)
            return 3
        except cli.BAD_INPUT as e:  # e.g. another model's checkpoints in the run's workdir
            return cli.fail(f"{spec.name}: {e}")
        record_partial()

    metric = _ranking_metric(results.values())
    segmentation = next((r["segmentation"] for r in results.values() if "segmentation" in r), {})
    payload = {
        "benchmark": "experiments.compare", "name": name, "config": args.config,
        "task": base.task, "metric": metric, "dataset": base.dataset,
        "dataset_version": version, "mass": args.mass,
        "command": " ".join(["python -m experiments.compare", *argv]),
        "machine": machine_info(),
        "recipe_summary": (f"{base.num_train_steps} steps" if base.num_train_steps else
                           f"{base.num_epochs} epochs") + f", batch {base.batch_size}, "
                          f"{base.optimizer} lr {base.learning_rate}",
        "recipe": recipe,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs_wall_seconds": round(sum(r.get("wall_seconds", 0.0) for r in results.values()), 1),
        **tables(results),
        "baselines": {k: segmentation[k] for k in ("center", "everything") if k in segmentation},
        "speed": ({"method": "train steps timed side by side in one process",
                   "rounds": args.speed_rounds, "steps": speeds} if speeds else
                  {"method": "the median of each run's own images/s"}),
        "runs": [results[s] for s in dict.fromkeys([*table_runs, *sweep_runs])],
    }
    write_json(os.path.join(out, f"{name}.json"), payload)
    text = markdown(payload)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text + "\n")
    plot(payload, os.path.join(out, f"{name}.png"))
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        for ext in ("json", "md", "png"):
            shutil.copyfile(os.path.join(out, f"{name}.{ext}"),
                            os.path.join(args.results, f"{name}.{ext}"))
    if outside:  # the record holds more than this comparison: keep it
        print(f"{name}: kept {partial[-1]}: it holds runs outside this comparison "
              f"({', '.join(run_name(r) for r in outside)})", flush=True)
    else:  # the whole comparison supersedes its partial record
        for path in partial:
            if os.path.exists(path):
                os.remove(path)
        folder = os.path.join(args.results, "partial") if args.results else None
        if folder and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
