"""Coding rates and the CBSA objective: pure `jax.numpy` functions.

Notation (row-major, as in code): `X [..., N, D]` tokens, `U [D, H, p]` the H subspace bases of
one layer (the kernel of a bias-free Dense(D -> H*p), reshaped), `A [..., H, m, N]` the coefficients
that write each head's m representatives as combinations of the tokens, `Q_k = A_k X U_k`.

    R(Q; eps) = 1/2 logdet(I_p + alpha Q^T Q) = 1/2 logdet(I_m + alpha Q Q^T)
    alpha = p / (m eps^2)

The two determinants are equal (Sylvester); we factor whichever system is smaller with Cholesky,
always in float32 or wider, so a bfloat16 model still measures its rate accurately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cbsa_jax import _checks

__all__ = [
    "rate_scale",
    "regularized_gram",
    "coding_rate",
    "heads",
    "compression_rate",
    "representatives_of",
    "cbsa_objective",
]


def rate_scale(m: int, p: int, eps) -> jax.Array | float:
    """alpha = p / (m eps^2), the scale inside the coding rate of m vectors in R^p."""
    return p / (m * eps**2)


def regularized_gram(q: jax.Array, alpha, *, side: str = "auto") -> tuple[jax.Array, str]:
    """The SPD system `I + alpha G` whose logdet is the coding rate, and which side it is.

    Args:
      q: `[..., m, p]`.
      alpha: scalar or broadcastable to `[...]`.
      side: `"rows"` for the m x m system `I_m + alpha Q Q^T`, `"cols"` for the p x p system
        `I_p + alpha Q^T Q`, `"auto"` for the smaller one (rows on a tie).

    Returns:
      (`[..., k, k]` matrix, the side used), k = m or p.
    """
    m, p = q.shape[-2:]
    if side == "auto":
        side = "rows" if m <= p else "cols"
    if side == "rows":
        gram = jnp.einsum("...ip,...jp->...ij", q, q)
        k = m
    elif side == "cols":
        gram = jnp.einsum("...mi,...mj->...ij", q, q)
        k = p
    else:
        raise ValueError(f"side must be 'auto', 'rows' or 'cols', got {side!r}")
    alpha = jnp.asarray(alpha, gram.dtype)
    alpha = jnp.reshape(alpha, alpha.shape + (1, 1)) if alpha.ndim else alpha
    return jnp.eye(k, dtype=gram.dtype) + alpha * gram, side


def coding_rate(Q: jax.Array, eps, *, side: str = "auto") -> jax.Array:
    """R(Q; eps) = 1/2 logdet(I + p/(m eps^2) Q^T Q) of the m rows of `Q`.

    Args:
      Q: `[..., m, p]` (any float dtype; computed in float32 or wider).
      eps: the distortion, > 0 (scalar).
      side: which of the two equal determinants to factor (see `regularized_gram`).

    Returns:
      `[...]` in float32 or wider.
    """
    _checks.check_min_rank("Q", Q, 2, "[..., m, p]")
    _checks.check_floating("Q", Q)
    _checks.check_positive("eps", eps)
    q = jnp.asarray(Q)
    q = q.astype(_checks.compute_dtype(q))
    m, p = q.shape[-2:]
    system, _ = regularized_gram(q, rate_scale(m, p, eps), side=side)
    chol = jnp.linalg.cholesky(system)
    # 1/2 logdet = 1/2 * 2 * sum(log diag L)
    return jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def heads(X: jax.Array, U: jax.Array) -> jax.Array:
    """Per-head projections `W_k = X U_k`: `X [..., N, D]`, `U [D, H, p]` -> `[..., H, N, p]`."""
    _check_tokens_and_bases(X, U)
    return jnp.einsum("...nd,dhp->...hnp", X, U)


def compression_rate(X: jax.Array, U: jax.Array, eps) -> jax.Array:
    """CRATE's compression term R^c(X; U) = sum_k R(X U_k; eps) over all N tokens.

    `X [..., N, D]`, `U [D, H, p]` -> `[...]`. This is the CBSA objective with A_k = I.
    """
    _checks.check_positive("eps", eps)
    return jnp.sum(coding_rate(heads(X, U), eps), axis=-1)


def representatives_of(X: jax.Array, U: jax.Array, A: jax.Array) -> jax.Array:
    """`Q_k = A_k X U_k`: `X [..., N, D]`, `U [D, H, p]`, `A [..., H, m, N]` -> `[..., H, m, p]`."""
    _check_coefficients(X, U, A)
    return jnp.matmul(A, heads(X, U))


def cbsa_objective(X: jax.Array, U: jax.Array, A: jax.Array, eps) -> jax.Array:
    """L(X) = sum over batch and heads of R(A_k X U_k; eps), with A held constant.

    Args:
      X: `[..., N, D]` tokens.
      U: `[D, H, p]` subspace bases.
      A: `[..., H, m, N]` coefficients (batch dims broadcast against X's); `stop_gradient` is
        applied, so `jax.grad` in X treats them as constants, as the unrolled step does.
      eps: distortion > 0.

    Returns:
      A scalar (float32 or wider).
    """
    _checks.check_positive("eps", eps)
    A = jax.lax.stop_gradient(A)
    return jnp.sum(coding_rate(representatives_of(X, U, A), eps))


def _check_tokens_and_bases(X, U) -> None:
    _checks.check_min_rank("X", X, 2, "[..., N, D]")
    _checks.check_rank("U", U, 3, "[D, H, p]")
    _checks.check_dim("U", U, 0, jnp.shape(X)[-1], "[D, H, p]", "D = X.shape[-1]")


def _check_coefficients(X, U, A) -> None:
    _check_tokens_and_bases(X, U)
    _checks.check_min_rank("A", A, 3, "[..., H, m, N]")
    n, h = jnp.shape(X)[-2], jnp.shape(U)[1]
    _checks.check_dim("A", A, -3, h, "[..., H, m, N]", "H = U.shape[1]")
    _checks.check_dim("A", A, -1, n, "[..., H, m, N]", "N = X.shape[-2]")
    _checks.check_broadcastable(
        ("A", "X"), (jnp.shape(A)[:-3], jnp.shape(X)[:-2])
    )
