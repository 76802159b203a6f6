"""Causal CBSA (and its causal baselines) against the definition: the CBSA step on every prefix.

The oracle literally runs the non-causal `contract_and_broadcast` on each prefix w_1..w_t and reads
its last token: O(N^2), no code shared with the chunked kernels beyond the operator itself. It is
evaluated once per module (outputs and gradients, float64) and every chunking is held to it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import cbsa_jax as cj
from cbsa_jax import attention as att
from cbsa_jax.attention import causal as causal_module
from tests._util import rel_err

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("causal")

B, H, N, P_, M = 2, 2, 11, 4, 3
EPS, TAU = 0.7, 1.3
#: (chunk, sub-chunk) pairs; None: the module's default sub-chunk. N = 11: chunks of one token, a
#: remainder, an exact fit, a chunk longer than N; (8, 2): four sub-chunks per chunk, two chunks,
#: the second padded.
CHUNKS = [(1, None), (4, None), (11, None), (32, None), (8, 2)]
#: the two variants: (contraction, broadcast, eps)
VARIANTS = {"softmax": ("softmax", "attention", None), "exact": ("exact", "exact", EPS)}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.partial(jax.jit, static_argnames=("contraction", "broadcast"))
def _oracle(w, queries, step_x, step_rep, eps, tau, *, contraction, broadcast):
    """`[..., H, N, p]`: output t = the non-causal CBSA step on w[..., :t+1, :], read at t."""
    return jnp.stack([
        att.contract_and_broadcast(w[..., : t + 1, :], representatives=queries, extraction="step",
                                   contraction=contraction, broadcast=broadcast,
                                   step_rep=step_rep, step_x=step_x, eps=eps,
                                   tau=tau).out[..., t, :]
        for t in range(w.shape[-2])], axis=-2)


def _inputs(rng, n=N, dtype=np.float64, batch=(B,)):
    w = rng.normal(size=batch + (H, n, P_)).astype(dtype)
    queries = rng.normal(size=(H, M, P_)).astype(dtype)
    step_x, step_rep = rng.normal(size=H).astype(dtype), rng.normal(size=H).astype(dtype)
    return jnp.asarray(w), jnp.asarray(queries), jnp.asarray(step_x), jnp.asarray(step_rep)


def _both(fn):
    """`fn(variant_kwargs) -> array` evaluated for both variants, as a dict."""
    return {name: fn(dict(contraction=c, broadcast=b, eps=e))
            for name, (c, b, e) in VARIANTS.items()}


@pytest.fixture(scope="module")
def oracle():
    """Inputs (float64, N = 11), a cotangent, and the oracle's outputs and gradients w.r.t.
    (w, queries, step_x, step_rep, tau, eps) for both variants, as NumPy arrays."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        w, q, sx, sr = _inputs(rng)
        cot = jnp.asarray(rng.normal(size=w.shape))
        large = w * jnp.linspace(1.0, 60.0, N)[:, None]  # logits growing inside one chunk
        outs, grads, large_outs = {}, {}, {}
        for name, (c, b, e) in VARIANTS.items():
            fn = functools.partial(_oracle, contraction=c, broadcast=b)
            eps = jnp.asarray(EPS if e is not None else 1.0)
            outs[name] = np.asarray(fn(w, q, sx, sr, eps if e is not None else None, TAU))
            large_outs[name] = np.asarray(
                fn(large.astype(np.float32).astype(np.float64), q, sx, sr,
                   eps if e is not None else None, TAU))

            def loss(w, q, sx, sr, tau, eps, fn=fn, e=e):
                return jnp.sum(cot * fn(w, q, sx, sr, eps if e is not None else None, tau))

            grads[name] = [np.asarray(g) for g in jax.jit(jax.grad(loss, argnums=range(6)))(
                w, q, sx, sr, jnp.asarray(TAU), eps)]
        return dict(w=np.asarray(w), q=np.asarray(q), sx=np.asarray(sx), sr=np.asarray(sr),
                    cot=np.asarray(cot), out=outs, grads=grads, large=np.asarray(large),
                    large_out=large_outs)


@pytest.fixture
def sub_chunk(request, monkeypatch):
    """Run the test with `causal.SUB_CHUNK` set to the parameter (None: the default)."""
    if request.param is not None:
        monkeypatch.setattr(causal_module, "SUB_CHUNK", request.param)
    return causal_module.SUB_CHUNK


def _args(oracle, *names):
    return tuple(jnp.asarray(oracle[k]) for k in names)


@pytest.mark.parametrize("chunk, sub_chunk", CHUNKS, indirect=["sub_chunk"])
def test_equals_the_prefix_oracle(x64, oracle, chunk, sub_chunk):
    """Both variants (softmax contraction + S^T broadcast; exact contraction + beta S^T) equal
    the oracle to 1e-10, and the returned state is the whole sequence's statistics."""
    w, q, sx, sr = _args(oracle, "w", "q", "sx", "sr")

    @jax.jit
    def run(w, q, sx, sr):
        return _both(lambda kw: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=chunk,
                                                tau=TAU, **kw))

    got = run(w, q, sx, sr)
    for name, (out, _) in got.items():
        assert out.shape == w.shape and out.dtype == jnp.float64
        assert max_abs(out, oracle["out"][name]) < 1e-10, name
    # (max, norm, sums) after token N, from the definition
    logits = np.einsum("bhnp,hmp->bhnm", oracle["w"], oracle["q"]) / TAU
    top = logits.max(axis=2)
    e = np.exp(logits - top[:, :, None])
    expected = (top, e.sum(axis=2), np.einsum("bhnm,bhnp->bhmp", e, oracle["w"]))
    for got_s, want in zip(got["softmax"][1], expected, strict=True):
        assert got_s.dtype == jnp.float64 and max_abs(got_s, want) < 1e-10


@pytest.mark.parametrize("chunk, sub_chunk", [(4, None), (8, 2)], indirect=["sub_chunk"])
def test_gradients_match_the_oracle(x64, oracle, chunk, sub_chunk):
    """The hand-written backward pass: gradients w.r.t. w, the queries, both step sizes, tau
    and (exact) eps equal the oracle's autodiff to 1e-10, for both variants."""
    w, q, sx, sr, cot = _args(oracle, "w", "q", "sx", "sr", "cot")

    def loss(kw, w, q, sx, sr, tau, eps):
        kw = {**kw, "eps": eps if kw["eps"] is not None else None}
        out, _ = att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=chunk, tau=tau, **kw)
        return jnp.sum(cot * out)

    grads = jax.jit(lambda *a: _both(lambda kw: jax.grad(functools.partial(loss, kw),
                                                         argnums=range(6))(*a)))(
        w, q, sx, sr, jnp.asarray(TAU), jnp.asarray(EPS))
    for name, got in grads.items():
        for i, (g, e) in enumerate(zip(got, oracle["grads"][name], strict=True)):
            if name == "softmax" and i == 5:
                continue  # the softmax contraction does not read eps
            assert max_abs(g, e) < 1e-10, (name, i)
            assert np.max(np.abs(e)) > 1e-3, (name, i)  # not a vacuous check


def test_gradients_through_the_state(x64, oracle, rng):
    """A passed-in state is differentiable: a sequence split in two (state handed over) has the
    oracle's gradients; the derivatives w.r.t. a state's max, norm and sums (read through the
    outputs and the returned state) match central differences."""
    w, q, sx, sr, cot = _args(oracle, "w", "q", "sx", "sr", "cot")

    def split(w, q):
        a, state = att.causal_cbsa(w[..., :4, :], q, step_x=sx, step_rep=sr, chunk=3, tau=TAU)
        b, _ = att.causal_cbsa(w[..., 4:, :], q, step_x=sx, step_rep=sr, chunk=3, tau=TAU,
                               state=state)
        return jnp.sum(cot * jnp.concatenate([a, b], axis=-2))

    def from_state(mx, nz, sa):
        out, st = att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4,
                                  state=att.CausalCBSAState(mx, nz, sa))
        return jnp.sum(cot * out) + jnp.sum(jnp.sin(st.sums / st.norm[..., None]))

    gw, gq = jax.jit(jax.grad(split, argnums=(0, 1)))(w, q)
    assert max_abs(gw, oracle["grads"]["softmax"][0]) < 1e-10
    assert max_abs(gq, oracle["grads"]["softmax"][1]) < 1e-10
    prefix = tuple(att.causal_cbsa(jnp.asarray(rng.normal(size=(B, H, 5, P_))), q, step_x=sx,
                                   step_rep=sr)[1])
    g_state = jax.jit(jax.grad(from_state, argnums=(0, 1, 2)))(*prefix)
    value = jax.jit(from_state)
    h = 1e-5
    for i, g in enumerate(g_state):
        assert np.max(np.abs(np.asarray(g))) > 1e-3  # the max's cotangent is not vacuous either
        d = jnp.asarray(rng.normal(size=g.shape))
        plus, minus = list(prefix), list(prefix)
        plus[i], minus[i] = prefix[i] + h * d, prefix[i] - h * d
        fd = float(value(*plus) - value(*minus)) / (2 * h)
        assert abs(fd - float(jnp.sum(g * d))) < 1e-7 * max(1.0, abs(fd)), i


def test_exact_step_is_the_gradient_of_the_prefix_objective(x64, rng):
    """With the exact contraction and broadcast, output t projected back by U is
    `-eta * grad_{x_t} L_t(X)`, `L_t = sum_k R(Q0_k + beta_k S_k^(t) X_{<=t} U_k; eps)`, S held
    constant."""
    d, eps, eta, tau = 5, 0.8, 0.3, 2.0
    x = jnp.asarray(rng.normal(size=(N, d)))
    u = jnp.asarray(rng.normal(size=(d, H, P_)) / np.sqrt(d))
    q0 = jnp.asarray(rng.normal(size=(H, M, P_)))
    beta = jnp.asarray(rng.normal(size=H))
    step = jax.jit(lambda w: att.causal_cbsa(w, q0, step_x=eta, step_rep=beta, chunk=4,
                                             contraction="exact", broadcast="exact", eps=eps,
                                             tau=tau)[0])
    stepped = cj.project(step(cj.heads(x, u)), u)  # [N, D]

    def prefix_objective(x, t):
        w = cj.heads(x[: t + 1], u)  # [H, t+1, p]
        s = jax.nn.softmax(jnp.einsum("hmp,hnp->hmn", q0, w) / tau, axis=-1)
        q = q0 + beta[:, None, None] * (jax.lax.stop_gradient(s) @ w)
        return jnp.sum(cj.coding_rate(q, eps))

    @jax.jit
    def newest_token_gradients(x):  # [N, D]: row t = grad_{x_t} L_t
        return jnp.stack([jax.grad(prefix_objective)(x, t)[t] for t in range(N)])

    grads = newest_token_gradients(x)
    np.testing.assert_allclose(stepped, -eta * grads, rtol=0, atol=1e-12)
    assert np.min(np.max(np.abs(np.asarray(grads)), axis=-1)) > 1e-3  # not a vacuous check


@pytest.mark.parametrize("chunk", [4, 32])  # N = 16, chunk 32: two sub-chunks of 8
def test_causality_is_bitwise(rng, chunk):
    """Changing tokens t.. leaves outputs before t unchanged, bit for bit (chunk and sub-chunk
    boundaries inside and outside the change)."""
    n = 16
    w, q, sx, sr = _inputs(rng, n=n, dtype=np.float32)
    fn = jax.jit(lambda w: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=chunk)[0])
    a = np.asarray(fn(w))
    for t in (1, 6, 8, 13):
        changed = w.at[..., t:, :].set(
            jnp.asarray(rng.normal(size=(B, H, n - t, P_)) * 30, jnp.float32))
        b = np.asarray(fn(changed))
        np.testing.assert_array_equal(a[..., :t, :], b[..., :t, :])
        assert not np.allclose(a[..., t:, :], b[..., t:, :])


@pytest.mark.parametrize("chunk, sub_chunk", [(8, 2), (32, None)], indirect=["sub_chunk"])
def test_stable_for_large_logits(oracle, chunk, sub_chunk):
    """Logits growing 60x inside one chunk (exp would overflow / underflow in float32 without a
    running max per token) give finite float32 outputs equal to the float64 oracle."""
    w = jnp.asarray(oracle["large"], jnp.float32)
    q, sx, sr = (jnp.asarray(oracle[k], jnp.float32) for k in ("q", "sx", "sr"))
    got = jax.jit(lambda w: _both(lambda kw: att.causal_cbsa(
        w, q, step_x=sx, step_rep=sr, chunk=chunk, tau=TAU, **kw)[0]))(w)
    for name, out in got.items():
        assert np.all(np.isfinite(np.asarray(out)))
        assert rel_err(out, oracle["large_out"][name]) < 1e-4, name


def test_bfloat16_inputs_keep_float32_statistics(oracle):
    w, q, sx, sr = (jnp.asarray(oracle[k], jnp.bfloat16) for k in ("w", "q", "sx", "sr"))

    def forward(w):
        return att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4, tau=TAU)

    out, state = jax.jit(forward)(w)
    assert out.dtype == jnp.bfloat16
    assert all(s.dtype == jnp.float32 for s in state)
    assert rel_err(out, oracle["out"]["softmax"]) < 5e-2
    grad = jax.jit(jax.grad(lambda w: jnp.sum(forward(w)[0].astype(jnp.float32))))(w)
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_incremental_decoding_equals_the_full_forward(rng):
    w, q, sx, sr = _inputs(rng, dtype=np.float32)
    forward = jax.jit(lambda w: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4))
    full, final = forward(w)
    prefix, state = forward(w[..., :4, :])  # prefill
    step = jax.jit(lambda wt, s: att.causal_cbsa_step(wt, q, s, step_x=sx, step_rep=sr))
    outs = [prefix]
    for t in range(4, N):
        o, state = step(w[..., t, :], state)
        outs.append(o[..., None, :])
    np.testing.assert_allclose(jnp.concatenate(outs, axis=-2), full, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, final, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_state_size_does_not_depend_on_the_length():
    q = jax.ShapeDtypeStruct((H, M, P_), jnp.float32)
    shapes = []
    for n in (16, 4096):
        w = jax.ShapeDtypeStruct((B, H, n, P_), jnp.float32)
        out, state = jax.eval_shape(lambda w, q: att.causal_cbsa(w, q), w, q)
        assert out.shape == (B, H, n, P_)
        shapes.append([(s.shape, s.dtype) for s in state])
    assert shapes[0] == shapes[1] == [((B, H, M), jnp.float32), ((B, H, M), jnp.float32),
                                      ((B, H, M, P_), jnp.float32)]
    init = att.init_causal_cbsa_state((B,), H, M, P_)
    assert [(s.shape, s.dtype) for s in init] == shapes[0]


def test_batch_dimensions_and_the_empty_sequence(x64, oracle):
    w, q, sx, sr = _args(oracle, "w", "q", "sx", "sr")
    out, state = jax.jit(lambda w: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, tau=TAU))(
        w[None])  # batch dims (1, B)
    assert max_abs(out[0], oracle["out"]["softmax"]) < 1e-10
    assert [s.shape for s in state] == [(1, B, H, M), (1, B, H, M), (1, B, H, M, P_)]
    empty, state = att.causal_cbsa(w[None, ..., :0, :], q)
    assert empty.shape == (1, B, H, 0, P_)
    assert [s.shape for s in state] == [(1, B, H, M), (1, B, H, M), (1, B, H, M, P_)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk=0), "chunk must be an integer >= 1"),
    (dict(chunk=2.5), "chunk must be an integer >= 1"),
    (dict(queries=np.zeros((H, M, P_ + 1))), r"queries must have shape \[H, m, p\]"),
    (dict(queries=np.zeros((H + 1, M, P_))), r"queries must have shape \[H, m, p\]"),
    (dict(queries=np.zeros((M, P_))), r"queries must have shape \[H, m, p\]"),
    (dict(contraction="exact"), "eps is required"),
    (dict(contraction="identity"), "contraction must be 'softmax' or 'exact'"),
    (dict(broadcast="token_softmax"), "broadcast must be 'attention'"),
    (dict(step_x=np.ones(H + 1)), "step_x must be a scalar or have shape"),
    (dict(step_rep=np.ones((H, 1))), "step_rep must be a scalar or have shape"),
    (dict(state=att.init_causal_cbsa_state((B,), H, M + 1, P_)), "state must have shapes"),
    (dict(sequence_axis=3), "sequence_axis must be a mesh axis name"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(queries=np.zeros((H, M, P_), np.float32), chunk=4)
    args.update(kwargs)
    w = np.zeros((B, H, N, P_), np.float32)
    with pytest.raises(ValueError, match=match):
        att.causal_cbsa(w, args.pop("queries"), **args)


def _linear_definition(q, k, v):
    fq, fk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
    n = q.shape[-2]
    scores = jnp.einsum("...tp,...ip->...ti", fq, fk) * jnp.tril(jnp.ones((n, n)))
    return (scores @ v) / jnp.sum(scores, axis=-1, keepdims=True)


def test_causal_linear_against_its_definition(x64, rng):
    """Outputs for chunks 1, 4, 11, 32, one-token decoding, the gradients (w.r.t. q, k, v and a
    passed-in state, read through the returned state too) against the definition."""
    q, k, v = (jnp.asarray(rng.normal(size=(B, H, N, P_))) for _ in range(3))
    expected = _linear_definition(q, k, v)
    outs = jax.jit(lambda q, k, v: [att.causal_linear(q, k, v, chunk=c)[0]
                                    for c in (1, 4, 11, 32)])(q, k, v)
    for out in outs:
        assert max_abs(out, expected) < 1e-12
    prefix, state = jax.jit(functools.partial(att.causal_linear, chunk=2))(
        q[..., :5, :], k[..., :5, :], v[..., :5, :])
    outs = [prefix]
    step = jax.jit(att.causal_linear_step)
    for t in range(5, N):
        o, state = step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        outs.append(o[..., None, :])
    assert max_abs(jnp.concatenate(outs, axis=-2), expected) < 1e-12
    fk = jax.nn.elu(k) + 1
    assert max_abs(state.kv, jnp.einsum("...ip,...iq->...pq", fk, v)) < 1e-12
    assert max_abs(state.k_sum, jnp.sum(fk, axis=-2)) < 1e-12

    # gradients: a state handed over between two calls, against the definition with the state
    # written as extra keys' sums
    cot = jnp.asarray(rng.normal(size=q.shape))
    kv0 = jnp.asarray(rng.uniform(size=(B, H, P_, P_)))
    ks0 = jnp.asarray(rng.uniform(size=(B, H, P_)))

    def split(q, k, v, kv, ks):
        a, s = att.causal_linear(q[..., :4, :], k[..., :4, :], v[..., :4, :], chunk=3,
                                 state=att.CausalLinearState(kv, ks))
        b, s = att.causal_linear(q[..., 4:, :], k[..., 4:, :], v[..., 4:, :], chunk=3, state=s)
        return jnp.sum(cot * jnp.concatenate([a, b], -2)) + jnp.sum(jnp.cos(s.kv)) + jnp.sum(
            s.k_sum ** 2)

    def definition(q, k, v, kv, ks):
        fq, fk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
        scores = jnp.einsum("...tp,...ip->...ti", fq, fk) * jnp.tril(jnp.ones((N, N)))
        num = scores @ v + fq @ kv
        den = jnp.sum(scores, axis=-1) + (fq @ ks[..., None])[..., 0]
        kv_n = kv + jnp.einsum("...ip,...iq->...pq", fk, v)
        ks_n = ks + jnp.sum(fk, axis=-2)
        return (jnp.sum(cot * num / den[..., None]) + jnp.sum(jnp.cos(kv_n))
                + jnp.sum(ks_n ** 2))

    args = (q, k, v, kv0, ks0)
    got, want = jax.jit(lambda *a: (jax.grad(split, argnums=range(5))(*a),
                                    jax.grad(definition, argnums=range(5))(*a)))(*args)
    for g, e in zip(got, want, strict=True):
        assert max_abs(g, e) < 1e-10
        assert np.max(np.abs(np.asarray(e))) > 1e-3


def test_causal_linear_bad_input_is_named():
    x = np.zeros((B, H, N, P_), np.float32)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        att.causal_linear(x, x, x, chunk=0)
    with pytest.raises(ValueError, match="q, k, v must have the same shape"):
        att.causal_linear(x, x, x[..., :3, :])
    with pytest.raises(ValueError, match="state must have shapes"):
        att.causal_linear(x, x, x, state=att.init_causal_linear_state((B,), H, P_ + 1))
    with pytest.raises(ValueError, match="sequence_axis must be a mesh axis name"):
        att.causal_linear(x, x, x, sequence_axis=("seq",))


def test_causal_softmax_cache_equals_the_causal_mask(rng):
    q, k, v = (jnp.asarray(rng.normal(size=(B, H, N, P_)), jnp.float32) for _ in range(3))
    full, none = att.causal_softmax(q, k, v)
    assert none is None
    logits = jnp.einsum("...tp,...ip->...ti", q, k) / np.sqrt(P_)
    expected = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((N, N), bool)), logits, -jnp.inf)) @ v
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)
    state = att.init_causal_softmax_state((B,), H, P_, max_len=16)
    prefix, state = jax.jit(lambda q, k, v, s: att.causal_softmax(q, k, v, state=s))(
        q[..., :5, :], k[..., :5, :], v[..., :5, :], state)
    outs = [prefix]
    step = jax.jit(att.causal_softmax_step)
    for t in range(5, N):
        o, state = step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        outs.append(o[..., None, :])
    np.testing.assert_allclose(jnp.concatenate(outs, axis=-2), expected, rtol=1e-5, atol=1e-5)
    assert int(state.length) == N


# ----------------------------------------------------------------------------------------------
# sequence parallelism: 8 CPU devices (tests/conftest.py)


def _sharded_and_whole(fn, mesh, num_split: int, num_args: int):
    """(fn run inside `shard_map` with its first `num_split` arguments split along axis 2 over
    "seq" and `sequence_axis="seq"`, fn run whole): both return (out, state)."""
    seq = P(None, None, "seq", None)

    def sharded(*a):
        f = jax.shard_map(functools.partial(fn, axis="seq"), mesh=mesh,
                          in_specs=(seq,) * num_split + (P(),) * (num_args - num_split),
                          out_specs=(seq, P()))
        return f(*(jax.reshard(x, seq) for x in a[:num_split]), *a[num_split:])

    return sharded, functools.partial(fn, axis=None)


def _value_and_grads(f, reader, num_args: int):
    """`jax.value_and_grad` of `reader(*f(*args))` w.r.t. every argument, outputs as aux."""
    def loss(*a):
        out, state = f(*a)
        return reader(out, state), (out, state)
    return jax.jit(jax.value_and_grad(loss, argnums=range(num_args), has_aux=True))


def _assert_same(sharded, whole, tolerance):
    (_, (out_a, state_a)), grads_a = sharded
    (_, (out_b, state_b)), grads_b = whole
    assert max_abs(out_a, out_b) < tolerance
    for a, b in zip(state_a, state_b, strict=True):
        assert max_abs(a, b) < tolerance
    for a, b in zip(grads_a, grads_b, strict=True):
        assert max_abs(a, b) < tolerance
        assert np.max(np.abs(np.asarray(b))) > 1e-3  # every gradient is exercised


def test_sequence_parallel_equals_the_unsharded_call(x64):
    """`sequence_axis="seq"` inside `jax.shard_map` over 8 devices, w (q, k, v) split along N:
    outputs, the returned state (the whole sequence's) and the gradients w.r.t. w, the queries,
    the step sizes and an incoming state equal the unsharded call to 1e-10 (float64); causal
    CBSA with both variants, causal linear attention."""
    assert jax.device_count() >= 8, "tests/conftest.py requests 8 CPU devices"
    mesh = jax.make_mesh((8,), ("seq",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:8])
    rng = np.random.default_rng(1)
    n = 64  # 8 tokens per shard
    w, q, sx, sr = _inputs(rng, n=n)
    cot = jnp.asarray(rng.normal(size=w.shape))
    prefix = att.causal_cbsa(jnp.asarray(rng.normal(size=(B, H, 5, P_))), q, step_x=sx,
                             step_rep=sr)[1]

    def cbsa(w, q, sx, sr, mx, nz, sa, axis):
        # softmax from a passed-in state, chunk 4; exact from the empty prefix, chunk 3
        a, s = att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4, sequence_axis=axis,
                               state=att.CausalCBSAState(mx, nz, sa))
        b, _ = att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=3, contraction="exact",
                               broadcast="exact", eps=EPS, sequence_axis=axis)
        return (a, b), s

    def cbsa_reader(out, state):
        return (jnp.sum(cot * (out[0] + out[1]))
                + jnp.sum(jnp.sin(state.sums / state.norm[..., None])))

    qs, ks, vs = (jnp.asarray(rng.normal(size=(B, H, n, P_))) for _ in range(3))
    init = (jnp.asarray(rng.uniform(size=(B, H, P_, P_))),
            jnp.asarray(rng.uniform(size=(B, H, P_))))

    def linear(q, k, v, kv, ksum, axis):
        return att.causal_linear(q, k, v, chunk=4, state=att.CausalLinearState(kv, ksum),
                                 sequence_axis=axis)

    def linear_reader(out, state):
        return jnp.sum(cot * out) + jnp.sum(jnp.cos(state.kv)) + jnp.sum(state.k_sum ** 2)

    with jax.set_mesh(mesh):
        sharded, whole = _sharded_and_whole(cbsa, mesh, 1, 7)
        args = (w, q, sx, sr, *prefix)
        _assert_same(_value_and_grads(sharded, cbsa_reader, 7)(*args),
                     _value_and_grads(whole, cbsa_reader, 7)(*args), 1e-10)
        sharded, whole = _sharded_and_whole(linear, mesh, 3, 5)
        args = (qs, ks, vs, *init)
        _assert_same(_value_and_grads(sharded, linear_reader, 5)(*args),
                     _value_and_grads(whole, linear_reader, 5)(*args), 1e-10)


def test_benchmark_smoke(tmp_path):
    """`python -m benchmarks.causal` runs every attention and writes its JSON (no timing
    asserted)."""
    import json

    from benchmarks import causal as bench

    path = tmp_path / "causal.json"
    payload = bench.main(["--sizes", "16,32", "--modes", "fwd", "--rounds", "2", "--heads", "2",
                          "--allocator", "default",
                          "--dim_head", "8", "--queries", "4", "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert [(r["attention"], r["n"]) for r in rows] == [
        (a, n) for n in (16, 32) for a in ("cbsa", "softmax", "linear")]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and len(r["times_ms"]) == 2
               for r in rows)
    assert [r["chunk"] for r in rows[:3]] == [att.causal.DEFAULT_CHUNK, None,
                                              att.causal.LINEAR_CHUNK]
    assert [r["interleaved"] for r in rows[:3]] == [True, False, True]
    assert "cbsa_faster_than_softmax_fwd_from_n" in payload["summary"]
    assert payload["summary"]["cbsa_over_linear_fwd_n32"] > 0
    rows = [{"attention": a, "n": n, "mode": m, "status": "ok", "median_ms": float(n) * f}
            for n in (4096, 16384, 65536) for a, m, f in (("cbsa", "fwd", 1), ("cbsa", "fwdbwd", 4),
                                                          ("linear", "fwdbwd", 2))]
    summary = bench.summarise(rows)
    assert summary["cbsa_fwd_slope_4096_65536"] == pytest.approx(1.0)
    assert summary["cbsa_bwd_over_fwd_n4096"] == pytest.approx(3.0)
    assert summary["cbsa_over_linear_fwdbwd_n16384"] == pytest.approx(2.0)


def test_a_softmax_row_that_did_not_fit_counts_as_slower():
    from benchmarks import causal as bench

    rows = [{"attention": "cbsa", "n": n, "mode": "fwdbwd", "status": "ok", "median_ms": t}
            for n, t in ((4096, 600.0), (16384, 2400.0))]
    rows += [{"attention": "softmax", "n": 4096, "mode": "fwdbwd", "status": "ok",
              "median_ms": 500.0},
             {"attention": "softmax", "n": 16384, "mode": "fwdbwd",
              "status": "oom (estimated 17.3 GB)"}]
    summary = bench.summarise(rows)
    assert summary["cbsa_faster_than_softmax_fwdbwd_from_n"] == 16384
    assert summary["softmax_over_cbsa_fwdbwd_n4096"] == pytest.approx(500 / 600)
    assert "softmax_over_cbsa_fwdbwd_n16384" not in summary
