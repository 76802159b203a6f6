"""The Flax NNX layers: jit, grad, dtypes, sequences, the Linen bridge, bad input."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cbsa_jax as cj
from cbsa_jax import nn as cnn
from cbsa_jax.models import create
from cbsa_jax.sharding import AXES
from tests._util import rel_err

D, H, P = 32, 2, 16
GRID = (4, 6)
N = 1 + GRID[0] * GRID[1]


#: The layers `_layers` builds (named here so that collecting the tests builds none).
LAYER_NAMES = ("cbsa", "cbsa_exact", "cbsa_queries", "cbsa_segments", "mssa", "tssa", "softmax",
               "linear", "channel", "channel_exact", "agent")


def _layers():
    rngs = nnx.Rngs(0)
    return {
        "cbsa": cnn.CBSA(D, H, P, cells=(2, 3), rngs=rngs),
        "cbsa_exact": cnn.CBSA(D, H, P, cells=(2, 3), contraction="exact", broadcast="exact",
                               rngs=rngs),
        "cbsa_queries": cnn.CBSA(D, H, P, representatives="queries", num_queries=5, rngs=rngs),
        "cbsa_segments": cnn.CBSA(D, H, P, representatives="segments", segments=4, rngs=rngs),
        "mssa": cnn.MSSA(D, H, P, rngs=rngs),
        "tssa": cnn.TSSA(D, H, P, rngs=rngs),
        "softmax": cnn.SoftmaxAttention(D, H, P, qkv_bias=True, rngs=rngs),
        "linear": cnn.LinearAttention(D, H, P, rngs=rngs),
        "channel": cnn.ChannelAttention(D, H, P, rngs=rngs),
        "channel_exact": cnn.ChannelAttention(D, H, P, exact=True, rngs=rngs),
        "agent": cnn.AgentAttention(D, H, P, cells=(2, 2), rngs=rngs),
    }


@pytest.fixture(scope="module")
def layers():
    built = _layers()
    assert tuple(built) == LAYER_NAMES
    return built


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_jit_and_grad_through_each_attention_layer(layers, name):
    layer = layers[name]
    x = jax.random.normal(jax.random.key(1), (2, N, D))

    @nnx.jit
    def loss_and_grad(layer, x):
        return nnx.value_and_grad(lambda l: jnp.mean(l(x, grid=GRID) ** 2))(layer)

    loss, grads = loss_and_grad(layer, x)
    eager = jnp.mean(layer(x, grid=GRID) ** 2)
    assert abs(float(loss) - float(eager)) <= 1e-5 * max(1.0, abs(float(eager)))
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves), name


@pytest.mark.parametrize("name", ["cbsa", "mssa", "agent"])
def test_bfloat16_compute_keeps_float32_softmax(name):
    rngs = nnx.Rngs(0)
    kw = dict(cells=(2, 3)) if name == "cbsa" else dict(cells=(2, 2)) if name == "agent" else {}
    cls = {"cbsa": cnn.CBSA, "mssa": cnn.MSSA, "agent": cnn.AgentAttention}[name]
    high = cls(D, H, P, rngs=rngs, **kw)
    low = cls(D, H, P, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, **kw)
    nnx.update(low, nnx.state(high))
    x = jax.random.normal(jax.random.key(2), (2, N, D))
    out_low, aux = low(x, grid=GRID, capture=True)
    assert out_low.dtype == jnp.bfloat16
    assert aux["effective_map"].dtype == jnp.float32
    assert rel_err(out_low, high(x, grid=GRID)) < 5e-2


def test_tied_exact_cbsa_layer_is_the_unrolled_gradient_step():
    layer = cnn.CBSA(D, H, P, cells=(2, 3), contraction="exact", broadcast="exact", eps=0.7,
                     tied_output=True, rngs=nnx.Rngs(3))
    assert not hasattr(layer, "out_kernel")
    x = jax.random.normal(jax.random.key(4), (2, N, D))
    u = layer.proj[0][...]
    gamma, beta = layer.step_x[...], layer.step_rep[...]
    rule = cj.GridPooling(grid=GRID, cells=(2, 3), prefix=1)
    w = cj.heads(x, u)
    a = jnp.asarray(rule.matrix(N), jnp.float32) + beta[:, None, None] * cj.extraction_weights(
        rule.pool(w), w)
    grad = jax.grad(cj.cbsa_objective)(x, u, a, 0.7)
    expected = -jnp.einsum("h,bhnd->bnd", gamma,
                           jnp.stack([jax.grad(cj.cbsa_objective)(
                               x, u[:, k:k + 1], a[:, k:k + 1], 0.7) for k in range(H)], 1))
    np.testing.assert_allclose(layer(x, grid=GRID), expected, atol=1e-5)
    # with a shared step size it is exactly x -> -eta * grad L
    nnx.update(layer, nnx.State({"step_x": nnx.Param(jnp.full((H,), 0.3))}))
    np.testing.assert_allclose(layer(x, grid=GRID), -0.3 * grad, atol=1e-5)


def test_sequences_with_segment_pooling_and_learned_queries(layers):
    x = jax.random.normal(jax.random.key(5), (3, 50, D))  # a 1-D sequence: no grid, no cls
    seg = cnn.CBSA(D, H, P, representatives="segments", segments=7, prefix_tokens=0,
                   rngs=nnx.Rngs(0))
    out, aux = seg(x, capture=True)
    assert out.shape == x.shape and aux["weights"].shape == (3, H, 7, 50)
    out, aux = layers["cbsa_queries"](x, capture=True)
    assert out.shape == x.shape and aux["representatives"].shape == (3, H, 5, P)


def test_non_square_grid_and_capture(layers):
    x = jax.random.normal(jax.random.key(6), (2, N, D))
    out, aux = layers["cbsa"](x, grid=GRID, capture=True)
    assert out.shape == x.shape
    assert aux["weights"].shape == (2, H, 6, N)
    np.testing.assert_allclose(aux["weights"].sum(-1), 1.0, rtol=1e-5)
    s = np.asarray(aux["weights"])
    np.testing.assert_allclose(aux["effective_map"], np.einsum("bhmi,bhmj->bhij", s, s),
                               rtol=1e-5, atol=1e-6)


def test_block_is_pre_norm_with_ista_and_no_residual_around_it():
    block = cnn.Block(D, cnn.MSSA(D, H, P, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(7), (2, 9, D))
    out, aux = block(x, capture=True)
    ffn_in = x + block.attn(block.norm1(x))
    np.testing.assert_allclose(aux["ffn_in"], ffn_in, atol=1e-6)
    expected = cj.ista_step(block.norm2(ffn_in), block.ffn.weight[...])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert float(jnp.min(out)) >= 0.0  # ReLU output, no residual
    mlp_block = cnn.Block(D, cnn.MSSA(D, H, P, rngs=nnx.Rngs(0)), ffn="mlp", rngs=nnx.Rngs(1))
    ffn_in = x + mlp_block.attn(mlp_block.norm1(x))
    np.testing.assert_allclose(mlp_block(x), ffn_in + mlp_block.ffn(mlp_block.norm2(ffn_in)),
                               atol=1e-6)


def test_every_parameter_has_logical_axes(layers):
    model = nnx.eval_shape(lambda: create("cbt_nano", num_classes=3, image_size=32, depth=1))
    for module in [*layers.values(), model]:
        for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param)):
            axes = variable.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) == variable.ndim, path
            assert all(a is None or a in AXES for a in axes), (path, axes)


LINEN_LAYERS = {
    "cbsa": (cnn.CBSA, dict(cells=(2, 2))),
    "mssa": (cnn.MSSA, {}),
    "tssa": (cnn.TSSA, {}),
    "softmax": (cnn.SoftmaxAttention, {}),
    "linear": (cnn.LinearAttention, {}),
    "channel": (cnn.ChannelAttention, {}),
    "agent": (cnn.AgentAttention, dict(cells=(2, 2))),
}


class _LinenModel(linen.Module):
    """A Linen model that chains every NNX attention layer, then an ISTA step."""

    @linen.compact
    def __call__(self, x):
        x = linen.Dense(D)(x)
        for name, (cls, kwargs) in sorted(LINEN_LAYERS.items()):
            x = x + cnn.to_linen(cls, D, H, P, name=name, **kwargs)(x)  # 1 + 4 x 4 tokens
        x = cnn.to_linen(cnn.ISTA, D, name="ista")(x)
        return linen.Dense(3)(jnp.mean(x, axis=1))


def test_every_layer_works_inside_linen_models():
    x = jax.random.normal(jax.random.key(8), (2, 1 + 16, D))
    model = _LinenModel()
    variables = jax.jit(model.init)(jax.random.key(0), x)
    out = jax.jit(model.apply)(variables, x)
    assert out.shape == (2, 3) and bool(jnp.all(jnp.isfinite(out)))
    grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x) ** 2)))(variables)["params"]
    for name in [*LINEN_LAYERS, "ista"]:
        leaves = jax.tree_util.tree_leaves(grads[name])
        assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves), name
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves), name


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda l: l["cbsa"](jnp.ones((2, N, D + 1)), grid=GRID),
         r"x must have shape \[B, N, D\] with D = 32"),
        (lambda l: l["cbsa"](jnp.ones((2, 11, D))), "cannot infer a square grid from 10"),
        (lambda l: l["cbsa"](jnp.ones((2, N, D)), grid=(5, 5)),
         r"expects N = 26 tokens, got N = 25"),
        (lambda l: l["cbsa"](jnp.ones((2, 5, D)), grid=(2, 2)),
         r"cells\[1\] must be an integer in \[1, 2\] \(no more representatives than tokens\)"),
        (lambda l: cnn.CBSA(D, H, P, contraction="exact", eps=0.0, rngs=nnx.Rngs(0)),
         "eps must be a number > 0"),
        (lambda l: cnn.CBSA(D, 0, P, rngs=nnx.Rngs(0)), "heads must be a positive integer"),
        (lambda l: cnn.CBSA(D, H, P, representatives="pixels", rngs=nnx.Rngs(0)), "pixels"),
        (lambda l: cnn.Block(D, l["mssa"], ffn="moe", rngs=nnx.Rngs(0)), "ffn must be"),
        (lambda l: l["tssa"](jnp.ones((N, D))), r"x must have shape \[B, N, D\]"),
    ],
)
def test_bad_input_names_the_argument(layers, call, match):
    with pytest.raises(ValueError, match=match):
        call(layers)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_batch_norm_is_nnx_batch_norm_with_a_hand_written_backward(rng, dtype):
    """The same outputs, running statistics and gradients (parameters and input) as
    nnx.BatchNorm in training mode; eval mode and a mask are nnx.BatchNorm's own code."""
    kw = dict(momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    ours, ref = cnn.layers.BatchNorm(6, **kw), nnx.BatchNorm(6, **kw)
    values = {name: jnp.asarray(rng.normal(loc, 0.2, 6), jnp.float32)
              for name, loc in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0))}
    for bn in (ours, ref):
        for name, value in values.items():
            getattr(bn, name)[...] = value
    x = jnp.asarray(rng.normal(0.5, 2.0, (3, 5, 4, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    tol = 1e-5 if dtype is None else 2e-2

    def run(bn, train):
        graphdef, params, stats = nnx.split(bn, nnx.Param, ...)

        def loss(params, x):
            m = nnx.merge(graphdef, params, stats, copy=True)
            m.train() if train else m.eval()
            y = m(x)
            return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), (y, nnx.state(m, nnx.BatchStat))

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    for train in (True, False):
        ((_, (y, stats)), grads), ((_, (y_ref, stats_ref)), grads_ref) = run(ours, train), run(
            ref, train)
        assert y.dtype == y_ref.dtype == (dtype or jnp.float32)
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                                   rtol=tol, atol=tol)
        pairs = zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref)),
                    strict=True)
        for got, want in pairs:
            scale = float(jnp.max(jnp.abs(want)))
            assert scale > 0
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                       rtol=0, atol=tol * scale)
    # the statistics' own cotangents (a loss that reads the batch mean and variance)
    s, b = ours.scale[...], ours.bias[...]

    def stats_loss(fn, x):
        y, mean, var = fn(x)
        return jnp.sum(jnp.sin(y) * w) + jnp.sum(mean * jnp.arange(6.0)) + jnp.sum(jnp.sqrt(var))

    def plain(x):
        mean = jnp.mean(x, (0, 1, 2))
        var = jnp.mean(x * x, (0, 1, 2)) - mean**2
        return (x - mean) / jnp.sqrt(var + 1e-5) * s + b, mean, var

    got = jax.grad(lambda x: stats_loss(lambda x: cnn.layers.batch_norm_train(x, s, b, 1e-5), x))(x)
    np.testing.assert_allclose(got, jax.grad(lambda x: stats_loss(plain, x))(x), rtol=1e-4,
                               atol=1e-5)


def test_batch_norm_statistics_outside_the_cpu_are_autodiffs_with_the_same_values(rng):
    """Other platforms take autodiff's backward (`platform_dependent`): the same values and
    gradients as the CPU's hand-written one, and a GPU program lowers."""
    from jax import export

    x = jnp.asarray(rng.normal(size=(4, 3, 3, 6)), jnp.float32)
    s = jnp.asarray(rng.normal(size=6), jnp.float32)
    b = jnp.asarray(rng.normal(size=6), jnp.float32)
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(fn, x, s, b):
        y, mean, var = fn(x, s, b, 1e-5)
        return jnp.sum(jnp.sin(y) * w) + jnp.sum(mean * jnp.arange(6.0)) + jnp.sum(jnp.sqrt(var))

    want = jax.grad(lambda *a: loss(cnn.layers.batch_norm_train, *a), argnums=(0, 1, 2))(x, s, b)
    got = jax.grad(lambda *a: loss(cnn.layers._batch_norm_train_autodiff, *a),
                   argnums=(0, 1, 2))(x, s, b)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    step = jax.jit(jax.grad(lambda *a: loss(cnn.layers.batch_norm_statistics, *a)))
    assert "stablehlo" in export.export(step, platforms=["cuda"])(x, s, b).mlir_module()
    np.testing.assert_allclose(step(x, s, b), want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 33, 24), (3, 7, 24)])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_layer_norm_is_nnx_layer_norm_with_matrix_product_derivatives(rng, shape, dtype):
    """The same outputs and gradients (parameters and input) as nnx.LayerNorm, with and without
    a leading unit axis; forward mode and second derivatives work (a custom JVP, not a VJP)."""
    kw = dict(epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    ours, ref = cnn.layers.LayerNorm(24, **kw), nnx.LayerNorm(24, **kw)
    for ln in (ours, ref):
        ln.scale[...] = jnp.asarray(np.linspace(0.5, 1.5, 24), jnp.float32)
        ln.bias[...] = jnp.asarray(np.linspace(-0.3, 0.3, 24), jnp.float32)
    x = jnp.asarray(rng.normal(0.5, 2.0, shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    tol = 1e-5 if dtype is None else 2e-2

    def run(ln):
        graphdef, params = nnx.split(ln)

        def loss(params, x):
            y = nnx.merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), y

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)

    ((_, y), grads), ((_, y_ref), grads_ref) = run(ours), run(ref)
    assert y.dtype == y_ref.dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                               rtol=tol, atol=tol)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=0, atol=tol * scale)

    s, b = ours.scale[...], ours.bias[...]
    plain = lambda x, s, b: cnn.layers._layer_norm(x, s, b, 1e-5)[0]  # noqa: E731
    dots = lambda x, s, b: cnn.layers.layer_norm_dots(x, s, b, 1e-5)  # noqa: E731
    tangents = (w, jnp.asarray(rng.normal(size=24), jnp.float32),
                jnp.asarray(rng.normal(size=24), jnp.float32))
    jvp = jax.jit(lambda f: jax.jvp(f, (x, s, b), tangents)[1], static_argnums=0)
    np.testing.assert_allclose(jvp(dots), jvp(plain), rtol=1e-4, atol=1e-5)
    hvp = jax.jit(lambda f: jax.jvp(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, s, b)) * w)), (x,),
                                    (w,))[1], static_argnums=0)
    np.testing.assert_allclose(hvp(dots), hvp(plain), rtol=1e-4, atol=1e-4)
    # configurations the fast path does not cover are nnx.LayerNorm's own code, value for value
    two_pass = dict(kw, use_fast_variance=False)
    np.testing.assert_array_equal(cnn.layers.LayerNorm(24, **two_pass)(x),
                                  nnx.LayerNorm(24, **two_pass)(x))


def test_layer_norm_backward_reduces_only_through_matrix_products(rng):
    """Differentiated, the statistics and every reduction of the backward are matrix products
    (`dot_general`): no `reduce_sum` for XLA:CPU to fuse into another reduction."""
    x = jnp.asarray(rng.normal(size=(1, 9, 8)), jnp.float32)
    s, b = jnp.ones(8), jnp.zeros(8)

    def forward_and_backward(x, s, b, g):
        y, pullback = jax.vjp(lambda *a: cnn.layers.layer_norm_dots(*a, 1e-5), x, s, b)
        return y, pullback(g)

    def eqns(jaxpr):
        """Every equation of `jaxpr` and of the jaxprs nested in its equations."""
        for e in jaxpr.eqns:
            yield e
            for value in e.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        yield from eqns(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        yield from eqns(sub)

    def reductions(jaxpr):
        """(primitive, operand shape, axes) of every reduction over an axis longer than 1 (a
        sum over a unit axis, which transposes of broadcasts leave, is a reshape)."""
        return [(e.primitive.name, e.invars[0].aval.shape, e.params["axes"]) for e in eqns(jaxpr)
                if e.primitive.name.startswith("reduce_")
                and any(e.invars[0].aval.shape[a] > 1 for a in e.params["axes"])]

    closed = jax.make_jaxpr(forward_and_backward)(x, s, b, x)
    assert reductions(closed.jaxpr) == []
    assert sum(e.primitive.name == "dot_general" for e in eqns(closed.jaxpr)) >= 4
    # undifferentiated, the statistics are the plain reductions over the features
    plain = jax.make_jaxpr(cnn.layers.layer_norm_dots, static_argnums=3)(x, s, b, 1e-5)
    assert reductions(plain.jaxpr) == [("reduce_sum", (1, 9, 8), (2,))] * 2


def test_layer_norm_outside_the_cpu_is_autodiff_of_the_same_formula(rng):
    """Other platforms take autodiff of the plain formula (`platform_dependent`): the same values
    and gradients, and a GPU program lowers."""
    from jax import export

    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    s = jnp.asarray(rng.normal(size=8), jnp.float32)
    b = jnp.asarray(rng.normal(size=8), jnp.float32)
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(fn, x, s, b):
        return jnp.sum(jnp.sin(fn(x, s, b)) * w)

    want = jax.jit(jax.grad(lambda *a: loss(lambda *a: cnn.layers.layer_norm_dots(*a, 1e-5), *a),
                            argnums=(0, 1, 2)))(x, s, b)
    got = jax.jit(jax.grad(lambda *a: loss(lambda *a: cnn.layers._layer_norm(*a, 1e-5)[0], *a),
                           argnums=(0, 1, 2)))(x, s, b)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    step = jax.jit(jax.grad(lambda *a: loss(
        lambda *a: cnn.layers.layer_norm_apply(*a, 1e-5), *a)))
    assert "stablehlo" in export.export(step, platforms=["cuda"])(x, s, b).mlir_module()
    np.testing.assert_allclose(step(x, s, b), want[0], rtol=1e-5, atol=1e-6)
