"""The conv stem is the reference's: `conv3x3_stride2` is XLA's stride-2 convolution with the same
derivatives (reverse and forward mode), and with its GELU through erf the stem gives the outputs
and gradients of the same stem built from `nnx.Conv` and `jax.nn.gelu(approximate=False)`, in
training and in eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cbsa_jax.models.vit import ConvPatchEmbed, _conv3x3_s2_phases, conv3x3_stride2, gelu_erf


def test_gelu_erf_is_the_exact_gelu():
    x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float32)
    np.testing.assert_allclose(gelu_erf(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=1e-6)
    grad = jax.vmap(jax.grad(gelu_erf))(x)
    expected = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-6)
    assert not np.allclose(gelu_erf(x), jax.nn.gelu(x, approximate=True), atol=1e-4)
    assert gelu_erf(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def _direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 16, 16, 3, 5), (1, 15, 13, 4, 6), (2, 2, 3, 2, 3)])
def test_conv3x3_stride2_is_the_strided_convolution_with_its_derivatives(rng, shape):
    n, h, w, ci, co = shape
    x = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, ci, co)), jnp.float32)
    out = conv3x3_stride2(x, k)
    assert out.shape == (n, (h + 1) // 2, (w + 1) // 2, co)
    np.testing.assert_allclose(out, _direct(x, k), rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    for got, want in zip(jax.vjp(conv3x3_stride2, x, k)[1](g), jax.vjp(_direct, x, k)[1](g),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    tx = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    tk = jnp.asarray(rng.normal(size=k.shape), jnp.float32)
    _, t_got = jax.jvp(conv3x3_stride2, (x, k), (tx, tk))
    _, t_want = jax.jvp(_direct, (x, k), (tx, tk))
    np.testing.assert_allclose(t_got, t_want, rtol=1e-5, atol=1e-4)

    def mixed(conv):  # second order: the kernel gradient of <input gradient, tx>
        def inner(k):
            return jnp.sum(jax.grad(lambda y: jnp.sum(conv(y, k) * g))(x) * tx)
        return jax.grad(inner)(k)

    want = mixed(_direct)
    assert float(jnp.max(jnp.abs(want))) > 0
    np.testing.assert_allclose(mixed(conv3x3_stride2), want, rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))
    assert conv3x3_stride2(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_the_phase_forms_transpose_does_the_forwards_nine_taps():
    """The CPU's input gradient is four stride-1 convolutions whose kernels have 2 x 2, 2 x 1,
    1 x 2 and 1 x 1 taps: nine, as many multiply-adds as the forward (space-to-depth did 16)."""
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    k = jnp.ones((3, 3, 3, 5))
    transpose = jax.linear_transpose(lambda x: _conv3x3_s2_phases(x, k), x)
    jaxpr = jax.make_jaxpr(transpose)(jnp.ones((2, 8, 8, 5))).jaxpr
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    taps = sorted(e.invars[1].aval.shape[0] * e.invars[1].aval.shape[1] for e in convs)
    assert taps == [1, 2, 2, 4]
    for e in convs:
        assert e.params["window_strides"] == (1, 1)
        assert set(e.params["lhs_dilation"]) == {1}  # no zero-dilated output gradient


def _with_erfc_gelu(stem, images):
    """The stem as it was: `nnx.Conv` and the same norms, `jax.nn.gelu` between them."""
    x = images
    for i, (conv, norm) in enumerate(zip(stem.convs, stem.norms, strict=True)):
        if i:
            x = jax.nn.gelu(x, approximate=False)
        x = norm(conv(x))
    return x.reshape(x.shape[0], -1, x.shape[-1])


@pytest.mark.parametrize("train", [True, False])
def test_stem_matches_the_erfc_gelu_stem(rng, train):
    stem = ConvPatchEmbed(32, 8, rngs=nnx.Rngs(0))
    for norm in stem.norms:  # eval mode must use running statistics that are not (0, 1)
        norm.mean[...] = jnp.asarray(rng.normal(0, 0.1, norm.mean.shape), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.var.shape), jnp.float32)
    stem.train() if train else stem.eval()
    graphdef, params, rest = nnx.split(stem, nnx.Param, ...)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)

    def loss(fn, params, images):
        out = fn(nnx.merge(graphdef, params, rest, copy=True), images)
        return jnp.sum(jnp.sin(out) * weights), out

    results = [jax.jit(jax.value_and_grad(lambda p, x, fn=fn: loss(fn, p, x), argnums=(0, 1),
                                          has_aux=True))(params, images)
               for fn in (lambda m, x: m(x), _with_erfc_gelu)]
    ((_, out), grads), ((_, out_ref), grads_ref) = results
    assert out.shape == (2, 16, 32)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_the_cheaper_input_gradient_is_the_cpus_only():
    """The phase-form input gradient is chosen for the CPU when the program is lowered; a GPU
    program keeps XLA's (cuDNN's) own, a convolution over the dilated output gradient."""
    from jax import export

    x, k = jnp.ones((2, 16, 16, 3)), jnp.ones((3, 3, 3, 5))
    grad = jax.jit(lambda x, k: jax.grad(lambda x: jnp.sum(conv3x3_stride2(x, k) ** 2))(x))
    text = {p: export.export(grad, platforms=[p])(x, k).mlir_module() for p in ("cpu", "cuda")}
    assert "lhs_dilate = [2, 2]" in text["cuda"]
    assert "lhs_dilate" not in text["cpu"]
