"""Causal attention: CBSA on every prefix of a sequence, and its causal baselines.

Token t reads only w_1..w_t (docs/derivation.md section 10):

    S^(t)[j, i] = exp(q0_j . w_i / tau) / sum_{i' <= t} exp(q0_j . w_i' / tau)      (i <= t)
    Q^(t) = Q0 + beta S^(t) W_{<=t}
    out_t = gamma * sum_j S^(t)[j, t] contraction(Q^(t))_j     (times beta for broadcast="exact")

The prefix sums are carried as a `CausalCBSAState` (running max, normaliser, weighted sum per
representative); a sequence is processed in chunks of c tokens by a `lax.scan`, each chunk
forming every token's prefix sums from the carried state and an associative scan inside the
chunk, then contracting the c prefix representative sets in one batch. Cost
O(N (m p log c + m^2 p)) and memory O(c m p) per chunk: linear in N. Causal softmax and causal
linear attention have the same `(out, state)` / step interface, so a decoder can run any of the
three. The non-causal operator these follow is `cbsa_jax.attention.noncausal`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cbsa_jax import _checks
from cbsa_jax.attention.noncausal import (
    Broadcast,
    Contraction,
    _heads_input,
    _mix,
    _per_head,
    _to_bnhp,
    exact_contraction,
    softmax_contraction,
)
from cbsa_jax.primitives import temperature

__all__ = [
    "CausalCBSAState",
    "CausalLinearState",
    "CausalSoftmaxState",
    "check_chunk",
    "init_causal_cbsa_state",
    "init_causal_linear_state",
    "init_causal_softmax_state",
    "causal_cbsa",
    "causal_cbsa_step",
    "causal_linear",
    "causal_linear_step",
    "causal_softmax",
    "causal_softmax_step",
]


class CausalCBSAState(NamedTuple):
    """The running prefix statistics of causal CBSA, per head and representative (float32 or
    wider; nothing of the sequence length).

    max:  `[..., H, m]` running maximum of the logits `q0_j . w_i / tau` (a stabiliser only).
    norm: `[..., H, m]` `sum_{i<=t} exp(l_ji - max_j)`.
    sums: `[..., H, m, p]` `sum_{i<=t} exp(l_ji - max_j) w_i`.
    """

    max: jax.Array
    norm: jax.Array
    sums: jax.Array


def init_causal_cbsa_state(batch_shape, heads: int, m: int, p: int,
                           dtype=jnp.float32) -> CausalCBSAState:
    """The empty prefix: max = -inf, zero sums. `batch_shape` is a tuple (e.g. `(B,)` or `()`)."""
    batch_shape = tuple(batch_shape)
    for name, v in (("heads", heads), ("m", m), ("p", p)):
        if not (isinstance(v, int | np.integer) and v >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    dtype = _checks.compute_dtype(jnp.zeros((), dtype))
    lead = batch_shape + (heads, m)
    return CausalCBSAState(jnp.full(lead, -jnp.inf, dtype), jnp.zeros(lead, dtype),
                           jnp.zeros(lead + (p,), dtype))


def check_chunk(chunk) -> int:
    """`chunk` as an int, or ValueError naming it unless it is an integer >= 1."""
    if isinstance(chunk, bool) or not (isinstance(chunk, int | np.integer) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return int(chunk)


def _check_state(name: str, state, expected: tuple[tuple[int, ...], ...], layout: str) -> None:
    shapes = tuple(tuple(jnp.shape(s)) for s in state)
    if shapes != expected:
        raise ValueError(f"{name} must have shapes {layout} = {expected}, got {shapes}")


def _chunks(x, chunk: int, fn, carry, *, remat: bool):
    """Run `fn(carry, x_chunk) -> (carry, y_chunk)` over `x [..., N, k]` in chunks of `chunk`
    tokens along axis -2 (a `lax.scan` over the full chunks, one call for the remainder) and
    return (carry, `y [..., N, k']`)."""
    n = x.shape[-2]
    full, rest = divmod(n, chunk)
    outs = []
    if full:
        body = jax.checkpoint(fn) if remat else fn
        xs = x[..., : full * chunk, :]
        xs = jnp.moveaxis(xs.reshape(xs.shape[:-2] + (full, chunk, xs.shape[-1])), -3, 0)
        if full == 1:
            carry, ys = body(carry, xs[0])
            ys = ys[None]
        else:
            carry, ys = jax.lax.scan(body, carry, xs)
        ys = jnp.moveaxis(ys, 0, -3)
        outs.append(ys.reshape(ys.shape[:-3] + (full * chunk, ys.shape[-1])))
    if rest:
        carry, y = fn(carry, x[..., full * chunk:, :])
        outs.append(y)
    return carry, outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-2)


def _combine_statistics(x, y):
    """Merge the prefix statistics (shift mu, normaliser z, weighted sum a) of two consecutive
    stretches of tokens: an associative operation, exact for any shifts (mu carries no
    gradient)."""
    mu = jnp.maximum(x[0], y[0])
    fx, fy = jnp.exp(x[0] - mu), jnp.exp(y[0] - mu)
    return mu, x[1] * fx + y[1] * fy, x[2] * fx + y[2] * fy


def _prefix_statistics(state: CausalCBSAState, logits, wf):
    """Every token's prefix statistics after the carried `state`: (running max `[..., H, c, m]`,
    normaliser `[..., H, c, m]`, weighted sum `[..., H, c, m, p]`), by an associative scan over
    the chunk (O(c log c m p) work, exponents <= 0, exact)."""
    mu = jax.lax.stop_gradient(logits)[..., None]  # [..., H, c, m, 1]: one token's own max
    one = jnp.exp(logits - jax.lax.stop_gradient(logits))[..., None]  # 1, with the gradient of l
    leaves = (mu, one, one * wf[..., :, None, :])
    mu, z, a = jax.lax.associative_scan(_combine_statistics, leaves, axis=mu.ndim - 3)
    carried = (state.max[..., None, :, None], state.norm[..., None, :, None],
               state.sums[..., None, :, :])
    mu, z, a = _combine_statistics(carried, (mu, z, a))
    return mu[..., 0], z[..., 0], a


def _causal_cbsa_chunk(state: CausalCBSAState, w, q0, beta, gamma, *, tau, contraction, eps):
    """One chunk of causal CBSA: `w [..., H, c, p]` after the prefix summarised by `state` ->
    (state after the chunk, `[..., H, c, p]` in the compute dtype)."""
    dtype = state.sums.dtype
    wf = w.astype(dtype)
    logits = jnp.einsum("...hcp,hmp->...hcm", wf, q0.astype(dtype)) / tau  # [..., H, c, m]
    run_max, norm, sums = _prefix_statistics(state, logits, wf)
    reps = q0.astype(dtype)[:, None] + beta[..., None] * (sums / norm[..., None])
    if contraction is Contraction.SOFTMAX:
        con = softmax_contraction(reps, tau)
    elif contraction is Contraction.EXACT:
        con = exact_contraction(reps, eps)
    else:
        raise ValueError(f"contraction must be 'softmax' or 'exact', got {contraction.value!r}")
    # token t's own column S^(t)[:, t]: its weight over its prefix normaliser
    own = jnp.exp(logits - run_max) / norm  # [..., H, t, m]
    out = gamma * jnp.sum(own[..., None] * con, axis=-2)
    new_state = CausalCBSAState(run_max[..., -1, :], norm[..., -1, :], sums[..., -1, :, :])
    return new_state, out


def _causal_cbsa_setup(w, queries, step_x, step_rep, contraction, broadcast, eps, tau, state):
    """Validate the arguments of `causal_cbsa` (before tracing); return the normalised ones."""
    w = _heads_input("w", w)
    h, _, p = w.shape[-3:]
    queries = jnp.asarray(queries)
    _checks.check_rank("queries", queries, 3, "[H, m, p]")
    _checks.check_floating("queries", queries)
    _checks.check_dim("queries", queries, 0, h, "[H, m, p]", "H = w.shape[-3]")
    _checks.check_dim("queries", queries, 2, p, "[H, m, p]", "p = w.shape[-1]")
    m = queries.shape[1]
    contraction, broadcast = Contraction(contraction), Broadcast(broadcast)
    if contraction not in (Contraction.SOFTMAX, Contraction.EXACT):
        raise ValueError(f"contraction must be 'softmax' or 'exact', got {contraction.value!r}")
    if broadcast not in (Broadcast.ATTENTION, Broadcast.EXACT):
        raise ValueError(f"broadcast must be 'attention' (S^T) or 'exact' (beta S^T), got "
                         f"{broadcast.value!r}")
    if contraction is Contraction.EXACT:
        if eps is None:
            raise ValueError("eps is required for contraction='exact'")
        _checks.check_positive("eps", eps)
    tau = temperature(tau, p)
    dtype = _checks.compute_dtype(w, queries)
    for name, v in (("step_x", step_x), ("step_rep", step_rep)):
        if v is not None and jnp.ndim(v) not in (0, 1):
            raise ValueError(f"{name} must be a scalar or have shape [H] with H = {h}, "
                             f"got shape {jnp.shape(v)}")
    beta = _per_head("step_rep", jnp.asarray(1.0 if step_rep is None else step_rep, dtype), h)
    gamma = _per_head("step_x", jnp.asarray(1.0 if step_x is None else step_x, dtype), h)
    if broadcast is Broadcast.EXACT:
        gamma = gamma * beta
    batch = w.shape[:-3]
    if state is None:
        state = init_causal_cbsa_state(batch, h, m, p, dtype)
    else:
        state = CausalCBSAState(*state)
        _check_state("state", state, (batch + (h, m), batch + (h, m), batch + (h, m, p)),
                     "(max [..., H, m], norm [..., H, m], sums [..., H, m, p])")
        state = CausalCBSAState(*(s.astype(dtype) for s in state))
    return w, queries, beta, gamma, contraction, tau, state


def causal_cbsa(w, queries, *, step_x=None, step_rep=None, chunk: int = 64,
                contraction: Contraction | str = Contraction.SOFTMAX,
                broadcast: Broadcast | str = Broadcast.ATTENTION, eps=None, tau=None,
                state: CausalCBSAState | None = None,
                remat: bool = True) -> tuple[jax.Array, CausalCBSAState]:
    """Causal CBSA: at every token t, the CBSA step on the prefix w_1..w_t, read at token t.

    Equal, token by token, to `contract_and_broadcast(w[..., :t+1, :], representatives=queries,
    extraction="step", contraction=..., broadcast=..., ...).out[..., t, :]`, in O(N) time and
    memory (chunks of `chunk` tokens under a `lax.scan`; `chunk` may exceed N).

    Args:
      w: `[..., H, N, p]` per-head tokens.
      queries: `[H, m, p]` learned representative queries Q0.
      step_x: gamma, scalar or `[H]` (default 1). step_rep: beta, scalar or `[H]` (default 1).
      chunk: tokens per scan step, >= 1 (any value gives the same result up to rounding).
      contraction: "softmax" (`softmax(QQ^T/tau) Q`) or "exact" (`-alpha (I + alpha QQ^T)^-1 Q`).
      broadcast: "attention" (`S^(t)[:, t]`) or "exact" (`beta S^(t)[:, t]`, the true
        coefficient: with contraction="exact" and step_x = eta the output is
        `-eta grad_{w_t} R(Q^(t); eps)`, S held constant).
      eps: the distortion of the exact contraction. tau: temperature, default sqrt(p).
      state: the prefix before w (`CausalCBSAState`); None: the empty prefix.
      remat: recompute each chunk in the backward pass instead of storing its internals.

    Returns:
      (`[..., H, N, p]` in w's dtype, the `CausalCBSAState` after token N).
    """
    chunk = check_chunk(chunk)
    w, queries, beta, gamma, contraction, tau, state = _causal_cbsa_setup(
        w, queries, step_x, step_rep, contraction, broadcast, eps, tau, state)
    if w.shape[-2] == 0:
        return w, state
    return _causal_cbsa_scan(w, queries, beta, gamma, tau, eps, state, chunk=chunk,
                             contraction=contraction, remat=remat)


@functools.partial(jax.jit, static_argnames=("chunk", "contraction", "remat"))
def _causal_cbsa_scan(w, queries, beta, gamma, tau, eps, state, *, chunk, contraction, remat):
    """The compiled body of `causal_cbsa` (arguments already validated)."""

    def fn(carry, wc):
        return _causal_cbsa_chunk(carry, wc, queries, beta, gamma, tau=tau,
                                  contraction=contraction, eps=eps)

    state, out = _chunks(w, chunk, fn, state, remat=remat)
    return out.astype(w.dtype), state


def causal_cbsa_step(w_t, queries, state: CausalCBSAState | None, *, step_x=None, step_rep=None,
                     contraction: Contraction | str = Contraction.SOFTMAX,
                     broadcast: Broadcast | str = Broadcast.ATTENTION, eps=None,
                     tau=None) -> tuple[jax.Array, CausalCBSAState]:
    """One decoding step of `causal_cbsa`: `w_t [..., H, p]` -> (`[..., H, p]`, new state), in
    O(m p + m^2 p) per head whatever the prefix length."""
    _checks.check_min_rank("w_t", w_t, 2, "[..., H, p]")
    out, state = causal_cbsa(jnp.asarray(w_t)[..., None, :], queries, step_x=step_x,
                             step_rep=step_rep, chunk=1, contraction=contraction,
                             broadcast=broadcast, eps=eps, tau=tau, state=state, remat=False)
    return out[..., 0, :], state


class CausalLinearState(NamedTuple):
    """Running sums of causal linear attention (float32 or wider): `kv [..., H, p, p]` =
    `sum_{i<=t} phi(k_i) v_i^T`, `k_sum [..., H, p]` = `sum_{i<=t} phi(k_i)`."""

    kv: jax.Array
    k_sum: jax.Array


def init_causal_linear_state(batch_shape, heads: int, p: int,
                             dtype=jnp.float32) -> CausalLinearState:
    """The empty prefix of `causal_linear`: zero sums."""
    dtype = _checks.compute_dtype(jnp.zeros((), dtype))
    lead = tuple(batch_shape) + (heads,)
    return CausalLinearState(jnp.zeros(lead + (p, p), dtype), jnp.zeros(lead + (p,), dtype))


def _feature_map(x):
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020)."""
    return jax.nn.elu(x) + 1


def _causal_linear_chunk(state: CausalLinearState, qkv):
    dtype = state.kv.dtype
    q, k, v = jnp.split(qkv.astype(dtype), 3, axis=-1)
    fq, fk = _feature_map(q), _feature_map(k)
    c = q.shape[-2]
    inner = jnp.einsum("...tp,...ip->...ti", fq, fk) * jnp.tril(jnp.ones((c, c), dtype))
    num = inner @ v + fq @ state.kv
    den = jnp.sum(inner, axis=-1) + jnp.einsum("...tp,...p->...t", fq, state.k_sum)
    kv = state.kv + jnp.einsum("...ip,...iq->...pq", fk, v)
    return CausalLinearState(kv, state.k_sum + jnp.sum(fk, axis=-2)), num / den[..., None]


def _qkv_input(q, k, v, rank_from_end: int = 3):
    q, k, v = (_heads_input(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape [..., H, N, p], got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    return q, k, v


def causal_linear(q, k, v, *, chunk: int = 64, state: CausalLinearState | None = None,
                  remat: bool = True) -> tuple[jax.Array, CausalLinearState]:
    """Causal linear attention `out_t = phi(q_t)^T S_t / phi(q_t)^T z_t`, `S_t = sum_{i<=t}
    phi(k_i) v_i^T`, `z_t = sum_{i<=t} phi(k_i)`, phi = elu + 1: the running-sum baseline.

    `q, k, v [..., H, N, p]` -> (`[..., H, N, p]`, `CausalLinearState` after token N). Chunks of
    `chunk` tokens under a `lax.scan`: O(N (c p + p^2)) time, O(p^2) state.
    """
    chunk = check_chunk(chunk)
    q, k, v = _qkv_input(q, k, v)
    h, _, p = q.shape[-3:]
    batch = q.shape[:-3]
    dtype = _checks.compute_dtype(q, k, v)
    if state is None:
        state = init_causal_linear_state(batch, h, p, dtype)
    else:
        state = CausalLinearState(*state)
        _check_state("state", state, (batch + (h, p, p), batch + (h, p)),
                     "(kv [..., H, p, p], k_sum [..., H, p])")
        state = CausalLinearState(*(s.astype(dtype) for s in state))
    if q.shape[-2] == 0:
        return q, state
    return _causal_linear_scan(q, k, v, state, chunk=chunk, remat=remat)


@functools.partial(jax.jit, static_argnames=("chunk", "remat"))
def _causal_linear_scan(q, k, v, state, *, chunk, remat):
    state, out = _chunks(jnp.concatenate([q, k, v], axis=-1), chunk, _causal_linear_chunk, state,
                         remat=remat)
    return out.astype(q.dtype), state


def causal_linear_step(q_t, k_t, v_t, state: CausalLinearState | None):
    """One decoding step of `causal_linear`: `[..., H, p]` each -> (`[..., H, p]`, new state)."""
    out, state = causal_linear(*(jnp.asarray(x)[..., None, :] for x in (q_t, k_t, v_t)), chunk=1,
                               state=state, remat=False)
    return out[..., 0, :], state


class CausalSoftmaxState(NamedTuple):
    """The key / value cache of causal softmax attention: `keys, values [..., H, L, p]` (L the
    capacity, fixed when the state is made) and `length`, the number of tokens written (int32)."""

    keys: jax.Array
    values: jax.Array
    length: jax.Array


def init_causal_softmax_state(batch_shape, heads: int, p: int, max_len: int,
                              dtype=jnp.float32) -> CausalSoftmaxState:
    """An empty cache of capacity `max_len` tokens (softmax attention needs all past keys: its
    state grows with the sequence, unlike the O(1) states of causal CBSA and linear attention)."""
    if not (isinstance(max_len, int | np.integer) and max_len >= 1):
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    shape = tuple(batch_shape) + (heads, int(max_len), p)
    return CausalSoftmaxState(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                              jnp.zeros((), jnp.int32))


def causal_softmax(q, k, v, *, state: CausalSoftmaxState | None = None,
                   implementation: str | None = None):
    """Causal softmax attention: token t attends to keys 1..t.

    `q, k, v [..., H, N, p]`. Without `state`: `jax.nn.dot_product_attention(is_causal=True)`
    (O(N^2)), returning (`[..., H, N, p]`, None). With a `CausalSoftmaxState`: the N new keys and
    values are written at positions `length ..` of the cache (its capacity L must hold them; the
    caller sizes it) and the queries attend to the cache with the causal mask, in O(N L); returns
    (out, the updated state).
    """
    q, k, v = _qkv_input(q, k, v)
    n, p = q.shape[-2:]
    if state is None:
        if _checks.compute_dtype(q, k, v) == jnp.float64:
            logits = jnp.einsum("...ip,...jp->...ij", q, k) / np.sqrt(p)
            logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -jnp.inf)
            return jax.nn.softmax(logits, axis=-1) @ v, None
        (qb, lead), (kb, _), (vb, _) = _to_bnhp(q), _to_bnhp(k), _to_bnhp(v)
        out = jax.nn.dot_product_attention(qb, kb, vb, is_causal=True,
                                           implementation=implementation)
        return jnp.swapaxes(out, 1, 2).reshape(lead + q.shape[-3:]), None
    state = CausalSoftmaxState(*state)
    keys, values, length = state
    if keys.shape != values.shape or keys.shape[:-2] != q.shape[:-2] or keys.shape[-1] != p:
        raise ValueError(f"state keys / values must have shape [..., H, L, p] = "
                         f"{q.shape[:-2] + ('L', p)}, got {keys.shape}, {values.shape}")
    cap = keys.shape[-2]
    if n > cap:
        raise ValueError(f"the cache holds L = {cap} tokens, cannot write N = {n}")
    start = (0,) * (keys.ndim - 2) + (length, 0)
    keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), start)
    values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), start)
    dtype = _checks.compute_dtype(q, keys)
    logits = jnp.einsum("...ip,...jp->...ij", q, keys.astype(q.dtype),
                        preferred_element_type=dtype) / np.sqrt(p)
    visible = jnp.arange(cap)[None, :] <= (length + jnp.arange(n))[:, None]  # [N, L]
    attn = jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), axis=-1)
    out = _mix(attn, values.astype(q.dtype))
    return out, CausalSoftmaxState(keys, values, length + n)


def causal_softmax_step(q_t, k_t, v_t, state: CausalSoftmaxState):
    """One decoding step of `causal_softmax` with a cache: `[..., H, p]` each -> (`[..., H, p]`,
    new state); O(L p) per step."""
    if state is None:
        raise ValueError("causal_softmax_step needs a state (init_causal_softmax_state)")
    out, state = causal_softmax(*(jnp.asarray(x)[..., None, :] for x in (q_t, k_t, v_t)),
                                state=state)
    return out[..., 0, :], state
