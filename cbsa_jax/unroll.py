"""Explicit, closed-form gradient steps, each beside the objective it descends.

Every operator here is a pure function of arrays. The tests check each closed form against
`jax.grad` of its objective (`tests/cbsa_jax/test_unroll.py`); `docs/derivation.md` derives them.

CBSA (objective `cbsa_jax.coding_rate.cbsa_objective`):

    grad_X L = sum_k A_k^T [alpha (I_m + alpha Q_k Q_k^T)^-1 Q_k] U_k^T,   Q_k = A_k X U_k

in three named stages: `contract` (an m x m or p x p SPD solve on the representatives only),
`broadcast` (every token receives its coefficient-weighted share), `project` (back to D channels).

Extraction (objective `extraction_objective`): one ascent step on a log-sum-exp of similarities.

ISTA (objective `ista_objective`): one proximal-gradient step of non-negative sparse coding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cbsa_jax import _checks
from cbsa_jax.coding_rate import (
    _check_coefficients,
    _check_tokens_and_bases,
    heads,
    rate_scale,
    regularized_gram,
)
from cbsa_jax.primitives import softmax_map, temperature

__all__ = [
    "contract",
    "spd_inverse",
    "broadcast",
    "project",
    "cbsa_gradient",
    "cbsa_step",
    "compression_gradient",
    "extraction_objective",
    "extraction_weights",
    "extraction_step",
    "ista_objective",
    "ista_data_term",
    "ista_step",
    "ista_association",
    "ISTA_ASSOCIATIONS",
]


# ----------------------------------------------------------------------------------------------
# CBSA: contract / broadcast / project


def contract(Q: jax.Array, eps, *, side: str = "auto") -> jax.Array:
    """Contract: `C = dR/dQ = alpha (I_m + alpha Q Q^T)^-1 Q = alpha Q (I_p + alpha Q^T Q)^-1`.

    The gradient of `coding_rate(Q, eps)` in Q. The two forms are equal (push-through identity);
    `side="rows"` solves the m x m system, `"cols"` the p x p one, `"auto"` the smaller. The system
    is SPD with eigenvalues >= 1 and is inverted in float32 or wider by `spd_inverse` (no LAPACK
    call, and a backward pass made of matrix products); the result has Q's dtype.

    Args:
      Q: `[..., m, p]` representatives.
      eps: distortion > 0.

    Returns:
      `[..., m, p]`.
    """
    _checks.check_min_rank("Q", Q, 2, "[..., m, p]")
    _checks.check_floating("Q", Q)
    _checks.check_positive("eps", eps)
    q = jnp.asarray(Q)
    work = q.astype(_checks.compute_dtype(q))
    m, p = work.shape[-2:]
    alpha = rate_scale(m, p, eps)
    system, side = regularized_gram(work, alpha, side=side)
    inverse = spd_inverse(system)
    if side == "rows":
        out = jnp.matmul(inverse, work)
    else:  # Q (I_p + alpha Q^T Q)^-1
        out = jnp.matmul(work, inverse)
    return (alpha * out).astype(q.dtype)


@jax.custom_jvp
def spd_inverse(a: jax.Array) -> jax.Array:
    """The inverse of symmetric positive definite matrices `a [..., k, k]`.

    Gauss-Jordan elimination without pivoting (stable for SPD matrices: every pivot is a ratio of
    leading principal minors, hence positive), as one `fori_loop` of k rank-1 updates. It runs
    inside the compiled program: on the CPU, LAPACK's `potrf`/`trsm` through scipy's threaded
    OpenBLAS made each small batched solve cost milliseconds to seconds (its threads compete with
    XLA's), and the Cholesky backward added eight such calls. The derivative is the closed form
    `d(A^-1) = -A^-1 dA A^-1`, so any order of differentiation is plain matrix products.
    """
    k = a.shape[-1]
    idx = jnp.arange(k)

    def sweep(j, a):
        row = jax.lax.dynamic_index_in_dim(a, j, axis=-2, keepdims=True)  # [..., 1, k]
        col = jax.lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=True)  # [..., k, 1]
        inv_pivot = 1 / jax.lax.dynamic_index_in_dim(row, j, axis=-1, keepdims=True)
        in_row, in_col = (idx == j)[:, None], (idx == j)[None, :]
        new_row = jnp.where(in_col, inv_pivot, row * inv_pivot)
        rest = jnp.where(in_col, -col * inv_pivot, a - col * new_row)
        return jnp.where(in_row, new_row, rest)

    return jax.lax.fori_loop(0, k, sweep, a)


@spd_inverse.defjvp
def _spd_inverse_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    inverse = spd_inverse(a)
    return inverse, -jnp.matmul(inverse, jnp.matmul(da, inverse))


def broadcast(A: jax.Array, C: jax.Array) -> jax.Array:
    """Broadcast: `B_k = A_k^T C_k`, each token's coefficient-weighted share.

    `A [..., H, m, N]`, `C [..., H, m, p]` -> `[..., H, N, p]`.
    """
    _checks.check_min_rank("A", A, 3, "[..., H, m, N]")
    _checks.check_min_rank("C", C, 3, "[..., H, m, p]")
    _checks.check_dim("C", C, -2, jnp.shape(A)[-2], "[..., H, m, p]", "m = A.shape[-2]")
    return jnp.einsum("...mn,...mp->...np", A, C)


def project(B: jax.Array, U: jax.Array) -> jax.Array:
    """Project: `sum_k B_k U_k^T`. `B [..., H, N, p]`, `U [D, H, p]` -> `[..., N, D]`."""
    _checks.check_min_rank("B", B, 3, "[..., H, N, p]")
    _checks.check_rank("U", U, 3, "[D, H, p]")
    _checks.check_dim("B", B, -3, jnp.shape(U)[1], "[..., H, N, p]", "H = U.shape[1]")
    _checks.check_dim("B", B, -1, jnp.shape(U)[2], "[..., H, N, p]", "p = U.shape[2]")
    return jnp.einsum("...hnp,dhp->...nd", B, U)


def cbsa_gradient(X: jax.Array, U: jax.Array, A: jax.Array, eps) -> jax.Array:
    """Closed-form `grad_X cbsa_objective(X, U, A, eps)` (A held constant).

    `X [..., N, D]`, `U [D, H, p]`, `A [..., H, m, N]` -> `[..., N, D]` (X's batch shape broadcast
    with A's). Cost O(H (N m p + m^2 p + m^3)) plus the projections: linear in N for fixed m.
    """
    _check_coefficients(X, U, A)
    _checks.check_positive("eps", eps)
    Q = jnp.matmul(A, heads(X, U))
    return project(broadcast(A, contract(Q, eps)), U)


def cbsa_step(X: jax.Array, U: jax.Array, A: jax.Array, eps, eta) -> jax.Array:
    """One exact unrolled step `X - eta * grad_X L(X)` on the CBSA objective."""
    return X - eta * cbsa_gradient(X, U, A, eps)


def compression_gradient(X: jax.Array, U: jax.Array, eps) -> jax.Array:
    """`grad_X R^c(X; U)`: the CBSA gradient with every token its own representative (A = I).

    Through the push-through identity this costs O(N p^2 + p^3) per head (a p x p solve), never an
    N x N one. `X [..., N, D]`, `U [D, H, p]` -> `[..., N, D]`.
    """
    _check_tokens_and_bases(X, U)
    return project(contract(heads(X, U), eps), U)


# ----------------------------------------------------------------------------------------------
# Extraction: representatives move toward the tokens they resemble


def _check_queries_and_tokens(Q, W) -> None:
    _checks.check_min_rank("Q", Q, 2, "[..., m, p]")
    _checks.check_min_rank("W", W, 2, "[..., N, p]")
    _checks.check_dim("W", W, -1, jnp.shape(Q)[-1], "[..., N, p]", "p = Q.shape[-1]")
    _checks.check_broadcastable(("Q", "W"), (jnp.shape(Q)[:-2], jnp.shape(W)[:-2]))


def extraction_objective(Q: jax.Array, W: jax.Array, tau=None) -> jax.Array:
    """f(Q) = tau sum_j logsumexp_i(q_j . w_i / tau), summed over all leading dims too.

    `Q [..., m, p]` representatives, `W [..., N, p]` tokens; tau defaults to sqrt(p).
    """
    _check_queries_and_tokens(Q, W)
    tau = temperature(tau, jnp.shape(Q)[-1])
    logits = jnp.einsum("...mp,...np->...mn", Q, W) / tau
    return tau * jnp.sum(jax.nn.logsumexp(logits, axis=-1))


def extraction_weights(Q: jax.Array, W: jax.Array, tau=None) -> jax.Array:
    """`S = softmax over tokens of (Q W^T / tau)`: `[..., m, N]`, rows sum to 1, float32 or wider.

    S W is the gradient of `extraction_objective` in Q.
    """
    _check_queries_and_tokens(Q, W)
    return softmax_map(jnp.asarray(Q), jnp.asarray(W), temperature(tau, jnp.shape(Q)[-1]))


def extraction_step(Q: jax.Array, W: jax.Array, beta, tau=None) -> jax.Array:
    """One ascent step `Q + beta * S W` on `extraction_objective` (S held constant).

    `beta` is a scalar or per-head `[..., H]` when Q is `[..., H, m, p]` (broadcast over m, p).
    """
    S = extraction_weights(Q, W, tau).astype(jnp.result_type(Q, W))
    beta = jnp.asarray(beta)
    if beta.ndim:
        beta = beta[..., None, None]
    return Q + beta * jnp.matmul(S, W)


# ----------------------------------------------------------------------------------------------
# ISTA: one proximal-gradient step of non-negative sparse coding (CRATE's MLP replacement)


def _check_dictionary(X, M) -> None:
    _checks.check_min_rank("X", X, 1, "[..., D]")
    _checks.check_rank("M", M, 2, "[D, D]")
    d = jnp.shape(X)[-1]
    if jnp.shape(M) != (d, d):
        raise ValueError(f"M must have shape [D, D] = ({d}, {d}), got shape {jnp.shape(M)}")


def ista_data_term(Z: jax.Array, X: jax.Array, M: jax.Array) -> jax.Array:
    """The smooth part 1/2 ||X - Z M^T||^2 (summed over everything)."""
    _check_dictionary(X, M)
    r = X - Z @ M.T
    return 0.5 * jnp.sum(r * r)


def ista_objective(Z: jax.Array, X: jax.Array, M: jax.Array, lam=0.1) -> jax.Array:
    """1/2 ||X - Z M^T||^2 + lam ||Z||_1 over Z >= 0 (+inf where Z has a negative entry)."""
    _checks.check_nonnegative("lam", lam)
    value = ista_data_term(Z, X, M) + lam * jnp.sum(jnp.abs(Z))
    return jnp.where(jnp.all(Z >= 0), value, jnp.inf)


ISTA_ASSOCIATIONS = ("auto", "operator", "tokens")


def ista_association(tokens: int, dim: int) -> str:
    """The cheaper way to compute `X M - X M^T M` for `tokens` rows of width `dim` (static ints).

    `"operator"`: `X (M - M^T M)`, `T D^2 + D^3` multiply-adds (and `2 T D^2 + 2 D^3` more in the
    backward); `"tokens"`: `X M - (X M^T) M`, `3 T D^2` (`6 T D^2` backward). The operator form
    has fewer in both passes exactly when `D < 2 T`; on a tie the token form is taken.
    """
    operator, token_products = tokens * dim * dim + dim**3, 3 * tokens * dim * dim
    return "operator" if operator < token_products else "tokens"


def ista_step(X: jax.Array, M: jax.Array, eta=0.1, lam=0.1, *,
              association: str = "auto") -> jax.Array:
    """`ReLU(X + eta (X M - X M^T M) - eta lam)`: one proximal-gradient step from Z = X.

    The gradient of `ista_data_term` at Z = X is `-(X M - X M^T M)`; the proximal map of
    `lam ||Z||_1 + [Z >= 0]` with step eta is `ReLU(. - eta lam)`. `X [..., D]`, `M [D, D]`
    (for a PyTorch reference checkpoint, M is the ISTA `weight` as stored).

    `association` (`ista_association`): `"operator"` computes `X (M - M^T M)`, one token-sized
    product instead of three (two instead of six in the backward) at the price of one D^3
    product; `"tokens"` computes `X M - (X M^T) M` as the reference does; `"auto"` (default)
    picks whichever has fewer multiply-adds for X's static shape: the operator form once the
    array holds more than D / 2 tokens (every training batch), the token form for a single
    image of a wide model (CBT-B / CBT-L inference at batch 1).
    """
    _check_dictionary(X, M)
    _checks.check_positive("eta", eta)
    _checks.check_nonnegative("lam", lam)
    if association not in ISTA_ASSOCIATIONS:
        raise ValueError(f"association must be one of {', '.join(ISTA_ASSOCIATIONS)}, "
                         f"got {association!r}")
    X = jnp.asarray(X)
    if association == "auto":
        d = X.shape[-1]
        association = ista_association(X.size // d if d else 0, d)
    if association == "operator":
        grad = X @ (M - M.T @ M)
    else:
        grad = X @ M - (X @ M.T) @ M
    return jax.nn.relu(X + eta * grad - eta * lam)
