"""Reporting helpers shared by the benchmarks, the training tools and the experiments.

What a compiled program costs (`cost_analysis`, `memory_analysis`), how many parameters a model
has (`count_params`), which machine a result came from (`machine_info`: processor, its vendor and
ISA, jax and device), and how results are written (`fmt`, `table` for Markdown tables,
`write_json` for the JSON files under docs/results, `parse_list` for comma-separated flags).
Nothing here times anything; `benchmarks/_harness.py` does.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

__all__ = ["MB", "GB", "memory_analysis", "cost_analysis", "count_params", "machine_info",
           "HostCPU", "host_cpu", "cpu_model", "fmt", "table", "write_json", "parse_list"]

MB = 1e6
GB = 1e9


# ----------------------------------------------------------------------------------------------
# what the executable costs, before it runs


def memory_analysis(compiled) -> dict[str, float]:
    """XLA's compiled memory analysis in bytes, with `peak` = temp + argument + output - alias."""
    ma = compiled.memory_analysis()
    if ma is None:  # some backends do not report it
        return {"temp": math.nan, "argument": math.nan, "output": math.nan, "alias": 0.0,
                "peak": math.nan}
    out = {"temp": float(ma.temp_size_in_bytes), "argument": float(ma.argument_size_in_bytes),
           "output": float(ma.output_size_in_bytes), "alias": float(ma.alias_size_in_bytes)}
    out["peak"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
    return out


def cost_analysis(compiled) -> dict[str, float]:
    """XLA's cost analysis of the optimised HLO: flops, transcendentals, bytes accessed."""
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", math.nan)),
            "transcendentals": float(ca.get("transcendentals", math.nan)),
            "bytes_accessed": float(ca.get("bytes accessed", math.nan))}


def count_params(model: nnx.Module) -> int:
    """The number of scalars in the model's `nnx.Param` variables."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------------------------
# the machine


#: The instruction-set extensions that change what XLA:CPU and the libraries under it emit.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


@dataclasses.dataclass(frozen=True)
class HostCPU:
    """What the host processor is: its vendor (`GenuineIntel`, `AuthenticAMD`, ...), model name
    and the `ISA_FLAGS` it has. Read from /proc/cpuinfo at run time."""

    vendor: str
    model: str
    isa: tuple[str, ...]

    def has(self, *flags: str) -> bool:
        return all(f in self.isa for f in flags)


@functools.cache
def host_cpu() -> HostCPU:
    """The `HostCPU` of this machine (empty vendor and ISA where /proc/cpuinfo is absent)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    if fields:  # the first processor is enough
                        break
                    continue
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return HostCPU(vendor=fields.get("vendor_id", ""),
                   model=fields.get("model name", platform.processor() or "unknown"),
                   isa=tuple(f for f in ISA_FLAGS if f in flags))


def machine_info() -> dict[str, Any]:
    """Where a result came from: date, processor (vendor, model, ISA), cores, jax, backend,
    device and device count, Python, glibc tunables, XLA flags, load average, huge pages, memory."""
    dev = jax.devices()[0]
    cpu = host_cpu()
    info = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": cpu.model,
        "cpu_vendor": cpu.vendor,
        "cpu_isa": list(cpu.isa),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),  # on a CPU: the XLA devices it is split into
        "python": platform.python_version(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["transparent_hugepage"] = f.read().strip()
    except OSError:
        pass
    try:
        info["memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        pass
    return info


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), or what `platform` knows."""
    return host_cpu().model


# ----------------------------------------------------------------------------------------------
# tables and JSON


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    """`format(value, spec)`, or `missing` for None and non-finite floats."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str, Callable[[dict], str]]]) -> str:
    """A plain-text (Markdown) table: columns are (header, align '<' or '>', cell function)."""
    cells = [[fn(r) for _, _, fn in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in
              enumerate(columns)]
    line = "| " + " | ".join(format(h, f"{a}{w}") for (h, a, _), w in zip(columns, widths,
                                                                         strict=True)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == ">" else ("-" * (w + 2))
                         for (_, a, _), w in zip(columns, widths, strict=True)) + "|"
    body = ["| " + " | ".join(format(c, f"{a}{w}") for c, (_, a, _), w in
                              zip(row, columns, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


def write_json(path: str | None, payload: dict) -> None:
    """Write `payload` (NaN/inf become null) atomically to `path` (None: do nothing)."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(payload), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def parse_list(text: str | None, cast=str) -> list | None:
    """`"a, b,c"` -> `[cast("a"), cast("b"), cast("c")]`; None stays None."""
    if text is None:
        return None
    return [cast(t.strip()) for t in text.split(",") if t.strip()]
