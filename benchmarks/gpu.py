"""The attention and model tables on one GPU in bfloat16, with MFU.

    python -m benchmarks.gpu --json OUT [--peak-tflops 989] [--sizes ...] [--modes ...]
                             [--presets ...] [--train-presets ...] [--batch 64] [--skip-train]
    python -m benchmarks.gpu --allow-cpu --sizes 65 --presets cbt_nano ...   (a smoke test)

Table 1 is `benchmarks.attention` with bfloat16 per-head inputs (softmaxes and solves stay in
float32 inside the functions, as everywhere in `cbsa_jax`); table 2 is `benchmarks.models` with
the models' compute dtype bfloat16 (parameters float32): forward GFLOPs per image of every preset
and the train-step throughput. Every timed row gets `mfu` = achieved FLOP/s / peak, with achieved
FLOP/s from XLA's cost analysis of the compiled executable and the peak from `--peak-tflops`
(default 989: H100 / H200 SXM bf16 dense). On a GPU the memory budget defaults to 90% of the
device's memory (`memory_stats()['bytes_limit']`).

Imports nothing from `train/` and needs no TensorFlow. Without a GPU it refuses to run unless
`--allow-cpu` is given (meant for a smoke test at tiny sizes: the MFU is then against the GPU
peak, i.e. meaningless, and says so).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from benchmarks import _harness as h
from benchmarks import attention as attention_bench
from benchmarks import models as models_bench
from cbsa_jax import training

PEAKS_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "l4": 121.0}
DEFAULT_PEAK = 989.0


def default_peak(device_kind: str) -> float:
    kind = device_kind.lower()
    for key, value in PEAKS_TFLOPS.items():
        if key in kind:
            return value
    return DEFAULT_PEAK


def device_memory_budget_gb() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 (not every backend reports it)
        return None
    limit = stats.get("bytes_limit")
    return None if not limit else round(0.9 * limit / h.GB, 1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write both tables to this JSON file")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run on the CPU when there is no GPU (smoke test)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak bf16 dense TFLOP/s for the MFU (default: from the device kind, "
                        f"{DEFAULT_PEAK:g} for H100 / H200)")
    p.add_argument("--sizes", help="attention N = g^2 + 1 (default: g in 8..256)")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--attentions", default=",".join(attention_bench.ATTENTIONS))
    p.add_argument("--projections", action="store_true")
    p.add_argument("--memory-budget-gb", type=float, default=None)
    p.add_argument("--time-budget-s", type=float, default=60.0)
    p.add_argument("--presets", help="presets for the forward-cost table (default: all)")
    p.add_argument("--skip-presets", action="store_true", help="no forward-cost table")
    p.add_argument("--train-presets", default="cbt_tiny,cbt_small")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--batch", type=int, default=64, help="train-step batch (default 64)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed train steps after warm-up")
    p.add_argument("--matmul-n", type=int, default=8192)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    backend = jax.default_backend()
    if backend != "gpu" and not args.allow_cpu:
        print(f"benchmarks.gpu: no GPU (JAX backend is {backend!r}); pass --allow-cpu for a "
              "smoke test on the CPU", file=sys.stderr)
        sys.exit(2)
    info = h.machine_info()
    peak = args.peak_tflops or default_peak(info["device"])
    budget = args.memory_budget_gb or device_memory_budget_gb() or h.default_memory_budget_gb()
    print(f"# GPU benchmark (bfloat16), {info['date']}, device {info['device']} "
          f"({info['backend']}), jax {info['jax']}; peak {peak:g} TFLOP/s"
          + ("" if backend == "gpu" else " -- CPU smoke test: the MFU is meaningless"),
          flush=True)
    payload = {"benchmark": "gpu", "machine": info, "config": dict(vars(args), peak_tflops=peak,
                                                                   memory_budget_gb=budget),
               "attention": {}, "presets": [], "train": []}

    # table 1: attention, bfloat16 inputs
    att_argv = ["--modes", args.modes, "--attentions", args.attentions, "--dtype", "bfloat16",
                "--memory-budget-gb", str(budget), "--time-budget-s", str(args.time_budget_s),
                "--matmul-n", str(args.matmul_n)]
    if args.sizes:
        att_argv += ["--sizes", args.sizes]
    if args.projections:
        att_argv.append("--projections")
    att = attention_bench.main(att_argv)
    for row in att["rows"]:
        row["mfu"] = (row["flops"] / (row["median_ms"] / 1e3) / (peak * 1e12)
                      if row.get("median_ms") and row.get("flops") else None)
    payload["attention"] = att
    h.write_json(args.json, payload)
    print()
    print("Attention (bfloat16) with MFU:")
    print(h.table(att["rows"], [*attention_bench.COLUMNS[:-1], MFU_COLUMN,
                                attention_bench.COLUMNS[-1]]))

    # table 2: models, compute dtype bfloat16
    if not args.skip_presets:
        names = h.parse_list(args.presets) or sorted(models_bench.PRESETS)
        for name in names:
            try:
                row = models_bench.forward_cost(name, image_size=args.image_size,
                                                dtype=jnp.bfloat16)
            except Exception as e:  # noqa: BLE001 (reported in the row, as benchmarks.models)
                row = {"preset": name, "params": 0, "image_size": args.image_size,
                       "gflops_per_image": math.nan, "note": f"error: {h.error_text(e)}"}
            payload["presets"].append(row)
            h.write_json(args.json, payload)
        print()
        print(f"Forward cost (bfloat16 compute, batch 1, {args.image_size} x {args.image_size}; "
              "nano presets at 32 x 32):")
        print(h.table(payload["presets"], models_bench.PRESET_COLUMNS))
    if not args.skip_train:
        for name in h.parse_list(args.train_presets):
            try:
                row = models_bench.train_throughput(
                    name, batch=args.batch, image_size=args.image_size, dtype=jnp.bfloat16,
                    repeats=args.repeats, matmul_n=args.matmul_n,
                    compiler_options=training.compiler_options())
                row["mfu"] = row["achieved_gflops"] / (peak * 1e3)  # GFLOP/s over TFLOP/s
            except Exception as e:  # noqa: BLE001 (e.g. out of memory at this batch)
                row = {"preset": name, "batch": args.batch, "image_size": args.image_size,
                       "status": f"error: {h.error_text(e)}", "mfu": None}
            payload["train"].append(row)
            h.write_json(args.json, payload)
        print()
        print(f"Train step (AdamW, bfloat16 compute, batch {args.batch}, {args.image_size} x "
              f"{args.image_size}); matmul = measured bf16 {args.matmul_n}^3 product:")
        print(h.table(payload["train"], [*models_bench.TRAIN_COLUMNS[:-1], MFU_COLUMN,
                                         models_bench.TRAIN_COLUMNS[-1]]))
    h.write_json(args.json, payload)
    return payload


MFU_COLUMN = ("MFU", ">", lambda r: h.fmt(None if r.get("mfu") is None else 100 * r["mfu"],
                                          ".2f") + "%")


if __name__ == "__main__":
    main()
