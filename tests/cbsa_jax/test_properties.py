"""Property-based tests of the pure functions (hypothesis): random shapes, dtypes, eps, batch dims.

Shapes are drawn from small ranges so that XLA's per-shape compilations stay few.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbsa_jax as cj
from cbsa_jax import attention as att
from cbsa_jax.coding_rate import regularized_gram

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

batch_dims = st.sampled_from([(), (2,), (1, 2)])
sizes = st.sampled_from([2, 5])
eps_values = st.floats(0.2, 3.0)
dtypes = st.sampled_from([jnp.float32, jnp.bfloat16])


def _normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


@SETTINGS
@given(batch=batch_dims, m=sizes, p=sizes, eps=eps_values, seed=st.integers(0, 99),
       dtype=dtypes)
def test_the_solved_systems_are_symmetric_positive_definite(batch, m, p, eps, seed, dtype):
    q = _normal(seed, batch + (m, p), dtype).astype(jnp.float32)
    for side in ("rows", "cols"):
        system, _ = regularized_gram(q, cj.rate_scale(m, p, eps), side=side)
        system = np.asarray(system, np.float64)
        np.testing.assert_allclose(system, np.swapaxes(system, -1, -2), atol=1e-5)
        assert np.linalg.eigvalsh(system).min() >= 1.0 - 1e-4  # I + alpha G, G PSD
    rate = cj.coding_rate(q, eps)
    assert rate.shape == batch and bool(jnp.all(rate >= -1e-6))


EQUIVARIANT = [jax.jit(f) for f in (
    lambda w: att.contract_and_broadcast(w, extraction="none", contraction="exact",
                                         broadcast="exact", eps=0.7).out,
    lambda w: att.contract_and_broadcast(w, extraction="step", contraction="softmax").out,
    att.mssa,
    lambda w: att.linear(w, eps=1.0))]


@SETTINGS
@given(batch=batch_dims, n=st.sampled_from([3, 7]), h=st.sampled_from([1, 3]), p=sizes,
       seed=st.integers(0, 99))
def test_all_token_attention_is_permutation_equivariant(batch, n, h, p, seed):
    """With the tokens as their own representatives, permuting tokens permutes the output."""
    w = _normal(seed, batch + (h, n, p))
    perm = np.random.default_rng(seed).permutation(n)
    for fn in EQUIVARIANT:
        out = fn(w)
        np.testing.assert_allclose(fn(w[..., perm, :]), out[..., perm, :], rtol=2e-4, atol=2e-5)


OBJECTIVE, GRADIENT = jax.jit(cj.cbsa_objective), jax.jit(cj.cbsa_gradient)


@SETTINGS
@given(batch=batch_dims, n=st.sampled_from([4, 7]), d=st.sampled_from([3, 6]),
       h=st.sampled_from([1, 3]), p=sizes, m=st.sampled_from([1, 4]), eps=eps_values,
       seed=st.integers(0, 99))
def test_a_small_exact_step_never_increases_the_objective(batch, n, d, h, p, m, eps, seed):
    with jax.enable_x64(True):
        x = _normal(seed, batch + (n, d), jnp.float64)
        u = _normal(seed + 1, (d, h, p), jnp.float64) / np.sqrt(d)
        a = _normal(seed + 2, batch + (h, m, n), jnp.float64) / np.sqrt(n)
        before = OBJECTIVE(x, u, a, eps)
        grad = GRADIENT(x, u, a, eps)
        # a step of 1e-3 / ||grad|| moves X by 1e-3: far inside the region where L decreases
        eta = 1e-3 / max(float(jnp.linalg.norm(grad)), 1e-12)
        after = OBJECTIVE(x - eta * grad, u, a, eps)
        assert float(after) <= float(before)


@SETTINGS
@given(batch=batch_dims, m=sizes, p=sizes, seed=st.integers(0, 99), dtype=dtypes)
def test_contract_keeps_shape_and_dtype_and_is_finite(batch, m, p, seed, dtype):
    q = _normal(seed, batch + (m, p), dtype)
    c = cj.contract(q, 0.5)
    assert c.shape == q.shape and c.dtype == q.dtype and bool(jnp.all(jnp.isfinite(c)))


@SETTINGS
@given(rank=st.integers(0, 1), eps=st.floats(-2.0, 0.0))
def test_bad_shapes_and_eps_raise_value_error(rank, eps):
    with pytest.raises(ValueError, match="Q must have shape"):
        cj.coding_rate(jnp.ones((3,) * rank), 1.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        cj.coding_rate(jnp.ones((3, 2)), eps)
    with pytest.raises(ValueError, match="U must have shape"):
        cj.cbsa_gradient(jnp.ones((4, 5)), jnp.ones((6, 2, 3)), jnp.ones((2, 3, 4)), 1.0)
    with pytest.raises(ValueError, match=r"w must have shape \[\.\.\., H, N, p\]"):
        att.mssa(jnp.ones((3,) * (rank + 1)))
