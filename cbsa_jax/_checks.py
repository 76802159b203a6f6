"""Input validation shared by the pure functions.

Every check runs on static information (shapes, dtypes, Python numbers) so it fires before any
compilation, and every error names the argument and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_float(value: Any) -> float | None:
    """`value` as a Python float when it is known at trace time, else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # an abstract value
        return None
    if arr.size != 1:
        return None
    return float(arr.reshape(()))


def check_positive(name: str, value: Any) -> None:
    """Raise ValueError unless `value` (when concrete) is a finite number > 0."""
    v = concrete_float(value)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v}")


def check_nonnegative(name: str, value: Any) -> None:
    v = concrete_float(value)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")


def check_min_rank(name: str, x: Any, rank: int, layout: str) -> None:
    if jnp.ndim(x) < rank:
        raise ValueError(
            f"{name} must have shape {layout} (at least {rank} dims), got shape {jnp.shape(x)}"
        )


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {jnp.shape(x)}")


def check_floating(name: str, x: Any) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")


def check_dim(name: str, x: Any, axis: int, expected: int, layout: str, why: str = "") -> None:
    got = jnp.shape(x)[axis]
    if got != expected:
        reason = f" ({why})" if why else ""
        raise ValueError(
            f"{name} must have shape {layout} with size {expected} at axis {axis}{reason}, "
            f"got shape {jnp.shape(x)}"
        )


def check_broadcastable(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        desc = ", ".join(f"{n} {s}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"batch dimensions must broadcast together, got {desc}") from None


def compute_dtype(*arrays: Any) -> jnp.dtype:
    """The dtype for numerically sensitive work: float32 or wider, never bf16/f16."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(
        jnp.promote_types(jnp.result_type(*arrays), jnp.float32)))
