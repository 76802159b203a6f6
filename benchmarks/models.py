"""Parameters and FLOPs of every preset, and train-step throughput of CBT-T and CBT-S.

    python -m benchmarks.models --json OUT [--presets cbt_tiny,...] [--skip-train]
                                [--train-presets cbt_tiny,cbt_small] [--batch 8]

Table 1 (every preset in `cbsa_jax.models.PRESETS`): trainable parameters (1,000 classes),
forward GFLOPs per image from XLA's cost analysis of the compiled forward
(`jax.jit(...).lower(...).compile().cost_analysis()`; a multiply-add counts two FLOPs and
element-wise work counts too), and GMACs per image as the paper counts them (fvcore: one per
multiply-add of every matmul and convolution, `benchmarks/_macs.py`), twice: as this library
executes the forward, and with the ISTA step associated as the reference computes it
(`X M - (X M^T) M`, which fvcore counts; this library picks `X (M - M^T M)` when cheaper, see
`cbsa_jax.unroll.ista_association`), beside fvcore's count of the official model where there is
one. Batch 1, at 224 x 224; the `nano` and `pico` presets (4 x 4 patches, 4 x 4 cells) at their
natural 32 x 32. Models are abstract (`nnx.eval_shape`): nothing big is allocated.

Table 2 (`--train-presets`, default CBT-T and CBT-S at 224 x 224, batch 8): the train step
`python -m train` compiles for a classification run with AdamW (`cbsa_jax.training`: the
classification task's step, the state donated and passed flat), its median time after a
warm-up, images/s, the step's FLOPs from cost analysis and the achieved GFLOP/s, beside the
machine's float32 matmul rate (a 2048 x 2048 x 2048 product) timed between the steps, so
both saw the same load: `fraction` is achieved / matmul. The step is compiled as
`--train-variants` says: `train` (default; the options the training program uses,
`cbsa_jax.training.compiler_options()`) and/or `xla-default`. The process's malloc is set as
`python -m train` sets it (`--allocator default` leaves glibc's defaults), and the step runs on
the devices `python -m train` splits the CPU into, one per core, the batch split over them
(`--devices one`: one device).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import _harness as h
from benchmarks import _macs
from benchmarks._params import host_initialised
from cbsa_jax import training
from cbsa_jax.models import CPU_SIZES, PRESETS, create

DEFAULT_TRAIN = ("cbt_tiny", "cbt_small")

# fvcore's FlopCountAnalysis of the official PyTorch models (QishuaiWen/CBSA, eval mode), 224 x
# 224, batch 1, 1,000 classes, in GMACs
FVCORE_GMACS = {"cbt_tiny": 0.654, "cbt_small": 2.374, "cbt_base": 9.014, "cbt_large": 28.797}


def natural_size(name: str, image_size: int = 224) -> int:
    return 32 if name.endswith(CPU_SIZES) else image_size


def forward_cost(name: str, *, image_size: int = 224, num_classes: int = 1000, dtype=None,
                 batch: int = 1, compile: bool = True) -> dict:
    """Parameters, XLA's forward cost and the forward's multiply-adds of preset `name` (abstract
    model, eval mode); `compile=False` skips XLA (its GFLOPs are then NaN)."""
    size = natural_size(name, image_size)
    abstract = nnx.eval_shape(lambda: create(name, num_classes=num_classes, image_size=size,
                                             dtype=dtype))
    abstract.eval()
    graphdef, state = nnx.split(abstract)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    macs = _macs.count_macs(forward, state, images)
    with _macs.ista_association("tokens"):
        macs_reference = _macs.count_macs(forward, state, images)
    fvcore = FVCORE_GMACS.get(name) if (size, batch, num_classes) == (224, 1, 1000) else None
    t0 = time.perf_counter()
    cost = (h.cost_analysis(jax.jit(forward).lower(state, images).compile()) if compile
            else {"flops": math.nan})
    return {"preset": name, "params": h.count_params(abstract), "image_size": size,
            "batch": batch, "gflops_per_image": cost["flops"] / batch / 1e9,
            "gmacs_per_image": macs / batch / 1e9,
            "gmacs_reference_ista": macs_reference / batch / 1e9,
            "fvcore_gmacs": fvcore,
            "fvcore_deviation": None if fvcore is None else macs_reference / batch / 1e9 / fvcore
            - 1,
            "compile_s": time.perf_counter() - t0,
            "note": "natural size 32 x 32" if size != image_size else ""}


def train_throughput(name: str, *, batch: int = 8, image_size: int = 224,
                     num_classes: int = 1000, dtype=None, repeats: int = 3,
                     matmul_n: int = 2048, seed: int = 0,
                     compiler_options: dict | None = None, split: bool = True) -> dict:
    """Median train-step time of preset `name`, and the matmul rate timed between the steps.

    `compiler_options` are XLA options for the step's compilation (empty: XLA's defaults);
    `split`: on the devices `python -m train` splits the batch over
    (`cbsa_jax.training.step_devices`), else on one device.
    """
    size = image_size
    abstract = nnx.eval_shape(lambda: create(name, num_classes=num_classes, image_size=size,
                                             dtype=dtype))
    model = host_initialised(abstract, seed)
    devices = training.step_devices(batch) if split else None
    step, leaves = training.classification_step(model, optax.adamw(1e-4, weight_decay=0.05),
                                                num_classes=num_classes,
                                                options=compiler_options or {}, devices=devices)
    rng = np.random.default_rng(seed)
    batch_j = {"image": jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32),
               "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}
    if step.batch_sharding is not None:
        batch_j = jax.device_put(batch_j, step.batch_sharding)
    count = len(devices) if devices else 1
    t0 = time.perf_counter()
    compiled = step.compile(leaves, batch_j)
    compile_s = time.perf_counter() - t0
    cost = h.cost_analysis(compiled)  # per device: the batch's share
    cost["flops"] *= count
    mem = h.memory_analysis(compiled)
    probe = h.MatmulProbe(matmul_n, jnp.float32 if dtype is None else dtype)
    times = []
    for i in range(repeats + 1):  # the first call is the warm-up
        t0 = time.perf_counter()
        leaves, metrics = compiled(leaves, batch_j)
        jax.block_until_ready((leaves, metrics))
        if i:
            times.append(time.perf_counter() - t0)
            for _ in range(3):  # the matmul rate under the same load, step by step
                probe.sample()
    matmul = probe.result()
    med = float(np.median(times))
    achieved = cost["flops"] / med / 1e9
    return {"preset": name, "batch": batch, "image_size": size,
            "dtype": "float32" if dtype is None else jnp.dtype(dtype).name,
            "step_ms": med * 1e3, "images_per_s": batch / med,
            "step_gflop": cost["flops"] / 1e9, "achieved_gflops": achieved,
            "matmul_gflops": matmul["gflops"], "fraction_of_matmul": achieved / matmul["gflops"],
            "repeats": len(times), "times_ms": [t * 1e3 for t in times],
            "peak_mb": mem["peak"] / h.MB * count, "compile_s": compile_s, "devices": count,
            "compiler_options": dict(compiler_options or {}),
            "loss": float(metrics["loss"]), "rss_peak_mb": h.rss_peak_mb()}


VARIANTS = {"train": training.compiler_options, "xla-default": dict}

PRESET_COLUMNS = [
    ("preset", "<", lambda r: r["preset"]),
    ("params", ">", lambda r: f"{r['params']:,}"),
    ("image", ">", lambda r: f"{r['image_size']}"),
    ("GFLOPs / image (XLA)", ">", lambda r: h.fmt(r["gflops_per_image"], ".3f")),
    ("GMACs / image", ">", lambda r: h.fmt(r.get("gmacs_per_image"), ".3f")),
    ("GMACs, reference ISTA", ">", lambda r: h.fmt(r.get("gmacs_reference_ista"), ".3f")),
    ("fvcore (official)", ">", lambda r: h.fmt(r.get("fvcore_gmacs"), ".3f")),
    ("vs fvcore", ">", lambda r: "-" if r.get("fvcore_deviation") is None
     else f"{100 * r['fvcore_deviation']:+.2f}%"),
    ("note", "<", lambda r: r.get("note", "")),
]

TRAIN_COLUMNS = [
    ("preset", "<", lambda r: r["preset"]),
    ("XLA options", "<", lambda r: r.get("variant", "-")),
    ("batch", ">", lambda r: str(r["batch"])),
    ("image", ">", lambda r: str(r["image_size"])),
    ("step ms", ">", lambda r: h.fmt(r.get("step_ms"), ",.0f")),
    ("images/s", ">", lambda r: h.fmt(r.get("images_per_s"), ".2f")),
    ("step GFLOP", ">", lambda r: h.fmt(r.get("step_gflop"), ",.1f")),
    ("achieved GFLOP/s", ">", lambda r: h.fmt(r.get("achieved_gflops"), ".1f")),
    ("matmul GFLOP/s", ">", lambda r: h.fmt(r.get("matmul_gflops"), ".1f")),
    ("fraction", ">", lambda r: h.fmt(None if r.get("fraction_of_matmul") is None
                                       else 100 * r["fraction_of_matmul"], ".0f") + "%"),
    ("status", "<", lambda r: r.get("status", "ok")),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write both tables to this JSON file")
    p.add_argument("--presets", help="comma-separated presets for table 1 (default: all)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--skip-train", action="store_true", help="only table 1")
    p.add_argument("--train-presets", default=",".join(DEFAULT_TRAIN))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3, help="timed train steps after the warm-up")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--hugepages", action="store_true",
                   help="restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge "
                        "pages for XLA's per-call buffers; see docs/performance.md)")
    p.add_argument("--train-variants", default="train",
                   help="comma-separated compilations of the train step: 'train' (the options "
                        "python -m train uses) and/or 'xla-default'")
    p.add_argument("--allocator", default="train", choices=("train", "default"),
                   help="'train': malloc as python -m train sets it; 'default': glibc's")
    p.add_argument("--devices", default="train", choices=("train", "one"),
                   help="the train step's devices: 'train': as python -m train splits the CPU "
                        "(one XLA device per core dividing the batch); 'one': one device")
    args = p.parse_args(argv)
    args.train_variants = h.parse_list(args.train_variants)
    h.check_choices(p, args.train_variants, VARIANTS, "train variant", "variants")
    args.presets = h.parse_list(args.presets) or sorted(PRESETS)
    args.train_presets = [] if args.skip_train else h.parse_list(args.train_presets)
    h.check_choices(p, [*args.presets, *args.train_presets], sorted(PRESETS), "preset")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.hugepages:
        h.reexec_with_hugepages("benchmarks.models", argv)
    allocator = (training.configure_host_allocator() if args.allocator == "train"
                 else {"applied": False, "reason": "--allocator default"})
    info = {"host_devices": (training.configure_host_devices([args.batch])
                             if args.devices == "train" and args.train_presets
                             else {"applied": False, "reason": f"--devices {args.devices}"})}
    info.update(h.machine_info(), allocator=allocator)
    payload = {"benchmark": "models", "machine": info, "config": vars(args), "presets": [],
               "train": []}
    print(f"# models benchmark, {info['date']}, {info['processor']} ({info['cpu_count']} cores, "
          f"{info['backend']}), jax {info['jax']}; huge pages "
          f"{'on' if h.hugepages_enabled() else 'off'}", flush=True)
    for name in args.presets:
        try:
            row = forward_cost(name, image_size=args.image_size)
        except Exception as e:  # noqa: BLE001 (reported in the row)
            row = {"preset": name, "params": 0, "image_size": args.image_size,
                   "gflops_per_image": math.nan, "note": f"error: {h.error_text(e)}"}
        payload["presets"].append(row)
        print("  " + "  ".join(fn(row) for _, _, fn in PRESET_COLUMNS), flush=True)
        h.write_json(args.json, payload)
    for name in args.train_presets:
        for variant in args.train_variants:
            try:
                row = train_throughput(name, batch=args.batch, image_size=args.train_image_size,
                                       repeats=args.repeats, matmul_n=args.matmul_n,
                                       compiler_options=VARIANTS[variant](),
                                       split=args.devices == "train")
            except Exception as e:  # noqa: BLE001
                row = {"preset": name, "batch": args.batch, "image_size": args.train_image_size,
                       "status": f"error: {h.error_text(e)}"}
            row["variant"] = variant
            payload["train"].append(row)
            print("  " + "  ".join(fn(row) for _, _, fn in TRAIN_COLUMNS), flush=True)
            h.write_json(args.json, payload)
            training.release_host_memory()  # this step's buffers, before the next one's
    print()
    print(f"Forward cost per image (batch 1, {args.image_size} x {args.image_size}; nano and pico "
          "presets at 32 x 32): XLA cost-analysis GFLOPs (a multiply-add is 2, element-wise work "
          "included) and GMACs of the matrix products and convolutions (fvcore's convention):")
    print(h.table(payload["presets"], PRESET_COLUMNS))
    if payload["train"]:
        print()
        print(f"Train step (AdamW, cross-entropy, float32, batch {args.batch}, "
              f"{args.train_image_size} x {args.train_image_size}):")
        print(h.table(payload["train"], TRAIN_COLUMNS))
    return payload


if __name__ == "__main__":
    main()
