"""The adaptation demo: a pretrained softmax ViT becomes a linear-cost pooled-query ViT.

    python -m experiments.adapt_mnist --workdir runs/adapt_mnist \\
        --json docs/results/adapt_mnist.json

On the real MNIST-5k digits (the `mnist5k` builder, no download), at 197 tokens:

1. pretrain `vit_timm_nano` (softmax) with `configs/mnist_vit_timm.py` (`python -m train`);
2. save it in timm's layout (`cbsa_jax.convert.save_timm`, `WORKDIR/vit_nano.safetensors`);
3. adapt it (`train.tools.adapt_vit`) with `configs/mnist_adapt.py`: every block switches to the
   pooled-query attention on the pretrained q, k, v; evaluate it right away, then fine-tune;
4. the same for the softmax model (`--attention softmax`): the same fine-tuning steps without the
   swap, the baseline;
5. time the forward pass of both models (batch 1) at 197, 1,025 and 4,097 tokens (28, 64 and
   128 px images, 2 x 2 patches), to show the linear cost.

Every stage resumes from its workdir, so a rerun only does what is missing (the accuracies and
training wall clocks of finished stages are kept as small JSON files beside them). Prints a
Markdown table and writes the numbers, the command, the machine and the wall clock as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from benchmarks._harness import time_call
from benchmarks._params import fill_on_host
from cbsa_jax.convert import save_timm
from cbsa_jax.models import create
from cbsa_jax.reporting import machine_info, write_json
from train import cli, loop
from train import config as config_lib
from train.checkpoint import Checkpointer
from train.tools import adapt_vit

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PRETRAIN = os.path.join(CONFIGS, "mnist_vit_timm.py")
ADAPT = os.path.join(CONFIGS, "mnist_adapt.py")
ATTENTIONS = {"adapted": "agent", "softmax": "softmax"}
TIMING_SIZES = (28, 64, 128)  # 2 x 2 patches: 197, 1,025, 4,097 tokens


def _config(path: str, overrides: dict[str, str]):
    return cli.load_config(path, {"progress": "False", **overrides})


def _accuracy(config, workdir: str) -> float:
    """Test accuracy of the newest checkpoint in `workdir`."""
    config = config.copy_and_resolve_references()
    config.eval_only = True
    return float(loop.run(config, workdir)["eval"]["accuracy"])


def _cached(path: str, compute):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    with open(path, "w") as f:
        json.dump(value, f)
    return value


def forward_times(sizes=TIMING_SIZES) -> list[dict]:
    """Median forward seconds (batch 1) of vit_timm_nano with each attention per image size."""
    rows = []
    for size in sizes:
        row = {"image_size": size, "tokens": 1 + (size // 2) ** 2}
        images = np.random.default_rng(0).normal(size=(1, size, size, 1)).astype(np.float32)
        for name, kind in ATTENTIONS.items():
            graphdef, state = nnx.split(nnx.eval_shape(lambda kind=kind, size=size: create(
                "vit_timm_nano", num_classes=10, image_size=size, patch_size=2, cells=(8, 8),
                channels=1, attention=kind)))
            state = fill_on_host(state, np.random.default_rng(0))
            forward = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x))
            row[f"{name}_ms"] = 1e3 * time_call(
                lambda f=forward, s=state, x=images: f(s, x)).median_s
        row["ratio"] = row["softmax_ms"] / row["adapted_ms"]
        rows.append(row)
    return rows


def run(workdir: str, overrides: dict[str, str], *, timing: bool = True) -> dict:
    started = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    pre_dir = os.path.join(workdir, "pretrain")
    pre_config = _config(PRETRAIN, overrides)
    print(f"[1/5] pretraining {pre_config.model.name} (softmax) in {pre_dir}", flush=True)
    trained = loop.run(pre_config, pre_dir)
    pretrained = _cached(os.path.join(workdir, "pretrain.json"),
                         lambda: {"accuracy": _accuracy(pre_config, pre_dir),
                                  "wall_seconds": trained["wall_seconds"]})
    checkpoint = os.path.join(workdir, "vit_nano.safetensors")
    if not os.path.exists(checkpoint):
        exp, state, _ = loop.load_experiment(pre_dir)
        save_timm(exp.model(state), checkpoint)
    print(f"[2/5] saved in timm's layout: {checkpoint}", flush=True)
    results = {}
    for step, (name, kind) in enumerate(ATTENTIONS.items(), start=3):
        run_dir = os.path.join(workdir, name)
        config = _config(ADAPT, {**overrides, "model.attention": kind})
        ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=1)
        fresh = ckpt.latest_step() is None
        ckpt.close()
        if fresh:
            adapt_vit.adapt(checkpoint, config, run_dir)
        print(f"[{step}/5] {name}: evaluating the loaded model, then fine-tuning in {run_dir}",
              flush=True)
        after_swap = _cached(os.path.join(run_dir, "after_swap.json"),
                             lambda c=config, d=run_dir: {"accuracy": _accuracy(c, d)})
        summary = loop.run(config, run_dir)
        tuned = _cached(os.path.join(run_dir, "finetune.json"),
                        lambda c=config, d=run_dir, s=summary: {
                            "accuracy": _accuracy(c, d), "steps": s["step"],
                            "wall_seconds": s["wall_seconds"]})
        results[name] = {"after_swap": after_swap["accuracy"],
                         "after_finetune": tuned["accuracy"], "finetune_steps": tuned["steps"],
                         "finetune_wall_seconds": tuned["wall_seconds"], "workdir": run_dir}
    payload = {
        "pretrain": {"config": os.path.relpath(PRETRAIN), "epochs": pre_config.num_epochs,
                     "accuracy": pretrained["accuracy"],
                     "wall_seconds": pretrained["wall_seconds"]},
        "finetune": {"config": os.path.relpath(ADAPT), **results},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if timing:
        print("[5/5] forward time at 197, 1,025 and 4,097 tokens", flush=True)
        payload["forward"] = forward_times()
    return payload


def markdown(payload: dict) -> str:
    pre, ft = payload["pretrain"], payload["finetune"]
    lines = ["| attention | before the swap | right after the swap | after fine-tuning |",
             "|---|---|---|---|"]
    for name in ATTENTIONS:
        r = ft[name]
        lines.append(f"| {name} | {pre['accuracy']:.3f} | {r['after_swap']:.3f} | "
                     f"{r['after_finetune']:.3f} ({r['finetune_steps']} steps, "
                     f"{r['finetune_wall_seconds']:.0f} s) |")
    if payload.get("forward"):
        lines += ["", "| tokens | softmax forward (ms) | adapted forward (ms) | ratio |",
                  "|---|---|---|---|"]
        lines += [f"| {r['tokens']:,} | {r['softmax_ms']:.1f} | {r['adapted_ms']:.1f} | "
                  f"{r['ratio']:.2f} |" for r in payload["forward"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m experiments.adapt_mnist",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join("runs", "adapt_mnist"))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--no-timing", action="store_true", help="skip the forward timing")
    try:
        rest, overrides = cli.split_overrides(argv)
    except config_lib.ConfigError as e:
        return cli.fail(e)
    args = parser.parse_args(rest)
    payload = run(args.workdir, overrides, timing=not args.no_timing)
    payload["command"] = "python -m experiments.adapt_mnist " + " ".join(argv)
    payload["machine"] = machine_info()
    print(markdown(payload), flush=True)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
