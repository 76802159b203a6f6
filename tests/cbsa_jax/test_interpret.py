"""The interpretation functions: shapes, ranges, and agreement with the core definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from cbsa_jax import interpret
from tests._models import forward, host_initialised


def test_layer_coding_rate_is_the_reference_measurement(x64, rng):
    z = rng.normal(size=(2, 9, 6))
    u = rng.normal(size=(6, 3, 4))
    expected = sum(np.asarray(cj.coding_rate(z @ u[:, k], 0.1)) for k in range(3))
    np.testing.assert_allclose(interpret.layer_coding_rate(z, u), expected, rtol=1e-12)
    # the reference's CodingRate: 1/2 logdet(I_m + p/(m e) W W^T) with e = 0.01
    w = z @ u[:, 1]
    m, p = w.shape[-2:]
    _, logdet = np.linalg.slogdet(np.eye(m) + p / (m * 0.01) * w @ np.swapaxes(w, -1, -2))
    np.testing.assert_allclose(cj.coding_rate(w, 0.1), logdet / 2, rtol=1e-12)
    unit = interpret.layer_coding_rate(z, u, normalize=True)
    assert unit.shape == (2,) and bool(jnp.all(unit < interpret.layer_coding_rate(10 * z, u)))


def test_sparsity_assignment_masks_and_jaccard():
    z = jnp.asarray([[[0.0, 1.0], [0.0, 0.0]], [[2.0, 3.0], [1.0, 0.5]]])
    np.testing.assert_allclose(interpret.sparsity(z), [0.75, 0.0])
    s = jnp.asarray([[0.7, 0.1, 0.4], [0.3, 0.9, 0.6]])  # [m=2, N=3]
    np.testing.assert_array_equal(interpret.hard_assignment(s), [0, 1, 1])
    values = jnp.asarray([[0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(interpret.top_mass_mask(values, 0.6),
                                  [[True, False, True, False], [True, True, True, False]])
    a = jnp.asarray([[True, True], [False, False]])
    b = jnp.asarray([[True, False], [True, False]])
    assert float(interpret.jaccard(a, b)) == pytest.approx(1 / 3)
    assert float(interpret.jaccard(jnp.zeros((2, 2), bool), jnp.zeros((2, 2), bool))) == 1.0


@pytest.mark.parametrize("name", ["cbt_nano", "crate_nano", "tost_nano", "vit_nano"])
def test_every_attention_type_exposes_its_maps(rng, name):
    model = host_initialised(name, rng=rng, num_classes=3, image_size=16, depth=1)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    _, info = forward(model, x, capture=True)
    layer = info["layers"][0]
    n = 1 + 4 * 4
    eff = np.asarray(layer["effective_map"])
    assert eff.shape == (2, 4, n, n) and np.all(np.isfinite(eff)) and np.all(eff >= 0)
    if name in ("crate_nano", "vit_nano"):  # softmax maps: rows sum to one
        np.testing.assert_allclose(eff.sum(-1), 1.0, rtol=1e-5)
    if name == "tost_nano":  # no token mixing: diagonal
        assert np.all(eff[..., ~np.eye(n, dtype=bool)] == 0)
    if name == "cbt_nano":
        s = np.asarray(layer["weights"])  # token -> representative
        assert s.shape == (2, 4, 16, n)
        np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(eff, np.einsum("bhmi,bhmj->bhij", s, s), rtol=1e-5,
                                   atol=1e-7)


def test_agent_maps_compose_the_two_softmaxes(rng):
    t = jax.nn.softmax(jnp.asarray(rng.normal(size=(5, 3))), -1)
    s = jax.nn.softmax(jnp.asarray(rng.normal(size=(3, 5))), -1)
    eff = interpret.agent_effective_map(t, s)  # token -> agents, then agents -> tokens: T S
    assert eff.shape == (5, 5)
    np.testing.assert_allclose(eff, np.asarray(t) @ np.asarray(s), rtol=1e-6)
    np.testing.assert_allclose(eff.sum(-1), 1.0, rtol=1e-6)
    # a model whose agents attend back to themselves is a different (and wrong) map
    assert not np.allclose(eff, np.asarray(s).T @ np.asarray(t).T, atol=1e-3)


def test_union_of_subspaces_and_principal_angles(rng):
    x, bases, labels = interpret.union_of_subspaces(rng, subspaces=3, dim=2, ambient=8,
                                                    tokens=60, noise=0.0)
    assert x.shape == (60, 8) and bases.shape == (8, 3, 2) and set(labels) <= {0, 1, 2}
    np.testing.assert_allclose(bases.reshape(8, 6).T @ bases.reshape(8, 6), np.eye(6),
                               atol=1e-12)
    own = x[labels == 0].T
    angles = np.asarray(interpret.principal_angles(jnp.asarray(bases[:, 0]), jnp.asarray(own)))
    np.testing.assert_allclose(angles, 0.0, atol=1e-3)
    other = interpret.principal_angles(jnp.asarray(bases[:, 0]), jnp.asarray(bases[:, 1]))
    np.testing.assert_allclose(other, np.pi / 2, atol=1e-5)
    with pytest.raises(ValueError, match="subspaces \\* dim"):
        interpret.union_of_subspaces(rng, subspaces=5, dim=4, ambient=8)
