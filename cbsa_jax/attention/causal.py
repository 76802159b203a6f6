"""Causal attention: CBSA on every prefix of a sequence, and its causal baselines, with O(1)
decoding states, hand-written backward passes and sequence parallelism.

Causal CBSA at token t is the CBSA step on the prefix w_1..w_t, read at t (per head; w_i in R^p,
learned queries q0_j in R^p, j = 1..m, tau = sqrt(p) by default; docs/derivation.md section 10):

    S^(t)[j, i] = exp(q0_j . w_i / tau) / sum_{i' <= t} exp(q0_j . w_i' / tau),   i <= t
    Q^(t)       = Q0 + beta S^(t) W_{<=t}                      (m x p)
    out_t       = gamma * sum_j S^(t)[j, t] contraction(Q^(t))_j   (times beta: broadcast="exact")

The prefix is summarised per representative j by a running maximum mu_j of the logits
l_ji = q0_j . w_i / tau, the normaliser z_j = sum_i exp(l_ji - mu_j) and the weighted sum
a_j = sum_i exp(l_ji - mu_j) w_i (`CausalCBSAState`); two consecutive stretches merge
associatively (rescale both to the larger maximum and add).

The sequence is cut into chunks of c tokens (a `lax.scan` carries the state), each chunk into
sub-chunks of s tokens (`SUB_CHUNK`, when it divides c). Every exponent is taken against a causal
running maximum, so it is <= 0 and the largest term of every sum is exactly 1:

  * every token's running maximum mu_t = max(carried max, cummax of the chunk's logits);
  * the state at every sub-chunk boundary k (reference nu_k = the running max there,
    `Sa_k [m, p]`, `Sz_k [m]`): each sub-chunk j's own sums  exp(l_i - top_j) @ [w_i | 1]  (top_j
    its maximum; one m x s by s x (p + 1) product), rescaled by exp(top_j - nu_k) and added over
    the sub-chunks before k (an (n + 1) x n product per representative), plus the rescaled
    carried state;
  * token t of sub-chunk k: z_t = exp(nu_k - mu_t) Sz_k + sum_{i <= t} exp(l_i - mu_t), and its
    representatives as a combination of a small basis (never formed, m x p per token):
        Q_t = q0 + beta (diag(alpha_t) Sa_k + Pi_t W_k),
        alpha_t = exp(nu_k - mu_t) / z_t  [m],   Pi_t = exp(l_i - mu_t) [i <= t] / z_t  [m, s];
  * the Gram Q_t Q_t^T assembled from the basis' Gram blocks (q0 Sa_k^T, Sa_k Sa_k^T,
    Sa_k W_k^T, W_k W_k^T, q0 W_k^T per sub-chunk) and one m x s by s x m product per token;
  * the read-out needs only the m-vector v_t = softmax(Q_t Q_t^T / tau)^T own_t (exact:
    -alpha (I + alpha Q_t Q_t^T)^-1 own_t), own_t = S^(t)[:, t] = Pi_t[:, t], and
    out_t = gamma Q_t^T v_t
          = gamma (q0^T v_t + beta Sa_k^T (alpha_t v_t) + beta W_k^T (Pi_t^T v_t)).

Cost per token and head O(m^2 s + m s^2 + m p (1 + c / s^2)) and no m x p tensor per token;
state O(m p). The backward pass is written by hand (`jax.custom_vjp`): it stores only the inputs and
the state entering each chunk, recomputes a chunk, and runs the transposed products in a reverse
`lax.scan` whose carry is the cotangent of the state (referenced to the running max at the chunk
boundary, so its exponents are <= 0 too). The representatives' cotangent is projected on the
same basis, and dbeta comes with the normalisers' cotangent. The maxima carry no gradient: the
state stands for (exp(mu) z, exp(mu) a), every output is invariant under a common shift of
(mu, log z, log a), and the cotangents of (norm, sums) are those of the represented values; a
passed-in state's `max` receives the matching exact derivative.

XLA:CPU notes (they shape the code, not the math): plain `reduce` ops go to YNNPACK, which runs
these many short reductions an order of magnitude slower than fused code, so reductions are trees
of slices (`_sum`), or products with a ones vector (`_lastsum`, `_mv`) where the result is
broadcast back (XLA would recompute a fused tree for every element it feeds).

With `sequence_axis`, the call runs inside `jax.shard_map` with w split along N over that mesh
axis: each shard reduces its tokens to their statistics, `lax.all_gather`s them (m (p + 2)
numbers per head), folds the shards before it onto the incoming state and runs its local pass
from the folded state; the returned state (the whole sequence's) comes from `lax.psum`s. The
custom VJP returns the incoming state's cotangent, so gradients flow back through the gather to
the earlier shards. `causal_linear` does the same with its sums (combine: addition).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cbsa_jax import _checks
from cbsa_jax.attention.noncausal import (
    Broadcast,
    Contraction,
    _heads_input,
    _mix,
    _per_head,
    _to_bnhp,
)
from cbsa_jax.primitives import temperature
from cbsa_jax.unroll import spd_inverse

__all__ = [
    "check_chunk",
    "CausalCBSAState",
    "CausalLinearState",
    "CausalSoftmaxState",
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

DEFAULT_CHUNK = 32  # tokens per scan step of causal_cbsa
LINEAR_CHUNK = 64  # tokens per scan step of causal_linear
SUB_CHUNK = 8  # tokens per sub-chunk inside a chunk (when it divides the chunk length)


# ----------------------------------------------------------------------------------------------
# states and validation


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


def _check_axis(sequence_axis) -> None:
    if sequence_axis is not None and not isinstance(sequence_axis, str):
        raise ValueError(f"sequence_axis must be a mesh axis name (str) or None, got "
                         f"{sequence_axis!r}")


# ----------------------------------------------------------------------------------------------
# chunking helpers


def _plan(n: int, chunk: int, sub: int) -> tuple[int, int, int]:
    """(chunk length c, sub-chunk length s, number of chunks) for n tokens: c = min(chunk, n),
    s divides c (s = c when `sub` does not divide it), n padded up to a multiple of c."""
    c = min(chunk, n)
    s = sub if (sub < c and c % sub == 0) else c
    return c, s, -(-n // c)


def _valid(n: int, c: int, k: int):
    """`[k, c]` bool: which positions of the padded chunks are real tokens."""
    return (np.arange(k * c) < n).reshape(k, c)


def _decay(x, y):
    """`exp(x - y)` for x <= y (maxima), 0 where x = -inf (the empty prefix), never nan."""
    return jnp.exp(jnp.where(x == -jnp.inf, -jnp.inf, x - y))


def _reduce_small(x, axis: int, op):
    """Reduce `x` over `axis` by a pairwise tree of elementwise `op`s on halves.

    XLA:CPU hands plain `reduce` ops to YNNPACK, which runs the many short reductions of these
    kernels (over m, p or a sub-chunk) an order of magnitude slower than fused elementwise code;
    a tree of slices keeps them in XLA's loop fusions. Deterministic, order fixed by the shape."""
    axis = axis % x.ndim
    while x.shape[axis] > 1:
        k = x.shape[axis]
        half = k // 2
        y = op(lax.slice_in_dim(x, 0, half, axis=axis), lax.slice_in_dim(x, half, 2 * half,
                                                                          axis=axis))
        if k % 2:
            y = jnp.concatenate([y, lax.slice_in_dim(x, k - 1, k, axis=axis)], axis=axis)
        x = y
    return jnp.squeeze(x, axis)


def _sum(x, axis: int):
    return _reduce_small(x, axis, jnp.add)


def _max(x, axis: int):
    return _reduce_small(x, axis, jnp.maximum)


def _tril(n: int):
    """`[n, n]` bool, i <= t at [t, i]."""
    return np.tril(np.ones((n, n), bool))


# ----------------------------------------------------------------------------------------------
# causal CBSA: one chunk


class _Consts(NamedTuple):
    q0: jax.Array  # [H, m, p]
    beta: jax.Array  # [H]
    gamma: jax.Array  # [H]
    tau: jax.Array  # []
    eps: jax.Array  # [] (unused by the softmax contraction)


def _hd(x, nd: int):
    """A per-head `[H]` vector shaped to broadcast against `[B, H, ...]` arrays of rank nd."""
    return x.reshape((-1,) + (1,) * (nd - 2))


def _bh_dot(x, y, contract: tuple[int, int], batch: int):
    """`lax.dot_general` contracting axis `contract[0]` of x with `contract[1]` of y, the first
    `batch` axes of both being batch axes (output: batch, x's free axes, y's free axes)."""
    b = tuple(range(batch))
    return lax.dot_general(x, y, (((contract[0] % x.ndim,), (contract[1] % y.ndim,)), (b, b)))


def _lastsum(x):
    """`x [..., k]` summed over its last axis by a matrix-vector product.

    XLA:CPU hands plain `reduce` ops to YNNPACK, which runs these many short reductions an order
    of magnitude slower than fused code, and fuses a tree of slices (`_sum`) into every consumer
    element, so a reduction that is broadcast back is recomputed k times; a product with a
    ones vector is computed once, as a dot."""
    k = x.shape[-1]
    return jnp.matmul(x.reshape(-1, k), jnp.ones((k,), x.dtype)).reshape(x.shape[:-1])


def _keep(x):
    """`x`, computed once: routed through a product with a constant (exact: x * 1), which XLA
    does not fuse into (and so duplicate in) the elementwise consumers that broadcast it."""
    return jnp.matmul(x[..., None], jnp.ones((1, 2), x.dtype))[..., 0]


def _mv(a, x, axis: int):
    """Batched matrix-vector product: `a [..., j, l]` contracted with `x [...,  k]` over a's
    `axis` (-1: sum_l a_jl x_l -> [..., j]; -2: sum_j a_jl x_j -> [..., l])."""
    nb = a.ndim - 2
    batch = tuple(range(nb))
    return lax.dot_general(a, x, (((a.ndim + axis,), (nb,)), (batch, batch)))


def _cbsa_chunk_fwd(consts: _Consts, state, w, valid, *, s, contraction):
    """One chunk of causal CBSA without forming any token's m x p representatives.

    Token t of sub-chunk k reads its representatives as a combination of a small basis:
    `Q_t = q0 + beta (diag(alpha_t) Sa_k + Pi_t W_k)` with `Sa_k [m, p]` the (rescaled) sums at
    the sub-chunk's start, `W_k [s, p]` its tokens, `alpha_t = fk_t / z_t`,
    `Pi_t = exp(l - mu_t) [i <= t] / z_t`. Its Gram `Q_t Q_t^T` is assembled from the basis'
    Gram blocks (per sub-chunk) and one m x s by s x m product per token, and the output
    `gamma Q_t^T v_t` from products with the basis: O(m^2 s + m s^2 + m p) per token.

    `state` (max `[B, H, m]`, norm `[B, H, m]`, sums `[B, H, m, p]`), `w [B, H, c, p]`,
    `valid [c]`. Returns (state after the chunk, `out [B, H, c, p]`, residuals)."""
    mx, nz, sa0 = state
    b, h, c, p = w.shape
    m = consts.q0.shape[1]
    n = c // s
    b6 = _hd(consts.beta, 6)  # against [B, H, n, t, *, *]
    q0 = jnp.broadcast_to(consts.q0, (b, h, m, p))
    ws = w.reshape(b, h, n, s, p)
    # the logits, token-major [B,H,c,m] and (the same numbers) representative-major per
    # sub-chunk [B,H,n,m,s]
    lc_raw = _bh_dot(w, q0, (-1, -1), 2) / consts.tau
    lc = jnp.where(valid[:, None], lc_raw, -jnp.inf)
    lr = jnp.swapaxes(lc.reshape(b, h, n, s, m), 3, 4)
    # running maxima: inside each sub-chunk, then over the sub-chunks
    lcs = lc.reshape(b, h, n, s, m)
    inner = lax.cummax(lcs, axis=3)
    tops = jnp.maximum(mx[:, :, None], lax.cummax(inner[:, :, :, s - 1], axis=2))
    nu = jnp.concatenate([mx[:, :, None], tops], axis=2)  # [B,H,n+1,m]
    mut = jnp.maximum(nu[:, :, :n, None], inner)  # [B,H,n,s,m]
    # level 1: the (rescaled) state at every sub-chunk boundary k = 0..n, from each sub-chunk's
    # own sums (referenced to its maximum top_j) rescaled to nu_k and the carried state
    top = inner[:, :, :, s - 1]  # [B,H,n,m]
    e1 = jnp.exp(jnp.where(lr == -jnp.inf, -jnp.inf, lr - top[..., None]))  # [B,H,n,m,s]
    w1 = _with_ones(ws)  # [B,H,n,s,p+1]
    sub = _bh_dot(e1, w1, (-1, -2), 3)  # [B,H,n,m,p+1]
    g1 = _boundary_weights(top, nu)  # [B,H,m,n+1,n]
    fm = _decay(mx[:, :, None, :], nu)  # [B,H,n+1,m]
    bnd = (fm[..., None] * jnp.concatenate([sa0, nz[..., None]], axis=-1)[:, :, None]
           + jnp.swapaxes(_per_rep_dot(g1, sub, 4), 2, 3))  # [B,H,n+1,m,p+1]
    sa, sz = bnd[..., :p], bnd[..., p]
    new_state = (nu[:, :, n], sz[:, :, n], sa[:, :, n])
    # level 2: every token's weights on its sub-chunk's basis
    pw = jnp.exp(jnp.where(_tril(s)[:, None, :], lr[:, :, :, None] - mut[..., None], -jnp.inf))
    fk = _decay(nu[:, :, :n, None], mut)  # [B,H,n,s,m]
    z = fk * sz[:, :, :n, None] + _lastsum(pw)
    alpha = fk / z
    pi = pw / z[..., None]  # [B,H,n,t,j,i]
    own = jnp.exp(lcs - mut) / z
    # the basis [q0; Sa_k; W_k] ([2m + s, p] per sub-chunk) and its Gram blocks
    sak = sa[:, :, :n]
    basis = jnp.concatenate([jnp.broadcast_to(q0[:, :, None], sak.shape), sak, ws], axis=3)
    gram = _bh_dot(basis, basis[..., m:, :], (-1, -1), 3)  # [B,H,n,2m+s,m+s]
    qs, qw_raw = gram[..., :m, :m], gram[..., :m, m:]  # q0 Sa^T, q0 W^T
    ss, sw = gram[..., m:2 * m, :m], gram[..., m:2 * m, m:]  # Sa Sa^T, Sa W^T
    ww = gram[..., 2 * m:, m:]  # W W^T
    qq = jnp.einsum("hjp,hlp->hjl", consts.q0, consts.q0)[:, None, None]  # [H,1,1,m,m]
    # every token's Gram R_t R_t^T
    at = alpha[..., :, None]  # [B,H,n,t,j,1]
    al = alpha[..., None, :]  # [B,H,n,t,1,l]
    gq = (qq + b6 * (qs[:, :, :, None] * al + jnp.swapaxes(qs, -1, -2)[:, :, :, None] * at)
          + b6 * b6 * at * al * ss[:, :, :, None])
    f = qw_raw[:, :, :, None] + b6 * at * sw[:, :, :, None]  # [B,H,n,t,j,i]
    v_ = _bh_dot(pi, ww, (-1, -2), 3)  # [B,H,n,t,j,i']
    hh = f + 0.5 * b6 * v_
    kt = _bh_dot(hh, pi, (-1, -1), 4)  # [B,H,n,t,j,l]
    rr = gq + b6 * (kt + jnp.swapaxes(kt, -1, -2))
    vv, rres = _read_gram(contraction, consts, rr, own, m, p)  # [B,H,n,t,m]
    # the output gamma Q^T v = gamma (q0^T v + beta Sa_k^T (alpha v) + beta W_k^T (Pi^T v))
    piv = _mv(pi, vv, -2)  # Pi^T v [B,H,n,t,i]
    b5 = _hd(consts.beta, 5)
    coef = jnp.concatenate([vv, b5 * alpha * vv, b5 * piv], axis=-1)  # [B,H,n,t,2m+s]
    base = _bh_dot(coef, basis, (-1, -2), 3).reshape(b, h, c, p)
    out = consts.gamma[:, None, None] * base
    res = dict(lc_raw=lc_raw, e1=e1, g1=g1, fm=fm, w1=w1, sa=sa, basis=basis, pw=pw, fk=fk, z=z,
               alpha=alpha, pi=pi, own=own, qs=qs, ss=ss, sw=sw, f=f, v_=v_, rr=rr, vv=vv,
               rres=rres, piv=piv)
    return new_state, out, res


def _boundary_weights(top, nu):
    """`[B, H, m, n + 1, n]`: exp(top_j - nu_k) for sub-chunk j before boundary k (j < k), else
    0; `top [B, H, n, m]` the sub-chunks' maxima, `nu [B, H, n + 1, m]` the running maxima at the
    boundaries (nu_k >= top_j for j < k, so every exponent is <= 0)."""
    n = top.shape[2]
    earlier = np.arange(n)[None, :] < np.arange(n + 1)[:, None]  # [n+1, n]: j < k
    t = jnp.swapaxes(top, 2, 3)[:, :, :, None, :]  # [B,H,m,1,n]
    v = jnp.swapaxes(nu, 2, 3)[:, :, :, :, None]  # [B,H,m,n+1,1]
    return jnp.exp(jnp.where(earlier & (t != -jnp.inf), t - v, -jnp.inf))


def _per_rep_dot(g, x, axis: int):
    """Per head and representative j, the weights `g [B, H, m, a, b]` contracted over `axis` (3
    or 4) with the boundaries / sub-chunks axis of `x [B, H, k, m, d]`: `[B, H, m, ., d]`."""
    return lax.dot_general(g, x, (((axis,), (2,)), ((0, 1, 2), (0, 1, 3))))


def _read_gram(contraction: Contraction, consts: _Consts, rr, own, m: int, p: int):
    """Per token, the m-vector v with `out = gamma v^T Q` from the Gram `rr = Q Q^T`
    `[..., m, m]` and the token's weights `own [..., m]`: softmax `v = softmax(rr / tau)^T own`;
    exact `v = -alpha (I + alpha rr)^-1 own`."""
    if contraction is Contraction.SOFTMAX:
        g = rr / consts.tau
        mx = _keep(_max(g, -1))
        e = jnp.exp(g - mx[..., None])
        rows = _lastsum(e)
        u = own / rows
        return _mv(e, u, -2), (g, e, rows, u)
    return _exact_v(rr, own, consts.eps, m, p), None


def _exact_v(rr, own, eps, m: int, p: int):
    alpha = p / (m * eps * eps)
    inv = spd_inverse(jnp.eye(m, dtype=rr.dtype) + alpha * rr)
    return -alpha * _sum(inv * own[..., None, :], -1)


def _read_gram_bwd(contraction: Contraction, consts: _Consts, rr, own, res, dv, m: int,
                   p: int, need):
    """Cotangents of `_read_gram` given `dv`: (dRR + dRR^T, own, per-token tau `[..., t]`,
    eps)."""
    if contraction is Contraction.SOFTMAX:
        g, e, rows, u = res
        down = _mv(e, dv, -1) / rows
        dg = u[..., :, None] * e * (dv[..., None, :] - down[..., :, None])
        dtau = (-_sum(_lastsum(dg * g), -1) / consts.tau if need.tau
                else jnp.zeros(own.shape[:-1], own.dtype))
        return (dg + jnp.swapaxes(dg, -1, -2)) / consts.tau, down, dtau, jnp.zeros_like(consts.eps)
    _, vjp = jax.vjp(lambda r, o, e: _exact_v(r, o, e, m, p), rr, own, consts.eps)
    drr, down, deps = vjp(dv)
    return (drr + jnp.swapaxes(drr, -1, -2), down, jnp.zeros(own.shape[:-1], own.dtype),
            deps)


class _Grads(NamedTuple):
    """A chunk's contributions to the cotangents of the constants: `dq0 [B, H, m, p]`, the
    per-token parts of dbeta, dgamma and dtau `[B, H, c]` (summed outside the loop) and deps."""

    q0: jax.Array
    beta: jax.Array
    gamma: jax.Array
    tau: jax.Array
    eps: jax.Array


class _Need(NamedTuple):
    """Which constants need a cotangent (static: from the custom VJP's perturbed flags)."""

    q0: bool = True
    beta: bool = True
    gamma: bool = True
    tau: bool = True
    eps: bool = True


_NEED_ALL = _Need()


def _cbsa_chunk_bwd(consts: _Consts, state, w, valid, gout, carry, *, s, contraction,
                    need: _Need = _NEED_ALL):
    """The transposed chunk: given the cotangents of the state after the chunk (`carry`: sums
    `[B, H, m, p]` and norm `[B, H, m]`, referenced to its max) and of the output
    `gout [B, H, c, p]`, return (the cotangents of the state before the chunk, `dw [B, H, c, p]`,
    the chunk's `_Grads`).

    The representatives' cotangent dR_t is never formed either: only its projections on the
    basis, rho_alpha = <dR_t, Sa_k> `[..., t, m]` and rho_pi = <dR_t, W_k> `[..., t, m, s]`
    (dR_t = gamma v_t g_t^T + (dRR_t + dRR_t^T) R_t). Since R_t = q0 + beta (D_t Sa_k + Pi_t W_k),
    the cotangents of alpha and Pi through R_t are beta rho, and dbeta is
    sum_t <dR_t, A_t> = sum (alpha rho_alpha + Pi rho_pi), formed with the normalisers'
    cotangent."""
    dsa_end, dsz_end = carry
    _, _, r = _cbsa_chunk_fwd(consts, state, w, valid, s=s, contraction=contraction)
    b, h, c, p = w.shape
    m = consts.q0.shape[1]
    n = c // s
    b5, b6 = _hd(consts.beta, 5), _hd(consts.beta, 6)
    q0 = jnp.broadcast_to(consts.q0, (b, h, m, p))
    sak = r["sa"][:, :, :n]
    alpha, pi, own, vv, z = r["alpha"], r["pi"], r["own"], r["vv"], r["z"]
    # the output: out = gamma Q^T v, Q = q0 + beta (D Sa + Pi W): project g on the basis
    basis = r["basis"]
    gproj = _bh_dot(gout.reshape(b, h, n, s, p), basis, (-1, -1), 3)  # [B,H,n,t,2m+s]
    gq0, gs0, gw0 = gproj[..., :m], gproj[..., m:2 * m], gproj[..., 2 * m:]
    dv0 = gq0 + b5 * (alpha * gs0 + _mv(pi, gw0, -1))  # Q g: the cotangent of v per unit gamma
    dgamma = _sum(vv * dv0, -1).reshape(b, h, c) if need.gamma else None  # <g, Q^T v>
    g5 = _hd(consts.gamma, 5)
    gbs = g5 * gout.reshape(b, h, n, s, p)  # gamma g
    gs, gw, dv = g5 * gs0, g5 * gw0, g5 * dv0
    # the reader: sym = dRR + dRR^T
    sym, down, dtau, deps = _read_gram_bwd(contraction, consts, r["rr"], own, r["rres"], dv,
                                           m, p, need)
    # the Gram RR = Gq + beta (K + K^T), K = H Pi^T, H = F + beta/2 V, V = Pi WW,
    # F = QW + beta D SW, Gq = QQ + beta (QS D + D QS^T) + beta^2 D SS D
    qs, ss, sw = r["qs"], r["ss"], r["sw"]
    y = _bh_dot(sym, pi, (-1, -2), 4)  # sym Pi [B,H,n,t,j,i]
    fv = r["f"] + b6 * r["v_"]  # F + beta V
    rho_pi = vv[..., :, None] * gw[..., None, :] + _bh_dot(sym, fv, (-1, -2), 4)
    al = alpha[..., None, :]
    rho_alpha = (vv * gs
                 + _lastsum(sym * (jnp.swapaxes(qs, -1, -2)[:, :, :, None]
                                   + b6 * al * ss[:, :, :, None]))
                 + b5 * _lastsum(sw[:, :, :, None] * y))
    zeta = alpha * rho_alpha + _lastsum(pi * rho_pi)  # [B,H,n,t,m]
    dbeta = _sum(zeta, -1).reshape(b, h, c)
    # the normalisers and weights: alpha = fk / z, Pi = pw / z, own = Pi[..., t, :, t]
    dz = -(b5 * zeta + own * down) / z
    dpw = (b6 * rho_pi + _diag_embed(down, s)) / z[..., None] + dz[..., None]
    dlr = _sum(dpw * r["pw"], 3)  # [B,H,n,j,i]
    dsz = _sum(dz * r["fk"], 3)  # [B,H,n,m]
    # the basis' Gram blocks: qq = q0 q0^T, qs = q0 Sa^T, ss = Sa Sa^T, sw = Sa W^T,
    # ww = W W^T, qw = q0 W^T (symmetrised cotangents)
    at = alpha[..., :, None]
    dqq = _sum(_sum(sym, 3), 2)  # [B,H,m,m] (sym)
    dqs = b5 * _sum(sym * al, 3)  # [B,H,n,j,l]
    dss = b5 * b5 * _sum(sym * at * al, 3)  # (sym)
    dqw = b5 * _sum(y, 3)  # [B,H,n,j,i]
    dsw = b5 * b5 * _sum(at * y, 3)
    dww = 0.5 * b5 * b5 * _bh_dot(jnp.swapaxes(pi.reshape(b, h, n, s * m, s), -1, -2),
                                  y.reshape(b, h, n, s * m, s), (-1, -2), 3)  # [B,H,n,i,i']
    # [dSa; dW] = [[beta (alpha v)^T, dqs^T, dss, dsw], [beta (Pi^T v)^T, dqw^T, dsw^T,
    # dww + dww^T]] @ [gamma g; q0; Sa; W] in one product per sub-chunk
    rows_sa = jnp.concatenate([b5 * jnp.swapaxes(alpha * vv, -1, -2), jnp.swapaxes(dqs, -1, -2),
                               dss, dsw], axis=-1)  # [B,H,n,m,s+2m+s]
    rows_w = jnp.concatenate([b5 * jnp.swapaxes(r["piv"], -1, -2), jnp.swapaxes(dqw, -1, -2),
                              jnp.swapaxes(dsw, -1, -2), dww + jnp.swapaxes(dww, -1, -2)],
                             axis=-1)  # [B,H,n,s,s+2m+s]
    dsaw = _bh_dot(jnp.concatenate([rows_sa, rows_w], axis=3),
                   jnp.concatenate([gbs, basis], axis=3), (-1, -2), 3)  # [B,H,n,m+s,p]
    dsa, dws = dsaw[..., :m, :], dsaw[..., m:, :]
    # level 1: boundary states k = 0..n-1 from the tokens, k = n from the carry; through the
    # sub-chunks' sums sub_j = e1_j [W_j | 1] (bnd_k = fm_k state + sum_{j<k} g1_kj sub_j)
    ds1 = jnp.concatenate([jnp.concatenate([dsa, dsz[..., None]], axis=-1),
                           jnp.concatenate([dsa_end, dsz_end[..., None]], axis=-1)[:, :, None]],
                          axis=2)  # [B,H,n+1,m,p+1]
    dsub = _per_rep_dot(r["g1"], ds1, 3)  # [B,H,m,n,p+1]
    dsub = jnp.swapaxes(dsub, 2, 3)  # [B,H,n,m,p+1]
    e1, w1 = r["e1"], r["w1"]
    dl1 = e1 * _bh_dot(dsub, w1, (-1, -1), 3)  # [B,H,n,m,s]
    carried = _sum(r["fm"][..., None] * ds1, 2)
    new_carry = (carried[..., :p], carried[..., p])
    # the logits l = w q0^T / tau (token-major and representative-major)
    dlog = jnp.swapaxes(dlr + dl1, 3, 4).reshape(b, h, c, m)
    dlog = jnp.where(valid[:, None], dlog, 0) / consts.tau
    # dw = dlog q0 + e1^T dsub + dW (the last two per sub-chunk)
    dw = (_bh_dot(dlog, q0, (-1, -2), 2)
          + (_bh_dot(jnp.swapaxes(e1, -1, -2), dsub[..., :p], (-1, -2), 3)
             + dws).reshape(b, h, c, p))
    zero = jnp.zeros((b, h, c), w.dtype)
    dq0 = None
    if need.q0:
        # dq0 = [v^T | dqs | dqw + dlog^T] @ [gamma g; Sa; W] + dqq q0
        coef = jnp.concatenate([jnp.swapaxes(vv.reshape(b, h, c, m), -1, -2),
                                jnp.swapaxes(dqs, 2, 3).reshape(b, h, m, n * m),
                                jnp.swapaxes(dqw, 2, 3).reshape(b, h, m, c)
                                + jnp.swapaxes(dlog, -1, -2)], axis=-1)
        dq0 = (_bh_dot(coef, jnp.concatenate([gbs.reshape(b, h, c, p),
                                              sak.reshape(b, h, n * m, p), w], axis=2),
                       (-1, -2), 2)
               + _bh_dot(dqq, q0, (-1, -2), 2))
    if need.tau:
        dtau = (dtau.reshape(b, h, c)
                - _sum(dlog * jnp.where(valid[:, None], r["lc_raw"], 0), -1))
    else:
        dtau = zero
    dgamma = dgamma if need.gamma else zero
    if dq0 is None:
        dq0 = jnp.zeros((b, h, m, p), w.dtype)
    return new_carry, dw, _Grads(dq0, dbeta if need.beta else zero, dgamma, dtau, deps)


def _diag_embed(x, s: int):
    """`[..., n, s, m]` -> `[..., n, s, m, s]` with x on the diagonal of the two s axes."""
    eye = np.eye(s, dtype=bool)[:, None, :]
    return jnp.where(eye, x[..., None], 0)


def _padded(x, total: int):
    """`[B, H, N, d]` zero-padded along N to `total` tokens."""
    n = x.shape[2]
    return x if n == total else jnp.pad(x, ((0, 0), (0, 0), (0, total - n), (0, 0)))


def _slice(x, i, c: int):
    return lax.dynamic_slice_in_dim(x, i * c, c, axis=2)


class _Static:
    """A pytree node without leaves carrying a static (hashable) Python value."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_node(_Static, lambda x: ((), x.value), lambda aux, _: _Static(aux))


def _unwrap(tree):
    """(values, perturbed flags) of a pytree of `CustomVJPPrimal`s."""
    is_primal = lambda x: isinstance(x, jax.custom_derivatives.CustomVJPPrimal)  # noqa: E731
    values = jax.tree.map(lambda x: x.value, tree, is_leaf=is_primal)
    flags = jax.tree.map(lambda x: bool(x.perturbed), tree, is_leaf=is_primal)
    return values, flags


def _dense(cotangent, like):
    """A cotangent that may be a `SymbolicZero` as an array shaped like `like`."""
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros(jnp.shape(like), jnp.result_type(like))
    return cotangent


def _vma(x) -> frozenset:
    """The manual mesh axes `x` varies over (empty outside `shard_map`)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()) or ())


def _match_vma(tree, ref):
    """Mark the leaves of `tree` as varying over the manual mesh axes any leaf of `ref` varies
    over (inside `shard_map`, a loop carry must keep one type; zeros made here are invariant)."""
    axes = tuple(sorted(set().union(*(_vma(x) for x in jax.tree.leaves(ref)))))
    if not axes:
        return tree

    def cast(x):
        missing = tuple(a for a in axes if a not in _vma(x))
        return lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


def _cbsa_forward(n, chunk, sub, contraction, w, consts, state):
    """The chunked forward pass: ((`out [B, H, N, p]`, final state), the state entering each
    chunk)."""
    c, s, k = _plan(n, chunk, sub)
    wp = _padded(w, k * c)
    valid = jnp.asarray(_valid(n, c, k))

    def body(carry, i):
        st, out = carry
        new, o, _ = _cbsa_chunk_fwd(consts, st, _slice(wp, i, c), valid[i], s=s,
                                    contraction=contraction)
        return (new, lax.dynamic_update_slice_in_dim(out, o, i * c, axis=2)), st

    init = _match_vma((tuple(state), jnp.zeros_like(wp)), wp)
    (final, out), starts = lax.scan(body, init, jnp.arange(k))
    return (out[:, :, :n], final), starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _cbsa_core(n, chunk, sub, contraction, w, consts, state):
    """`w [B, H, N, p]` (compute dtype), `state` (max, norm, sums) -> (`out [B, H, N, p]`,
    final state). The maxima of `state` are references only (their cotangent is zero)."""
    return _cbsa_forward(n, chunk, sub, contraction, w, consts, state)[0]


def _cbsa_core_fwd(n, chunk, sub, contraction, w, consts, state):
    (w, consts, state), (_, flags, _) = _unwrap((w, consts, state))
    outputs, starts = _cbsa_forward(n, chunk, sub, contraction, w, consts, state)
    need = _Need(*(bool(f) for f in flags))
    return outputs, (w, consts, starts, outputs[1][0], _Static(need))


def _cbsa_core_bwd(n, chunk, sub, contraction, residuals, cotangents):
    w, consts, starts, final_max, need = residuals
    need = need.value
    gout, (_, dnorm, dsums) = cotangents
    gout = _dense(gout, w)
    dnorm = _dense(dnorm, final_max)
    dsums = _dense(dsums, starts[2][0])
    c, s, k = _plan(n, chunk, sub)
    wp, gp = _padded(w, k * c), _padded(gout, k * c)
    valid = jnp.asarray(_valid(n, c, k))
    b, h = w.shape[:2]
    zero = jnp.zeros((), w.dtype)

    def body(carry, x):
        cot, dw, dq0, deps = carry
        i, start = x
        cot, dwc, g = _cbsa_chunk_bwd(consts, start, _slice(wp, i, c), valid[i],
                                      _slice(gp, i, c), cot, s=s, contraction=contraction,
                                      need=need)
        dw = lax.dynamic_update_slice_in_dim(dw, dwc, i * c, axis=2)
        return (cot, dw, dq0 + g.q0, deps + g.eps), (g.beta, g.gamma, g.tau)

    init = _match_vma(((dsums, dnorm), jnp.zeros_like(wp),
                       jnp.zeros((b, h) + consts.q0.shape[1:], w.dtype), zero),
                      (wp, gp, starts, consts, dsums, dnorm))
    (cot, dw, dq0, deps), per_token = lax.scan(body, init, (jnp.arange(k), starts),
                                               reverse=True)
    dbeta, dgamma, dtau = (jnp.sum(x, axis=(0, 1, 3)) for x in per_token)
    dconsts = _Consts(jnp.sum(dq0, axis=0), dbeta, dgamma, jnp.sum(dtau), deps)
    dstate = (jnp.zeros_like(final_max), cot[1], cot[0])
    return _match_vma((dw[:, :, :n], dconsts, dstate), (w, consts, starts))


_cbsa_core.defvjp(_cbsa_core_fwd, _cbsa_core_bwd, symbolic_zeros=True)



# ----------------------------------------------------------------------------------------------
# causal CBSA: state algebra (outside the custom VJP, differentiated by JAX)


def _referenced(state):
    """(max without gradient, norm, sums) carrying the exact derivative of `max`: the state
    stands for exp(max) (norm, sums)."""
    mx, nz, sa = state
    safe = jnp.where(jnp.isfinite(mx), mx, 0)
    shift = jnp.where(jnp.isfinite(mx), jnp.exp(safe - lax.stop_gradient(safe)), 0)
    return lax.stop_gradient(mx), nz * shift, sa * shift[..., None]


def _local_statistics(w, consts: _Consts):
    """The statistics of all tokens of `w [B, H, N, p]` from the empty prefix (max, norm, sums)
    by one reduction (no prefix sums)."""
    lg = jnp.einsum("bhnp,hmp->bhnm", w, consts.q0) / consts.tau
    mx = lax.stop_gradient(jnp.max(lg, axis=2))
    e = jnp.exp(lg - mx[:, :, None])
    return mx, jnp.sum(e, axis=2), jnp.einsum("bhnm,bhnp->bhmp", e, w)


def _fold(stats, include):
    """Merge statistics stacked on axis 0 (`[S, ...]`) where `include [S]` is true: the max over
    the included maxima, rescaled sums; the empty set gives the empty state."""
    mx, nz, sa = stats
    inc = include.reshape((-1,) + (1,) * (mx.ndim - 1))
    top = jnp.max(jnp.where(inc, mx, -jnp.inf), axis=0)
    f = jnp.exp(jnp.where(inc & (mx != -jnp.inf), mx - jnp.where(top == -jnp.inf, 0, top),
                          -jnp.inf))
    f = lax.stop_gradient(f)
    return top, jnp.sum(f * nz, axis=0), jnp.sum(f[..., None] * sa, axis=0)


def _stack(*states):
    return tuple(jnp.stack(parts) for parts in zip(*states, strict=True))


# ----------------------------------------------------------------------------------------------
# causal CBSA: public functions


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
        _per_head(name, v, h)  # validates the length of a vector
    batch = w.shape[:-3]
    if state is None:
        state = init_causal_cbsa_state(batch, h, m, p, dtype)
    else:
        state = CausalCBSAState(*state)
        _check_state("state", state, (batch + (h, m), batch + (h, m), batch + (h, m, p)),
                     "(max [..., H, m], norm [..., H, m], sums [..., H, m, p])")
    return w, queries, contraction, broadcast, tau, dtype, state


def _per_head_vector(value, h: int, dtype):
    return jnp.broadcast_to(jnp.asarray(1.0 if value is None else value, dtype), (h,))


def causal_cbsa(w, queries, *, step_x=None, step_rep=None, chunk: int = DEFAULT_CHUNK,
                contraction: Contraction | str = Contraction.SOFTMAX,
                broadcast: Broadcast | str = Broadcast.ATTENTION, eps=None, tau=None,
                state: CausalCBSAState | None = None,
                sequence_axis: str | None = None) -> tuple[jax.Array, CausalCBSAState]:
    """Causal CBSA: at every token t, the CBSA step on the prefix w_1..w_t, read at token t.

    Equal, token by token, to `contract_and_broadcast(w[..., :t+1, :], representatives=queries,
    extraction="step", contraction=..., broadcast=..., ...).out[..., t, :]`, in O(N) time and
    memory (chunks of `chunk` tokens under a `lax.scan`; `chunk` may exceed N), with a
    hand-written backward pass that stores only the state entering each chunk.

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
      state: the prefix before w (`CausalCBSAState`); None: the empty prefix. Differentiable.
      sequence_axis: the name of a mesh axis when called inside `jax.shard_map` with w split
        along N over it (each shard holds consecutive tokens, shard i before shard i + 1; the
        other arguments replicated). Each shard then returns its tokens' outputs and the state
        after the whole sequence.

    Returns:
      (`[..., H, N, p]` in w's dtype, the `CausalCBSAState` after token N).
    """
    chunk = check_chunk(chunk)
    _check_axis(sequence_axis)
    w, queries, contraction, broadcast, tau, dtype, state = _causal_cbsa_setup(
        w, queries, step_x, step_rep, contraction, broadcast, eps, tau, state)
    if w.shape[-2] == 0:
        return w, CausalCBSAState(*(jnp.asarray(x, dtype) for x in state))
    return _causal_cbsa_jit(w, queries, step_x, step_rep, tau, eps, state, chunk=chunk,
                            sub=SUB_CHUNK, contraction=contraction, broadcast=broadcast,
                            axis=sequence_axis)


@functools.partial(jax.jit, static_argnames=("chunk", "sub", "contraction", "broadcast", "axis"))
def _causal_cbsa_jit(w, queries, step_x, step_rep, tau, eps, state, *, chunk, sub, contraction,
                     broadcast, axis):
    """The compiled body of `causal_cbsa` (arguments already validated)."""
    h, n, p = w.shape[-3:]
    lead = w.shape[:-3]
    dtype = _checks.compute_dtype(w, queries)
    beta = _per_head_vector(step_rep, h, dtype)
    gamma = _per_head_vector(step_x, h, dtype)
    if broadcast is Broadcast.EXACT:
        gamma = gamma * beta
    consts = _Consts(queries.astype(dtype), beta, gamma, jnp.asarray(tau, dtype),
                     jnp.asarray(1.0 if eps is None else eps, dtype))
    wf = w.astype(dtype).reshape((-1, h, n, p))
    state = tuple(jnp.asarray(x, dtype).reshape((-1,) + x.shape[len(lead):]) for x in state)
    state = tuple(jnp.broadcast_to(x, (wf.shape[0],) + x.shape[1:]) for x in state)
    start = _referenced(state)
    total = None
    if axis is not None:
        total, start, wf, consts = _sequence_parallel(wf, consts, start, axis)
    out, final = _cbsa_core(n, chunk, sub, contraction, wf, consts, start)
    if total is not None:
        final = total
    out = out.reshape(lead + (h, n, p)).astype(w.dtype)
    final = CausalCBSAState(*(x.reshape(lead + x.shape[1:]) for x in final))
    return out, final


def _sequence_parallel(wf, consts: _Consts, start, axis: str):
    """Inside `shard_map` over `axis` (w split along N): (the state after the whole sequence,
    the state before this shard's tokens, and w, consts marked as varying over the axis)."""
    wf = _match_vma(wf, lax.pcast(jnp.zeros(()), axis, to="varying"))
    consts, start_v = _match_vma((consts, start), wf)
    local = _local_statistics(wf, consts)
    gathered = tuple(lax.all_gather(x, axis) for x in local)  # [S, B, H, ...]
    shards = gathered[0].shape[0]
    everything = _stack(start_v, *(tuple(g[i] for g in gathered) for i in range(shards)))
    before = _fold(everything, jnp.arange(shards + 1) <= lax.axis_index(axis))
    # the total by reductions over the axis (the same value, typed invariant, on every shard)
    top = jnp.maximum(lax.pmax(local[0], axis), start[0])
    f = lax.stop_gradient(jnp.exp(local[0] - top))
    g = lax.stop_gradient(_decay(start[0], top))
    total = (top, lax.psum(f * local[1], axis) + g * start[1],
             lax.psum(f[..., None] * local[2], axis) + g[..., None] * start[2])
    return total, before, wf, consts


def causal_cbsa_step(w_t, queries, state: CausalCBSAState | None, *, step_x=None, step_rep=None,
                     contraction: Contraction | str = Contraction.SOFTMAX,
                     broadcast: Broadcast | str = Broadcast.ATTENTION, eps=None,
                     tau=None) -> tuple[jax.Array, CausalCBSAState]:
    """One decoding step of `causal_cbsa`: `w_t [..., H, p]` -> (`[..., H, p]`, new state), in
    O(m p + m^2 p) per head whatever the prefix length."""
    _checks.check_min_rank("w_t", w_t, 2, "[..., H, p]")
    out, state = causal_cbsa(jnp.asarray(w_t)[..., None, :], queries, step_x=step_x,
                             step_rep=step_rep, chunk=1, contraction=contraction,
                             broadcast=broadcast, eps=eps, tau=tau, state=state)
    return out[..., 0, :], state


# ----------------------------------------------------------------------------------------------
# causal linear attention


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


def _feature_map_grad(x):
    """phi'(x): 1 for x > 0, exp(x) otherwise."""
    return jnp.where(x > 0, 1, jnp.exp(jnp.minimum(x, 0)))


def _with_ones(x):
    """`[..., c, p]` -> `[..., c, p + 1]`, a ones column appended."""
    return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def _linear_chunk_fwd(state, q, k, v, valid):
    """One chunk of causal linear attention. `state [B, H, p, p + 1]` = [kv | k_sum];
    `q, k, v [B, H, c, p]`. Returns (the state after the chunk, `out [B, H, c, p]`, the
    quantities the backward pass reuses)."""
    p = q.shape[-1]
    c = q.shape[-2]
    fq = _feature_map(q)
    fk = jnp.where(valid[:, None], _feature_map(k), 0)
    v1 = _with_ones(v)
    scores = jnp.where(_tril(c), jnp.einsum("bhtp,bhip->bhti", fq, fk), 0)
    num = jnp.einsum("bhti,bhip->bhtp", scores, v1) + jnp.einsum("bhtp,bhpq->bhtq", fq, state)
    den = num[..., p:]
    out = num[..., :p] / den
    new_state = state + jnp.einsum("bhip,bhiq->bhpq", fk, v1)
    return new_state, out, (fq, fk, v1, scores, den, out)


def _linear_chunk_bwd(state, q, k, v, valid, gout, dstate):
    """The transposed chunk: (the state's cotangent before the chunk, dq, dk, dv)."""
    p = q.shape[-1]
    c = q.shape[-2]
    _, _, (fq, fk, v1, scores, den, out) = _linear_chunk_fwd(state, q, k, v, valid)
    gn = gout / den
    dnum = jnp.concatenate([gn, -_sum(gn * out, -1)[..., None]], axis=-1)  # [B,H,c,p+1]
    dscores = jnp.where(_tril(c), jnp.einsum("bhtq,bhiq->bhti", dnum, v1), 0)
    dfq = (jnp.einsum("bhti,bhip->bhtp", dscores, fk)
           + jnp.einsum("bhtq,bhpq->bhtp", dnum, state))
    dfk = (jnp.einsum("bhti,bhtp->bhip", dscores, fq)
           + jnp.einsum("bhiq,bhpq->bhip", v1, dstate))
    dv = (jnp.einsum("bhti,bhtq->bhiq", scores, dnum[..., :p])
          + jnp.einsum("bhip,bhpq->bhiq", fk, dstate[..., :p]))
    dstate = dstate + jnp.einsum("bhtp,bhtq->bhpq", fq, dnum)
    dq = dfq * _feature_map_grad(q)
    dk = jnp.where(valid[:, None], dfk * _feature_map_grad(k), 0)
    return dstate, dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _linear_core(n, chunk, q, k, v, state):
    """`q, k, v [B, H, N, p]` (compute dtype), `state [B, H, p, p + 1]` -> (out, final state)."""
    return _linear_forward(n, chunk, q, k, v, state)[0]


def _linear_forward(n, chunk, q, k, v, state):
    c, _, nk = _plan(n, chunk, chunk)
    qp, kp, vp = (_padded(x, nk * c) for x in (q, k, v))
    valid = jnp.asarray(_valid(n, c, nk))

    def body(carry, i):
        st, out = carry
        new, o, _ = _linear_chunk_fwd(st, *(_slice(x, i, c) for x in (qp, kp, vp)), valid[i])
        return (new, lax.dynamic_update_slice_in_dim(out, o, i * c, axis=2)), st

    init = _match_vma((state, jnp.zeros_like(qp)), qp)
    (final, out), starts = lax.scan(body, init, jnp.arange(nk))
    return (out[:, :, :n], final), starts


def _linear_core_fwd(n, chunk, q, k, v, state):
    outputs, starts = _linear_forward(n, chunk, q, k, v, state)
    return outputs, (q, k, v, starts)


def _linear_core_bwd(n, chunk, residuals, cotangents):
    q, k, v, starts = residuals
    gout, dfinal = cotangents
    c, _, nk = _plan(n, chunk, chunk)
    qp, kp, vp, gp = (_padded(x, nk * c) for x in (q, k, v, gout))
    valid = jnp.asarray(_valid(n, c, nk))

    def body(carry, x):
        dstate, dq, dk, dv = carry
        i, start = x
        dstate, dqc, dkc, dvc = _linear_chunk_bwd(start, *(_slice(y, i, c) for y in (qp, kp, vp)),
                                                  valid[i], _slice(gp, i, c), dstate)
        dq, dk, dv = (lax.dynamic_update_slice_in_dim(a, b, i * c, axis=2)
                      for a, b in ((dq, dqc), (dk, dkc), (dv, dvc)))
        return (dstate, dq, dk, dv), None

    init = _match_vma((dfinal, jnp.zeros_like(qp), jnp.zeros_like(qp), jnp.zeros_like(qp)),
                      (qp, kp, vp, gp, starts, dfinal))
    (dstate, dq, dk, dv), _ = lax.scan(body, init, (jnp.arange(nk), starts), reverse=True)
    return _match_vma((dq[:, :, :n], dk[:, :, :n], dv[:, :, :n], dstate), (q, k, v, starts))


_linear_core.defvjp(_linear_core_fwd, _linear_core_bwd)


def _qkv_input(q, k, v):
    q, k, v = (_heads_input(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape [..., H, N, p], got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    return q, k, v


def causal_linear(q, k, v, *, chunk: int = LINEAR_CHUNK,
                  state: CausalLinearState | None = None,
                  sequence_axis: str | None = None) -> tuple[jax.Array, CausalLinearState]:
    """Causal linear attention `out_t = phi(q_t)^T S_t / phi(q_t)^T z_t`, `S_t = sum_{i<=t}
    phi(k_i) v_i^T`, `z_t = sum_{i<=t} phi(k_i)`, phi = elu + 1: the running-sum baseline.

    `q, k, v [..., H, N, p]` -> (`[..., H, N, p]`, `CausalLinearState` after token N). Chunks of
    `chunk` tokens under a `lax.scan`: O(N (c p + p^2)) time, O(p^2) state; a hand-written
    backward pass stores only the inputs and the state entering each chunk, and recomputes the
    chunk from it.
    `sequence_axis`: as in `causal_cbsa` (q, k, v split along N over that mesh axis inside
    `jax.shard_map`; the returned state is the one after the whole sequence).
    """
    chunk = check_chunk(chunk)
    _check_axis(sequence_axis)
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
    if q.shape[-2] == 0:
        return q, CausalLinearState(*(jnp.asarray(x, dtype) for x in state))
    return _causal_linear_jit(q, k, v, state, chunk=chunk, axis=sequence_axis)


@functools.partial(jax.jit, static_argnames=("chunk", "axis"))
def _causal_linear_jit(q, k, v, state, *, chunk, axis):
    h, n, p = q.shape[-3:]
    lead = q.shape[:-3]
    dtype = _checks.compute_dtype(q, k, v)
    qf, kf, vf = (x.astype(dtype).reshape((-1, h, n, p)) for x in (q, k, v))
    kv, ks = (jnp.asarray(x, dtype) for x in state)
    start = jnp.concatenate([kv, ks[..., None]], axis=-1).reshape((-1, h, p, p + 1))
    start = jnp.broadcast_to(start, (qf.shape[0],) + start.shape[1:])
    total = None
    if axis is not None:
        qf, kf, vf = _match_vma((qf, kf, vf), lax.pcast(jnp.zeros(()), axis, to="varying"))
        start_v = _match_vma(start, qf)
        fk = _feature_map(kf)
        local = jnp.einsum("bhip,bhiq->bhpq", fk, _with_ones(vf))
        gathered = lax.all_gather(local, axis)  # [S, B, H, p, p+1]
        shards = gathered.shape[0]
        me = lax.axis_index(axis)
        inc = (jnp.arange(shards) < me).reshape((-1,) + (1,) * local.ndim)
        total = start + lax.psum(local, axis)
        start = start_v + jnp.sum(jnp.where(inc, gathered, 0), axis=0)
    out, final = _linear_core(n, chunk, qf, kf, vf, start)
    if total is not None:
        final = total
    out = out.reshape(lead + (h, n, p)).astype(q.dtype)
    final = final.reshape(lead + final.shape[1:])
    return out, CausalLinearState(final[..., :p], final[..., p])


def causal_linear_step(q_t, k_t, v_t, state: CausalLinearState | None):
    """One decoding step of `causal_linear`: `[..., H, p]` each -> (`[..., H, p]`, new state)."""
    out, state = causal_linear(*(jnp.asarray(x)[..., None, :] for x in (q_t, k_t, v_t)), chunk=1,
                               state=state)
    return out[..., 0, :], state


# ----------------------------------------------------------------------------------------------
# causal softmax attention (the O(N^2) reference with a growing cache)


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
