"""The coding rate R(Q; eps), R^c and the CBSA objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from tests._util import rel_err


def _direct_rate(q, eps):
    """1/2 logdet(I_p + p/(m eps^2) Q^T Q) by numpy's slogdet, float64."""
    q = np.asarray(q, np.float64)
    m, p = q.shape[-2:]
    gram = np.einsum("...mi,...mj->...ij", q, q)
    _, logdet = np.linalg.slogdet(np.eye(p) + p / (m * eps**2) * gram)
    return 0.5 * logdet


@pytest.mark.parametrize("m,p", [(3, 8), (8, 3), (5, 5)])
def test_coding_rate_matches_logdet(x64, rng, m, p):
    q = rng.normal(size=(2, 4, m, p))
    got = cj.coding_rate(q, 0.7)
    assert got.shape == (2, 4)
    assert rel_err(got, _direct_rate(q, 0.7)) < 1e-12


@pytest.mark.parametrize("m,p", [(3, 8), (8, 3)])
def test_both_systems_give_the_same_rate(x64, rng, m, p):
    """Sylvester: logdet(I_m + a Q Q^T) = logdet(I_p + a Q^T Q)."""
    q = rng.normal(size=(m, p))
    rows, cols = cj.coding_rate(q, 0.3, side="rows"), cj.coding_rate(q, 0.3, side="cols")
    assert rel_err(rows, cols) < 1e-12


def test_bfloat16_input_is_measured_in_float32(rng):
    q = rng.normal(size=(16, 64)).astype(np.float32)
    low = cj.coding_rate(jnp.asarray(q, jnp.bfloat16), 0.1)
    assert low.dtype == jnp.float32
    exact = _direct_rate(np.asarray(jnp.asarray(q, jnp.bfloat16).astype(jnp.float32)), 0.1)
    assert rel_err(low, exact) < 1e-5


def test_rate_grows_with_spread_and_vanishes_at_zero(rng):
    q = rng.normal(size=(6, 4)).astype(np.float32)
    assert float(cj.coding_rate(np.zeros((6, 4), np.float32), 0.5)) == 0.0
    assert float(cj.coding_rate(2 * q, 0.5)) > float(cj.coding_rate(q, 0.5)) > 0.0


def test_compression_rate_is_the_objective_with_identity_coefficients(x64, rng):
    x = rng.normal(size=(3, 10, 12))
    u = rng.normal(size=(12, 3, 4))
    eye = np.broadcast_to(np.eye(10), (3, 3, 10, 10))
    per_sample = cj.compression_rate(x, u, 0.5)
    assert per_sample.shape == (3,)
    assert rel_err(jnp.sum(per_sample), cj.cbsa_objective(x, u, eye, 0.5)) < 1e-12
    direct = sum(_direct_rate(x[b] @ u[:, k], 0.5) for b in range(3) for k in range(3))
    assert rel_err(jnp.sum(per_sample), direct) < 1e-12


def test_objective_holds_coefficients_constant(x64, rng):
    """jax.grad in A must be zero: the objective treats A as data (stop_gradient)."""
    x, u = rng.normal(size=(7, 6)), rng.normal(size=(6, 2, 3))
    a = rng.normal(size=(2, 4, 7))
    g = jax.grad(cj.cbsa_objective, argnums=2)(x, u, a, 0.5)
    assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cj.coding_rate(np.ones((3, 2)), 0.0), "eps must be a finite number > 0"),
        (lambda: cj.coding_rate(np.ones((3, 2)), -1.0), "eps must be a finite number > 0"),
        (lambda: cj.coding_rate(np.ones((3,)), 1.0), r"Q must have shape \[\.\.\., m, p\]"),
        (lambda: cj.coding_rate(np.ones((3, 2), np.int32), 1.0), "Q must be a floating"),
        (lambda: cj.coding_rate(np.ones((3, 2)), 1.0, side="diag"), "side must be"),
        (
            lambda: cj.compression_rate(np.ones((4, 5)), np.ones((6, 2, 3)), 1.0),
            r"U must have shape \[D, H, p\] with size 5 at axis 0 \(D = X.shape\[-1\]\)",
        ),
        (
            lambda: cj.cbsa_objective(np.ones((4, 5)), np.ones((5, 2, 3)), np.ones((3, 2, 4)), 1.),
            r"A must have shape \[\.\.\., H, m, N\] with size 2 at axis -3",
        ),
        (
            lambda: cj.cbsa_objective(np.ones((4, 5)), np.ones((5, 2, 3)), np.ones((2, 2, 9)), 1.),
            r"A must have shape \[\.\.\., H, m, N\] with size 4 at axis -1 \(N = X.shape\[-2\]\)",
        ),
        (
            lambda: cj.cbsa_objective(
                np.ones((3, 4, 5)), np.ones((5, 2, 3)), np.ones((2, 2, 2, 4)), 1.0
            ),
            "batch dimensions must broadcast",
        ),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
