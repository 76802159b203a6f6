"""Time and memory of the causal attentions as the sequence grows: causal CBSA, causal softmax,
causal linear.

    python -m benchmarks.causal --json OUT [--sizes 1024,4096,16384,65536] [--modes fwd,fwdbwd]
        [--chunk 64] [--rounds 7]

Per-head inputs `[1, H, N, p]` (H = 4, p = 64 by default). `cbsa` is
`cbsa_jax.attention.causal_cbsa` (m = 16 learned queries per head, the softmax contraction);
`softmax` is `jax.nn.dot_product_attention(..., is_causal=True)` on separate q, k, v (through
`causal_softmax`), which materialises the H x N x N scores; `linear` is `causal_linear` (elu + 1
feature map). `--chunk` sets the scan chunk of both CBSA and linear attention (default: each
function's own, `causal.DEFAULT_CHUNK` and `causal.LINEAR_CHUNK`). Modes: `fwd` is the output,
`fwdbwd` the value and gradient of `sum(out)` w.r.t. every input (the queries included).

Per sequence length, every row (attention x mode) is compiled first and XLA's memory analysis
read; a row whose peak (temp + argument + output bytes) exceeds the memory budget is reported as
`oom (estimated ...)` and not run. The rows of the `--interleave` attentions (default causal CBSA
and causal linear, the comparison the kernels are held to) are called once (warm-up), then timed
in `--rounds` interleaved rounds (each round calls every such row once, in turn, so a shared
machine's load falls on all of them alike); then every other row is timed alone, `--rounds`
calls after a warm-up (softmax attention's gigabytes of scores would otherwise disturb the rows
after it), or by its warm-up call alone when that took more than `--single_run_s`. Each row
reports the median. The summary gives, per length, causal CBSA's
time over causal linear attention's and each attention's backward over its forward
((fwdbwd - fwd) / fwd), each attention's log-log slope of time in N over the sizes from 4,096 to
65,536, and the smallest N at which causal CBSA is faster than causal softmax. The JSON is
rewritten after every length, so an interrupted run keeps what it measured. Nothing here asserts
a timing. The process's malloc is set as `python -m train` sets it
(`cbsa_jax.training.configure_host_allocator`: freed memory stays mapped, so a row that follows
softmax attention's large buffers does not fault its pages in again; `--allocator default` leaves
glibc's defaults).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _harness as h
from cbsa_jax import attention as att
from cbsa_jax import training
from cbsa_jax.attention import causal

ATTENTIONS = ("cbsa", "softmax", "linear")
MODES = ("fwd", "fwdbwd")
DEFAULT_SIZES = (1024, 4096, 16384, 65536)


def chunk_of(name: str, cfg: argparse.Namespace) -> int | None:
    """The scan chunk `name` runs with (None: softmax attention has none)."""
    if name == "softmax":
        return None
    if cfg.chunk is not None:
        return cfg.chunk
    return causal.DEFAULT_CHUNK if name == "cbsa" else causal.LINEAR_CHUNK


def build(name: str, n: int, mode: str, cfg: argparse.Namespace):
    """(jitted function, its concrete arguments) for one row."""
    rng = np.random.default_rng(0)
    shape = (cfg.batch, cfg.heads, n, cfg.dim_head)

    def normal(s):
        return jnp.asarray(rng.standard_normal(s), cfg.dtype)

    if name == "cbsa":
        args = (normal(shape), normal((cfg.heads, cfg.queries, cfg.dim_head)),
                jnp.ones((cfg.heads,), jnp.float32), jnp.ones((cfg.heads,), jnp.float32))

        def out(w, q, sx, sr):
            return att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=chunk_of(name, cfg))[0]
    elif name == "softmax":
        args = tuple(normal(shape) for _ in range(3))

        def out(q, k, v):
            return att.causal_softmax(q, k, v, implementation=cfg.implementation)[0]
    elif name == "linear":
        args = tuple(normal(shape) for _ in range(3))

        def out(q, k, v):
            return att.causal_linear(q, k, v, chunk=chunk_of(name, cfg))[0]
    else:
        raise ValueError(f"unknown attention {name!r}")
    if mode == "fwd":
        fn = out
    else:
        def fn(*a):
            return jax.value_and_grad(lambda *b: jnp.sum(out(*b).astype(jnp.float32)),
                                      argnums=tuple(range(len(a))))(*a)
    return jax.jit(fn), args


def prepare_row(name: str, n: int, mode: str, cfg: argparse.Namespace):
    """(row, a zero-argument call of the compiled executable or None when it is not run)."""
    row = {"attention": name, "n": n, "mode": mode, "chunk": chunk_of(name, cfg), "status": "ok"}
    try:
        fn, args = build(name, n, mode, cfg)
        compiled = fn.lower(*args).compile()
        memory = h.memory_analysis(compiled)
        row["peak_mb"] = memory["peak"] / h.MB
        row.update({k: v for k, v in h.cost_analysis(compiled).items()})
        if math.isfinite(memory["peak"]) and memory["peak"] > cfg.memory_budget_gb * h.GB:
            row["status"] = f"oom (estimated {memory['peak'] / h.GB:.1f} GB)"
            return row, None
        return row, lambda: compiled(*args)
    except Exception as e:  # a failure to compile is a result too
        row["status"] = h.error_text(e)
        return row, None


def _warm_up(call, row: dict) -> float | None:
    """Seconds of the first call, or None (and the row's status says why) if it failed."""
    try:
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - t0
    except Exception as e:  # an allocation failure at run time is a result too
        row["status"] = h.error_text(e)
        return None


def _timed(call) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t0


def run_size(n: int, cfg: argparse.Namespace) -> list[dict]:
    """Every row of one sequence length: the rows of `cfg.interleave` timed in interleaved
    rounds, then each other row alone (`cfg.rounds` calls after its warm-up, or the warm-up
    call only when it took more than `cfg.single_run_s`)."""
    rows, calls = [], {}
    for name in cfg.attentions:
        for mode in cfg.modes:
            row, call = prepare_row(name, n, mode, cfg)
            rows.append(row)
            if call is not None:
                calls[len(rows) - 1] = call
    times: dict[int, list[float]] = {}
    rounds = {i: c for i, c in calls.items() if rows[i]["attention"] in cfg.interleave}
    for i, call in list(rounds.items()):
        if _warm_up(call, rows[i]) is None:
            del rounds[i]
        else:
            times[i] = []
    for _ in range(cfg.rounds):
        for i, call in rounds.items():
            times[i].append(_timed(call))
    for i, call in calls.items():
        if i in rounds:
            continue
        first = _warm_up(call, rows[i])
        if first is not None:
            times[i] = ([first] if first > cfg.single_run_s
                        else [_timed(call) for _ in range(cfg.rounds)])
    for i, ts in times.items():
        rows[i]["median_ms"] = float(np.median(ts)) * 1e3
        rows[i]["times_ms"] = [t * 1e3 for t in ts]
        rows[i]["interleaved"] = i in rounds
    rss = h.rss_peak_mb()
    for row in rows:
        row["rss_peak_mb"] = rss
    return rows


def summarise(rows: list[dict], lo: int = 4096, hi: int = 65536) -> dict:
    """Per attention and mode: log-log slope of time in N over [lo, hi]; the crossover N."""
    out: dict = {}
    modes = sorted({r["mode"] for r in rows})
    times = {(r["attention"], r["n"], r["mode"]): r["median_ms"] for r in rows
             if r["status"] == "ok" and "median_ms" in r}
    for n in sorted({r["n"] for r in rows}):
        for mode in modes:
            if ("cbsa", n, mode) in times and ("linear", n, mode) in times:
                out[f"cbsa_over_linear_{mode}_n{n}"] = (times["cbsa", n, mode]
                                                         / times["linear", n, mode])
        for name in ATTENTIONS:
            if (name, n, "fwd") in times and (name, n, "fwdbwd") in times:
                fwd = times[name, n, "fwd"]
                out[f"{name}_bwd_over_fwd_n{n}"] = (times[name, n, "fwdbwd"] - fwd) / fwd
    for mode in modes:
        ok = [r for r in rows if r["mode"] == mode and r["status"] == "ok" and "median_ms" in r]
        for name in ATTENTIONS:
            pts = sorted((r["n"], r["median_ms"]) for r in ok
                         if r["attention"] == name and lo <= r["n"] <= hi)
            if len(pts) >= 2:
                out[f"{name}_{mode}_slope_{lo}_{hi}"] = h.loglog_slope(*zip(*pts, strict=True))
                out[f"{name}_{mode}_slope_range"] = [pts[0][0], pts[-1][0]]
        cbsa = {r["n"]: r["median_ms"] for r in ok if r["attention"] == "cbsa"}
        # a softmax row that did not fit (oom) has no time: CBSA, which ran, is the faster
        soft = {r["n"]: r.get("median_ms", math.inf) for r in rows
                if r["mode"] == mode and r["attention"] == "softmax"
                and (r["status"] == "ok" or r["status"].startswith("oom"))}
        faster = [n for n in sorted(cbsa) if n in soft and cbsa[n] < soft[n]]
        out[f"cbsa_faster_than_softmax_{mode}_from_n"] = faster[0] if faster else None
        for n in sorted(cbsa):
            ratio = soft.get(n)
            if ratio is not None and math.isfinite(ratio):
                out[f"softmax_over_cbsa_{mode}_n{n}"] = ratio / cbsa[n]
    return out


COLUMNS = [
    ("attention", "<", lambda r: r["attention"]),
    ("N", ">", lambda r: str(r["n"])),
    ("mode", "<", lambda r: r["mode"]),
    ("chunk", ">", lambda r: h.fmt(r.get("chunk"), "d")),
    ("time (ms)", ">", lambda r: h.fmt(r.get("median_ms"), ".1f")),
    ("peak MB (XLA)", ">", lambda r: h.fmt(r.get("peak_mb"), ".0f")),
    ("GFLOP", ">", lambda r: h.fmt(r.get("flops", math.nan) / 1e9, ".2f")),
    ("status", "<", lambda r: r["status"]),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.causal",
                                description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--attentions", default=",".join(ATTENTIONS))
    p.add_argument("--modes", default="fwdbwd")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim_head", type=int, default=64)
    p.add_argument("--queries", type=int, default=16, help="CBSA's m")
    p.add_argument("--chunk", type=int, default=None,
                   help="CBSA and linear attention's scan chunk (default: each one's own)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--implementation", default=None, choices=("xla", "cudnn"),
                   help="jax.nn.dot_product_attention's implementation for causal softmax "
                        "(default: JAX's choice; cudnn: the fused flash kernel on a GPU, "
                        "bfloat16)")
    p.add_argument("--memory_budget_gb", type=float, default=h.default_memory_budget_gb())
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--interleave", default="cbsa,linear",
                   help="the attentions timed in interleaved rounds; the others are timed "
                        "alone after them")
    p.add_argument("--allocator", default="train", choices=("train", "default"),
                   help="train: malloc as python -m train sets it; default: glibc's")
    p.add_argument("--single_run_s", type=float, default=10.0,
                   help="a row whose warm-up call takes longer is timed by that call alone")
    cfg = p.parse_args(argv)
    cfg.sizes = h.parse_list(cfg.sizes, int)
    cfg.attentions = h.parse_list(cfg.attentions)
    cfg.modes = h.parse_list(cfg.modes)
    cfg.interleave = h.parse_list(cfg.interleave) or []
    h.check_choices(p, cfg.interleave, ATTENTIONS, "attention")
    h.check_choices(p, cfg.attentions, ATTENTIONS, "attention")
    h.check_choices(p, cfg.modes, MODES, "mode")
    if not cfg.sizes or any(n < 1 for n in cfg.sizes):
        p.error("--sizes must be positive integers")
    if cfg.chunk is not None and cfg.chunk < 1:
        p.error("--chunk must be a positive integer")
    if cfg.rounds < 1:
        p.error("--rounds must be a positive integer")
    cfg.dtype = np.dtype(jnp.bfloat16 if cfg.dtype == "bfloat16" else np.float32)
    return cfg


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_args(argv)
    started = time.perf_counter()
    allocator = (training.configure_host_allocator() if cfg.allocator == "train"
                 else {"applied": False, "reason": "--allocator default"})
    info = h.machine_info()
    info["allocator"] = allocator
    config = {k: (v.name if isinstance(v, np.dtype) else v) for k, v in vars(cfg).items()}
    payload = {"benchmark": "causal", "command": "python -m benchmarks.causal "
               + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": info, "config": config, "rows": [], "summary": {}}
    print(f"# causal attention benchmark, {info['date']}, {info['processor']} "
          f"({info['cpu_count']} cores), jax {info['jax']}; H = {cfg.heads}, p = {cfg.dim_head}, "
          f"m = {cfg.queries}, chunk {cfg.chunk or 'each default'}, batch {cfg.batch}, "
          f"{cfg.dtype.name}, {cfg.rounds} interleaved rounds; load "
          f"{', '.join(f'{x:.1f}' for x in info.get('load_average') or ())}", flush=True)
    for n in cfg.sizes:
        for row in run_size(n, cfg):
            payload["rows"].append(row)
            print("  " + "  ".join(fn(row) for _, _, fn in COLUMNS), flush=True)
        payload["summary"] = summarise(payload["rows"])
        payload["wall_s"] = round(time.perf_counter() - started, 1)
        payload["load_average_end"] = list(os.getloadavg())
        h.write_json(cfg.json, payload)
    print()
    print(h.table(payload["rows"], COLUMNS))
    print()
    for key, value in payload["summary"].items():
        print(f"{key}: {value if not isinstance(value, float) else round(value, 3)}")
    return payload


if __name__ == "__main__":
    main()
