"""The hot paths as they were before the performance work (commit 4faf9a5), kept verbatim so that
`python -m benchmarks.compare` can time the old and the new code side by side in one process.

Only what the optimisations changed is copied: the S-based contract-and-broadcast forward (for
`cbsa` and `cbsa_exact`: S materialised, `S^T c` through a transpose, gamma applied to the
output), the Cholesky `contract` (LAPACK through `jnp.linalg.cholesky` and `cho_solve`) and the
ISTA step; and the stem convolution's input derivative through space-to-depth (commit cc30b70,
before the phase form). Pooling and everything else come from the library, which did not change
them. Not part of the library's API.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from cbsa_jax import _checks
from cbsa_jax.coding_rate import rate_scale, regularized_gram


def softmax_map(q, k, tau=None):
    tau = q.shape[-1] ** 0.5 if tau is None else tau
    dtype = _checks.compute_dtype(q, k)
    logits = jnp.einsum("...ap,...bp->...ab", q, k, preferred_element_type=dtype)
    return jax.nn.softmax(logits / tau, axis=-1)


def _mix(weights, values):
    return jnp.matmul(weights.astype(values.dtype), values,
                      preferred_element_type=_checks.compute_dtype(values)).astype(values.dtype)


def contract(q, eps, *, side="auto"):
    q = jnp.asarray(q)
    work = q.astype(_checks.compute_dtype(q))
    m, p = work.shape[-2:]
    alpha = rate_scale(m, p, eps)
    system, side = regularized_gram(work, alpha, side=side)
    factor = (jnp.linalg.cholesky(system), True)
    if side == "rows":
        out = cho_solve(factor, work)
    else:
        out = jnp.swapaxes(cho_solve(factor, jnp.swapaxes(work, -1, -2)), -1, -2)
    return (alpha * out).astype(q.dtype)


def _per_head(value, h):
    value = jnp.asarray(value)
    return value if value.ndim == 0 else value[..., None, None]


def cbsa(w, step_x, step_rep, *, representatives, tau=None):
    """The reference forward as computed before: S materialised, `S^T c` through a transpose."""
    return _cb(w, representatives, exact=False, step_x=step_x, step_rep=step_rep, tau=tau)


def cbsa_exact(w, step_x, step_rep, *, representatives, eps, tau=None):
    """The exact step as computed before: Cholesky + `cho_solve` (LAPACK) in the contraction."""
    return _cb(w, representatives, exact=True, step_x=step_x, step_rep=step_rep, tau=tau,
               eps=eps)


def _cb(w, rule, *, exact, step_x, step_rep, tau=None, eps=None):
    h, n, p = w.shape[-3:]
    tau = float(np.sqrt(p)) if tau is None else tau
    beta, gamma = _per_head(step_rep, h), _per_head(step_x, h)
    q0 = rule.pool(w)
    s = softmax_map(q0, w, tau)
    q = (q0 + beta * _mix(s, w)).astype(w.dtype)
    if exact:
        c = -contract(q, eps)
        out = (rule.unpool(c, n) + beta * _mix(jnp.swapaxes(s, -1, -2), c)).astype(w.dtype)
    else:
        c = _mix(softmax_map(q, q, tau), q)
        out = _mix(jnp.swapaxes(s, -1, -2), c)
    return (gamma * out).astype(out.dtype)


def ista_step(x, m, eta=0.1, lam=0.1):
    return jax.nn.relu(x + eta * (x @ m - (x @ m.T) @ m) - eta * lam)


def conv3x3_s2_space_to_depth(x, kernel):
    """The stride-2 3 x 3 convolution as a stride-1 2 x 2 one over the space-to-depth input (the
    conv stem's input derivative before the phase form: 16 taps, 7 of them zero)."""
    n, h, w, ci = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 2 * ho + 1 - h), (1, 2 * wo + 1 - w), (0, 0)))
    s = xp.reshape(n, ho + 1, 2, wo + 1, 2, ci).transpose(0, 1, 3, 2, 4, 5)
    s = s.reshape(n, ho + 1, wo + 1, 4 * ci)
    k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0))).reshape(2, 2, 2, 2, ci, -1)
    k = k.transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * ci, -1)
    return jax.lax.conv_general_dilated(s, k, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
