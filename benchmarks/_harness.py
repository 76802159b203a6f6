"""Shared machinery of the benchmarks: compile, estimate, time, tabulate, write JSON.

Conventions (`../shared/design/conventions.md`): every number is a median after a warm-up with
`block_until_ready`; comparisons are made side by side in one process; nothing here asserts a
timing.

Memory: `memory_analysis` reads XLA's compiled memory analysis, and a row's `peak_mb` is
`temp + argument + output - alias` bytes, the buffers the executable holds at once, known before
anything runs (which is what lets a benchmark skip what does not fit, with the estimate as the
reason). `rss_peak_mb` records the process's resident-set high-water mark (`ru_maxrss`) after the
row, a monotone whole-process figure that only shows nothing was hidden from XLA's estimate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cbsa_jax.reporting import (  # noqa: F401  (re-exported: the benchmarks use h.<name>)
    GB,
    MB,
    cost_analysis,
    count_params,
    fmt,
    machine_info,
    memory_analysis,
    parse_list,
    table,
    write_json,
)

# ----------------------------------------------------------------------------------------------
# what the process holds


def rss_peak_mb() -> float:
    """The process's resident-set high-water mark in MB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) * 1024 / MB


# ----------------------------------------------------------------------------------------------
# timing


@dataclasses.dataclass
class Timing:
    median_s: float
    times_s: list[float]
    warmup_s: float | None  # the first (discarded) call, None when there was no warm-up


class Watchdog:
    """Calls `on_hang(label)` from a timer thread if one guarded call runs longer than `limit_s`.

    XLA's CPU runtime occasionally stalls (see docs/performance.md); a benchmark should record
    that and stop rather than wait forever. `on_hang` is expected to end the process.
    """

    def __init__(self, limit_s: float, on_hang: Callable[[str], None]):
        self.limit_s, self.on_hang = limit_s, on_hang

    def guard(self, label: str):
        return _Guard(self, label)


class _Guard:
    def __init__(self, dog: Watchdog, label: str):
        self.dog, self.label, self.timer = dog, label, None

    def __enter__(self):
        if self.dog.limit_s and self.dog.limit_s > 0:
            self.timer = threading.Timer(self.dog.limit_s, self.dog.on_hang, (self.label,))
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        return False


def time_call(call: Callable[[], Any], *, target_s: float = 1.0, min_repeats: int = 3,
              max_repeats: int = 30, single_run_s: float = 10.0) -> Timing:
    """Median wall time of `call()` (which must return arrays to block on).

    One warm-up call, then as many timed calls as fit in `target_s` (at least `min_repeats`, at
    most `max_repeats`). A call slower than `single_run_s` is timed once, warm-up included (the
    executable is compiled ahead of time, so the first call measures the same work).
    """
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    if first >= single_run_s:
        return Timing(first, [first], None)
    repeats = int(np.clip(math.ceil(target_s / max(first, 1e-6)), min_repeats, max_repeats))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return Timing(float(np.median(times)), times, first)


def matmul_gflops(n: int = 2048, dtype=jnp.float32, repeats: int = 7) -> dict[str, float]:
    """The machine's measured matmul rate: median of an n x n x n product, in GFLOP/s."""
    probe = MatmulProbe(n, dtype)
    for _ in range(repeats):
        probe.sample()
    return probe.result()


class MatmulProbe:
    """An n x n x n product to time now and then, interleaved with other work, so that a rate
    compared with it saw the same load on a shared machine."""

    def __init__(self, n: int = 2048, dtype=jnp.float32):
        self.n, self.dtype = n, jnp.dtype(dtype)
        self.a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
        self.compiled = jax.jit(lambda a: a @ a).lower(self.a).compile()
        jax.block_until_ready(self.compiled(self.a))  # warm-up
        self.times: list[float] = []

    def sample(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.compiled(self.a))
        self.times.append(time.perf_counter() - t0)
        return self.times[-1]

    def result(self) -> dict[str, float]:
        med = float(np.median(self.times))
        return {"n": self.n, "dtype": self.dtype.name, "median_ms": med * 1e3,
                "gflops": 2 * self.n**3 / med / 1e9, "samples": len(self.times)}


def machine_rates(n: int = 1 << 22, dtype=jnp.float32) -> dict[str, float]:
    """Measured elementwise rates for time estimates: exp (transcendentals/s, reduced so that no
    large output is written) and a fresh-output copy (bytes/s, page faults included)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(n), dtype)
    exp = jax.jit(lambda x: jnp.sum(jnp.exp(x))).lower(x).compile()
    copy = jax.jit(lambda x: x * 2).lower(x).compile()
    t_exp = time_call(lambda: exp(x), target_s=0.3, min_repeats=3, max_repeats=10).median_s
    t_copy = time_call(lambda: copy(x), target_s=0.3, min_repeats=3, max_repeats=10).median_s
    return {"exp_per_s": n / t_exp, "bytes_per_s": 2 * n * x.dtype.itemsize / t_copy}


def estimate_seconds(cost: dict[str, float], matmul_gflops: float,
                     rates: dict[str, float]) -> float:
    """A rough run time from XLA's cost analysis: FLOPs at the matmul rate, transcendentals at
    the exp rate, bytes accessed at the copy rate (each term alone is a lower bound)."""
    terms = [cost.get("flops", 0.0) / (matmul_gflops * 1e9),
             cost.get("transcendentals", 0.0) / rates.get("exp_per_s", math.inf),
             cost.get("bytes_accessed", 0.0) / rates.get("bytes_per_s", math.inf)]
    return float(sum(t for t in terms if math.isfinite(t)))


# ----------------------------------------------------------------------------------------------
# the machine


HUGEPAGES = "glibc.malloc.hugetlb=1"


def hugepages_enabled() -> bool:
    return HUGEPAGES in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_hugepages(module: str, argv: Sequence[str] | None) -> None:
    """Restart this process (`python -m module argv`) with glibc's malloc asking the kernel for
    transparent huge pages, unless it already does.

    XLA:CPU allocates its temporary buffers at every call, and glibc serves allocations above 32 MB
    with fresh `mmap`s, so each call page-faults its whole working set in 4 KiB pages (the rows'
    `minor_faults_per_call` show how many). With `glibc.malloc.hugetlb=1` those mappings are
    `madvise`d for 2 MiB pages (which needs the kernel's THP mode to be `madvise` or `always`). The
    tunable is read when the process starts, hence the restart.
    """
    if hugepages_enabled():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), HUGEPAGES) if t)
    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], env)


def default_memory_budget_gb() -> float:
    """Half the physical memory (other processes share the machine), at most 12 GB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        total = 16.0
    return round(min(12.0, 0.5 * total), 1)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two finite points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
           if x and y and math.isfinite(y) and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def error_text(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message` (an exception with an empty message has no line)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}"


def check_choices(parser, values, allowed, what: str, plural: str | None = None) -> None:
    """`parser.error` (exit 2, usage on stderr) for the first of `values` not in `allowed`."""
    for value in values:
        if value not in allowed:
            parser.error(f"unknown {what} {value!r}; {plural or what + 's'} are "
                         f"{', '.join(allowed)}")
