"""Vision transformers built from `cbsa_jax.nn` blocks: CBT, CRATE, ToST and softmax ViTs.

Images are NHWC. The patch embedding is the reference's convolutional stem (conv 3x3 stride 2 +
BatchNorm, exact GELU between blocks: 4 blocks for patch 16, 3 for patch 8) or CRATE's linear one
(LayerNorm(patch) -> Dense -> LayerNorm). A cls token is prepended; a learned position embedding
is added (bicubically interpolated when the image size differs from the one the model was built
for, also to non-square grids); the head is LayerNorm + Dense on the cls token or the token mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cbsa_jax.models.config import AttentionKind, ModelConfig, PatchEmbedKind, Pool
from cbsa_jax.nn import layers

__all__ = ["ConvPatchEmbed", "LinearPatchEmbed", "VisionTransformer", "build_attention",
           "conv3x3_stride2"]


def conv_widths(dim: int, patch_size: int) -> list[int]:
    """Channel widths of the conv stem: log2(patch) stride-2 blocks ending at dim, each half the
    next (the reference's [D/8, D/4, D/2, D] for patch 16 and [D/4, D/2, D] for patch 8)."""
    blocks = patch_size.bit_length() - 1
    if patch_size < 2 or 2**blocks != patch_size:
        raise ValueError(f"patch_size must be a power of two >= 2 for the conv patch embedding, "
                         f"got {patch_size}")
    return [dim // 2 ** (blocks - 1 - i) for i in range(blocks)]


def gelu_erf(x):
    """Exact GELU, `x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`, through `erf`.

    The same function as `jax.nn.gelu(x, approximate=False)`, which goes through `erfc`: in
    float32 the two agree to 1e-6 in absolute value and their derivatives to 3e-7 (`erfc` keeps
    more relative accuracy in the negative tail, where the values are below 1e-3). XLA:CPU
    evaluates `erfc` as several polynomials selected by range, `erf` as one: the cheaper of the
    two in the conv stem's forward and backward (`python -m benchmarks.models`).
    """
    return x * (0.5 + 0.5 * jax.lax.erf(x * 0.7071067811865476))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv3x3_s2_direct(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=_NHWC)


def _conv3x3_s2_phases(x, kernel):
    """The same convolution as four stride-1 convolutions of the padded input's phases.

    Row 2y + a of the padded input (a in {0, 1}) is row y of phase a (one space-to-depth copy).
    Output row y reads padded rows 2y, 2y + 1, 2y + 2: taps kh = 0 and 2 from phase 0 (rows y and
    y + 1), tap kh = 1 from phase 1 (row y); the same for columns. So each of the four phases is
    a stride-1 VALID convolution with its own 2 x 2, 2 x 1, 1 x 2 or 1 x 1 part of the kernel:
    nine taps, the forward's multiply-adds, and the transpose (the input gradient) is four
    stride-1 convolutions of the output gradient and one depth-to-space.
    """
    n, h, w, ci = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 2 * ho + 1 - h), (1, 2 * wo + 1 - w), (0, 0)))
    s = xp.reshape(n, ho + 1, 2, wo + 1, 2, ci).transpose(0, 1, 3, 2, 4, 5)
    taps = (slice(0, 3, 2), slice(1, 2))  # the kernel rows (columns) phase 0 (1) feeds
    out = None
    for a in (0, 1):
        for b in (0, 1):
            part = jax.lax.conv_general_dilated(
                s[:, : ho + 1 - a, : wo + 1 - b, a, b, :],
                kernel[taps[a], taps[b]], (1, 1), "VALID",
                dimension_numbers=_NHWC)
            out = part if out is None else out + part
    return out


def conv3x3_stride2(x, kernel):
    """3 x 3 convolution, stride 2, padding 1, no bias: NHWC `x`, HWIO `kernel`.

    The value is XLA's convolution everywhere. On the CPU (chosen when the program is lowered,
    `jax.lax.platform_dependent`) its derivative with respect to `x` goes through the
    phase form (`conv3x3_stride2_cpu`); on other platforms it is XLA's own (cuDNN's on a
    GPU). Forward- and reverse-mode derivatives both work.
    """
    return jax.lax.platform_dependent(x, kernel, cpu=conv3x3_stride2_cpu,
                                      default=_conv3x3_s2_direct)


@jax.custom_jvp
def conv3x3_stride2_cpu(x, kernel):
    """`conv3x3_stride2` with the input derivative through the phase form
    (`_conv3x3_s2_phases`), whose transpose, the input gradient, is four stride-1 convolutions
    of the output gradient plus a depth-to-space: the forward's multiply-adds. XLA:CPU computes
    the input gradient of the direct form as a convolution over the 2x zero-dilated output
    gradient, 4x the forward's multiply-adds. The kernel's derivative is the direct one."""
    return _conv3x3_s2_direct(x, kernel)


@conv3x3_stride2_cpu.defjvp
def _conv3x3_stride2_jvp(primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    return (_conv3x3_s2_direct(x, kernel),
            _conv3x3_s2_phases(dx, kernel) + _conv3x3_s2_direct(x, dkernel))


class ConvPatchEmbed(nnx.Module):
    """The reference's convolutional patch embedding: stride-2 conv3x3 + BatchNorm blocks with
    exact GELU (`gelu_erf`) between them (4 blocks for patch 16, 3 for patch 8; generally
    log2(patch)). The kernels live in `nnx.Conv` modules (`convs[i].kernel`, HWIO); the
    convolutions themselves are `conv3x3_stride2`, which has a cheaper input gradient."""

    def __init__(self, dim: int, patch_size: int, channels: int = 3, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        widths = conv_widths(dim, patch_size)
        if min(widths) < 1:
            raise ValueError(f"dim {dim} is too small for the conv patch embedding")
        ins = [channels, *widths[:-1]]
        self.dtype = dtype
        self.convs = nnx.List([
            nnx.Conv(cin, cout, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                     dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     kernel_metadata={"logical_axes": ("kernel", "kernel", "conv_in", "conv_out")})
            for cin, cout in zip(ins, widths, strict=True)])
        self.norms = nnx.List([
            layers.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs,
                             scale_metadata={"logical_axes": ("conv_out",)},
                             bias_metadata={"logical_axes": ("conv_out",)})
            for cout in widths])

    def __call__(self, images):
        x = images
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if i:
                x = gelu_erf(x)
            kernel = conv.kernel[...]
            dtype = self.dtype or jnp.result_type(x, kernel)  # nnx.Conv's promotion
            x = norm(conv3x3_stride2(jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)))
        b, gh, gw, d = x.shape
        return x.reshape(b, gh * gw, d)


class LinearPatchEmbed(nnx.Module):
    """CRATE's patch embedding: patches flattened as (p1 p2 c), LayerNorm (optional), Dense,
    LayerNorm (optional: without both norms this is ViT's stride-p conv, whose OIHW kernel is
    `kernel = w.transpose(2, 3, 1, 0).reshape(p * p * C, D)`)."""

    def __init__(self, dim: int, patch_size: int, channels: int = 3, *, norm: bool = True,
                 norm_out: bool = True, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        patch_dim = channels * patch_size * patch_size
        self.patch_size, self.dtype = patch_size, dtype
        self.norm_in = layers.LayerNorm(patch_dim, epsilon=layers.LN_EPS, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs,
                                        scale_metadata={"logical_axes": ("patch",)},
                                        bias_metadata={"logical_axes": ("patch",)},
                                        ) if norm else None
        self.kernel = layers.param(rngs, layers.DEFAULT_INIT, (patch_dim, dim), ("patch", "embed"),
                                   param_dtype)
        self.bias = layers.param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype)
        self.norm_out = layers.layer_norm(dim, dtype=dtype, param_dtype=param_dtype,
                                          rngs=rngs) if norm_out else None

    def __call__(self, images):
        b, h, w, c = images.shape
        p = self.patch_size
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        if self.norm_in is not None:
            x = self.norm_in(x)
        kernel, bias = layers.cast(self.dtype or x.dtype, self.kernel[...], self.bias[...])
        x = x @ kernel + bias
        return x if self.norm_out is None else self.norm_out(x)


def build_attention(config: ModelConfig, *, kind: AttentionKind | None = None, dtype,
                    param_dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The attention layer of one block: `kind`, default `config.attention`."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, h, p = config.dim, config.heads, config.dim_head
    kind = config.attention if kind is None else AttentionKind(kind)
    if kind in (AttentionKind.CBSA, AttentionKind.CBSA_EXACT):
        exact = kind is AttentionKind.CBSA_EXACT
        return layers.CBSA(d, h, p, cells=config.cells, prefix_tokens=1,
                           selection=config.selection,
                           contraction="exact" if exact else "softmax",
                           broadcast="exact" if exact else "attention", eps=config.eps, **kw)
    if kind is AttentionKind.MSSA:
        return layers.MSSA(d, h, p, **kw)
    if kind is AttentionKind.TSSA:
        return layers.TSSA(d, h, p, **kw)
    if kind is AttentionKind.SOFTMAX:
        return layers.SoftmaxAttention(d, h, p, qkv_bias=config.qkv_bias, **kw)
    if kind is AttentionKind.LINEAR:
        return layers.LinearAttention(d, h, p, eps=config.eps, **kw)
    if kind is AttentionKind.CHANNEL:
        return layers.ChannelAttention(d, h, p, **kw)
    return layers.AgentAttention(d, h, p, cells=config.cells, prefix_tokens=1,
                                 selection=config.selection, qkv_bias=config.qkv_bias, **kw)


def _pair(v, name: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(s, int) and s >= 1 for s in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair, got {v!r}")
    return pair


class VisionTransformer(nnx.Module):
    """A ViT of `config` for `num_classes` classes at `image_size` (int or (height, width)).

    `model(images)` maps NHWC images `[B, H, W, C]` to float32 logits `[B, num_classes]`;
    `model(images, capture=True)` returns `(logits, info)` where `info["layers"][l]` holds block
    l's inputs and outputs and its attention internals (token -> representative `weights` S,
    `representatives` Q, the `effective_map`, ...), and `info["features"]` the final tokens.
    Call `model.eval()` for inference (BatchNorm running statistics) and `model.train()` to train.
    """

    def __init__(self, config: ModelConfig, *, num_classes: int, image_size, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.config, self.num_classes, self.dtype = config, num_classes, dtype
        self.image_size = _pair(image_size, "image_size")
        self.grid = config.grid_for(self.image_size)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if config.patch_embed is PatchEmbedKind.CONV:
            self.patch_embed = ConvPatchEmbed(config.dim, config.patch_size, config.channels, **kw)
        else:
            plain = config.patch_embed is PatchEmbedKind.PROJECTION
            self.patch_embed = LinearPatchEmbed(config.dim, config.patch_size, config.channels,
                                                norm=config.patch_norm and not plain,
                                                norm_out=not plain, **kw)
        d, n = config.dim, self.grid[0] * self.grid[1]
        # standard normal, as the reference (torch.randn): positions are visible from step 0
        normal = nnx.initializers.normal(1.0)
        self.cls_token = layers.param(rngs, normal, (1, 1, d), (None, None, "embed"), param_dtype)
        self.pos_embedding = layers.param(rngs, normal, (1, n + 1, d), (None, "tokens", "embed"),
                                          param_dtype)
        self.blocks = nnx.List([
            layers.Block(d, build_attention(config, kind=config.block_attention(i), **kw),
                         ffn=config.ffn.value, mlp_ratio=config.mlp_ratio,
                         norm_eps=config.norm_eps, **kw)
            for i in range(config.depth)])
        self.head_norm = layers.layer_norm(d, eps=config.norm_eps, **kw)
        self.head_kernel = layers.param(rngs, layers.DEFAULT_INIT, (d, num_classes),
                                        ("embed", "classes"), param_dtype)
        self.head_bias = layers.param(rngs, nnx.initializers.zeros, (num_classes,), ("classes",),
                                      param_dtype)

    def position_embedding(self, grid: tuple[int, int]) -> jax.Array:
        """`[1, 1 + gh*gw, D]`: the learned table, bicubically resized to `grid` if needed."""
        pos = self.pos_embedding[...]
        if tuple(grid) == self.grid:
            return pos
        d = pos.shape[-1]
        patches = pos[:, 1:].reshape(1, *self.grid, d)
        resized = jax.image.resize(patches, (1, *grid, d), method="bicubic", antialias=False)
        return jnp.concatenate([pos[:, :1], resized.reshape(1, -1, d)], axis=1)

    def tokens(self, images) -> tuple[jax.Array, tuple[int, int]]:
        """Patch-embedded tokens with cls and position embedding: (`[B, 1 + gh*gw, D]`, grid)."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != self.config.channels:
            raise ValueError(f"images must have shape [B, H, W, C] (NHWC) with C = "
                             f"{self.config.channels}, got shape {images.shape}")
        grid = self.config.grid_for(images.shape[1:3], name="images")
        if self.dtype is not None:
            images = images.astype(self.dtype)
        x = self.patch_embed(images)
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding(grid).astype(x.dtype), grid

    def encode(self, images, *, capture: bool = False):
        """The last block's tokens, before the head: (`[B, 1 + gh*gw, D]`, grid); with
        `capture=True`, (tokens, grid, per-block internals). Dense heads (e.g. the segmenter) apply
        `head_norm` to the patch tokens `tokens[:, 1:]` themselves."""
        x, grid = self.tokens(images)
        captured = []
        for block in self.blocks:
            x = block(x, grid=grid, capture=capture)
            if capture:
                x, aux = x
                captured.append(aux)
        return (x, grid, captured) if capture else (x, grid)

    def __call__(self, images, *, capture: bool = False):
        x, grid, *rest = self.encode(images, capture=capture)
        captured = rest[0] if capture else []
        pool = self.config.pool
        pooled = (x[:, 0] if pool is Pool.CLS else
                  jnp.mean(x[:, 1:] if pool is Pool.PATCH_MEAN else x, axis=1))
        pooled = self.head_norm(pooled.astype(jnp.float32))
        logits = pooled @ self.head_kernel[...].astype(jnp.float32) + self.head_bias[...].astype(
            jnp.float32)
        if not capture:
            return logits
        return logits, {"layers": captured, "features": x, "grid": grid}
