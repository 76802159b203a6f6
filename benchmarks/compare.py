"""Before / after: the pre-optimisation hot paths (`benchmarks/_baseline.py`) against the library,
side by side in one process, interleaved round by round so that load on a shared machine hits
both alike.

    python -m benchmarks.compare [--json OUT] [--sizes 65,1025,16385] [--modes fwd,fwdbwd]
                                 [--cases cbsa,cbsa_exact,ista] [--rounds 7] [--train cbt_small]

Each case is timed as in `benchmarks.attention` (per-head inputs [1, 6, N, 64], m = 64 grid
pooling, fwdbwd = value and gradient of sum(out); `ista` runs the ISTA step on [8, N, 384]
tokens with N any g^2 + 1; `layernorm` is `nnx.LayerNorm` against `cbsa_jax.nn.LayerNorm` on
[1, N, 384] tokens, one sequence as a batch-1 step has it, fwdbwd the gradient of
sum(out * tokens) for the tokens, the scale and the bias; `stem_dx` is the input gradient of
one stride-2 3 x 3 convolution of the conv stem, [8, N, N, 96] -> [8, N/2, N/2, 192] with N the
size, from an output gradient, as the CPU's train step computes it: the transpose of the
space-to-depth form (before) and of the phase form (after); its only mode is `bwd`); the table
gives both medians, their ratio (before / after: > 1 is a speed-up), both XLA peak-memory
estimates, and the largest relative difference of the outputs (and gradients).
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

from benchmarks import _baseline
from benchmarks import _harness as h
from benchmarks._params import host_initialised
from benchmarks.attention import grid_for_tokens
from cbsa_jax import attention as att
from cbsa_jax import training, unroll
from cbsa_jax.models import create, vit
from cbsa_jax.nn import layers
from cbsa_jax.representatives import GridPooling

CASES = ("cbsa", "cbsa_exact", "ista", "layernorm", "stem_dx")
_LN_SCALE, _LN_BIAS = (np.random.default_rng(1).normal(loc, 0.2, 384).astype(np.float32)
                       for loc in (1.0, 0.0))


def _layer_norms():
    """`nnx.LayerNorm` (before) and `cbsa_jax.nn.LayerNorm` (after) over 384 features, with the
    same scale and bias, as functions of `(x, scale, bias)`."""
    kw = dict(epsilon=1e-5, rngs=nnx.Rngs(0))
    modules = nnx.LayerNorm(384, **kw), layers.LayerNorm(384, **kw)

    def call(module):
        graphdef, _ = nnx.split(module)
        return lambda x, scale, bias: nnx.merge(graphdef, nnx.State(
            {"scale": nnx.Param(scale), "bias": nnx.Param(bias)}))(x)

    return tuple(call(m) for m in modules)


def _functions(case: str, g: int, heads: int):
    if case == "stem_dx":  # a CBT stem layer's convolution, 96 -> 192 channels
        k = jnp.asarray(np.random.default_rng(1).normal(0, 0.05, (3, 3, 96, 192)), jnp.float32)
        x = jax.ShapeDtypeStruct((8, g, g, 96), jnp.float32)  # g: the input side here
        return tuple((lambda dy, f=f: jax.linear_transpose(lambda x: f(x, k), x)(dy)[0])
                     for f in (_baseline.conv3x3_s2_space_to_depth, vit._conv3x3_s2_phases))
    if case == "layernorm":  # a CBT-S block's LayerNorm on one sequence [1, N, 384]
        scale, bias = _LN_SCALE, _LN_BIAS
        return tuple((lambda x, f=f: f(x, scale, bias)) for f in _layer_norms())
    if case == "ista":  # the CBT-S block's ISTA step on [8 images, N tokens, 384]
        m = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (384, 384)) * (6 / 384) ** 0.5,
                        jnp.float32)
        return (lambda x: _baseline.ista_step(x, m), lambda x: unroll.ista_step(x, m))
    rule = GridPooling(grid=(g, g), cells=(min(8, g), min(8, g)), prefix=1)
    step_x = jnp.linspace(0.3, 0.8, heads)
    step_rep = jnp.linspace(-0.5, 0.5, heads)
    if case == "cbsa":
        return (lambda w: _baseline.cbsa(w, step_x, step_rep, representatives=rule),
                lambda w: att.cbsa(w, step_x, step_rep, representatives=rule))
    if case == "cbsa_exact":
        return (lambda w: _baseline.cbsa_exact(w, step_x, step_rep, representatives=rule,
                                               eps=1.0),
                lambda w: att.cbsa_exact(w, step_x, step_rep, representatives=rule, eps=1.0))
    raise ValueError(f"unknown case {case!r}; cases are {', '.join(CASES)}")


def _layer_norm_gradients(f):
    """`x -> (sum(f(x, s, b) * x), gradients for x, s and b)` at the case's scale and bias (a
    loss that is not the plain sum, whose gradient for x is zero)."""
    grad = jax.value_and_grad(lambda x, s, b: jnp.sum(f(x, s, b) * x), argnums=(0, 1, 2))
    return lambda x: grad(x, _LN_SCALE, _LN_BIAS)


def compare(case: str, n: int, mode: str, *, heads: int = 6, dim_head: int = 64,
            rounds: int = 7, dtype=jnp.float32, target_s: float = 0.5) -> dict:
    if (case == "stem_dx") != (mode == "bwd"):
        raise ValueError(f"mode {mode!r} does not apply to case {case!r}: stem_dx times an input "
                         "gradient (mode 'bwd'), the other cases 'fwd' and 'fwdbwd'")
    g = grid_for_tokens(n) if case in ("cbsa", "cbsa_exact") else n  # stem_dx: the input side
    if mode == "fwdbwd" and case == "layernorm":  # the tokens', the scale's and the bias's
        before, after = (_layer_norm_gradients(f) for f in _layer_norms())
    else:
        before, after = _functions(case, g, heads)
        if mode == "fwdbwd":
            before, after = (jax.value_and_grad(lambda w, f=f: jnp.sum(f(w).astype(jnp.float32)))
                             for f in (before, after))
    side = (n + 1) // 2
    shape = {"ista": (8, n, 384), "layernorm": (1, n, 384), "stem_dx": (8, side, side, 192)}.get(
        case, (1, heads, n, dim_head))
    w = jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype)
    compiled = [jax.jit(f).lower(w).compile() for f in (before, after)]
    outs = [c(w) for c in compiled]
    diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
                     / max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-30))
               for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True))
    first = []
    for c in compiled:  # warm-up, and the time of one call to size the rounds
        t0 = time.perf_counter()
        jax.block_until_ready(c(w))
        first.append(time.perf_counter() - t0)
    per_round = max(1, min(20, math.ceil(target_s / max(max(first), 1e-6))))
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, c in enumerate(compiled):
            for _ in range(per_round):
                t0 = time.perf_counter()
                jax.block_until_ready(c(w))
                times[i].append(time.perf_counter() - t0)
    med = [float(np.median(t)) for t in times]
    mem = [h.memory_analysis(c)["peak"] / h.MB for c in compiled]
    return {"case": case, "N": n, "mode": mode, "before_ms": med[0] * 1e3,
            "after_ms": med[1] * 1e3, "speedup": med[0] / med[1], "before_peak_mb": mem[0],
            "after_peak_mb": mem[1], "max_rel_diff": diff, "repeats": len(times[0])}


def compare_train(name: str = "cbt_small", *, batch: int = 8, image_size: int = 224,
                  rounds: int = 3) -> list[dict]:
    """The train step of preset `name` three ways, interleaved: the ISTA step as before with XLA's
    default options, the current ISTA step with XLA's defaults, and the current ISTA step with the
    training program's options (`cbsa_jax.training.compiler_options()`)."""
    abstract = nnx.eval_shape(lambda: create(name, num_classes=1000, image_size=image_size))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, image_size, image_size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)
    variants = [("ista before, XLA defaults", _baseline.ista_step, {}),
                ("ista after, XLA defaults", unroll.ista_step, {}),
                ("ista after, training options", unroll.ista_step, training.compiler_options())]
    batch_j = {"image": images, "label": labels}
    runs = []
    for label, ista, options in variants:
        step, state = training.classification_step(
            host_initialised(abstract), optax.adamw(1e-4, weight_decay=0.05), num_classes=1000,
            options=options)
        original = unroll.ista_step
        unroll.ista_step = ista  # what nn.layers.ISTA calls, looked up when traced
        try:
            compiled = step.compile(state, batch_j)
        finally:
            unroll.ista_step = original
        flops = h.cost_analysis(compiled)["flops"]
        runs.append({"label": label, "compiled": compiled, "state": state, "flops": flops,
                     "times": []})
    probe = h.MatmulProbe()
    for r in range(rounds + 1):  # round 0 is the warm-up
        for run in runs:
            t0 = time.perf_counter()
            run["state"], metrics = run["compiled"](run["state"], batch_j)
            jax.block_until_ready(metrics["loss"])
            if r:
                run["times"].append(time.perf_counter() - t0)
                probe.sample()
    matmul = probe.result()
    out = []
    for run in runs:
        med = float(np.median(run["times"]))
        out.append({"variant": run["label"], "preset": name, "batch": batch,
                    "step_ms": med * 1e3, "images_per_s": batch / med,
                    "step_gflop": run["flops"] / 1e9, "achieved_gflops": run["flops"] / med / 1e9,
                    "matmul_gflops": matmul["gflops"],
                    "fraction_of_matmul": run["flops"] / med / 1e9 / matmul["gflops"],
                    "repeats": len(run["times"])})
    return out


TRAIN_COLUMNS = [
    ("train step", "<", lambda r: r["variant"]),
    ("step ms", ">", lambda r: h.fmt(r["step_ms"], ",.0f")),
    ("images/s", ">", lambda r: h.fmt(r["images_per_s"], ".2f")),
    ("step GFLOP", ">", lambda r: h.fmt(r["step_gflop"], ",.1f")),
    ("achieved GFLOP/s", ">", lambda r: h.fmt(r["achieved_gflops"], ".1f")),
    ("matmul GFLOP/s", ">", lambda r: h.fmt(r["matmul_gflops"], ".1f")),
    ("fraction", ">", lambda r: h.fmt(100 * r["fraction_of_matmul"], ".0f") + "%"),
]

COLUMNS = [
    ("case", "<", lambda r: r["case"]),
    ("N", ">", lambda r: f"{r['N']:,}"),
    ("mode", "<", lambda r: r["mode"]),
    ("before ms", ">", lambda r: h.fmt(r["before_ms"], ".2f")),
    ("after ms", ">", lambda r: h.fmt(r["after_ms"], ".2f")),
    ("speed-up", ">", lambda r: h.fmt(r["speedup"], ".2f") + "x"),
    ("before MB", ">", lambda r: h.fmt(r["before_peak_mb"], ",.1f")),
    ("after MB", ">", lambda r: h.fmt(r["after_peak_mb"], ",.1f")),
    ("max rel diff", ">", lambda r: h.fmt(r["max_rel_diff"], ".1e")),
    ("runs", ">", lambda r: str(r["repeats"])),
]


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--sizes", default="65,1025,16385")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--cases", default="cbsa,cbsa_exact",
                   help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--target-s", type=float, default=0.3,
                   help="time per round and implementation, roughly")
    p.add_argument("--train", default=None, metavar="PRESET",
                   help="also compare the train step of PRESET (e.g. cbt_small), batch 8, 224")
    p.add_argument("--train-rounds", type=int, default=3)
    args = p.parse_args(argv)
    info = h.machine_info()
    print(f"# before / after, {info['date']}, {info['processor']} ({info['cpu_count']} cores, "
          f"{info['backend']}), jax {info['jax']}", flush=True)
    rows = []
    for n in h.parse_list(args.sizes, int):
        for case in h.parse_list(args.cases):
            for mode in (["bwd"] if case == "stem_dx" else h.parse_list(args.modes)):
                rows.append(compare(case, n, mode, rounds=args.rounds, target_s=args.target_s))
                print("  " + "  ".join(fn(rows[-1]) for _, _, fn in COLUMNS), flush=True)
    payload = {"benchmark": "compare", "machine": info, "rows": rows, "train": []}
    h.write_json(args.json, payload)
    print()
    print(h.table(rows, COLUMNS))
    if args.train:
        payload["train"] = compare_train(args.train, rounds=args.train_rounds)
        h.write_json(args.json, payload)
        print()
        print(h.table(payload["train"], TRAIN_COLUMNS))
    return payload


if __name__ == "__main__":
    main()
