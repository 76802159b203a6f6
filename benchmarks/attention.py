"""Time and memory of every attention of `cbsa_jax.attention` as the number of tokens grows.

    python -m benchmarks.attention --json OUT [--sizes 65,257,...] [--modes fwd,fwdbwd]

Each attention runs on per-head inputs `w [1, H, N, p]` (D = 384, H = 6, p = 64; softmax and
agent attention take separate q, k, v of that shape), N = g^2 + 1 for a g x g patch grid plus a
cls token. cbsa / cbsa_exact / agent pool the grid with `GridPooling(grid=(g, g), cells=(8, 8),
prefix=1)` (m = 64); cbsa_exact uses eps = 1. `--projections` adds the input and output
projections (x [1, N, D] -> heads -> attention -> [1, N, D]). Modes: `fwd` is the attention's
output; `fwdbwd` the value and gradient of `sum(out)` w.r.t. every input.

`softmax` is `cbsa_jax.attention.softmax`, i.e. `jax.nn.dot_product_attention`, which materialises
the H x N x N scores. `softmax_chunked` is the same function applied to blocks of at most 1,024
queries under `jax.lax.map` with rematerialisation: exact softmax attention in O(N) memory (at the
price of recomputing each block in the backward), so the quadratic baseline can still be timed where
the scores do not fit in memory. (XLA's cost analysis counts a loop body once, so its rows report
the cost of the unchunked computation.)

Before anything runs, each executable is compiled and XLA's estimates are read: a row whose peak
memory (temp + argument + output bytes of `compiled.memory_analysis()`) exceeds the memory budget
is reported as `oom (estimated ...)`; a row whose cost-analysis FLOPs would take longer than the
time budget is reported as `timeout (estimated ...)`: the estimate adds the cost analysis's
FLOPs at the machine's measured matmul rate, its transcendentals at the measured exp rate and its
bytes accessed at the measured rate of a copy into a fresh buffer. An
allocation failure at run time is caught and reported too. Nothing is skipped silently.

The table, a summary of the ratios the performance targets name (log-log slope of CBSA's time
and memory in N, the speed-up over softmax, cbsa_exact / cbsa, CBSA / MSSA at N = 65) and the JSON
(one row per attention, N and mode) are written as the run goes, so an interrupted run keeps what
it measured.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _harness as h
from cbsa_jax import attention as att
from cbsa_jax.representatives import GridPooling

ATTENTIONS = ("cbsa", "cbsa_exact", "mssa", "tssa", "softmax", "softmax_chunked", "linear",
              "agent")
QKV = ("softmax", "softmax_chunked", "agent")  # attentions with separate q, k, v inputs
QUADRATIC = ("mssa", "softmax", "softmax_chunked")
DEFAULT_GRIDS = (8, 16, 32, 64, 128, 256)
MODES = ("fwd", "fwdbwd")
CHUNK = 1024


def tokens_for_grid(g: int) -> int:
    return g * g + 1


def grid_for_tokens(n: int) -> int:
    g = math.isqrt(n - 1)
    if g * g + 1 != n:
        raise ValueError(f"N must be g^2 + 1 (a g x g patch grid plus a cls token), got {n}")
    return g


# ----------------------------------------------------------------------------------------------
# the attentions on per-head inputs


def softmax_chunked(q, k, v, chunk: int = CHUNK):
    """Exact softmax attention over blocks of `chunk` queries (`jax.lax.map`, rematerialised)."""
    b, hh, n, p = q.shape
    if n <= chunk:
        return att.softmax(q, k, v)
    nc = -(-n // chunk)
    chunk = -(-n // nc)  # as even as possible: little padding
    qp = jnp.pad(q, ((0, 0), (0, 0), (0, nc * chunk - n), (0, 0)))
    qc = jnp.moveaxis(qp.reshape(b, hh, nc, chunk, p), 2, 0)
    out = jax.lax.map(jax.checkpoint(lambda qi: att.softmax(qi, k, v)), qc)
    return jnp.moveaxis(out, 0, 2).reshape(b, hh, nc * chunk, p)[:, :, :n]


def attention_fn(name: str, g: int, heads: int) -> Callable:
    """`f(*inputs) -> [1, H, N, p]` for per-head inputs (w, or q, k, v)."""
    rule = GridPooling(grid=(g, g), cells=(min(8, g), min(8, g)), prefix=1)
    step_x = jnp.full((heads,), 0.5, jnp.float32)
    step_rep = jnp.full((heads,), 0.5, jnp.float32)
    temp = jnp.ones((heads,), jnp.float32)
    fns = {
        "cbsa": lambda w: att.cbsa(w, step_x, step_rep, representatives=rule),
        "cbsa_exact": lambda w: att.cbsa_exact(w, step_x, step_rep, representatives=rule,
                                               eps=1.0),
        "mssa": att.mssa,
        "tssa": lambda w: att.tssa(w, temp),
        "softmax": att.softmax,
        "softmax_chunked": softmax_chunked,
        "linear": lambda w: att.linear(w, 1.0, eps=1.0),
        "agent": lambda q, k, v: att.agent(q, k, v, representatives=rule),
    }
    return fns[name]


def build(name: str, n: int, mode: str, *, dim: int, heads: int, dim_head: int, batch: int,
          dtype, projections: bool):
    """(function, abstract inputs, concrete-input factory) for one row."""
    g = grid_for_tokens(n)
    core = attention_fn(name, g, heads)
    n_in = 3 if name in QKV else 1
    if projections:
        def fn(x, u, wo, bo):
            heads_in = [jnp.einsum("bnd,dhp->bhnp", x, u[i]) for i in range(n_in)]
            y = core(*heads_in)
            return jnp.einsum("bhnp,hpd->bnd", y, wo) + bo

        shapes = [(batch, n, dim), (n_in, dim, heads, dim_head), (heads, dim_head, dim), (dim,)]
        scales = [1.0, dim**-0.5, (heads * dim_head) ** -0.5, 0.0]
    else:
        fn = core
        shapes = [(batch, heads, n, dim_head)] * n_in
        scales = [1.0] * n_in
    if mode == "fwdbwd":
        inner = fn
        fn = jax.value_and_grad(lambda *a: jnp.sum(inner(*a).astype(jnp.float32)),
                                argnums=tuple(range(len(shapes))))
    abstract = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]

    def concrete(seed: int = 0):
        rng = np.random.default_rng(seed)
        return [jnp.asarray(rng.standard_normal(s) * sc, dtype) for s, sc in
                zip(shapes, scales, strict=True)]

    return fn, abstract, concrete


# ----------------------------------------------------------------------------------------------
# running


def run_row(name: str, n: int, mode: str, *, cfg: argparse.Namespace, matmul_gflops: float,
            rates: dict | None = None, watchdog: h.Watchdog | None = None,
            calibration: dict | None = None) -> dict:
    """Compile, estimate, and (if it fits the budgets) time one attention at N tokens.

    `calibration` maps (attention, mode) to the ratio measured / estimated time of the last
    timed size; it scales the next estimate, so a budget skip is not fooled by an optimistic
    cost model (the first size of each attention is estimated from the rates alone).
    """
    row = {"attention": name, "N": n, "mode": mode, "status": "ok", "median_ms": None,
           "peak_mb": None, "projections": cfg.projections, "dtype": jnp.dtype(cfg.dtype).name}
    try:
        fn, abstract, concrete = build(name, n, mode, dim=cfg.dim, heads=cfg.heads,
                                       dim_head=cfg.dim_head, batch=cfg.batch, dtype=cfg.dtype,
                                       projections=cfg.projections)
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*abstract).compile()
        row["compile_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 (reported in the row)
        row["status"] = f"error: {h.error_text(e)}"
        return row
    mem = h.memory_analysis(compiled)
    cost = h.cost_analysis(compiled)
    if name == "softmax_chunked":
        # XLA's cost analysis counts a loop body once: take the unchunked computation's cost
        ref, ref_abstract, _ = build("softmax", n, mode, dim=cfg.dim, heads=cfg.heads,
                                     dim_head=cfg.dim_head, batch=cfg.batch, dtype=cfg.dtype,
                                     projections=cfg.projections)
        cost = h.cost_analysis(jax.jit(ref).lower(*ref_abstract))  # a dict or [dict]
        row["cost_source"] = "unchunked softmax, unoptimised HLO (loop bodies count once)"
    row.update(peak_mb=mem["peak"] / h.MB, temp_mb=mem["temp"] / h.MB,
               argument_mb=mem["argument"] / h.MB, output_mb=mem["output"] / h.MB,
               flops=cost["flops"], transcendentals=cost["transcendentals"],
               bytes_accessed=cost["bytes_accessed"])
    budget = cfg.memory_budget_gb * h.GB
    if math.isfinite(mem["peak"]) and mem["peak"] > budget:
        row["status"] = (f"oom (estimated {mem['peak'] / h.GB:.1f} GB > budget "
                         f"{cfg.memory_budget_gb:g} GB)")
        return row
    model_s = h.estimate_seconds(cost, matmul_gflops, rates or {})
    factor = max(1.0, (calibration or {}).get((name, mode), 1.0))
    estimate_s = model_s * factor
    row["estimated_s"] = estimate_s
    if estimate_s > cfg.time_budget_s:
        row["status"] = (f"timeout (estimated {estimate_s:.0f} s > budget "
                         f"{cfg.time_budget_s:g} s)")
        return row
    try:
        args = concrete()
        guard = watchdog.guard(f"{name} N={n} {mode}") if watchdog else _null()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        with guard:
            timing = h.time_call(lambda: compiled(*args), target_s=cfg.target_s,
                                 min_repeats=cfg.min_repeats, max_repeats=cfg.max_repeats,
                                 single_run_s=cfg.single_run_s)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        calls = len(timing.times_s) + (timing.warmup_s is not None)
        row.update(minor_faults_per_call=(r1.ru_minflt - r0.ru_minflt) / calls,
                   user_s_per_call=(r1.ru_utime - r0.ru_utime) / calls,
                   sys_s_per_call=(r1.ru_stime - r0.ru_stime) / calls)
    except Exception as e:  # noqa: BLE001
        text = str(e)
        kind = "oom" if ("RESOURCE_EXHAUSTED" in text or isinstance(e, MemoryError)
                         or "Out of memory" in text) else "error"
        row["status"] = f"{kind} (run failed: {h.error_text(e, 120)})"
        return row
    row.update(median_ms=timing.median_s * 1e3, repeats=len(timing.times_s),
               times_ms=[t * 1e3 for t in timing.times_s],
               warmup_ms=None if timing.warmup_s is None else timing.warmup_s * 1e3,
               gflops_per_s=cost["flops"] / timing.median_s / 1e9
               if math.isfinite(cost["flops"]) else None,
               rss_peak_mb=h.rss_peak_mb())
    if calibration is not None and model_s > 0:
        calibration[name, mode] = timing.median_s / model_s
    return row


def hang_row(name: str, n: int, mode: str, hang_s: float) -> dict:
    """The row recorded for a call that never returned (the watchdog's)."""
    return {"attention": name, "N": n, "mode": mode, "status": f"hang (> {hang_s:g} s)",
            "median_ms": None, "peak_mb": None}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def summarise(rows: Sequence[dict]) -> dict:
    """The ratios the performance targets name, from the rows that ran."""
    ok = {(r["attention"], r["N"], r["mode"]): r for r in rows if r["status"] == "ok"}
    peak = {(r["attention"], r["N"], r["mode"]): r["peak_mb"] for r in rows
            if r.get("peak_mb") is not None}
    out: dict = {}
    for mode in MODES:
        ns = sorted(n for (a, n, m) in ok if a == "cbsa" and m == mode and n >= 1025)
        if len(ns) >= 2:
            out[f"cbsa_{mode}_time_exponent"] = {
                "N": [ns[0], ns[-1]],
                "value": h.loglog_slope(ns, [ok["cbsa", n, mode]["median_ms"] for n in ns])}
            out[f"cbsa_{mode}_memory_exponent"] = {
                "N": [ns[0], ns[-1]],
                "value": h.loglog_slope(ns, [peak["cbsa", n, mode] for n in ns])}
        speedups = {}
        for (a, n, m), r in sorted(ok.items(), key=lambda kv: kv[0][1]):
            if a != "cbsa" or m != mode:
                continue
            for base in ("softmax", "softmax_chunked", "mssa"):
                if (base, n, mode) in ok:
                    speedups.setdefault(str(n), {})[base] = (
                        ok[base, n, mode]["median_ms"] / r["median_ms"])
        if speedups:
            out[f"cbsa_{mode}_speedup_over"] = speedups
        ratios = {str(n): ok["cbsa_exact", n, mode]["median_ms"] / ok["cbsa", n, mode]["median_ms"]
                  for (a, n, m) in ok if a == "cbsa" and m == mode and ("cbsa_exact", n, mode)
                  in ok}
        if ratios:
            out[f"cbsa_exact_over_cbsa_{mode}"] = dict(sorted(ratios.items(),
                                                              key=lambda kv: int(kv[0])))
        vs_mssa = {str(n): ok["cbsa", n, mode]["median_ms"] / ok["mssa", n, mode]["median_ms"]
                   for (a, n, m) in sorted(ok) if a == "cbsa" and m == mode
                   and ("mssa", n, mode) in ok}
        if vs_mssa:
            out[f"cbsa_over_mssa_{mode}"] = vs_mssa
    return out


COLUMNS = [
    ("attention", "<", lambda r: r["attention"]),
    ("N", ">", lambda r: f"{r['N']:,}"),
    ("mode", "<", lambda r: r["mode"]),
    ("proj", "<", lambda r: "yes" if r.get("projections") else "no"),
    ("median ms", ">", lambda r: h.fmt(r.get("median_ms"), ".2f")),
    ("runs", ">", lambda r: str(r.get("repeats", "-"))),
    ("peak MB", ">", lambda r: h.fmt(r.get("peak_mb"), ",.1f")),
    ("GFLOP", ">", lambda r: h.fmt(None if r.get("flops") is None else r["flops"] / 1e9,
                                    ",.3f")),
    ("GFLOP/s", ">", lambda r: h.fmt(r.get("gflops_per_s"), ".1f")),
    ("status", "<", lambda r: r["status"]),
]


def format_summary(summary: dict) -> str:
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict) and "value" in value:
            v = value["value"]
            lines.append(f"{key}: {h.fmt(v, '.3f')}"
                         + (f" (N = {value['N']})" if "N" in value else ""))
        elif isinstance(value, dict):
            parts = []
            for n, v in value.items():
                if isinstance(v, dict):
                    parts.append(f"{n}: " + ", ".join(f"{b} {x:.1f}x" for b, x in v.items()))
                else:
                    parts.append(f"{n}: {v:.2f}")
            lines.append(f"{key}: " + "; ".join(parts))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the rows and the summary to this JSON file")
    p.add_argument("--sizes", help="comma-separated N = g^2 + 1 (default: g in "
                                   f"{','.join(map(str, DEFAULT_GRIDS))})")
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma-separated: fwd, fwdbwd")
    p.add_argument("--attentions", default=",".join(ATTENTIONS),
                   help=f"comma-separated subset of {','.join(ATTENTIONS)}")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--dim-head", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--projections", action="store_true",
                   help="include the input and output projections (x [1, N, D] in and out)")
    p.add_argument("--memory-budget-gb", type=float, default=h.default_memory_budget_gb(),
                   help="skip (as 'oom') what XLA estimates to need more (default: half the "
                        "RAM, at most 12 GB)")
    p.add_argument("--time-budget-s", type=float, default=60.0,
                   help="skip (as 'timeout') what XLA's cost analysis says would take longer "
                        "per run at the machine's measured rates")
    p.add_argument("--target-s", type=float, default=1.0,
                   help="time spent on the timed repeats of one row, roughly")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--max-repeats", type=int, default=30)
    p.add_argument("--single-run-s", type=float, default=5.0,
                   help="a row whose first run takes longer is timed by that one run")
    p.add_argument("--hang-s", type=float, default=900.0,
                   help="give up (and say so in the JSON) if one call runs longer than this")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--hugepages", action="store_true",
                   help="restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge "
                        "pages for XLA's per-call buffers; see docs/performance.md)")
    args = p.parse_args(argv)
    args.dtype = jnp.dtype(args.dtype)
    args.sizes = (h.parse_list(args.sizes, int)
                  or [tokens_for_grid(g) for g in DEFAULT_GRIDS])
    for n in args.sizes:
        grid_for_tokens(n)
    args.modes = h.parse_list(args.modes)
    args.attentions = h.parse_list(args.attentions)
    h.check_choices(p, args.modes, MODES, "mode")
    h.check_choices(p, args.attentions, ATTENTIONS, "attention")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_args(argv)
    if cfg.hugepages:
        h.reexec_with_hugepages("benchmarks.attention", argv)
    info = h.machine_info()
    matmul = h.matmul_gflops(cfg.matmul_n, cfg.dtype)
    rates = h.machine_rates(dtype=cfg.dtype)
    config = {k: (v.name if isinstance(v, np.dtype) else v) for k, v in vars(cfg).items()}
    payload = {"benchmark": "attention", "machine": info, "config": config,
               "matmul": matmul, "rates": rates, "rows": [], "summary": {}}
    print(f"# attention benchmark, {info['date']}, {info['processor']} ({info['cpu_count']} "
          f"cores, {info['backend']}), jax {info['jax']}")
    print(f"# D = {cfg.dim}, H = {cfg.heads}, p = {cfg.dim_head}, batch {cfg.batch}, "
          f"{cfg.dtype.name}, projections {'included' if cfg.projections else 'excluded'}; "
          f"matmul {matmul['n']}^3: {matmul['gflops']:.1f} GFLOP/s; budgets: "
          f"{cfg.memory_budget_gb:g} GB, {cfg.time_budget_s:g} s per run; huge pages "
          f"{'on' if h.hugepages_enabled() else 'off'}; load average "
          f"{', '.join(f'{x:.1f}' for x in info.get('load_average') or ())}", flush=True)

    current: dict = {}  # the row being run, for the watchdog

    def on_hang(label: str):
        payload["rows"].append(hang_row(current["name"], current["n"], current["mode"],
                                        cfg.hang_s))
        payload["summary"] = summarise(payload["rows"])
        h.write_json(cfg.json, payload)
        print(f"\n{label}: no result after {cfg.hang_s:g} s; stopping", file=sys.stderr,
              flush=True)
        os._exit(3)

    watchdog = h.Watchdog(cfg.hang_s, on_hang)
    calibration: dict = {}
    for n in cfg.sizes:
        for name in cfg.attentions:
            for mode in cfg.modes:
                current.update(name=name, n=n, mode=mode)
                row = run_row(name, n, mode, cfg=cfg, matmul_gflops=matmul["gflops"],
                              rates=rates, watchdog=watchdog, calibration=calibration)
                payload["rows"].append(row)
                print("  " + "  ".join(fn(row) for _, _, fn in COLUMNS), flush=True)
                h.write_json(cfg.json, payload)
    payload["summary"] = summarise(payload["rows"])
    h.write_json(cfg.json, payload)
    print()
    print(h.table(payload["rows"], COLUMNS))
    print()
    print(format_summary(payload["summary"]))
    return payload


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
