"""The unification identities of the spec, the reference forward, and linear cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from cbsa_jax import attention as att
from tests._util import rel_err


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _torch_adaptive_pool(x, g, r):
    """[B, g*g, C] -> [B, r*r, C], torch AdaptiveAvgPool2d bins, by loops."""
    b, _, c = x.shape
    grid = x.reshape(b, g, g, c)
    out = np.zeros((b, r, r, c))
    for i in range(r):
        for j in range(r):
            h0, h1 = (i * g) // r, -((-(i + 1) * g) // r)
            w0, w1 = (j * g) // r, -((-(j + 1) * g) // r)
            out[:, i, j] = grid[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out.reshape(b, r * r, c)


def _reference_cbsa(w_flat, heads, step_x, step_rep, g, r):
    """A numpy transcription of the official CBSA.forward after `proj` (before `to_out`)."""
    b, n, c = w_flat.shape
    p = c // heads
    rep = _torch_adaptive_pool(w_flat[:, :-1], g, r)  # pools w[:, :-1]
    w = w_flat.reshape(b, n, heads, p).transpose(0, 2, 1, 3)
    rep = rep.reshape(b, r * r, heads, p).transpose(0, 2, 1, 3)
    scale = p**-0.5
    attn = _softmax(rep @ w.transpose(0, 1, 3, 2) * scale)
    rep = rep + step_rep[:, None, None] * (attn @ w)
    rep_attn = _softmax(rep @ rep.transpose(0, 1, 3, 2) * scale)
    x_delta = attn.transpose(0, 1, 3, 2) @ (rep_attn @ rep)
    return step_x[:, None, None] * x_delta  # [b, h, n, p]


@pytest.mark.parametrize("g", [8, 10])
def test_cbsa_is_the_reference_forward(x64, rng, g):
    heads, p, r = 3, 4, 8
    w_flat = rng.normal(size=(2, g * g + 1, heads * p))
    step_x, step_rep = rng.normal(size=heads), rng.normal(size=heads)
    expected = _reference_cbsa(w_flat, heads, step_x, step_rep, g, r)
    w = jnp.asarray(w_flat.reshape(2, -1, heads, p).transpose(0, 2, 1, 3))
    rule = cj.GridPooling(grid=(g, g), cells=(r, r), prefix=1, selection=cj.Selection.REFERENCE)
    assert rel_err(att.cbsa(w, step_x, step_rep, representatives=rule), expected) < 1e-12


def test_tokens_as_representatives_is_mssa(rng):
    w = rng.normal(size=(2, 3, 17, 8))
    general = att.contract_and_broadcast(
        w, representatives=cj.AllTokens(), extraction="none", contraction="softmax",
        broadcast="exact")
    expected = _softmax(w @ w.transpose(0, 1, 3, 2) / np.sqrt(8)) @ w
    assert rel_err(general.out, att.mssa(jnp.asarray(w, jnp.float32))) < 1e-6
    with jax.enable_x64(True):
        w64 = jnp.asarray(w)
        general = att.contract_and_broadcast(
            w64, representatives=cj.AllTokens(), extraction="none", contraction="softmax",
            broadcast="exact")
        assert rel_err(general.out, att.mssa(w64)) < 1e-14
        assert rel_err(att.mssa(w64), expected) < 1e-13


def test_first_order_gap_shrinks_like_alpha_cubed(x64, rng):
    """alpha = p/(N eps^2); scaling eps by sqrt(2) halves alpha and must divide the gap by 8."""
    w = rng.normal(size=(2, 64, 4)) / 4
    gaps = []
    for k in range(5):
        eps = 4.0 * 2 ** (k / 2)
        exact = att.exact_contraction(w, eps)
        first = att.first_order_contraction(w, eps)
        gaps.append(float(jnp.max(jnp.abs(exact - first))))
    ratios = np.array(gaps[:-1]) / np.array(gaps[1:])
    assert np.all(np.abs(ratios - 8.0) < 0.5), ratios
    assert abs(ratios[-1] - 8.0) < abs(ratios[0] - 8.0)  # converging to the alpha^3 rate


def test_linear_is_the_first_order_step_computed_as_linear_attention(x64, rng):
    w = rng.normal(size=(2, 3, 50, 4))
    eps, gamma = 2.0, rng.normal(size=3)
    alpha = 4 / (50 * eps**2)
    quadratic = (w @ w.transpose(0, 1, 3, 2)) @ w  # the N x N form
    expected = -gamma[:, None, None] * (alpha * w - alpha**2 * quadratic)
    assert rel_err(att.linear(w, gamma, eps=eps), expected) < 1e-12
    # and the cubic term is (unnormalised, tied) linear attention: q (k^T v)
    assert rel_err(w @ (w.transpose(0, 1, 3, 2) @ w), quadratic) < 1e-12


def test_channel_attention_is_the_push_through_of_the_token_solve(x64, rng):
    w = rng.normal(size=(2, 3, 30, 4))
    eps, gamma = 0.8, rng.normal(size=3)
    token_side = att.contract_and_broadcast(
        w, representatives=cj.AllTokens(), extraction="none", contraction="exact",
        broadcast="exact", eps=eps, step_x=gamma).out
    # the token-side N x N solve, written out
    alpha = 4 / (30 * eps**2)
    sys_n = np.eye(30) + alpha * w @ w.transpose(0, 1, 3, 2)
    explicit = -gamma[:, None, None] * alpha * np.linalg.solve(sys_n, w)
    channel = att.channel(w, gamma, eps=eps)
    assert rel_err(channel, explicit) < 1e-12
    assert rel_err(token_side, explicit) < 1e-12


def test_channel_surrogate_is_cross_covariance_attention(x64, rng):
    w = rng.normal(size=(2, 3, 30, 4))
    temp = np.array([0.5, 1.0, 2.0])
    wn = w / np.linalg.norm(w, axis=-2, keepdims=True)
    attn = _softmax(temp[:, None, None] * (wn.transpose(0, 1, 3, 2) @ wn))  # [p, p]
    expected = (attn @ w.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # XCiT: (A V^T)^T
    assert rel_err(att.channel(w, temperature=temp), expected) < 1e-12


def test_agent_form(x64, rng):
    rule = cj.GridPooling(grid=(4, 4), cells=(2, 2), prefix=1)
    w = rng.normal(size=(2, 3, 17, 4))
    general = att.contract_and_broadcast(w, representatives=rule, extraction="aggregate",
                                         contraction="identity", broadcast="token_softmax")
    assert rel_err(att.agent(w, representatives=rule), general.out) < 1e-14
    # untied q, k, v as the reference's ViT adaptation layer: softmax(q A^T) softmax(A k^T) v
    q, k, v = (rng.normal(size=(2, 3, 17, 4)) for _ in range(3))
    agents = np.einsum("mn,bhnp->bhmp", rule.matrix(17), q)
    expected = _softmax(q @ agents.transpose(0, 1, 3, 2) / 2) @ (
        _softmax(agents @ k.transpose(0, 1, 3, 2) / 2) @ v)
    assert rel_err(att.agent(q, k, v, representatives=rule), expected) < 1e-12


def test_cbsa_exact_is_the_gradient_step(x64, rng):
    rule = cj.GridPooling(grid=(5, 4), cells=(3, 2), prefix=1)
    x = rng.normal(size=(2, 21, 12))
    u = rng.normal(size=(12, 3, 4)) / np.sqrt(12)
    beta, eta, eps = rng.normal(size=3), 0.3, 0.6
    w = cj.heads(x, u)
    out = cj.project(att.cbsa_exact(w, eta, beta, representatives=rule, eps=eps), u)
    s = cj.extraction_weights(rule.pool(w), w)
    a = jnp.asarray(rule.matrix(21)) + beta[:, None, None] * s
    assert rel_err(out, cj.cbsa_step(x, u, a, eps, eta) - x) < 1e-12


def test_supplied_queries(x64, rng):
    w = rng.normal(size=(2, 3, 20, 4))
    queries = rng.normal(size=(3, 5, 4))
    beta = np.array([0.1, 0.2, 0.3])
    res = att.contract_and_broadcast(w, representatives=queries, extraction="step",
                                     contraction="exact", broadcast="exact", step_rep=beta,
                                     eps=0.5)
    s = _softmax(queries @ w.transpose(0, 1, 3, 2) / 2)
    q = queries + beta[:, None, None] * (s @ w)
    c = -np.asarray(cj.contract(q, 0.5))
    expected = (beta[:, None, None] * s).transpose(0, 1, 3, 2) @ c
    assert rel_err(res.out, expected) < 1e-12
    assert res.weights.shape == (2, 3, 5, 20)


def test_tssa_is_the_reference(x64, rng):
    w = rng.normal(size=(2, 3, 11, 4))
    temp = rng.normal(size=3)
    wn = w / np.linalg.norm(w, axis=-2, keepdims=True)
    pi = _softmax(np.sum(wn**2, -1) * temp[:, None], axis=1)
    dots = (pi / (pi.sum(-1, keepdims=True) + 1e-8))[:, :, None, :] @ (w**2)
    expected = -(w * pi[..., None]) * (1.0 / (1 + dots))
    assert rel_err(att.tssa(w, temp), expected) < 1e-12


def test_softmax_attention_with_separate_qkv(x64, rng):
    q, k, v = rng.normal(size=(2, 3, 7, 4)), rng.normal(size=(2, 3, 9, 4)), rng.normal(
        size=(2, 3, 9, 4))
    expected = _softmax(q @ k.transpose(0, 1, 3, 2) / 2) @ v
    assert rel_err(att.softmax(q, k, v), expected) < 1e-13
    f32 = att.softmax(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)))
    assert f32.dtype == jnp.float32 and rel_err(f32, expected) < 1e-5


@pytest.mark.parametrize("name", ["cbsa", "cbsa_exact", "mssa", "tssa", "linear", "agent",
                                  "channel"])
def test_bfloat16_inputs_stay_close_to_float32(rng, name):
    rule = cj.GridPooling(grid=(8, 8), cells=(4, 4), prefix=1)
    w = jnp.asarray(rng.normal(size=(2, 3, 65, 16)), jnp.float32)
    call = {
        "cbsa": lambda w: att.cbsa(w, 0.5, 0.5, representatives=rule),
        "cbsa_exact": lambda w: att.cbsa_exact(w, 0.5, 0.5, representatives=rule, eps=1.0),
        "mssa": att.mssa, "tssa": lambda w: att.tssa(w, jnp.ones(3)),
        "linear": lambda w: att.linear(w, 1.0, eps=1.0),
        "agent": lambda w: att.agent(w, representatives=rule),
        "channel": lambda w: att.channel(w),
    }[name]
    low, high = call(w.astype(jnp.bfloat16)), call(w)
    assert low.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(low)))
    assert rel_err(low, high) < 5e-2


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def test_cbsa_cost_is_linear_in_tokens_and_softmax_quadratic():
    """XLA's FLOP count at fixed m = 64: cbsa x4 for 4x the tokens, softmax about x16."""
    h, p = 6, 64
    flops = {}
    for g in (32, 64):
        rule = cj.GridPooling(grid=(g, g), cells=(8, 8), prefix=0)
        w = jax.ShapeDtypeStruct((1, h, g * g, p), jnp.float32)
        flops["cbsa", g] = _flops(
            lambda w, rule=rule: att.cbsa(w, jnp.ones(h), jnp.ones(h), representatives=rule), w)
        flops["softmax", g] = _flops(att.mssa, w)
    cbsa_ratio = flops["cbsa", 64] / flops["cbsa", 32]
    softmax_ratio = flops["softmax", 64] / flops["softmax", 32]
    assert abs(cbsa_ratio - 4.0) <= 0.3, cbsa_ratio
    assert softmax_ratio > 14.0, softmax_ratio


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda w: att.contract_and_broadcast(w, contraction="exact"), "eps is required"),
        (lambda w: att.contract_and_broadcast(w, contraction="exact", eps=0.0), "eps must be"),
        (lambda w: att.contract_and_broadcast(w, contraction="cubic"), "cubic"),
        (lambda w: att.cbsa(w, np.ones(4), 1.0, representatives=cj.AllTokens()),
         r"step_x must be a scalar or have shape \[\.\.\., H\] with H = 3"),
        (lambda w: att.cbsa(w, 1.0, 1.0, representatives=cj.GridPooling(grid=(3, 3),
                                                                          cells=(2, 2))),
         r"expects N = 10 tokens, got N = 17"),
        (lambda w: att.contract_and_broadcast(w, representatives=np.ones((3, 5, 2))),
         r"representatives must have shape \[\.\.\., H, m, p\] with size 4 at axis -1"),
        (lambda w: att.contract_and_broadcast(w, representatives=np.ones((3, 5, 4)),
                                              extraction="none", broadcast="exact"), "A = 0"),
        (lambda w: att.mssa(w[0, 0]), r"w must have shape \[\.\.\., H, N, p\]"),
        (lambda w: att.softmax(w, w[..., :2], w), "must agree"),
        (lambda w: att.agent(w, w[..., :3, :], representatives=cj.SegmentPooling(4)),
         "same shape"),
        (lambda w: att.contract_and_broadcast(w, representatives=cj.SegmentPooling(20)),
         r"segments must be an integer in \[1, 17\]"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    w = jnp.ones((2, 3, 17, 4))
    with pytest.raises(ValueError, match=match):
        call(w)
