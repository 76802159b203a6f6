"""Every closed-form step equals jax.grad of the objective shipped beside it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from cbsa_jax.interpret import union_of_subspaces
from tests._util import rel_err

# (batch, N, D, H, p, m): m < p, m > p and m = N, with and without batch dims, H in {1, 3}.
SHAPES = [
    ((), 12, 10, 1, 6, 3),
    ((2,), 12, 10, 3, 4, 9),
    ((2, 3), 8, 6, 3, 5, 8),
    ((4,), 20, 16, 1, 4, 20),
    ((), 30, 9, 3, 3, 7),
]
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def _problem(rng, batch, n, d, h, p, m, dtype):
    x = rng.normal(size=batch + (n, d))
    u = rng.normal(size=(d, h, p)) / np.sqrt(d)
    a = rng.normal(size=batch + (h, m, n)) / np.sqrt(n)
    return tuple(np.asarray(t, dtype) for t in (x, u, a))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_cbsa_gradient_equals_autodiff(rng, shape, dtype):
    with jax.enable_x64(dtype == "float64"):
        x, u, a = _problem(rng, *shape, dtype)
        auto_fn, closed_fn = jax.jit(jax.grad(cj.cbsa_objective)), jax.jit(cj.cbsa_gradient)
        for eps in (0.5, 2.0):
            auto, closed = auto_fn(x, u, a, eps), closed_fn(x, u, a, eps)
            assert closed.dtype == np.dtype(dtype)
            assert rel_err(closed, auto) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("m,p", [(3, 7), (7, 3), (5, 5)])
def test_contract_is_the_gradient_of_the_rate_on_either_side(rng, m, p, dtype):
    with jax.enable_x64(dtype == "float64"):
        q = np.asarray(rng.normal(size=(2, m, p)), dtype)
        auto = jax.grad(lambda q: jnp.sum(cj.coding_rate(q, 0.4)))(q)
        for side in ("rows", "cols", "auto"):
            assert rel_err(cj.contract(q, 0.4, side=side), auto) <= TOLERANCE[dtype]


def test_the_three_stages_compose_to_the_gradient(x64, rng):
    x, u, a = _problem(rng, (2,), 12, 10, 3, 4, 5, "float64")
    q = cj.representatives_of(x, u, a)
    staged = cj.project(cj.broadcast(a, cj.contract(q, 0.5)), u)
    assert rel_err(staged, cj.cbsa_gradient(x, u, a, 0.5)) < 1e-14


def test_compression_gradient_equals_autodiff(x64, rng):
    x = rng.normal(size=(2, 40, 12))
    u = rng.normal(size=(12, 3, 4)) / np.sqrt(12)
    auto = jax.grad(lambda x: jnp.sum(cj.compression_rate(x, u, 0.5)))(x)
    assert rel_err(cj.compression_gradient(x, u, 0.5), auto) <= 1e-10


@pytest.mark.parametrize("shape", SHAPES)
def test_small_step_does_not_increase_the_objective(x64, rng, shape):
    x, u, a = _problem(rng, *shape, "float64")
    objective, step = jax.jit(cj.cbsa_objective), jax.jit(cj.cbsa_step)
    before = objective(x, u, a, 0.5)
    for eta in (1e-2, 1e-3):
        after = objective(step(x, u, a, 0.5, eta), u, a, 0.5)
        assert after < before


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_extraction_step_is_an_ascent_step_on_its_objective(rng, dtype):
    with jax.enable_x64(dtype == "float64"):
        q = np.asarray(rng.normal(size=(2, 3, 5, 4)), dtype)
        w = np.asarray(rng.normal(size=(2, 3, 11, 4)), dtype)
        auto = jax.grad(cj.extraction_objective)(q, w)
        s = cj.extraction_weights(q, w)
        np.testing.assert_allclose(np.sum(np.asarray(s), -1), 1.0, rtol=1e-6)
        assert rel_err(s @ w, auto) <= TOLERANCE[dtype]
        beta = np.asarray([0.5, -1.0, 2.0], dtype)
        stepped = cj.extraction_step(q, w, beta)
        assert rel_err(stepped, q + beta[:, None, None] * np.asarray(auto)) <= TOLERANCE[dtype]
        up = cj.extraction_objective(cj.extraction_step(q, w, 1e-3), w)
        assert up > cj.extraction_objective(q, w)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ista_step_is_a_proximal_gradient_step(rng, dtype):
    with jax.enable_x64(dtype == "float64"):
        x = np.asarray(rng.normal(size=(2, 7, 6)), dtype)
        m = np.asarray(rng.normal(size=(6, 6)) / 3, dtype)
        grad_at_x = jax.grad(cj.ista_data_term)(x, x, m)
        expected = jax.nn.relu(x - 0.1 * grad_at_x - 0.1 * 0.1)
        assert rel_err(cj.ista_step(x, m), expected) <= TOLERANCE[dtype]
        # and, written out as the reference computes it
        ref = np.maximum(x + 0.1 * (x @ m - (x @ m.T) @ m) - 0.01, 0)
        assert rel_err(cj.ista_step(x, m, eta=0.1, lam=0.1), ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("shape", [(3, 8), (2, 9, 8), (40, 8)])
def test_ista_step_both_associations_agree(x64, rng, shape):
    x = rng.normal(size=shape)
    m = rng.normal(size=(8, 8)) / 3
    op = cj.unroll.ista_step(x, m, association="operator")
    tok = cj.unroll.ista_step(x, m, association="tokens")
    np.testing.assert_allclose(op, tok, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cj.ista_step(x, m), tok, rtol=1e-12, atol=1e-12)
    assert op.dtype == jnp.float64 and float(jnp.max(op)) > 0  # not all clipped by the ReLU
    grads = [jax.grad(lambda x, m, a=a: jnp.sum(jnp.sin(cj.unroll.ista_step(x, m, association=a))),
                      argnums=(0, 1))(x, m) for a in ("operator", "tokens")]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _ista_products(x_shape, d):
    """The [*, D] x [D, D] products `ista_step` traces for an input of `x_shape`, by kind."""
    jaxpr = jax.make_jaxpr(cj.ista_step)(jnp.zeros(x_shape), jnp.zeros((d, d)))
    shapes = [tuple(e.invars[0].aval.shape) for e in jaxpr.jaxpr.eqns
              if e.primitive.name == "dot_general"]
    return sum(len(s) == 2 and s[0] == d for s in shapes), len(shapes)


def test_ista_association_flips_where_the_multiply_adds_do():
    d = 64
    # operator: T D^2 + D^3 against tokens: 3 T D^2, equal at T = D / 2
    assert cj.unroll.ista_association(d // 2 - 1, d) == "tokens"
    assert cj.unroll.ista_association(d // 2, d) == "tokens"  # a tie keeps the reference's form
    assert cj.unroll.ista_association(d // 2 + 1, d) == "operator"
    assert cj.unroll.ista_association(197, 384) == "operator"  # CBT-S, one image
    assert cj.unroll.ista_association(197, 768) == "tokens"  # CBT-B, one image
    assert cj.unroll.ista_association(8 * 197, 768) == "operator"  # CBT-B, a batch of 8
    # the traced program follows the choice: the total token count decides, batch dims included
    assert _ista_products((1, 20, d), d) == (0, 3)  # 20 tokens < 32: three token products
    assert _ista_products((2, 20, d), d) == (1, 2)  # 40 tokens: M^T M, then one token product
    assert _ista_products((40, d), d) == (1, 2)
    with pytest.raises(ValueError, match="association must be"):
        cj.unroll.ista_step(np.ones((3, 4)), np.ones((4, 4)), association="left")


def test_ista_step_does_not_increase_its_objective(x64, rng):
    x = np.abs(rng.normal(size=(9, 6)))  # Z = X must be feasible (Z >= 0)
    m = rng.normal(size=(6, 6)) / 3
    eta = 0.9 / np.linalg.norm(m, 2) ** 2  # below 1/L for the smooth part
    before = cj.ista_objective(x, x, m, lam=0.1)
    after = cj.ista_objective(cj.ista_step(x, m, eta=eta, lam=0.1), x, m, lam=0.1)
    assert after < before
    assert cj.ista_objective(-x, x, m) == np.inf


def test_synthetic_compression_lowers_the_all_token_rate_every_step(rng):
    """Tokens on a union of 4 random 4-dim subspaces of R^32 plus small noise: 10 exact CBSA steps
    with the true bases as U (16 segment-pooled representatives refined by one extraction step)
    lower the all-token R^c at every step."""
    n, eps, eta = 256, 0.5, 2.0
    x, bases, _ = union_of_subspaces(rng, subspaces=4, dim=4, ambient=32, tokens=n, noise=0.05)
    x = jnp.asarray(x, jnp.float32)
    u = jnp.asarray(bases, jnp.float32)
    reps = cj.SegmentPooling(16)
    pool = jnp.asarray(reps.matrix(n), jnp.float32)
    rates = [float(cj.compression_rate(x, u, eps))]
    for _ in range(10):
        w = cj.heads(x, u)
        a = pool + cj.extraction_weights(reps.pool(w), w)
        x = cj.cbsa_step(x, u, a, eps, eta)
        rates.append(float(cj.compression_rate(x, u, eps)))
    assert np.all(np.diff(rates) < 0), rates
    assert rates[-1] < rates[0] - 0.3


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cj.contract(np.ones((3, 2)), 0.0), "eps must be a finite number > 0"),
        (lambda: cj.cbsa_gradient(np.ones((4, 5)), np.ones((5, 2, 3)), np.ones((2, 2, 4)), -1.0),
         "eps must be"),
        (lambda: cj.broadcast(np.ones((2, 3, 4)), np.ones((2, 5, 4))),
         r"C must have shape \[\.\.\., H, m, p\] with size 3"),
        (lambda: cj.project(np.ones((2, 4, 3)), np.ones((5, 3, 3))), r"B must have shape"),
        (lambda: cj.extraction_weights(np.ones((3, 4)), np.ones((5, 3))),
         r"W must have shape \[\.\.\., N, p\] with size 4"),
        (lambda: cj.extraction_objective(np.ones((3, 4)), np.ones((5, 4)), tau=0.0),
         "tau must be a finite number > 0"),
        (lambda: cj.ista_step(np.ones((3, 4)), np.ones((4, 5))), r"M must have shape \[D, D\]"),
        (lambda: cj.ista_step(np.ones((3, 4)), np.ones((4, 4)), eta=0.0), "eta must be"),
        (lambda: cj.ista_step(np.ones((3, 4)), np.ones((4, 4)), lam=-1.0), "lam must be"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
