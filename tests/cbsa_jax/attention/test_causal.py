"""Causal CBSA (and its causal baselines) against the definition: the CBSA step on every prefix.

The oracle literally runs the non-causal `contract_and_broadcast` on each prefix w_1..w_t and reads
its last token: O(N^2), no shared code with the chunked scan beyond the contraction functions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from cbsa_jax import attention as att
from tests._util import rel_err

B, H, N, P, M = 2, 2, 11, 4, 3


@functools.partial(jax.jit, static_argnames=("contraction", "broadcast", "eps"))
def _oracle(w, queries, step_x, step_rep, *, contraction="softmax", broadcast="attention",
            eps=None):
    """`[..., H, N, p]`: output t = the non-causal CBSA step on w[..., :t+1, :], read at t."""
    return jnp.stack([
        att.contract_and_broadcast(w[..., : t + 1, :], representatives=queries, extraction="step",
                                   contraction=contraction, broadcast=broadcast,
                                   step_rep=step_rep, step_x=step_x, eps=eps).out[..., t, :]
        for t in range(w.shape[-2])], axis=-2)


def _inputs(rng, n=N, dtype=np.float64):
    w = rng.normal(size=(B, H, n, P)).astype(dtype)
    queries = rng.normal(size=(H, M, P)).astype(dtype)
    step_x, step_rep = rng.normal(size=H).astype(dtype), rng.normal(size=H).astype(dtype)
    return jnp.asarray(w), jnp.asarray(queries), jnp.asarray(step_x), jnp.asarray(step_rep)


@pytest.mark.parametrize("chunk", [1, 4, 11, 32])  # N = 11: remainder, exact fit, chunk > N
def test_equals_the_prefix_oracle(x64, rng, chunk):
    w, q, sx, sr = _inputs(rng)
    expected = _oracle(w, q, sx, sr)
    out, state = jax.jit(functools.partial(att.causal_cbsa, chunk=chunk))(w, q, step_x=sx,
                                                                          step_rep=sr)
    assert out.shape == w.shape and out.dtype == jnp.float64
    assert np.max(np.abs(np.asarray(out - expected))) < 1e-10
    assert all(s.dtype == jnp.float64 for s in state)


def test_exact_contraction_equals_the_prefix_oracle(x64, rng):
    w, q, sx, sr = _inputs(rng)
    expected = _oracle(w, q, sx, sr, contraction="exact", broadcast="exact", eps=0.7)
    out, _ = jax.jit(lambda *a: att.causal_cbsa(*a[:2], step_x=a[2], step_rep=a[3], chunk=4,
                                                contraction="exact", broadcast="exact",
                                                eps=0.7))(w, q, sx, sr)
    assert np.max(np.abs(np.asarray(out - expected))) < 1e-10


def test_stable_for_large_logits(rng):
    """Logits spread over hundreds (exp would overflow / underflow in float32 without the running
    max) still give finite outputs equal to the oracle."""
    w, q, sx, sr = _inputs(rng, dtype=np.float32)
    w = w * jnp.linspace(1.0, 60.0, N)[:, None]  # growing logits inside one chunk
    expected = _oracle(w, q, sx, sr)
    out, _ = jax.jit(lambda *a: att.causal_cbsa(*a[:2], step_x=a[2], step_rep=a[3], chunk=8))(
        w, q, sx, sr)
    assert np.all(np.isfinite(np.asarray(out)))
    assert rel_err(out, expected) < 1e-4


def test_causality_is_bitwise(rng):
    """Changing tokens t+1.. leaves outputs 1..t unchanged, bit for bit (chunk boundaries inside
    and outside the change)."""
    w, q, sx, sr = _inputs(rng, n=12, dtype=np.float32)
    t = 6
    changed = w.at[..., t:, :].set(jnp.asarray(rng.normal(size=(B, H, 12 - t, P)), jnp.float32))
    fn = jax.jit(lambda w: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4)[0])
    a, b = np.asarray(fn(w)), np.asarray(fn(changed))
    np.testing.assert_array_equal(a[..., :t, :], b[..., :t, :])
    assert not np.allclose(a[..., t:, :], b[..., t:, :])


def test_exact_step_is_the_gradient_of_the_prefix_objective(x64, rng):
    """With the exact contraction and broadcast, output t projected back by U is
    `-eta * grad_{x_t} L_t(X)`, `L_t = sum_k R(Q0_k + beta_k S_k^(t) X_{<=t} U_k; eps)`, S held
    constant."""
    d, eps, eta, tau = 5, 0.8, 0.3, 2.0
    x = jnp.asarray(rng.normal(size=(N, d)))
    u = jnp.asarray(rng.normal(size=(d, H, P)) / np.sqrt(d))
    q0 = jnp.asarray(rng.normal(size=(H, M, P)))
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


def test_gradients_match_the_oracle(x64, rng):
    w, q, sx, sr = _inputs(rng, n=7)
    cot = jnp.asarray(rng.normal(size=w.shape))

    def loss(fn):
        return lambda w, q, sx, sr: jnp.sum(cot * fn(w, q, sx, sr))

    scan = loss(lambda *a: att.causal_cbsa(*a[:2], step_x=a[2], step_rep=a[3], chunk=4)[0])
    oracle = loss(lambda *a: _oracle(*a))
    got = jax.jit(jax.grad(scan, argnums=(0, 1, 2, 3)))(w, q, sx, sr)
    expected = jax.jit(jax.grad(oracle, argnums=(0, 1, 2, 3)))(w, q, sx, sr)
    for g, e in zip(got, expected, strict=True):
        assert np.max(np.abs(np.asarray(g - e))) < 1e-10
        assert np.max(np.abs(np.asarray(e))) > 1e-3


def test_gradients_through_the_state(x64, rng):
    """The carried state is differentiable too: a prefix split in two (state handed over) has the
    gradients of the whole sequence."""
    w, q, sx, sr = _inputs(rng, n=7)

    def whole(w):
        return jnp.sum(jnp.sin(att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=3)[0]))

    def split(w):
        a, state = att.causal_cbsa(w[..., :4, :], q, step_x=sx, step_rep=sr, chunk=3)
        b, _ = att.causal_cbsa(w[..., 4:, :], q, step_x=sx, step_rep=sr, chunk=3, state=state)
        return jnp.sum(jnp.sin(jnp.concatenate([a, b], axis=-2)))

    gw, gs = jax.jit(lambda w: (jax.grad(whole)(w), jax.grad(split)(w)))(w)
    assert np.max(np.abs(np.asarray(gw - gs))) < 1e-12


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
    q = jax.ShapeDtypeStruct((H, M, P), jnp.float32)
    shapes = []
    for n in (16, 4096):
        w = jax.ShapeDtypeStruct((B, H, n, P), jnp.float32)
        out, state = jax.eval_shape(lambda w, q: att.causal_cbsa(w, q, chunk=64), w, q)
        assert out.shape == (B, H, n, P)
        shapes.append([(s.shape, s.dtype) for s in state])
    assert shapes[0] == shapes[1] == [((B, H, M), jnp.float32), ((B, H, M), jnp.float32),
                                      ((B, H, M, P), jnp.float32)]
    init = att.init_causal_cbsa_state((B,), H, M, P)
    assert [(s.shape, s.dtype) for s in init] == shapes[0]


def test_bfloat16_inputs_keep_float32_statistics(rng):
    w, q, sx, sr = _inputs(rng, dtype=np.float32)
    forward = jax.jit(lambda w, q: att.causal_cbsa(w, q, step_x=sx, step_rep=sr, chunk=4))
    out32, _ = forward(w, q)
    out16, state = forward(w.astype(jnp.bfloat16), q.astype(jnp.bfloat16))
    assert out16.dtype == jnp.bfloat16
    assert all(s.dtype == jnp.float32 for s in state)
    assert rel_err(out16, out32) < 5e-2


def test_causal_linear_against_its_definition(x64, rng):
    q, k, v = (jnp.asarray(rng.normal(size=(B, H, N, P))) for _ in range(3))
    fq, fk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
    scores = jnp.einsum("...tp,...ip->...ti", fq, fk) * jnp.tril(jnp.ones((N, N)))
    expected = (scores @ v) / jnp.sum(scores, axis=-1, keepdims=True)
    for chunk in (1, 4, 32):
        out, _ = jax.jit(functools.partial(att.causal_linear, chunk=chunk))(q, k, v)
        assert np.max(np.abs(np.asarray(out - expected))) < 1e-12
    prefix, state = jax.jit(functools.partial(att.causal_linear, chunk=2))(
        q[..., :5, :], k[..., :5, :], v[..., :5, :])
    outs = [prefix]
    step = jax.jit(att.causal_linear_step)
    for t in range(5, N):
        o, state = step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        outs.append(o[..., None, :])
    assert np.max(np.abs(np.asarray(jnp.concatenate(outs, axis=-2) - expected))) < 1e-12


def test_causal_softmax_cache_equals_the_causal_mask(rng):
    q, k, v = (jnp.asarray(rng.normal(size=(B, H, N, P)), jnp.float32) for _ in range(3))
    full, none = att.causal_softmax(q, k, v)
    assert none is None
    logits = jnp.einsum("...tp,...ip->...ti", q, k) / np.sqrt(P)
    expected = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((N, N), bool)), logits, -jnp.inf)) @ v
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)
    state = att.init_causal_softmax_state((B,), H, P, max_len=16)
    prefix, state = jax.jit(lambda q, k, v, s: att.causal_softmax(q, k, v, state=s))(
        q[..., :5, :], k[..., :5, :], v[..., :5, :], state)
    outs = [prefix]
    step = jax.jit(att.causal_softmax_step)
    for t in range(5, N):
        o, state = step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        outs.append(o[..., None, :])
    np.testing.assert_allclose(jnp.concatenate(outs, axis=-2), expected, rtol=1e-5, atol=1e-5)
    assert int(state.length) == N


@pytest.mark.parametrize("kwargs, match", [
    (dict(chunk=0), "chunk must be an integer >= 1"),
    (dict(chunk=2.5), "chunk must be an integer >= 1"),
    (dict(queries=np.zeros((H, M, P + 1))), r"queries must have shape \[H, m, p\]"),
    (dict(queries=np.zeros((H + 1, M, P))), r"queries must have shape \[H, m, p\]"),
    (dict(queries=np.zeros((M, P))), r"queries must have shape \[H, m, p\]"),
    (dict(contraction="exact"), "eps is required"),
    (dict(contraction="identity"), "contraction must be 'softmax' or 'exact'"),
    (dict(broadcast="token_softmax"), "broadcast must be 'attention'"),
    (dict(step_x=np.ones(H + 1)), "step_x must be a scalar or have shape"),
    (dict(state=att.init_causal_cbsa_state((B,), H, M + 1, P)), "state must have shapes"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(queries=np.zeros((H, M, P), np.float32), chunk=4)
    args.update(kwargs)
    w = np.zeros((B, H, N, P), np.float32)
    with pytest.raises(ValueError, match=match):
        att.causal_cbsa(w, args.pop("queries"), **args)


def test_benchmark_smoke(tmp_path):
    """`python -m benchmarks.causal` runs every attention and writes its JSON (no timing
    asserted)."""
    import json

    from benchmarks import causal as bench

    path = tmp_path / "causal.json"
    payload = bench.main(["--sizes", "16,32", "--modes", "fwd", "--target_s", "0", "--repeats",
                          "1", "--heads", "2", "--dim_head", "8", "--queries", "4", "--chunk", "8",
                          "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert [(r["attention"], r["n"]) for r in rows] == [
        (a, n) for n in (16, 32) for a in ("cbsa", "softmax", "linear")]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    assert "cbsa_faster_than_softmax_fwd_from_n" in payload["summary"]
    assert bench.summarise([{"attention": "cbsa", "n": n, "mode": "fwd", "status": "ok",
                             "median_ms": float(n)} for n in (4096, 16384, 65536)])[
        "cbsa_fwd_slope_4096_65536"] == pytest.approx(1.0)


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
