"""`python -m experiments.lm_compare --out DIR`: byte-level language models with causal CBSA,
softmax and linear attention at equal training compute, at several context lengths.

    python -m experiments.lm_compare --out runs/lm_compare --results docs/results \\
        [--contexts 256,4096] [--models lm_cbsa_tiny,lm_softmax_tiny,lm_linear_tiny] \\
        [--budget_cpu_s 270] [--tokens_per_step 8192] [--eval_bytes 262144] \\
        [--config.FIELD=VALUE ...]

The recipe is `configs/lm_stdlib.py` (`--config` another file, `--config.FIELD` overrides). For
each context length L (bytes per sequence; `stdlib_bytes` has a config of that length:
`train.datasets.stdlib.CONFIGS`):

1. Every model's train step (the step `python -m train` compiles, batch `--tokens_per_step` / L
   sequences, so each step sees the same bytes at every L) is timed side by side in one process:
   after a warm-up, `--rounds` interleaved rounds of one step per model, the process CPU time
   (all threads) of each step; the median is the model's step CPU time.
2. Each model gets `floor(--budget_cpu_s / step CPU time)` steps (at least 1): equal training
   compute in CPU seconds, whatever the load of a shared machine does to the wall clock. The
   learning-rate warm-up is `--warmup_fraction` of the steps.
3. Each model is trained with `train.loop.run` (one workdir per run, `DIR/ctxL/MODEL/`) and
   evaluated once at the end on the same fixed part of the test split, `--eval_bytes` / L
   sequences (`test[:K]`): bits per byte and next-byte accuracy.

Everything lands in `DIR/` (`lm_compare.json`: every row, the step times, the recipe, machine,
command and wall clock; `lm_compare.md`: the tables), copied to `--results DIR` too when given
(`docs/results`, where the README's tables come from; `python -m experiments.results_readme`
then rewrites them). Rerunning resumes: the step times are measured once per context and kept
(`DIR/ctxL/step_times.json`), finished runs (their `result.json`) are read back, and an
interrupted run continues from its last checkpoint (SIGTERM saves one and stops the comparison;
rerun to go on).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

from cbsa_jax.models.lm import LM_PRESETS
from cbsa_jax.reporting import fmt, machine_info, parse_list, table, write_json
from experiments._runs import Interrupted, kept_step_times, parse, train_once
from train import cli
from train import config as config_lib
from train import data as data_lib
from train import mesh as mesh_lib
from train.datasets import stdlib

__all__ = ["main", "dataset_for", "run_config", "steps_for", "markdown"]

NAME = "lm_compare"
DEFAULT_CONFIG = os.path.join(os.path.dirname(config_lib.DEFAULT_CONFIG), "lm_stdlib.py")
DEFAULT_MODELS = "lm_cbsa_tiny,lm_softmax_tiny,lm_linear_tiny"


def dataset_for(context: int) -> str:
    """The `stdlib_bytes` config with windows of `context` bytes (ValueError if none)."""
    names = [name for name, w in stdlib.CONFIGS.items() if w.seq_len == context]
    if not names:
        raise config_lib.ConfigError(
            f"--contexts: stdlib_bytes has no config of {context} bytes (lengths: "
            f"{sorted(w.seq_len for w in stdlib.CONFIGS.values())})")
    return "stdlib_bytes" if names[0] == "default" else f"stdlib_bytes/{names[0]}"


def run_config(base, *, model: str, context: int, tokens_per_step: int, eval_bytes: int,
               steps: int = 1, warmup_steps: float = 0.0, steps_per_epoch: int = 1):
    """The base recipe for one run: `model` on `context`-byte sequences, `steps` steps (the
    warm-up given in steps), one evaluation at the end on `eval_bytes` of the test split."""
    config = base.copy_and_resolve_references()
    config.model.name = model
    config.dataset = dataset_for(context)
    config.batch_size = max(tokens_per_step // context, 1)
    config.eval_batch_size = 0
    config.eval_split = f"test[:{max(eval_bytes // context, 1)}]"
    config.num_train_steps = steps
    config.warmup_epochs = warmup_steps / steps_per_epoch
    config.eval_every_steps = config.checkpoint_every_steps = steps
    config.log_every_steps = max(1, min(config.log_every_steps, steps // 10 or 1))
    config.progress = False
    return config_lib.validate(config)


def steps_for(budget_cpu_s: float, step_cpu_s: float) -> int:
    """Steps of `step_cpu_s` CPU seconds that fit in the budget (at least 1)."""
    return max(1, int(budget_cpu_s // step_cpu_s))


def _steps_per_epoch(config) -> int:
    spec = data_lib.open_input(config).spec
    return spec.steps_per_epoch


def run_one(config, workdir: str, timing: dict) -> dict:
    """Train (or resume, or read back) one run and evaluate it; returns its row."""

    def measure(summary: dict) -> dict:
        final = summary["final_eval"]
        return {"model": config.model.name, "attention": config.model.name.split("_")[1],
                "context": _context_of(config), "batch_size": config.batch_size,
                "steps": summary["total_steps"], "parameters": timing["parameters"],
                "train_step_cpu_seconds": timing["step_cpu_seconds"],
                "train_step_wall_seconds": timing["step_wall_seconds"],
                "training_cpu_seconds": summary["total_steps"] * timing["step_cpu_seconds"],
                "test_bits_per_byte": final["bits_per_byte"], "test_loss_nats": final["loss"],
                "test_next_byte_accuracy": final["accuracy"], "test_bytes": final["tokens"],
                "eval_split": config.eval_split, "workdir": workdir}

    return train_once(config, workdir, measure)


def _context_of(config) -> int:
    name = config.dataset.partition("/")[2] or "default"
    return stdlib.CONFIGS[name].seq_len


COLUMNS = [
    ("context", ">", lambda r: f"{r['context']:,}"),
    ("model", "<", lambda r: r["model"]),
    ("params", ">", lambda r: f"{r['parameters']:,}"),
    ("batch", ">", lambda r: str(r["batch_size"])),
    ("steps", ">", lambda r: f"{r['steps']:,}"),
    ("step CPU s", ">", lambda r: fmt(r["train_step_cpu_seconds"], ".3f")),
    ("training CPU s", ">", lambda r: fmt(r["training_cpu_seconds"], ".0f")),
    ("wall s", ">", lambda r: fmt(r["wall_seconds"], ".0f")),
    ("test bits per byte", ">", lambda r: fmt(r["test_bits_per_byte"], ".3f")),
    ("next-byte accuracy", ">", lambda r: fmt(r["test_next_byte_accuracy"], ".3f")),
]


def markdown(payload: dict) -> str:
    lines = [f"# Byte-level LMs at equal training compute ({payload['budget_cpu_s']:g} CPU "
             f"seconds each)", "",
             f"Command: `{payload['command']}`; {payload['machine']['date']}, "
             f"{payload['machine']['cpu_count']} CPU cores (load average at the start of the "
             f"last sitting "
             f"{', '.join(f'{x:.1f}' for x in payload['machine']['load_average'] or ())}); wall "
             f"clock of the last sitting {payload['wall_seconds'] / 60:.1f} min, of all runs "
             f"{payload['runs_wall_seconds'] / 60:.1f} min. Recipe: {payload['recipe_summary']}.",
             "", table(payload["rows"], COLUMNS)]
    return "\n".join(lines)


def parse_args(argv: list[str]):
    """(flags, `--config.FIELD` overrides); bad flags exit 2 with the usage (argparse)."""
    p = cli.ArgumentParser(prog="python -m experiments.lm_compare", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the shared recipe")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated LM presets")
    p.add_argument("--contexts", default="256,4096", help="bytes per sequence, comma-separated")
    p.add_argument("--budget_cpu_s", type=float, default=270.0,
                   help="training CPU seconds per model and context")
    p.add_argument("--tokens_per_step", type=int, default=8192,
                   help="bytes per train step (batch = this / context)")
    p.add_argument("--eval_bytes", type=int, default=262144,
                   help="test bytes evaluated (the first eval_bytes / context sequences)")
    p.add_argument("--warmup_fraction", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved step-timing rounds")
    args, overrides = parse(p, argv, out="runs/lm_compare",
                            copied="lm_compare.json and lm_compare.md")
    args.models = parse_list(args.models) or []
    try:
        args.contexts = parse_list(args.contexts, int) or []
    except ValueError:
        p.error(f"--contexts: expected comma-separated integers, got {args.contexts!r}")
    for name in ("budget_cpu_s", "tokens_per_step", "eval_bytes", "rounds"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)!r}")
    if not 0 <= args.warmup_fraction < 1:
        p.error(f"--warmup_fraction must be in [0, 1), got {args.warmup_fraction!r}")
    if not args.models or not args.contexts:
        p.error("nothing to do: give --models and --contexts")
    return args, overrides


def _plan(args, overrides: dict, shape: dict):
    """(the base recipe, {context: {model: its run config for the step timing}}), or
    `ConfigError` naming the flag."""
    base = cli.load_config(args.config, overrides)
    unknown = sorted(set(args.models) - set(LM_PRESETS))
    if unknown:
        raise config_lib.ConfigError(f"--models: unknown LM presets {unknown}")
    return base, {ctx: {m: run_config(base, model=m, context=ctx, **shape) for m in args.models}
                  for ctx in args.contexts}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
    except SystemExit as e:
        return cli.exit_code(e)
    logging.getLogger("absl").setLevel(logging.WARNING)
    shape = dict(tokens_per_step=args.tokens_per_step, eval_bytes=args.eval_bytes)
    try:
        base, probes = _plan(args, overrides, shape)
        # as python -m train: one CPU device per core
        mesh_lib.split_host(*(c for by_model in probes.values() for c in by_model.values()))
    except ValueError as e:  # a ConfigError, or CBSA_JAX_HOST_DEVICES
        return cli.fail(e)
    os.makedirs(args.out, exist_ok=True)
    started, machine = time.perf_counter(), machine_info()
    rows, step_times = [], {}
    for ctx in args.contexts:
        out = os.path.join(args.out, f"ctx{ctx}")
        os.makedirs(out, exist_ok=True)
        print(f"context {ctx}: timing the train steps of {', '.join(args.models)}", flush=True)
        timing = step_times[str(ctx)] = kept_step_times(
            os.path.join(out, "step_times.json"), probes[ctx], rounds=args.rounds)
        per_epoch = _steps_per_epoch(probes[ctx][args.models[0]])
        for model in args.models:
            steps = steps_for(args.budget_cpu_s, timing[model]["step_cpu_seconds"])
            config = run_config(base, model=model, context=ctx, steps=steps,
                                warmup_steps=args.warmup_fraction * steps,
                                steps_per_epoch=per_epoch, **shape)
            print(f"context {ctx}: {model}, {steps} steps of "
                  f"{timing[model]['step_cpu_seconds']:.3f} CPU s", flush=True)
            try:
                rows.append(run_one(config, os.path.join(out, model), timing[model]))
            except Interrupted as e:
                print(f"interrupted: {e}", file=sys.stderr)
                return 3
    payload = {
        "benchmark": "experiments.lm_compare", "config": args.config,
        "command": " ".join(["python -m experiments.lm_compare", *argv]),
        "machine": machine, "budget_cpu_s": args.budget_cpu_s,
        "tokens_per_step": args.tokens_per_step, "eval_bytes": args.eval_bytes,
        "warmup_fraction": args.warmup_fraction, "rounds": args.rounds,
        "recipe_summary": (f"{base.optimizer} lr {base.learning_rate} (cosine to "
                           f"{base.min_lr_ratio} of it, warm-up {args.warmup_fraction:.0%} of "
                           f"the steps), weight decay {base.weight_decay}, {args.tokens_per_step:,}"
                           f" bytes per step"),
        "recipe": json.loads(base.to_json()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs_wall_seconds": round(sum(r["wall_seconds"] for r in rows), 1),
        "step_times": step_times, "rows": rows,
    }
    write_json(os.path.join(args.out, f"{NAME}.json"), payload)
    text = markdown(payload)
    with open(os.path.join(args.out, f"{NAME}.md"), "w") as f:
        f.write(text + "\n")
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        for ext in ("json", "md"):
            shutil.copyfile(os.path.join(args.out, f"{NAME}.{ext}"),
                            os.path.join(args.results, f"{NAME}.{ext}"))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
