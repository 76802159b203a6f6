"""How representatives start: a linear map P from N tokens to m representatives.

Each rule is a frozen dataclass (hashable, so it can be a static argument of `jax.jit`) with
  - `num_representatives(n)`  m for n tokens (validates n),
  - `pool(w)`      `[..., N, c] -> [..., m, c]`, i.e. P w,
  - `unpool(c, n)` `[..., m, c] -> [..., N, c]`, i.e. P^T c (the transpose, used by the exact
    broadcast `A^T = (P + beta S)^T`),
  - `matrix(n)`    P itself as a numpy `[m, N]` array, for tests and introspection.

Pooling is linear and acts on tokens only, so pooling all H*p channels before the head split equals
pooling each head. Grid pooling reproduces `torch.nn.AdaptiveAvgPool2d` bin for bin: output cell i
of r covers input rows [floor(i g / r), ceil((i + 1) g / r)); when r divides g this is a cheap
reshape-mean, otherwise two small separable matmuls (never a dense m x N matrix).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Selection",
    "adaptive_bins",
    "adaptive_pool_matrix",
    "pool_grid",
    "unpool_grid",
    "pool_segments",
    "unpool_segments",
    "AllTokens",
    "GridPooling",
    "SegmentPooling",
    "Representatives",
]


class Selection(enum.Enum):
    """Which tokens grid pooling reads.

    PATCHES: the true patch tokens `[prefix, prefix + gh*gw)`.
    REFERENCE: the official PyTorch code's selection, tokens `[0, gh*gw)`: it pools `w[:, :-1]`
      while the cls token sits at index 0, so cls lands in cell (0, 0), every patch one cell late,
      and the last patch is never pooled. Needed to reproduce released checkpoints exactly.
    """

    PATCHES = "patches"
    REFERENCE = "reference"


def adaptive_bins(size: int, out: int) -> tuple[tuple[int, int], ...]:
    """torch's adaptive-pooling bins: `[(floor(i*size/out), ceil((i+1)*size/out)) for i]`."""
    _check_bins("size", size, "out", out)
    return tuple(((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out))


@cache
def _pool_matrix_1d(size: int, out: int) -> np.ndarray:
    mat = np.zeros((out, size), np.float64)
    for i, (lo, hi) in enumerate(adaptive_bins(size, out)):
        mat[i, lo:hi] = 1.0 / (hi - lo)
    mat.setflags(write=False)
    return mat


def adaptive_pool_matrix(grid: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Dense `[rh*rw, gh*gw]` matrix of 2-D adaptive average pooling (row-major cells, tokens)."""
    (gh, gw), (rh, rw) = grid, cells
    return np.kron(_pool_matrix_1d(gh, rh), _pool_matrix_1d(gw, rw))


def _check_bins(size_name: str, size: int, out_name: str, out: int) -> None:
    if not (isinstance(size, int | np.integer) and size >= 1):
        raise ValueError(f"{size_name} must be a positive integer, got {size!r}")
    if not (isinstance(out, int | np.integer) and 1 <= out <= size):
        raise ValueError(
            f"{out_name} must be an integer in [1, {size}] (no more representatives than "
            f"tokens), got {out!r}"
        )


def pool_grid(x: jax.Array, grid: tuple[int, int], cells: tuple[int, int]) -> jax.Array:
    """Adaptive average pooling of a gh x gw token grid: `[..., gh*gw, c] -> [..., rh*rw, c]`."""
    (gh, gw), (rh, rw) = grid, cells
    _check_bins("grid[0]", gh, "cells[0]", rh)
    _check_bins("grid[1]", gw, "cells[1]", rw)
    if x.shape[-2] != gh * gw:
        raise ValueError(f"x must have gh*gw = {gh * gw} tokens at axis -2, got shape {x.shape}")
    lead, c = x.shape[:-2], x.shape[-1]
    if gh % rh == 0 and gw % rw == 0:
        y = x.reshape(*lead, rh, gh // rh, rw, gw // rw, c).mean(axis=(-4, -2))
    else:
        ph = jnp.asarray(_pool_matrix_1d(gh, rh), x.dtype)
        pw = jnp.asarray(_pool_matrix_1d(gw, rw), x.dtype)
        y = jnp.einsum("ih,jw,...hwc->...ijc", ph, pw, x.reshape(*lead, gh, gw, c))
    return y.reshape(*lead, rh * rw, c)


def unpool_grid(c: jax.Array, grid: tuple[int, int], cells: tuple[int, int]) -> jax.Array:
    """The transpose of `pool_grid`: `[..., rh*rw, c] -> [..., gh*gw, c]`."""
    (gh, gw), (rh, rw) = grid, cells
    _check_bins("grid[0]", gh, "cells[0]", rh)
    _check_bins("grid[1]", gw, "cells[1]", rw)
    lead, ch = c.shape[:-2], c.shape[-1]
    if gh % rh == 0 and gw % rw == 0:
        kh, kw = gh // rh, gw // rw
        y = c.reshape(*lead, rh, 1, rw, 1, ch) / (kh * kw)
        y = jnp.broadcast_to(y, (*lead, rh, kh, rw, kw, ch))
    else:
        ph = jnp.asarray(_pool_matrix_1d(gh, rh), c.dtype)
        pw = jnp.asarray(_pool_matrix_1d(gw, rw), c.dtype)
        y = jnp.einsum("ih,jw,...ijc->...hwc", ph, pw, c.reshape(*lead, rh, rw, ch))
    return y.reshape(*lead, gh * gw, ch)


def pool_segments(x: jax.Array, segments: int) -> jax.Array:
    """1-D adaptive average pooling of a sequence: `[..., n, c] -> [..., segments, c]`."""
    n = x.shape[-2]
    _check_bins("tokens", n, "segments", segments)
    lead, c = x.shape[:-2], x.shape[-1]
    if n % segments == 0:
        return x.reshape(*lead, segments, n // segments, c).mean(axis=-2)
    return jnp.einsum("in,...nc->...ic", jnp.asarray(_pool_matrix_1d(n, segments), x.dtype), x)


def unpool_segments(c: jax.Array, n: int) -> jax.Array:
    """The transpose of `pool_segments`: `[..., segments, c] -> [..., n, c]`."""
    segments = c.shape[-2]
    _check_bins("tokens", n, "segments", segments)
    lead, ch = c.shape[:-2], c.shape[-1]
    if n % segments == 0:
        k = n // segments
        y = jnp.broadcast_to(c[..., :, None, :] / k, (*lead, segments, k, ch))
        return y.reshape(*lead, n, ch)
    return jnp.einsum("in,...ic->...nc", jnp.asarray(_pool_matrix_1d(n, segments), c.dtype), c)


def _scatter(pooled_t: jax.Array, n: int, start: int) -> jax.Array:
    """Place `[..., k, c]` at tokens [start, start + k) of an `[..., n, c]` array of zeros."""
    k = pooled_t.shape[-2]
    pad = [(0, 0)] * (pooled_t.ndim - 2) + [(start, n - start - k), (0, 0)]
    return jnp.pad(pooled_t, pad)


@dataclasses.dataclass(frozen=True)
class AllTokens:
    """Every token is its own representative (m = N, P = I): CRATE's setting."""

    def num_representatives(self, n: int) -> int:
        _check_bins("tokens", n, "representatives", n)
        return n

    def pool(self, w: jax.Array) -> jax.Array:
        return w

    def unpool(self, c: jax.Array, n: int) -> jax.Array:
        return c

    def matrix(self, n: int) -> np.ndarray:
        return np.eye(n)


@dataclasses.dataclass(frozen=True)
class GridPooling:
    """Adaptive average pooling of the gh x gw patch grid to rh x rw representatives.

    Attributes:
      grid: (gh, gw) patch grid; the tokens are `prefix` leading tokens (e.g. cls) followed by the
        gh*gw patches in row-major order, so N = prefix + gh*gw.
      cells: (rh, rw) output cells, m = rh*rw (8 x 8 = 64 in the reference).
      prefix: number of leading non-patch tokens.
      selection: `Selection.PATCHES` (default) or `Selection.REFERENCE` (see `Selection`).
    """

    grid: tuple[int, int]
    cells: tuple[int, int] = (8, 8)
    prefix: int = 1
    selection: Selection = Selection.PATCHES

    def __post_init__(self):
        for name in ("grid", "cells"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"{name} must be a pair of ints (height, width), got {value!r}")
        _check_bins("grid[0]", self.grid[0], "cells[0]", self.cells[0])
        _check_bins("grid[1]", self.grid[1], "cells[1]", self.cells[1])
        if not (isinstance(self.prefix, int) and self.prefix >= 0):
            raise ValueError(f"prefix must be an integer >= 0, got {self.prefix!r}")
        object.__setattr__(self, "selection", Selection(self.selection))
        if self.selection is Selection.REFERENCE and self.prefix < 1:
            raise ValueError(
                "selection=REFERENCE needs prefix >= 1 (the reference drops one token)")

    def _start(self, n: int) -> int:
        expected = self.prefix + self.grid[0] * self.grid[1]
        if n != expected:
            raise ValueError(
                f"grid {self.grid} with prefix {self.prefix} expects N = {expected} tokens, got "
                f"N = {n}"
            )
        return self.prefix if self.selection is Selection.PATCHES else 0

    def num_representatives(self, n: int) -> int:
        self._start(n)
        return self.cells[0] * self.cells[1]

    def pool(self, w: jax.Array) -> jax.Array:
        start = self._start(w.shape[-2])
        g = self.grid[0] * self.grid[1]
        return pool_grid(w[..., start : start + g, :], self.grid, self.cells)

    def unpool(self, c: jax.Array, n: int) -> jax.Array:
        return _scatter(unpool_grid(c, self.grid, self.cells), n, self._start(n))

    def matrix(self, n: int) -> np.ndarray:
        start = self._start(n)
        mat = np.zeros((self.cells[0] * self.cells[1], n))
        mat[:, start : start + self.grid[0] * self.grid[1]] = adaptive_pool_matrix(
            self.grid, self.cells
        )
        return mat


@dataclasses.dataclass(frozen=True)
class SegmentPooling:
    """1-D adaptive average pooling of a sequence into `segments` contiguous representatives.

    The first `prefix` tokens (e.g. cls) are not pooled; the remaining n - prefix are split into
    torch-style adaptive bins.
    """

    segments: int
    prefix: int = 0

    def __post_init__(self):
        if not (isinstance(self.segments, int) and self.segments >= 1):
            raise ValueError(f"segments must be a positive integer, got {self.segments!r}")
        if not (isinstance(self.prefix, int) and self.prefix >= 0):
            raise ValueError(f"prefix must be an integer >= 0, got {self.prefix!r}")

    def num_representatives(self, n: int) -> int:
        _check_bins("tokens after the prefix", n - self.prefix, "segments", self.segments)
        return self.segments

    def pool(self, w: jax.Array) -> jax.Array:
        self.num_representatives(w.shape[-2])
        return pool_segments(w[..., self.prefix :, :], self.segments)

    def unpool(self, c: jax.Array, n: int) -> jax.Array:
        self.num_representatives(n)
        return _scatter(unpool_segments(c, n - self.prefix), n, self.prefix)

    def matrix(self, n: int) -> np.ndarray:
        self.num_representatives(n)
        mat = np.zeros((self.segments, n))
        mat[:, self.prefix :] = _pool_matrix_1d(n - self.prefix, self.segments)
        return mat


Representatives = AllTokens | GridPooling | SegmentPooling
"""A rule that initialises representatives as a linear pooling of the tokens."""


def square_grid(n_patches: int) -> tuple[int, int]:
    """(g, g) for n_patches = g^2, else ValueError."""
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"cannot infer a square grid from {n_patches} patch tokens; pass grid")
    return (g, g)
