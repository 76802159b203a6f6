"""One contract-and-broadcast function, and the attentions it unifies.

All functions take per-head projected inputs `w [..., H, N, p]` (the layer input times the head
bases, `cbsa_jax.coding_rate.heads`) and return `[..., H, N, p]`; the caller owns the projections.

`contract_and_broadcast` has four independent choices (see `docs/derivation.md`):

  representatives  how Q0 = P W starts: `AllTokens()` (P = I), `GridPooling`, `SegmentPooling`
                   (`cbsa_jax.representatives`), or an array of supplied (e.g. learned) queries;
  extraction       NONE: Q = Q0;  STEP: Q = Q0 + beta S W (one ascent step on a log-sum-exp);
                   AGGREGATE: Q = beta S W (agent attention's aggregation);
                   S = softmax over tokens of Q0 W^T / tau;
  contraction      SOFTMAX: softmax(Q Q^T / tau) Q (the learned surrogate);
                   EXACT: -alpha (I + alpha Q Q^T)^-1 Q (descent direction of the coding rate);
                   FIRST_ORDER: -(alpha Q - alpha^2 Q Q^T Q) (first-order Neumann series);
                   IDENTITY: Q;
  broadcast        ATTENTION: S^T (the reference's weights);
                   EXACT: A^T = (P + beta S)^T, the true coefficients (P for NONE, beta S for
                   AGGREGATE);  TOKEN_SOFTMAX: T = softmax over representatives of W Q0^T / tau.

The output is `step_x * broadcast(contraction(Q))` per head. Named instantiations follow: `cbsa`
(the reference forward), `cbsa_exact` (the true gradient step with a learned step size), `mssa`
(CRATE), `tssa` (ToST), `softmax` (standard attention, separate q, k, v), `linear`, `channel`,
`agent`. Softmaxes and solves run in float32 or wider whatever the input dtype.

The causal (prefix) forms of these operators are in `cbsa_jax.attention.causal`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cbsa_jax import _checks
from cbsa_jax.coding_rate import rate_scale
from cbsa_jax.primitives import softmax_map, temperature, tssa_membership
from cbsa_jax.representatives import AllTokens, GridPooling, Representatives, SegmentPooling
from cbsa_jax.unroll import contract

__all__ = [
    "Extraction",
    "Contraction",
    "Broadcast",
    "CBResult",
    "contract_and_broadcast",
    "softmax_contraction",
    "exact_contraction",
    "first_order_contraction",
    "cbsa",
    "cbsa_exact",
    "mssa",
    "tssa",
    "softmax",
    "linear",
    "channel",
    "agent",
]


class Extraction(enum.Enum):
    NONE = "none"
    STEP = "step"
    AGGREGATE = "aggregate"


class Contraction(enum.Enum):
    SOFTMAX = "softmax"
    EXACT = "exact"
    FIRST_ORDER = "first_order"
    IDENTITY = "identity"


class Broadcast(enum.Enum):
    ATTENTION = "attention"
    EXACT = "exact"
    TOKEN_SOFTMAX = "token_softmax"


class CBResult(NamedTuple):
    """What `contract_and_broadcast` computed (unused fields cost nothing under jit)."""

    out: jax.Array  # [..., H, N, p]
    initial: jax.Array  # Q0 [..., H, m, p]
    representatives: jax.Array  # Q after extraction [..., H, m, p]
    contracted: jax.Array  # contraction(Q) [..., H, m, p]
    weights: jax.Array | None  # S [..., H, m, N] token -> representative, rows sum to 1
    token_weights: jax.Array | None  # T [..., H, N, m] for TOKEN_SOFTMAX


# ----------------------------------------------------------------------------------------------
# helpers


def _heads_input(name: str, w) -> jax.Array:
    """Validate a `[..., H, N, p]` floating input and return it as a jax array."""
    _checks.check_min_rank(name, w, 3, "[..., H, N, p]")
    _checks.check_floating(name, w)
    return jnp.asarray(w)


def _per_head(name: str, value, h: int):
    """A scalar or `[..., H]` per-head value, shaped to broadcast against `[..., H, *, *]`."""
    if value is None:
        return None
    value = jnp.asarray(value)
    if value.ndim == 0:
        return value
    if value.shape[-1] != h:
        raise ValueError(f"{name} must be a scalar or have shape [..., H] with H = {h}, "
                         f"got shape {value.shape}")
    return value[..., None, None]


def _mix(weights, values) -> jax.Array:
    """`weights @ values` with the weights cast to the values' dtype (f32 accumulation)."""
    return jnp.matmul(weights.astype(values.dtype), values,
                      preferred_element_type=_checks.compute_dtype(values)).astype(values.dtype)


def _scale(step, out):
    return out if step is None else (step * out).astype(out.dtype)


def _exp_weights(w, q0, tau):
    """The token -> representative weights S = softmax over tokens of `q0 w^T / tau`, unnormalised.

    Returns `E [..., N, m]` (token-major, float32 or wider) with `S^T = E diag(inv)`, and
    `inv [..., m, 1]`, the reciprocal column sums. The normalisation is applied to the small
    `[m, p]` products instead of the `[N, m]` weights: S itself is never materialised (one pass
    less over the largest array, forward and backward), and the token-major layout makes the
    broadcast `S^T c = E (inv * c)` a plain matrix product (no transposed copy of S).
    """
    dtype = _checks.compute_dtype(w, q0)
    logits = jnp.einsum("...np,...mp->...nm", w, q0, preferred_element_type=dtype) / tau
    e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-2, keepdims=True)))
    return e, 1 / jnp.sum(e, axis=-2)[..., :, None]


def _gather(e, inv, values):
    """`S values = inv * (E^T values)`: `[..., m, c]` in float32 or wider."""
    return inv * jnp.einsum("...nm,...nc->...mc", e.astype(values.dtype), values,
                            preferred_element_type=_checks.compute_dtype(values))


def _spread(e, coefficients, dtype):
    """`E coefficients`: `[..., N, c]` (coefficients `[..., m, c]` already carry `inv`)."""
    coefficients = coefficients.astype(dtype)
    return jnp.einsum("...nm,...mc->...nc", e.astype(dtype), coefficients,
                      preferred_element_type=_checks.compute_dtype(coefficients))


# ----------------------------------------------------------------------------------------------
# contractions: map representatives [..., m, p] to their update direction [..., m, p]


def softmax_contraction(q: jax.Array, tau=None) -> jax.Array:
    """`softmax(Q Q^T / tau) Q`, the learned surrogate of the contraction (tau = sqrt(p))."""
    tau = temperature(tau, q.shape[-1])
    dtype = _checks.compute_dtype(q)
    logits = jnp.einsum("...ip,...jp->...ij", q, q, preferred_element_type=dtype) / tau
    e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    # the row normalisation is applied to the [m, p] product, not to the [m, m] weights
    mixed = jnp.matmul(e.astype(q.dtype), q, preferred_element_type=dtype)
    return (mixed / jnp.sum(e, axis=-1, keepdims=True)).astype(q.dtype)


def exact_contraction(q: jax.Array, eps) -> jax.Array:
    """`-alpha (I + alpha Q Q^T)^-1 Q = -dR(Q; eps)/dQ`, the exact descent direction."""
    return -contract(q, eps)


def first_order_contraction(q: jax.Array, eps) -> jax.Array:
    """`-(alpha Q - alpha^2 Q Q^T Q)`: the first-order Neumann expansion of `exact_contraction`.

    Associates `Q (Q^T Q)` when m > p (cost O(m p^2): linear attention when m = N) and
    `(Q Q^T) Q` otherwise (cost O(m^2 p)).
    """
    _checks.check_positive("eps", eps)
    m, p = q.shape[-2:]
    alpha = rate_scale(m, p, eps)
    dtype = _checks.compute_dtype(q)
    if m > p:
        cubic = jnp.matmul(q, jnp.einsum("...mi,...mj->...ij", q, q, preferred_element_type=dtype)
                           .astype(q.dtype), preferred_element_type=dtype)
    else:
        cubic = jnp.matmul(jnp.einsum("...ip,...jp->...ij", q, q, preferred_element_type=dtype)
                           .astype(q.dtype), q, preferred_element_type=dtype)
    return (alpha**2 * cubic - alpha * q.astype(dtype)).astype(q.dtype)


# ----------------------------------------------------------------------------------------------
# the general function


def contract_and_broadcast(
    w: jax.Array,
    *,
    representatives: Representatives | jax.Array = AllTokens(),  # noqa: B008 (frozen)
    extraction: Extraction | str = Extraction.STEP,
    contraction: Contraction | str = Contraction.SOFTMAX,
    broadcast: Broadcast | str = Broadcast.ATTENTION,
    step_rep=None,
    step_x=None,
    eps=None,
    tau=None,
) -> CBResult:
    """Contract a few representatives, broadcast the result to all tokens.

    Args:
      w: `[..., H, N, p]` per-head tokens.
      representatives: a pooling rule (`AllTokens`, `GridPooling`, `SegmentPooling`), or supplied
        queries `[..., H, m, p]` (broadcast against w's batch dims).
      extraction, contraction, broadcast: the choices in the module docstring (enums or their
        string values).
      step_rep: beta, scalar or `[..., H]`; default 1.
      step_x: gamma, scalar or `[..., H]`, scales the output; default 1.
      eps: distortion > 0, needed by the EXACT and FIRST_ORDER contractions.
      tau: softmax temperature, default sqrt(p).

    Returns:
      A `CBResult` whose `out` is `[..., H, N, p]`.
    """
    w = _heads_input("w", w)
    extraction, contraction = Extraction(extraction), Contraction(contraction)
    broadcast = Broadcast(broadcast)
    h, n, p = w.shape[-3:]
    tau = temperature(tau, p)
    if contraction in (Contraction.EXACT, Contraction.FIRST_ORDER):
        if eps is None:
            raise ValueError(f"eps is required for contraction={contraction.value!r}")
        _checks.check_positive("eps", eps)
    beta = _per_head("step_rep", 1.0 if step_rep is None else step_rep, h)
    gamma = _per_head("step_x", step_x, h)

    supplied = not isinstance(representatives, AllTokens | GridPooling | SegmentPooling)
    if supplied:
        q0 = jnp.asarray(representatives, w.dtype)
        _checks.check_min_rank("representatives", q0, 3, "[..., H, m, p]")
        _checks.check_dim("representatives", q0, -3, h, "[..., H, m, p]", "H = w.shape[-3]")
        _checks.check_dim("representatives", q0, -1, p, "[..., H, m, p]", "p = w.shape[-1]")
        _checks.check_broadcastable(("representatives", "w"), (q0.shape[:-3], w.shape[:-3]))
        if broadcast is Broadcast.EXACT and extraction is Extraction.NONE:
            raise ValueError("broadcast='exact' with supplied representatives needs an extraction: "
                             "the queries do not depend on the tokens, so A = 0")
    else:
        representatives.num_representatives(n)  # validates N against the rule
        q0 = representatives.pool(w)

    needs_s = extraction is not Extraction.NONE or broadcast is Broadcast.ATTENTION
    s = None
    if needs_s:
        e, inv = _exp_weights(w, q0, tau)
        s = jnp.swapaxes(e * jnp.swapaxes(inv, -1, -2), -1, -2)  # S, only if the caller reads it
    if extraction is Extraction.NONE:
        q = q0
    elif extraction is Extraction.STEP:
        q = (q0 + beta * _gather(e, inv, w)).astype(w.dtype)
    else:
        q = (beta * _gather(e, inv, w)).astype(w.dtype)

    if contraction is Contraction.SOFTMAX:
        c = softmax_contraction(q, tau)
    elif contraction is Contraction.EXACT:
        c = exact_contraction(q, eps)
    elif contraction is Contraction.FIRST_ORDER:
        c = first_order_contraction(q, eps)
    else:
        c = q

    # the step size gamma is folded into the [m, p] coefficients, not applied to the [N, p] output
    t = None
    cf = c.astype(_checks.compute_dtype(c))
    scaled = cf if gamma is None else gamma * cf
    if broadcast is Broadcast.ATTENTION:
        out = _spread(e, inv * scaled, w.dtype)
    elif broadcast is Broadcast.TOKEN_SOFTMAX:
        t = softmax_map(w, q0, tau)
        out = _scale(gamma, _mix(t, c))
    else:  # EXACT: A^T c with A = P + beta S, P, or beta S
        parts = []
        if extraction is not Extraction.AGGREGATE and not supplied:
            parts.append(representatives.unpool(scaled.astype(w.dtype), n))
        if extraction is not Extraction.NONE:
            parts.append(_spread(e, (beta * inv) * scaled, w.dtype))
        out = sum(parts[1:], parts[0])
    return CBResult(out.astype(w.dtype), q0, q, c, s, t)


# ----------------------------------------------------------------------------------------------
# named instantiations


def cbsa(w, step_x, step_rep, *, representatives: Representatives, tau=None) -> jax.Array:
    """The reference CBSA forward: `step_x * S^T softmax(Q Q^T/tau) Q`, `Q = Q0 + step_rep S W`.

    `w [..., H, N, p]`, `step_x`, `step_rep` scalar or `[H]` -> `[..., H, N, p]`. Linear in N.
    """
    return contract_and_broadcast(
        w, representatives=representatives, extraction=Extraction.STEP,
        contraction=Contraction.SOFTMAX, broadcast=Broadcast.ATTENTION,
        step_rep=step_rep, step_x=step_x, tau=tau,
    ).out


def cbsa_exact(w, step_x, step_rep, *, representatives: Representatives, eps, tau=None):
    """The true CBSA gradient step per head: `-step_x A^T alpha (I + alpha Q Q^T)^-1 Q`.

    A = P + step_rep S (S held constant in the objective). Projected back with the head bases
    (`cbsa_jax.unroll.project`) this is exactly `-step_x * grad_X cbsa_objective(X, U, A, eps)`.
    """
    return contract_and_broadcast(
        w, representatives=representatives, extraction=Extraction.STEP,
        contraction=Contraction.EXACT, broadcast=Broadcast.EXACT,
        step_rep=step_rep, step_x=step_x, eps=eps, tau=tau,
    ).out


def _to_bnhp(x):
    """`[..., H, N, p]` -> (`[B, N, H, p]`, leading shape) for `jax.nn.dot_product_attention`."""
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    return jnp.swapaxes(x, 1, 2), lead


def softmax(q, k, v, *, implementation: str | None = None) -> jax.Array:
    """Standard multi-head softmax attention, `softmax(q k^T / sqrt(p)) v` per head.

    `q [..., H, N, p]`, `k, v [..., H, M, p]` -> `[..., H, N, p]`, through
    `jax.nn.dot_product_attention` (`implementation`: None, "xla" or "cudnn"), whose softmax is
    float32; float64 inputs take an exact float64 path instead.
    """
    q, k, v = (_heads_input(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    if k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q [..., H, N, p], k and v [..., H, M, p] must agree, got q {q.shape}, "
                         f"k {k.shape}, v {v.shape}")
    if _checks.compute_dtype(q, k, v) == jnp.float64:
        # dot_product_attention always takes its softmax in float32; keep float64 exact
        return _mix(softmax_map(q, k, float(np.sqrt(q.shape[-1]))), v)
    (qb, lead), (kb, _), (vb, _) = _to_bnhp(q), _to_bnhp(k), _to_bnhp(v)
    out = jax.nn.dot_product_attention(qb, kb, vb, implementation=implementation)
    return jnp.swapaxes(out, 1, 2).reshape(lead + q.shape[-3:])


def mssa(w, *, implementation: str | None = None) -> jax.Array:
    """CRATE's multi-head subspace self-attention `softmax(W W^T / sqrt(p)) W` (q = k = v = W)."""
    w = _heads_input("w", w)
    return softmax(w, w, w, implementation=implementation)


def tssa(w, temp) -> jax.Array:
    """ToST's token statistics self-attention, as the reference computes it.

    `Pi = softmax over heads of (temp_k * ||normalize_tokens(w)_i||^2)` assigns tokens to heads;
    `out = -(Pi w) / (1 + Pi-weighted mean of w^2)` per channel. `temp` is `[H]`. Linear in N.
    """
    w = _heads_input("w", w)
    h = w.shape[-3]
    temp = _per_head("temp", temp, h)
    wf = w.astype(_checks.compute_dtype(w))
    pi = tssa_membership(wf, temp[..., 0, 0])  # [..., H, N], softmax over heads
    weights = pi / (jnp.sum(pi, axis=-1, keepdims=True) + 1e-8)
    dots = jnp.einsum("...hn,...hnp->...hp", weights, wf * wf)[..., None, :]
    return (-(wf * pi[..., None]) / (1.0 + dots)).astype(w.dtype)


def linear(w, step_x=None, *, eps) -> jax.Array:
    """First-order contraction with every token a representative: `-step_x (alpha W - alpha^2 W
    (W^T W))`, alpha = p / (N eps^2). The cubic term is linear attention (identity feature map,
    tied q = k = v) computed in O(N p^2)."""
    return contract_and_broadcast(
        w, representatives=AllTokens(), extraction=Extraction.NONE,
        contraction=Contraction.FIRST_ORDER, broadcast=Broadcast.EXACT, step_x=step_x, eps=eps,
    ).out


def channel(w, step_x=None, *, eps=None, temperature=None) -> jax.Array:
    """Attention across channels through a p x p operator, O(N p^2 + p^3) per head.

    With `eps`: the exact all-token compression step `-alpha W (I_p + alpha W^T W)^-1`, equal by
    push-through to the m = N token-side solve. Without: its softmax surrogate, cross-covariance
    attention `W softmax(temperature * Wn^T Wn)^T` with Wn the tokens-normalised columns of W
    (`temperature`: scalar or `[H]`, default 1).
    """
    w = _heads_input("w", w)
    gamma = _per_head("step_x", step_x, w.shape[-3])
    if eps is not None:
        return _scale(gamma, -contract(w, eps, side="cols"))
    temp = _per_head("temperature", 1.0 if temperature is None else temperature, w.shape[-3])
    dtype = _checks.compute_dtype(w)
    wf = w.astype(dtype)
    wn = wf / jnp.maximum(jnp.linalg.norm(wf, axis=-2, keepdims=True), 1e-12)
    attn = jax.nn.softmax(temp * jnp.einsum("...ni,...nj->...ij", wn, wn), axis=-1)
    out = jnp.einsum("...ni,...ji->...nj", w, attn.astype(w.dtype), preferred_element_type=dtype)
    return _scale(gamma, out.astype(w.dtype))


def agent(q, k=None, v=None, *, representatives: Representatives, step_x=None, tau=None):
    """Agent attention: agents `A = P q` aggregate `S v` (S = softmax(A k^T)), then broadcast
    back with the token-side softmax `T = softmax(q A^T)`: `out = T (S v)`.

    With q = k = v = W this is `contract_and_broadcast(extraction=AGGREGATE, contraction=IDENTITY,
    broadcast=TOKEN_SOFTMAX)`. `q, k, v [..., H, N, p]` -> `[..., H, N, p]`. Linear in N.
    """
    k = q if k is None else k
    v = q if v is None else v
    q, k, v = (_heads_input(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape [..., H, N, p], got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    representatives.num_representatives(q.shape[-2])
    tau = temperature(tau, q.shape[-1])
    agents = representatives.pool(q)
    e, inv = _exp_weights(k, agents, tau)
    aggregated = _gather(e, inv, v).astype(v.dtype)
    out = _mix(softmax_map(q, agents, tau), aggregated)
    return _scale(_per_head("step_x", step_x, q.shape[-3]), out)
