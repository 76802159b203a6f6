"""Looking inside: attention maps, per-layer coding rate and sparsity. Pure jnp functions.

Maps are `[..., H, rows, cols]` in float32; every row of a softmax map sums to 1.

- `softmax_map(q, k)`            softmax over keys of `q k^T / sqrt(p)` (MSSA, softmax attention,
                                 CBSA's token -> representative weights S and its `rep_attention`)
- `cbsa_effective_map(S)`        `S^T S`: token-to-token map through the representatives, as the
                                 reference returns it (`return_attn=True`)
- `agent_effective_map(T, S)`    `T S`: agent attention's token-to-token map (rows sum to 1)
- `linear_effective_map(w, eps)` `alpha^2 W W^T - alpha I`: the linear (first-order) operator
- `tssa_membership(w, temp)`     ToST's soft assignment of tokens to heads, `[..., H, N]`
- `tssa_effective_map(Pi)`       `diag(Pi)`: ToST mixes no tokens

and measurements: `layer_coding_rate` (per-layer R with the layer's own projection, the
reference's eps^2 = 0.01), `sparsity` (of ISTA outputs), `hard_assignment` (token ->
representative), `top_mass_mask` and `jaccard` (segmentation from attention maps).

The maps live in `cbsa_jax.primitives` (the layers compute them when asked to `capture`); they are
re-exported here, so the forward pass never imports this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cbsa_jax import _checks
from cbsa_jax.coding_rate import coding_rate, heads
from cbsa_jax.primitives import (
    agent_effective_map,
    cbsa_effective_map,
    linear_effective_map,
    softmax_map,
    tssa_effective_map,
    tssa_membership,
)

__all__ = [
    "softmax_map",
    "cbsa_effective_map",
    "agent_effective_map",
    "linear_effective_map",
    "tssa_membership",
    "tssa_effective_map",
    "layer_coding_rate",
    "sparsity",
    "hard_assignment",
    "top_mass_mask",
    "jaccard",
    "union_of_subspaces",
    "principal_angles",
]


# ----------------------------------------------------------------------------------------------
# measurements of a trained network (the inputs are what `model(images, capture=True)` returns)


def layer_coding_rate(tokens: jax.Array, bases: jax.Array, *, eps: float = 0.1,
                      normalize: bool = False) -> jax.Array:
    """Sum over heads of `R(Z U_k; eps)` for a layer's input tokens `Z [..., N, D]` and its own
    projection `U [D, H, p]`: `[...]`.

    eps = 0.1 is the reference's measurement (its `e = eps^2 = 0.01`). With `normalize`, every
    projected token is scaled to unit norm first, which measures directions only.
    """
    w = heads(tokens, bases).astype(_checks.compute_dtype(tokens))
    if normalize:
        w = w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
    return jnp.sum(coding_rate(w, eps), axis=-1)


def sparsity(z: jax.Array, *, tol: float = 0.0) -> jax.Array:
    """Fraction of entries with `|z| <= tol` over the last two axes (tokens, channels): `[...]`."""
    return jnp.mean((jnp.abs(z) <= tol).astype(jnp.float32), axis=(-2, -1))


def hard_assignment(weights: jax.Array) -> jax.Array:
    """Each token's representative: argmax over m of `S [..., m, N]` -> `[..., N]` (int32)."""
    return jnp.argmax(weights, axis=-2).astype(jnp.int32)


def top_mass_mask(values: jax.Array, mass: float = 0.6) -> jax.Array:
    """Keep the largest entries of each row whose sum first reaches `mass` of the row's total.

    `values [..., n]` (non-negative) -> bool `[..., n]`; the entry that crosses the threshold is
    kept, so the kept mass is >= `mass`.
    """
    order = jnp.argsort(-values, axis=-1)
    ranked = jnp.take_along_axis(values, order, axis=-1)
    total = jnp.sum(values, axis=-1, keepdims=True)
    before = jnp.cumsum(ranked, axis=-1) - ranked  # mass strictly above each entry
    keep_ranked = before < mass * total
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_ranked, inverse, axis=-1)


def jaccard(pred: jax.Array, true: jax.Array) -> jax.Array:
    """Intersection over union of boolean masks over the last two axes: `[...]` (1 if both are
    empty)."""
    pred, true = pred.astype(bool), true.astype(bool)
    inter = jnp.sum(pred & true, axis=(-2, -1))
    union = jnp.sum(pred | true, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


# ----------------------------------------------------------------------------------------------
# the synthetic-compression experiment


def union_of_subspaces(rng, *, subspaces: int = 4, dim: int = 4, ambient: int = 32,
                       tokens: int = 256, noise: float = 0.05):
    """Tokens drawn from a union of random `dim`-dimensional subspaces of R^ambient.

    Returns (`X [tokens, ambient]`, orthonormal bases `U [ambient, subspaces, dim]`, labels
    `[tokens]`): token i = U_{label_i} c_i + noise * g_i with c_i, g_i standard normal. `rng` is
    a `numpy.random.Generator`.
    """
    if subspaces * dim > ambient:
        raise ValueError(f"subspaces * dim = {subspaces * dim} must be <= ambient = {ambient}")
    bases = np.linalg.qr(rng.normal(size=(ambient, subspaces * dim)))[0]
    bases = bases.reshape(ambient, subspaces, dim)
    labels = rng.integers(0, subspaces, size=tokens)
    coords = rng.normal(size=(tokens, dim))
    x = np.einsum("dkp,np->nkd", bases, coords)[np.arange(tokens), labels]
    return x + noise * rng.normal(size=x.shape), bases, labels


def principal_angles(a: jax.Array, b: jax.Array) -> jax.Array:
    """Principal angles (radians, ascending) between the column spans of `a [D, p]`, `b [D, q]`."""
    qa, _ = jnp.linalg.qr(a)
    qb, _ = jnp.linalg.qr(b)
    cosines = jnp.linalg.svd(qa.T @ qb, compute_uv=False)
    return jnp.sort(jnp.arccos(jnp.clip(cosines, -1.0, 1.0)))
