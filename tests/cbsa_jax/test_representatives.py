"""Grid pooling reproduces torch's AdaptiveAvgPool2d bins; unpooling is its exact transpose."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import cbsa_jax as cj
from cbsa_jax import representatives as reps
from tests._util import rel_err


def _loop_pool(grid_tokens, gh, gw, rh, rw):
    """Direct loop over torch's bins [floor(i*g/r), ceil((i+1)*g/r)): [gh*gw, c] -> [rh*rw, c]."""
    x = grid_tokens.reshape(gh, gw, -1)
    out = np.zeros((rh, rw, x.shape[-1]))
    for i in range(rh):
        for j in range(rw):
            h0, h1 = math.floor(i * gh / rh), math.ceil((i + 1) * gh / rh)
            w0, w1 = math.floor(j * gw / rw), math.ceil((j + 1) * gw / rw)
            out[i, j] = x[h0:h1, w0:w1].mean(axis=(0, 1))
    return out.reshape(rh * rw, -1)


GRIDS = [((8, 8), (8, 8)), ((16, 16), (8, 8)), ((10, 10), (8, 8)), ((14, 14), (8, 8)),
         ((7, 12), (3, 5)), ((9, 6), (4, 4)), ((5, 3), (5, 2)), ((6, 4), (3, 2))]


@pytest.mark.parametrize("grid,cells", GRIDS)
def test_grid_pooling_matches_a_loop_over_torch_bins(rng, grid, cells):
    x = rng.normal(size=(grid[0] * grid[1], 5)).astype(np.float32)
    expected = _loop_pool(x, *grid, *cells)
    np.testing.assert_allclose(reps.pool_grid(jnp.asarray(x), grid, cells), expected, atol=1e-6)
    np.testing.assert_allclose(reps.adaptive_pool_matrix(grid, cells) @ x, expected, atol=1e-6)


def test_bins_are_torchs():
    assert reps.adaptive_bins(10, 8) == ((0, 2), (1, 3), (2, 4), (3, 5), (5, 7), (6, 8), (7, 9),
                                         (8, 10))
    assert reps.adaptive_bins(14, 8)[1] == (1, 4)


@pytest.mark.parametrize("grid,cells", GRIDS)
def test_unpool_is_the_transpose(x64, rng, grid, cells):
    m, n = cells[0] * cells[1], grid[0] * grid[1]
    c = rng.normal(size=(2, m, 3))
    got = reps.unpool_grid(jnp.asarray(c), grid, cells)
    expected = np.einsum("mn,bmc->bnc", reps.adaptive_pool_matrix(grid, cells), c)
    assert rel_err(got, expected) < 1e-12
    assert got.shape == (2, n, 3)


def test_patch_selection_skips_the_prefix_and_reference_selection_reproduces_the_reference(rng):
    g, prefix = 10, 1
    w = rng.normal(size=(2, 3, prefix + g * g, 4))
    patches = cj.GridPooling(grid=(g, g), cells=(8, 8), prefix=prefix)
    reference = cj.GridPooling(grid=(g, g), cells=(8, 8), prefix=prefix,
                               selection=cj.Selection.REFERENCE)
    # true patches: tokens 1..100
    np.testing.assert_allclose(patches.pool(jnp.asarray(w))[0, 0], _loop_pool(w[0, 0, 1:], g, g,
                                                                              8, 8), atol=1e-6)
    # reference: w[:, :-1], i.e. tokens 0..99 with cls at cell (0, 0); last patch never pooled
    np.testing.assert_allclose(reference.pool(jnp.asarray(w))[1, 2], _loop_pool(w[1, 2, :-1], g,
                                                                                g, 8, 8), atol=1e-6)
    assert np.all(reference.matrix(prefix + g * g)[:, -1] == 0)
    assert np.all(patches.matrix(prefix + g * g)[:, 0] == 0)


@pytest.mark.parametrize("rule", [cj.GridPooling(grid=(5, 6), cells=(2, 4), prefix=2),
                                  cj.GridPooling(grid=(4, 4), cells=(2, 2), prefix=1,
                                                 selection="reference"),
                                  cj.SegmentPooling(segments=4, prefix=1),
                                  cj.SegmentPooling(segments=3),
                                  cj.AllTokens()])
def test_every_rule_pools_by_its_matrix_and_unpools_by_the_transpose(x64, rng, rule):
    n = {cj.GridPooling: lambda r: r.prefix + r.grid[0] * r.grid[1],
         cj.SegmentPooling: lambda r: 11, cj.AllTokens: lambda r: 9}[type(rule)](rule)
    mat = rule.matrix(n)
    assert mat.shape == (rule.num_representatives(n), n)
    np.testing.assert_allclose(mat.sum(axis=1), 1.0)  # averages
    w = rng.normal(size=(2, n, 3))
    assert rel_err(rule.pool(jnp.asarray(w)), mat @ w) < 1e-12
    c = rng.normal(size=(2, mat.shape[0], 3))
    assert rel_err(rule.unpool(jnp.asarray(c), n), mat.T @ c) < 1e-12


def test_segment_pooling_uses_adaptive_bins(rng):
    x = rng.normal(size=(10, 2))
    got = reps.pool_segments(jnp.asarray(x), 4)
    expected = [x[lo:hi].mean(0) for lo, hi in reps.adaptive_bins(10, 4)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cj.GridPooling(grid=(4, 4), cells=(5, 2)), r"cells\[0\] must be an integer in "
         r"\[1, 4\] \(no more representatives than tokens\)"),
        (lambda: cj.GridPooling(grid=(4,), cells=(2, 2)), "grid must be a pair"),
        (lambda: cj.GridPooling(grid=(4, 4), cells=(2, 2)).pool(jnp.ones((2, 20, 3))),
         r"grid \(4, 4\) with prefix 1 expects N = 17 tokens, got N = 20"),
        (lambda: cj.SegmentPooling(segments=9).pool(jnp.ones((5, 3))),
         r"segments must be an integer in \[1, 5\]"),
        (lambda: cj.SegmentPooling(segments=0), "segments must be a positive integer"),
        (lambda: cj.GridPooling(grid=(4, 4), prefix=0, selection="reference", cells=(2, 2)),
         "needs prefix >= 1"),
        (lambda: cj.GridPooling(grid=(4, 4), cells=(2, 2), selection="middle"), "middle"),
        (lambda: reps.square_grid(10), "cannot infer a square grid from 10"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
