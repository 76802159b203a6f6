"""One prepared check of cbsa_jax on an accelerator: correctness, then speed, within a budget.

    python -m benchmarks.device_check --out DIR [--official PATH] [--budget-s 480]
    python -m benchmarks.device_check --out DIR --smoke      (tiny sizes, on the CPU too)

Stages, in this order, each writing its JSON into DIR and its outcome into DIR/device_check.json
(rewritten after every stage, so a check cut short keeps what it finished):

1. `tests`: the library's tests that need no TensorFlow (`tests/cbsa_jax`, `tests/benchmarks`)
   on the device, with `JAX_DEFAULT_MATMUL_PRECISION=highest` (float32 matmuls on NVIDIA GPUs
   otherwise default to TF32, and the tests compare against float64 and NumPy references);
   the counts of passed, failed and skipped tests.
2. `gpu`: `benchmarks.gpu`: CBSA and its peers from N = 197 to 65,537 in bfloat16, the CBT, CRATE
   and ViT presets' forward cost and train steps, MFU on every timed row.
3. `official`: `benchmarks.official` on the device with `--dtype bfloat16` (the official model
   under `torch.autocast(bfloat16)`), the same weights and outputs compared first: the CBT-S and
   CBT-B train steps and inference at batch 256, inference at batch 1, the CBSA layer at
   N = 197, 1,025, 4,097 and 16,385. Each train and inference row gets `mfu` = the paper's count
   of the model's FLOPs (2 x its multiply-adds, `benchmarks._macs`, the ISTA step associated as
   the reference computes it) x 3 for forward and backward (x 1 for inference) x batch / time /
   the device's bfloat16 peak. Needs torch and a checkout of the official code (`--official`).
4. `causal`: `benchmarks.causal` forward + backward in bfloat16 up to 1,048,576 tokens: causal
   CBSA, causal linear attention, and `jax.nn.dot_product_attention(is_causal=True)` through
   cuDNN's flash kernel; the log-log slope of CBSA's time from 65,536 to 1,048,576 tokens.

A stage that fails is recorded with its error and the next one runs; a stage that would start
after `--budget-s` is skipped. Imports nothing from `train/` and needs no TensorFlow. `--smoke`
shrinks every stage (a few test files, one size each) and allows the CPU: the suite runs it so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

import jax

from benchmarks import _harness as h
from benchmarks import causal as causal_bench
from benchmarks import gpu as gpu_bench
from benchmarks import models as models_bench
from benchmarks import official

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tests", "gpu", "official", "causal")
FULL_TESTS = ("tests/cbsa_jax", "tests/benchmarks")
SMOKE_TESTS = ("tests/cbsa_jax/test_coding_rate.py",)
# official-comparison sizes (issue: CBT-S and CBT-B at batch 256, 224 px; the layer at 4 sizes)
OFFICIAL = dict(presets="cbt_small,cbt_base", train_batches="256", infer_batches="256,1",
                sizes="197,1025,4097,16385", layer_preset="cbt_small", rounds="3",
                target_s="0.3")
OFFICIAL_SMOKE = dict(presets="cbt_tiny", train_batches="2", infer_batches="1", sizes="65",
                      layer_preset="cbt_tiny", rounds="1", target_s="0.01", image_size="32",
                      num_classes="10")
CAUSAL_SIZES = "65536,131072,262144,524288,1048576"


def run_tests(paths: Sequence[str], out: str, timeout_s: float) -> dict:
    """pytest on `paths` in a subprocess (highest matmul precision): counts and failures."""
    xml = os.path.join(out, "tests.xml")
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           f"--junitxml={xml}", *paths]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        code, tail = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        code, tail = "timeout", str(e.stdout or "")[-4000:]
    result = {"command": " ".join(cmd[1:]), "exit_code": code,
              "wall_s": round(time.perf_counter() - started, 1), "output_tail": tail}
    if os.path.exists(xml):
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        failed = []
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts[
            "skipped"]
        result.update(counts, failed=failed)
    return result


def paper_gflop(preset: str, image_size: int, num_classes: int = 1000) -> float:
    """2 x the forward's multiply-adds per image as the paper counts them (fvcore's convention,
    the ISTA step associated as the reference computes it), in GFLOP."""
    cost = models_bench.forward_cost(preset, image_size=image_size, num_classes=num_classes,
                                     compile=False)
    return 2.0 * cost["gmacs_reference_ista"]


def add_mfu(rows: list[dict], peak_tflops: float, image_size: int, num_classes: int) -> None:
    """`mfu` for every timed train / inference row of `benchmarks.official` (in place)."""
    flops: dict[str, float] = {}
    for row in rows:
        if row.get("case") not in ("train", "infer") or not row.get("ours_ms"):
            continue
        preset = row["preset"]
        if preset not in flops:
            flops[preset] = paper_gflop(preset, image_size, num_classes)
        passes = 3.0 if row["case"] == "train" else 1.0
        step_gflop = passes * flops[preset] * row["batch"]
        row["paper_gflop"] = step_gflop
        row["mfu"] = step_gflop / (row["ours_ms"] / 1e3) / (peak_tflops * 1e3)
        row["official_mfu"] = step_gflop / (row["official_ms"] / 1e3) / (peak_tflops * 1e3)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the JSON files")
    p.add_argument("--official", default=None,
                   help="checkout of github.com/QishuaiWen/CBSA for the official stage")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="no stage starts after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bfloat16 dense peak for the MFU (default: from the device kind)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, and the CPU is allowed (a test of the check itself)")
    args = p.parse_args(argv)
    args.stages = h.parse_list(args.stages)
    h.check_choices(p, args.stages, STAGES, "stage")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    backend = jax.default_backend()
    if backend == "cpu" and not args.smoke:
        raise SystemExit("benchmarks.device_check: JAX sees no accelerator (backend 'cpu'); "
                         "--smoke runs the check at tiny sizes on the CPU")
    os.makedirs(args.out, exist_ok=True)
    info = h.machine_info()
    peak = args.peak_tflops or gpu_bench.default_peak(info["device"])
    summary = {"benchmark": "device_check",
               "command": "python -m benchmarks.device_check "
               + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": info, "smoke": args.smoke, "peak_tflops": peak, "stages": {}}
    path = os.path.join(args.out, "device_check.json")

    def out(name: str) -> str:
        return os.path.join(args.out, f"{name}.json")

    def official_stage() -> dict:
        if not args.official:
            return {"status": "skipped: no --official checkout given"}
        if importlib.util.find_spec("torch") is None:
            return {"status": "skipped: torch is not installed"}
        sizes = OFFICIAL_SMOKE if args.smoke else OFFICIAL
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
        payload = official.main(["--repo", args.official, "--json", out("official"),
                                 "--dtype", "bfloat16", *flags])
        add_mfu(payload["rows"], peak, int(sizes.get("image_size", 224)),
                int(sizes.get("num_classes", 1000)))
        h.write_json(out("official"), payload)
        return {"rows": len(payload["rows"]), "ratios": {
            f"{r['case']} {r.get('preset', '')} {r.get('batch', r.get('N', ''))}".strip():
            r.get("ratio") for r in payload["rows"]},
            "mfu": {f"{r['case']} {r['preset']} {r['batch']}": r.get("mfu")
                    for r in payload["rows"] if r.get("mfu") is not None}}

    def causal_stage() -> dict:
        flags = ["--json", out("causal"), "--dtype", "bfloat16", "--modes", "fwdbwd"]
        if args.smoke:
            flags += ["--sizes", "32,64", "--heads", "2", "--dim_head", "8", "--queries", "4",
                      "--chunk", "8", "--rounds", "1", "--allocator", "default"]
        else:
            flags += ["--sizes", CAUSAL_SIZES, "--rounds", "3"]
        if backend == "gpu":
            flags += ["--implementation", "cudnn"]
        payload = causal_bench.main(flags)
        cbsa = [(r["n"], r["median_ms"]) for r in payload["rows"]
                if r["attention"] == "cbsa" and r.get("median_ms")]
        slope = h.loglog_slope([n for n, _ in cbsa], [t for _, t in cbsa])
        return {"longest_cbsa_tokens": max((n for n, _ in cbsa), default=None),
                "cbsa_slope": slope, "rows": len(payload["rows"])}

    def gpu_stage() -> dict:
        flags = ["--json", out("gpu"), "--peak-tflops", str(peak)]
        if args.smoke:
            flags += ["--allow-cpu", "--sizes", "17", "--attentions", "cbsa", "--modes", "fwd",
                      "--skip-presets", "--train-presets", "cbt_nano", "--batch", "2",
                      "--image-size", "32", "--repeats", "1", "--matmul-n", "64",
                      "--time-budget-s", "5"]
        else:
            flags += ["--sizes", "197,1025,4097,16385,65537", "--presets",
                      "cbt_tiny,cbt_small,cbt_base,crate_small,crate_base,vit_small,vit_base",
                      "--train-presets", "cbt_small,cbt_base,crate_base,vit_base",
                      "--batch", "256", "--time-budget-s", "60"]
        payload = gpu_bench.main(flags)
        return {"attention_rows": len(payload["attention"]["rows"]),
                "train_mfu": {r["preset"]: r.get("mfu") for r in payload["train"]}}

    stages: dict[str, Callable[[], dict]] = {
        "tests": lambda: run_tests(SMOKE_TESTS if args.smoke else FULL_TESTS, args.out,
                                   timeout_s=max(60.0, args.budget_s / 2)),
        "gpu": gpu_stage, "official": official_stage, "causal": causal_stage}
    for name in args.stages:
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            summary["stages"][name] = {"status": f"skipped: budget spent ({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        try:
            result = stages[name]()
            result.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 (recorded; the next stage still runs)
            result = {"status": f"error: {h.error_text(e)}"}
        except SystemExit as e:  # a benchmark refusing its arguments or its machine
            result = {"status": f"error: {e}"}
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        summary["stages"][name] = result
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        h.write_json(path, summary)
        print(f"[device_check] {name}: {result['status']} ({result['wall_s']} s)", flush=True)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    h.write_json(path, summary)
    print(json.dumps({k: v.get("status") for k, v in summary["stages"].items()}), flush=True)
    return summary


if __name__ == "__main__":
    main()

