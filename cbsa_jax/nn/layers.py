"""Flax NNX layers: each holds parameters and calls the pure functions of `cbsa_jax`.

Every attention layer maps `x [B, N, D] -> [B, N, D]` and accepts two keyword arguments:
`grid=(gh, gw)`, the patch grid behind the N tokens (layers that pool it need it; a square grid is
inferred when omitted), and `capture=True`, which returns `(out, aux)` with the layer's internals
(projections, token -> representative weights, representatives, the effective token-to-token map).

`dtype` is the compute dtype (None: the input's), `param_dtype` the storage dtype. Softmaxes,
coding-rate solves and normalisation statistics stay in float32 under bfloat16. Every parameter
carries `logical_axes` metadata for `cbsa_jax.sharding`. The causal layers (sequences) are in
`cbsa_jax.nn.causal`.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cbsa_jax import primitives, unroll
from cbsa_jax.attention import noncausal as att
from cbsa_jax.representatives import GridPooling, SegmentPooling, Selection, square_grid

__all__ = [
    "RepresentativeInit",
    "CBSA",
    "MSSA",
    "TSSA",
    "SoftmaxAttention",
    "LinearAttention",
    "AgentAttention",
    "ChannelAttention",
    "ISTA",
    "MLP",
    "Block",
    "BatchNorm",
    "LayerNorm",
    "layer_norm_dots",
    "layer_norm_apply",
    "batch_norm_train",
    "batch_norm_statistics",
]

def lecun(in_axis=-2, out_axis=-1):
    """Truncated normal with variance 1 / fan_in over `in_axis` (JAX's Dense default): at
    initialisation the projections keep unit scale, so attention logits are not all ~0."""
    return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                             in_axis=in_axis, out_axis=out_axis)


DEFAULT_INIT = lecun()
LN_EPS = 1e-5  # torch's LayerNorm default, as in the reference


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str | None, ...],
          param_dtype) -> nnx.Param:
    """A parameter with its logical sharding axes recorded as metadata."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    return nnx.Param(init(rngs.params(), shape, param_dtype), logical_axes=axes)


def layer_norm(dim: int, *, eps: float = LN_EPS, dtype, param_dtype,
               rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     scale_metadata={"logical_axes": ("embed",)},
                     bias_metadata={"logical_axes": ("embed",)})


def _mean_last(x):
    """The mean over the last axis as a matrix-vector product, `[..., D] -> [..., 1]`."""
    d = x.shape[-1]
    return jnp.matmul(x, jnp.full((d, 1), 1.0 / d, x.dtype), precision=jax.lax.Precision.HIGHEST)


def _spread_last(v, d: int):
    """`v [..., 1]` repeated `d` times along the last axis, as an outer product with ones: its
    transpose (a sum over the last axis) is then a matrix-vector product too."""
    return jnp.matmul(v, jnp.ones((1, d), v.dtype), precision=jax.lax.Precision.HIGHEST)


def _spread_rows(v, like):
    """`v [D]` repeated over the rows of `like [..., D]`, as an outer product with ones: its
    transpose (the sum over the rows) is a vector-matrix product."""
    rows = math.prod(like.shape[:-1])
    ones = jnp.ones((rows, 1), v.dtype)
    return jnp.matmul(ones, v[None, :], precision=jax.lax.Precision.HIGHEST).reshape(like.shape)


def _mean_reduce(x):
    return jnp.mean(x, axis=-1, keepdims=True)


def _layer_norm(x, scale, bias, eps, mean=_mean_reduce):
    mu = mean(x)
    rstd = jax.lax.rsqrt(jnp.maximum(mean(x * x) - mu * mu, 0.0) + eps)
    x_hat = (x - mu) * rstd
    return x_hat * scale + bias, x_hat, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def layer_norm_dots(x, scale, bias, eps):
    """Layer normalisation over the last axis whose derivatives reduce through matrix products.

    `x [..., D]`, `scale`, `bias [D]` -> `(x - mean) / sqrt(var + eps) * scale + bias`, with the
    biased variance `E[x^2] - E[x]^2` (as `nnx.LayerNorm` with `use_fast_variance`).
    Undifferentiated it is that formula. Differentiated, its statistics are matrix-vector
    products, and the JVP is written so that its transpose (the backward) reduces through matrix
    products only: the tangent's row means are sums (their transposes are broadcasts), and each
    broadcast in it (of the row statistics over the features, of the scale's and the bias's
    tangents over the rows) is an outer product with ones, whose transpose is a matrix-vector
    product. Autodiff of the plain formula leaves XLA:CPU (jaxlib 0.10) to fuse the statistics'
    row reductions into the parameter gradients' column reductions, or to emit them slowly with
    a leading unit axis: forward and backward of one `[1, 4,097, 384]` sequence took 13-16 ms
    that way, 2 ms this way (`python -m benchmarks.compare --cases layernorm`). Forward and
    reverse mode (a `jax.custom_jvp`). Compute in float32 or wider.
    """
    return _layer_norm(x, scale, bias, eps)[0]


@layer_norm_dots.defjvp
def _layer_norm_dots_jvp(eps, primals, tangents):
    x, scale, bias = primals
    t_x, t_scale, t_bias = tangents
    # the statistics as matrix products too: as reductions, XLA:CPU fuses them into the
    # backward's fusions that read x_hat (about twice the time at [1, 4,097, 384])
    y, x_hat, rstd = _layer_norm(x, scale, bias, eps, _mean_last)
    d = x.shape[-1]
    t_centred = t_x - _spread_last(_mean_reduce(t_x), d)
    t_hat = rstd * (t_centred - x_hat * _spread_last(_mean_reduce(t_centred * x_hat), d))
    t_y = t_hat * scale + x_hat * _spread_rows(t_scale, x) + _spread_rows(t_bias, x)
    return y, t_y


def layer_norm_apply(x, scale, bias, eps):
    """Layer normalisation over the last axis: on the CPU through `layer_norm_dots`, elsewhere
    autodiff of the same formula (`jax.lax.platform_dependent`, chosen when the program is
    lowered)."""
    return jax.lax.platform_dependent(
        x, scale, bias, cpu=lambda x, s, b: layer_norm_dots(x, s, b, eps),
        default=lambda x, s, b: _layer_norm(x, s, b, eps)[0])


class LayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` (the same variables) whose normalisation over the last axis with a scale
    and a bias goes through `layer_norm_apply` (on the CPU, `layer_norm_dots`), in float32 or
    wider. Other configurations (a mask, an `axis_name`, other axes, no scale or bias,
    `use_fast_variance=False`) are `nnx.LayerNorm`'s own code."""

    def __call__(self, x, *, mask=None):
        if (mask is not None or self.axis_name is not None or self.scale is None
                or self.bias is None or not self.use_fast_variance
                or self.reduction_axes not in (-1, (-1,)) or self.feature_axes not in (-1, (-1,))):
            return super().__call__(x, mask=mask)
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]),
                                            dtype=self.dtype)
        compute = jnp.promote_types(x.dtype, jnp.float32)
        y = layer_norm_apply(x.astype(compute), scale.astype(compute), bias.astype(compute),
                             self.epsilon)
        return y.astype(x.dtype)


@jax.custom_vjp
def batch_norm_train(x, scale, bias, eps):
    """Training-mode batch normalisation over all axes but the last, with a hand-written backward.

    `x [..., C]`, `scale`, `bias [C]` -> `(y, mean, var)`: `y = (x - mean) / sqrt(var + eps) *
    scale + bias` with the batch statistics (`var = E[x^2] - E[x]^2`, the biased variance, as
    `nnx.BatchNorm` with `use_fast_variance`). The backward is two reductions (`sum g` and
    `sum g x`) and one elementwise pass, and keeps `x`, not the normalised `x`: fewer passes
    over the activations than autodiff of `nnx.BatchNorm` (`python -m benchmarks.models` times
    the conv stems that use it). Compute in float32 or wider. Reverse mode only (a
    `jax.custom_vjp`): `jax.jvp` through it raises.
    """
    return _batch_norm_train_fwd(x, scale, bias, eps)[0]


def _batch_norm_train_fwd(x, scale, bias, eps):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    a = scale * rstd
    return (x * a + (bias - mean * a), mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(residuals, cotangents):
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    m = math.prod(x.shape[:-1])
    g_bias = jnp.sum(g, axes)
    g_scale = rstd * (jnp.sum(g * x, axes) - mean * g_bias)  # sum g * x_hat
    a = scale * rstd
    # d/dx of y: a (g - mean(g) - x_hat mean(g x_hat)); of mean: g_mean / m; of var: 2 g_var xc / m
    centred = a * rstd * g_scale / m - 2.0 * g_var / m  # the coefficient of -(x - mean)
    shift = g_mean / m - a * g_bias / m
    return a * g - centred * (x - mean) + shift, g_scale, g_bias, None


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _batch_norm_train_autodiff(x, scale, bias, eps):
    """`batch_norm_train`'s values with autodiff's backward (platforms other than the CPU)."""
    return _batch_norm_train_fwd(x, scale, bias, eps)[0]


def batch_norm_statistics(x, scale, bias, eps):
    """`(y, mean, var)` of training-mode batch normalisation over all axes but the last: on the
    CPU through `batch_norm_train` (its hand-written backward), elsewhere with autodiff's
    (`jax.lax.platform_dependent`, chosen when the program is lowered)."""
    return jax.lax.platform_dependent(
        x, scale, bias, cpu=lambda x, s, b: batch_norm_train(x, s, b, eps),
        default=lambda x, s, b: _batch_norm_train_autodiff(x, s, b, eps))


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` (the same variables, statistics and results) whose training-mode call over
    the last axis goes through `batch_norm_statistics` (on the CPU, `batch_norm_train`). Other
    configurations (running averages, a mask, an `axis_name`, other axes,
    `use_fast_variance=False`, no scale or bias) are `nnx.BatchNorm`'s own code."""

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = (self.use_running_average if use_running_average is None
                               else use_running_average)
        axis = self.axis if isinstance(self.axis, int) else None
        if (use_running_average is not False or mask is not None or self.axis_name is not None
                or axis not in (-1, x.ndim - 1) or not self.use_fast_variance
                or self.scale is None or self.bias is None):
            return super().__call__(x, use_running_average, mask=mask)
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], self.scale[...], self.bias[...]), dtype=self.dtype)
        out_dtype = x.dtype
        compute = jnp.promote_types(out_dtype, jnp.float32)
        y, batch_mean, batch_var = batch_norm_statistics(
            x.astype(compute), scale.astype(compute), bias.astype(compute), self.epsilon)
        # as nnx.BatchNorm: the running averages stop the gradient only for array references
        stop = (jax.lax.stop_gradient if self.mean._can_update or self.var._can_update
                else (lambda v: v))
        self.mean[...] = stop(self.momentum * mean + (1 - self.momentum) * batch_mean)
        self.var[...] = stop(self.momentum * var + (1 - self.momentum) * batch_var)
        return y.astype(out_dtype)


def _check_dim(x, dim: int) -> None:
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape [B, N, D] with D = {dim}, got shape {x.shape}")


def cast(dtype, *arrays):
    """`arrays` as `dtype` (a tuple; unchanged when `dtype` is None: the input's own)."""
    return arrays if dtype is None else tuple(jnp.asarray(a, dtype) for a in arrays)


class HeadsProjection(nnx.Module):
    """Shared pieces: the head projection(s) `U [D, H, p]` (bias-free unless `in_bias`, then one
    `qkv_bias [H, p]` per projection) and the output Dense."""

    def __init__(self, dim: int, heads: int, dim_head: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs, projections: int = 1, output: bool = True,
                 in_bias: bool = False):
        for name, v in (("dim", dim), ("heads", heads), ("dim_head", dim_head)):
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.dtype, self.param_dtype = dtype, param_dtype
        axes = ("embed", "heads", "head_dim")
        self.proj = nnx.List([param(rngs, lecun(0, (1, 2)), (dim, heads, dim_head), axes,
                                    param_dtype) for _ in range(projections)])
        self.qkv_bias = (nnx.List([param(rngs, nnx.initializers.zeros, (heads, dim_head),
                                         ("heads", "head_dim"), param_dtype)
                                   for _ in range(projections)]) if in_bias else None)
        if output:
            self.out_kernel = param(rngs, lecun((0, 1), 2), (heads, dim_head, dim),
                                    ("heads", "head_dim", "embed"), param_dtype)
            self.out_bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)

    # Both projections are one plain [*, D] x [D, H p] matrix product on the token-major layout,
    # with the head split / merge as an explicit transpose of the activations. Written as one
    # einsum ("bnd,dhp->bhnp"), XLA:CPU computes the products transposed and then copies the
    # [D, H p] weights and their gradients into place: six D x D copies per layer, fwd+bwd
    # (`python -m benchmarks.attention` times the layer).
    def project_in(self, x, i: int = 0):
        _check_dim(x, self.dim)
        x, u = cast(self.dtype, x, self.proj[i][...])
        d, h, p = u.shape
        w = jnp.swapaxes((x @ u.reshape(d, h * p)).reshape(*x.shape[:-1], h, p), -2, -3)
        if self.qkv_bias is None:
            return w
        return w + cast(w.dtype, self.qkv_bias[i][...])[0][:, None, :]

    def project_out(self, y):
        y, k, b = cast(self.dtype, y, self.out_kernel[...], self.out_bias[...])
        h, p, d = k.shape
        y = jnp.swapaxes(y, -2, -3)
        return y.reshape(*y.shape[:-2], h * p) @ k.reshape(h * p, d) + b


def _finish(out, aux: dict[str, Any], capture: bool):
    return (out, aux) if capture else out


class RepresentativeInit(enum.Enum):
    GRID = "grid"  # adaptive average pooling of the patch grid to `cells`
    SEGMENTS = "segments"  # 1-D adaptive pooling of a sequence into `segments`
    QUERIES = "queries"  # learned queries [H, num_queries, p]


class CBSA(HeadsProjection):
    """Contract-and-Broadcast Self-Attention.

    `W = x U` (bias-free, U [D, H, p]); representatives start from grid pooling (default 8 x 8
    cells), 1-D segment pooling or learned queries; one extraction step with a learned per-head
    `step_rep`; contraction and broadcast as chosen (default: the reference's softmax surrogate
    and `S^T`); a learned per-head `step_x`; then the output Dense with bias. With
    `contraction=EXACT, broadcast=EXACT, tied_output=True` the layer is exactly the gradient step
    `-step_x * grad_X cbsa_objective` (no output Dense).

    Args:
      dim, heads, dim_head: D, H, p.
      representatives: a `RepresentativeInit`; `cells`, `segments`, `num_queries` size it.
      prefix_tokens: leading non-patch tokens (cls) that pooling skips.
      selection: `Selection.REFERENCE` reproduces the official code's token selection.
      contraction, broadcast: `cbsa_jax.attention.Contraction` / `Broadcast`.
      eps: the distortion of the EXACT / FIRST_ORDER contraction.
    """

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *,
                 representatives: RepresentativeInit | str = RepresentativeInit.GRID,
                 cells: tuple[int, int] = (8, 8), segments: int = 64, num_queries: int = 64,
                 prefix_tokens: int = 1, selection: Selection | str = Selection.PATCHES,
                 contraction: att.Contraction | str = att.Contraction.SOFTMAX,
                 broadcast: att.Broadcast | str = att.Broadcast.ATTENTION,
                 eps: float = 1.0, tied_output: bool = False,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         output=not tied_output)
        self.init_kind = RepresentativeInit(representatives)
        self.cells, self.segments, self.prefix_tokens = tuple(cells), segments, prefix_tokens
        self.selection = Selection(selection)
        self.contraction, self.broadcast = att.Contraction(contraction), att.Broadcast(broadcast)
        self.eps, self.tied_output = eps, tied_output
        if self.contraction in (att.Contraction.EXACT, att.Contraction.FIRST_ORDER):
            if not (isinstance(eps, int | float) and eps > 0):
                raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if self.init_kind is RepresentativeInit.QUERIES:
            self.queries = param(rngs, nnx.initializers.normal(1.0), (heads, num_queries, dim_head),
                                 ("heads", "representatives", "head_dim"), param_dtype)
        normal = nnx.initializers.normal(1.0)  # the reference draws both steps from randn
        self.step_x = param(rngs, normal, (heads,), ("heads",), param_dtype)
        self.step_rep = param(rngs, normal, (heads,), ("heads",), param_dtype)

    def rule(self, n: int, grid: tuple[int, int] | None):
        """The representative rule for n tokens on `grid` (None: learned queries)."""
        if self.init_kind is RepresentativeInit.QUERIES:
            return None
        if self.init_kind is RepresentativeInit.SEGMENTS:
            return SegmentPooling(self.segments, prefix=self.prefix_tokens)
        grid = square_grid(n - self.prefix_tokens) if grid is None else tuple(grid)
        return GridPooling(grid=grid, cells=self.cells, prefix=self.prefix_tokens,
                           selection=self.selection)

    def __call__(self, x, *, grid=None, capture: bool = False):
        w = self.project_in(x)
        rule = self.rule(x.shape[1], grid)
        reps = rule if rule is not None else cast(self.dtype or w.dtype, self.queries[...])[0]
        step_x, step_rep = cast(jnp.float32, self.step_x[...], self.step_rep[...])
        res = att.contract_and_broadcast(
            w, representatives=reps, extraction=att.Extraction.STEP,
            contraction=self.contraction, broadcast=self.broadcast,
            step_rep=step_rep, step_x=step_x, eps=self.eps)
        if self.tied_output:
            out = unroll.project(res.out, cast(self.dtype, self.proj[0][...])[0])
        else:
            out = self.project_out(res.out)
        if not capture:
            return out
        aux = {"w": w, "initial": res.initial, "representatives": res.representatives,
               "weights": res.weights,
               "rep_attention": primitives.softmax_map(res.representatives, res.representatives),
               "effective_map": primitives.cbsa_effective_map(res.weights)}
        return out, aux


class MSSA(HeadsProjection):
    """CRATE's multi-head subspace self-attention: `softmax(W W^T / sqrt(p)) W`, W = x U."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, *, grid=None, capture: bool = False):
        w = self.project_in(x)
        out = self.project_out(att.mssa(w))
        if not capture:
            return out
        return out, {"w": w, "effective_map": primitives.softmax_map(w, w)}


class TSSA(HeadsProjection):
    """ToST's token statistics self-attention (linear in N), with a learned per-head `temp`."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.temp = param(rngs, nnx.initializers.ones, (heads,), ("heads",), param_dtype)

    def __call__(self, x, *, grid=None, capture: bool = False):
        w = self.project_in(x)
        temp = jnp.asarray(self.temp[...], jnp.float32)
        out = self.project_out(att.tssa(w, temp))
        if not capture:
            return out
        membership = primitives.tssa_membership(w, temp)
        return out, {"w": w, "membership": membership,
                     "effective_map": primitives.tssa_effective_map(membership)}


class SoftmaxAttention(HeadsProjection):
    """Standard multi-head attention with separate q, k, v projections (optionally biased)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, qkv_bias: bool = False,
                 implementation: str | None = None, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         projections=3, in_bias=qkv_bias)
        self.implementation = implementation

    def __call__(self, x, *, grid=None, capture: bool = False):
        q, k, v = (self.project_in(x, i) for i in range(3))
        out = self.project_out(att.softmax(q, k, v, implementation=self.implementation))
        if not capture:
            return out
        return out, {"w": q, "effective_map": primitives.softmax_map(q, k)}


class LinearAttention(HeadsProjection):
    """First-order CBSA with every token a representative: tied linear attention, O(N p^2)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, eps: float = 1.0, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not (isinstance(eps, int | float) and eps > 0):
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.eps = eps
        self.step_x = param(rngs, nnx.initializers.ones, (heads,), ("heads",), param_dtype)

    def __call__(self, x, *, grid=None, capture: bool = False):
        w = self.project_in(x)
        out = self.project_out(att.linear(w, jnp.asarray(self.step_x[...], jnp.float32),
                                          eps=self.eps))
        if not capture:
            return out
        return out, {"w": w, "effective_map": primitives.linear_effective_map(w, self.eps)}


class ChannelAttention(HeadsProjection):
    """Attention across channels: cross-covariance attention (or, with `exact=True`, the exact
    all-token compression step through a p x p solve)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, exact: bool = False,
                 eps: float = 1.0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if exact and not (isinstance(eps, int | float) and eps > 0):
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.exact, self.eps = exact, eps
        if not exact:  # the exact step has no temperature
            self.temperature = param(rngs, nnx.initializers.ones, (heads,), ("heads",),
                                     param_dtype)
        self.step_x = param(rngs, nnx.initializers.ones, (heads,), ("heads",), param_dtype)

    def __call__(self, x, *, grid=None, capture: bool = False):
        w = self.project_in(x)
        step_x = jnp.asarray(self.step_x[...], jnp.float32)
        if self.exact:
            y = att.channel(w, step_x, eps=self.eps)
        else:
            y = att.channel(w, step_x, temperature=jnp.asarray(self.temperature[...], jnp.float32))
        return _finish(self.project_out(y), {"w": w}, capture)


class AgentAttention(HeadsProjection):
    """Agent attention with separate q, k, v projections (the reference's ViT adaptation layer):
    agents pooled from q aggregate `softmax(A k^T) v`, broadcast back by `softmax(q A^T)`.

    Its parameters are those of `SoftmaxAttention` with the same `qkv_bias`, so a pretrained
    softmax block switches to this layer by keeping its weights (`cbsa_jax.convert.adapt`)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *,
                 cells: tuple[int, int] = (8, 8), prefix_tokens: int = 1,
                 selection: Selection | str = Selection.PATCHES, qkv_bias: bool = False,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         projections=3, in_bias=qkv_bias)
        self.cells, self.prefix_tokens = tuple(cells), prefix_tokens
        self.selection = Selection(selection)

    def __call__(self, x, *, grid=None, capture: bool = False):
        q, k, v = (self.project_in(x, i) for i in range(3))
        grid = square_grid(x.shape[1] - self.prefix_tokens) if grid is None else tuple(grid)
        rule = GridPooling(grid=grid, cells=self.cells, prefix=self.prefix_tokens,
                           selection=self.selection)
        out = self.project_out(att.agent(q, k, v, representatives=rule))
        if not capture:
            return out
        agents = rule.pool(q)
        s, t = primitives.softmax_map(agents, k), primitives.softmax_map(q, agents)
        return out, {"w": q, "initial": agents, "weights": s, "token_weights": t,
                     "effective_map": primitives.agent_effective_map(t, s)}


class ISTA(nnx.Module):
    """CRATE's sparsification step `ReLU(x + eta (x M - x M^T M) - eta lam)` with learned M."""

    def __init__(self, dim: int, *, eta: float = 0.1, lam: float = 0.1, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dim, self.eta, self.lam, self.dtype = dim, eta, lam, dtype
        # torch's kaiming_uniform_ (a = 0): U(-sqrt(6 / D), sqrt(6 / D)), as the reference
        bound = math.sqrt(6.0 / dim)
        self.weight = param(rngs, lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                            (dim, dim), ("embed", None), param_dtype)

    def __call__(self, x):
        _check_dim(x, self.dim)
        x, m = cast(self.dtype, x, self.weight[...])
        return unroll.ista_step(x, m, eta=self.eta, lam=self.lam)


class MLP(nnx.Module):
    """The ViT MLP: Dense(D -> hidden) + exact GELU + Dense(hidden -> D)."""

    def __init__(self, dim: int, hidden: int, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dim, self.dtype = dim, dtype
        self.w1 = param(rngs, DEFAULT_INIT, (dim, hidden), ("embed", "mlp"), param_dtype)
        self.b1 = param(rngs, nnx.initializers.zeros, (hidden,), ("mlp",), param_dtype)
        self.w2 = param(rngs, DEFAULT_INIT, (hidden, dim), ("mlp", "embed"), param_dtype)
        self.b2 = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)

    def __call__(self, x):
        _check_dim(x, self.dim)
        x, w1, b1, w2, b2 = cast(self.dtype, x, self.w1[...], self.b1[...], self.w2[...],
                                  self.b2[...])
        return jax.nn.gelu(x @ w1 + b1, approximate=False) @ w2 + b2


class Block(nnx.Module):
    """A pre-norm block: `x + attn(LN x)`, then `ISTA(LN x)` (no residual, as the reference) or
    `x + MLP(LN x)` (ViT baselines). `attn` is any layer above."""

    def __init__(self, dim: int, attn: nnx.Module, *, ffn: str = "ista", mlp_ratio: float = 4.0,
                 norm_eps: float = LN_EPS, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if ffn not in ("ista", "mlp"):
            raise ValueError(f"ffn must be 'ista' or 'mlp', got {ffn!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm_kw = dict(kw, eps=norm_eps)
        self.norm1, self.attn = layer_norm(dim, **norm_kw), attn
        self.norm2 = layer_norm(dim, **norm_kw)
        self.ffn_kind = ffn
        self.ffn = ISTA(dim, **kw) if ffn == "ista" else MLP(dim, int(dim * mlp_ratio), **kw)

    def __call__(self, x, *, grid=None, capture: bool = False):
        attn_in = self.norm1(x)
        a = self.attn(attn_in, grid=grid, capture=capture)
        a, aux = a if capture else (a, None)
        ffn_in = x + a
        y = self.ffn(self.norm2(ffn_in))
        out = y if self.ffn_kind == "ista" else ffn_in + y
        if not capture:
            return out
        return out, {**aux, "block_in": x, "attn_in": attn_in, "attn_out": a, "ffn_in": ffn_in,
                     "block_out": out}
