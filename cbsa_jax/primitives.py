"""Small pieces that the operators, the layers and the look-inside tools all use.

Pure `jnp` functions, below `unroll`, `attention` and `interpret` (which re-exports the maps):

- `temperature(tau, p)`           the softmax temperature, default sqrt(p), validated;
- `softmax_map(q, k, tau)`        softmax over keys of `q k^T / tau`: MSSA's and softmax
                                  attention's map, CBSA's token -> representative weights S;
- `tssa_membership(w, temp)`      ToST's soft assignment of tokens to heads;
- the effective token-to-token maps that a layer reports with `capture=True`:
  `cbsa_effective_map` (`S^T S`), `agent_effective_map` (`T S`), `linear_effective_map`
  (`alpha^2 W W^T - alpha I`), `tssa_effective_map` (`diag(Pi)`).

Maps are `[..., rows, cols]` in float32 or wider; every row of a softmax map sums to 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cbsa_jax import _checks
from cbsa_jax.coding_rate import rate_scale

__all__ = [
    "temperature",
    "softmax_map",
    "tssa_membership",
    "cbsa_effective_map",
    "agent_effective_map",
    "linear_effective_map",
    "tssa_effective_map",
]


def temperature(tau, p: int):
    """`tau` when given (checked > 0 when concrete), else `sqrt(p)` as a Python float."""
    if tau is None:
        return float(p) ** 0.5
    _checks.check_positive("tau", tau)
    return tau


def softmax_map(q: jax.Array, k: jax.Array, tau=None) -> jax.Array:
    """softmax over keys of `q k^T / tau` (tau = sqrt(p)).

    `q [..., a, p]`, `k [..., b, p]` -> `[..., a, b]` in float32 or wider.
    """
    tau = temperature(tau, q.shape[-1])
    dtype = _checks.compute_dtype(q, k)
    logits = jnp.einsum("...ap,...bp->...ab", q, k, preferred_element_type=dtype)
    return jax.nn.softmax(logits / tau, axis=-1)


def tssa_membership(w: jax.Array, temp: jax.Array) -> jax.Array:
    """ToST's `Pi`: softmax over heads of `temp_k ||normalize_tokens(w)_i||^2`, `[..., H, N]`."""
    wf = w.astype(_checks.compute_dtype(w))
    norm = jnp.sqrt(jnp.sum(wf * wf, axis=-2, keepdims=True))
    sq = jnp.sum((wf / jnp.maximum(norm, 1e-12)) ** 2, axis=-1)
    return jax.nn.softmax(sq * jnp.asarray(temp, wf.dtype)[..., :, None], axis=-2)


def cbsa_effective_map(weights: jax.Array) -> jax.Array:
    """`S^T S` for token -> representative weights `S [..., m, N]`: `[..., N, N]`."""
    s = weights.astype(_checks.compute_dtype(weights))
    return jnp.einsum("...mi,...mj->...ij", s, s)


def agent_effective_map(token_weights: jax.Array, weights: jax.Array) -> jax.Array:
    """`T S` for `T [..., N, m]` (token-side softmax) and `S [..., m, N]`: `[..., N, N]`."""
    dtype = _checks.compute_dtype(token_weights, weights)
    return jnp.matmul(token_weights.astype(dtype), weights.astype(dtype))


def linear_effective_map(w: jax.Array, eps) -> jax.Array:
    """`alpha^2 W W^T - alpha I` (alpha = p / (N eps^2)): the first-order step as a token map."""
    n, p = w.shape[-2:]
    alpha = rate_scale(n, p, eps)
    wf = w.astype(_checks.compute_dtype(w))
    return alpha**2 * jnp.einsum("...ip,...jp->...ij", wf, wf) - alpha * jnp.eye(n, dtype=wf.dtype)


def tssa_effective_map(membership: jax.Array) -> jax.Array:
    """ToST mixes no tokens: token i is rescaled by its own membership `Pi_i` (and a global
    second moment), so its token-to-token map is `diag(Pi)`: `[..., H, N] -> [..., H, N, N]`."""
    return membership[..., :, None] * jnp.eye(membership.shape[-1], dtype=membership.dtype)
