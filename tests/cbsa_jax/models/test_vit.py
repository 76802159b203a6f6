"""Presets, parameter counts, forward/backward in float32 and bfloat16, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cbsa_jax.models import CPU_SIZES, DECODER_PRESETS, PRESETS, create, decoder_config
from tests._models import count_params, forward, host_initialised

# Trainable parameters at 224 x 224 and 1000 classes, counted on the official PyTorch models
# (`sum(p.numel() for p in model.parameters() if p.requires_grad)`).
REFERENCE_COUNTS = {
    "cbt_tiny": 1_789_192,
    "cbt_small": 6_667_048,
    "cbt_base": 25_691_752,  # the reference's Ours_base fails with a NameError; attn=CBSA
    "cbt_large": 83_051_368,
    "crate_cbt_tiny": 1_789_120,  # the reference's CRATE_tiny (CBT widths)
    "crate_cbt_small": 6_666_904,
    "tost_tiny": 1_789_156,
    "tost_small": 6_666_976,
    "crate_tiny": 6_090_856,  # official CRATE (crate.py), linear patch embedding
    "crate_small": 13_116_328,
    "crate_base": 22_796_008,
    "crate_large": 77_641_192,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_counts_equal_the_reference(name):
    model = nnx.eval_shape(lambda: create(name, num_classes=1000, image_size=224))
    assert count_params(model) == REFERENCE_COUNTS[name]


def _vit_count(dim, depth, heads, dim_head, classes=1000, n_tokens=197, mlp_ratio=4):
    """A softmax ViT with the conv stem: counted from its parts."""
    widths = [dim // 8, dim // 4, dim // 2, dim]
    stem = sum(9 * cin * cout + 2 * cout for cin, cout in zip([3, *widths[:-1]], widths,
                                                              strict=True))
    inner, hidden = heads * dim_head, int(dim * mlp_ratio)
    attn = 3 * dim * inner + inner * dim + dim
    mlp = 2 * dim * hidden + hidden + dim
    block = 2 * dim + attn + 2 * dim + mlp
    return stem + dim + n_tokens * dim + depth * block + 2 * dim + dim * classes + classes


@pytest.mark.parametrize("size,dims", [("tiny", (192, 12, 3)), ("small", (384, 12, 6)),
                                       ("base", (768, 12, 12)), ("large", (1024, 24, 16))])
def test_vit_parameter_counts(size, dims):
    model = nnx.eval_shape(lambda: create(f"vit_{size}", num_classes=1000, image_size=224))
    assert count_params(model) == _vit_count(*dims, dim_head=64)


@pytest.mark.parametrize("family", ["cbt", "cbt_exact", "crate", "tost", "vit", "vit_timm"])
def test_pico_is_the_nano_at_half_the_width(family):
    """The second CPU size of each family: only the width and the heads change (head width,
    depth, stem, cells stay), so a pico against its nano is a point along one family's frontier;
    its stem halves with it, and its segmenter takes the CPU-sized decoder."""
    nano, pico = PRESETS[f"{family}_nano"], PRESETS[f"{family}_pico"]
    assert (pico.dim, pico.heads) == (nano.dim // 2, nano.heads // 2)
    assert pico == nano.replace(dim=pico.dim, heads=pico.heads)
    small = nnx.eval_shape(lambda: create(f"{family}_pico", num_classes=10, image_size=32))
    big = nnx.eval_shape(lambda: create(f"{family}_nano", num_classes=10, image_size=32))
    assert count_params(small) < count_params(big) / 3
    assert decoder_config("cbt", f"{family}_pico") == DECODER_PRESETS["cbt_nano"]


def _loss_and_grads(model, images):
    def loss(m):
        return jnp.mean(m(images) ** 2)

    return nnx.value_and_grad(loss)(model)


def _image_size(name):
    return 32 if name.endswith(CPU_SIZES) else 128


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_traces_forward_and_backward_in_bfloat16(name):
    """Every preset's widths, traced through forward and backward (abstract evaluation, one block:
    blocks repeat, and tracing 24 of them costs seconds without adding a code path)."""
    size = _image_size(name)
    model = nnx.eval_shape(lambda: create(name, num_classes=10, image_size=size, depth=1,
                                          dtype=jnp.bfloat16))
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    loss, grads = nnx.eval_shape(_loss_and_grads, model, images)
    assert loss.shape == () and loss.dtype == jnp.float32
    for g, p in zip(jax.tree_util.tree_leaves(grads),
                    jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)), strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype


# One preset of each distinct architecture, run for real: every attention and ffn kind (nano,
# 2-block conv stem), the 4-block conv stem and CRATE's linear patch embedding. Wider presets
# differ only in width and depth.
NUMERIC = ["cbt_nano", "cbt_exact_nano", "crate_nano", "tost_nano", "vit_nano", "cbt_tiny",
           "crate_tiny"]


@pytest.mark.parametrize("name", NUMERIC)
def test_forward_and_backward_are_finite_in_float32_and_bfloat16(rng, name):
    size = _image_size(name)
    images = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = host_initialised(name, rng=np.random.default_rng(1), num_classes=10,
                                 image_size=size, depth=2, dtype=dtype)
        loss, grads = nnx.jit(_loss_and_grads)(model, images)
        assert np.isfinite(float(loss))
        leaves = jax.tree_util.tree_leaves(grads)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
        results[dtype] = float(loss)
    assert abs(results[jnp.bfloat16] - results[jnp.float32]) <= 0.1 * abs(results[jnp.float32])


def test_create_initialises_a_trainable_model():
    model = create("cbt_nano", num_classes=10, image_size=32, seed=3, depth=1)
    logits = forward(model, jnp.ones((2, 32, 32, 3)))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    other = create("cbt_nano", num_classes=10, image_size=32, seed=4, depth=1)
    assert not np.allclose(model.pos_embedding[...], other.pos_embedding[...])


def test_non_square_images_and_position_interpolation(rng):
    model = host_initialised("cbt_nano", rng=rng, num_classes=5, image_size=(32, 48), depth=1)
    assert model.grid == (8, 12)
    x = jnp.asarray(rng.normal(size=(2, 32, 48, 3)), jnp.float32)
    logits, info = forward(model, x, capture=True)
    assert logits.shape == (2, 5) and info["grid"] == (8, 12)
    assert info["layers"][0]["weights"].shape == (2, 4, 16, 1 + 8 * 12)
    # another (non-square) size: the position table is resized to the new grid
    y = jnp.asarray(rng.normal(size=(1, 48, 32, 3)), jnp.float32)
    logits, info = forward(model, y, capture=True)
    assert info["grid"] == (12, 8) and bool(jnp.all(jnp.isfinite(logits)))
    same = model.position_embedding((8, 12))
    np.testing.assert_array_equal(same, model.pos_embedding[...])
    resized = model.position_embedding((12, 8))
    assert resized.shape == (1, 1 + 96, 64)
    np.testing.assert_array_equal(resized[:, 0], model.pos_embedding[...][:, 0])  # cls untouched


def test_mean_pooling_and_overrides(rng):
    model = host_initialised("vit_nano", rng=rng, num_classes=3, image_size=16, pool="mean",
                             patch_size=2, depth=1)
    assert model.grid == (8, 8)
    assert forward(model, jnp.ones((1, 16, 16, 3))).shape == (1, 3)


def test_capture_returns_every_layer(rng):
    model = host_initialised("cbt_nano", rng=rng, num_classes=4, image_size=32)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    logits, info = forward(model, x, capture=True)
    np.testing.assert_allclose(logits, forward(model, x), rtol=1e-6, atol=1e-6)
    assert len(info["layers"]) == 4
    layer = info["layers"][-1]
    n = 1 + 8 * 8
    assert layer["weights"].shape == (2, 4, 16, n)  # token -> representative, rows sum to 1
    np.testing.assert_allclose(np.sum(layer["weights"], -1), 1.0, rtol=1e-5)
    assert layer["representatives"].shape == (2, 4, 16, 16)
    assert layer["effective_map"].shape == (2, 4, n, n)
    np.testing.assert_allclose(layer["block_out"], info["features"])
    np.testing.assert_allclose(info["layers"][1]["block_in"], info["layers"][0]["block_out"])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: create("cbt_tiny", num_classes=10, image_size=100),
         r"image_size \(height, width\) = \(100, 100\) must be divisible by the patch size 16"),
        (lambda: create("cbt_tiny", num_classes=10, image_size=64),
         r"too few tokens for the 8x8 representatives"),
        (lambda: create("cbt_tiny", num_classes=0, image_size=128), "num_classes must be"),
        (lambda: create("cbt_mega", num_classes=10), "unknown model preset 'cbt_mega'"),
        (lambda: create("cbt_tiny", num_classes=10, depthh=3), r"unknown model config fields"),
        (lambda: create("cbt_tiny", num_classes=10, attention="sparse"),
         r"attention must be one of"),
        (lambda: create("cbt_tiny", num_classes=10, patch_size=12),
         r"patch_size must be a power of two >= 2 with patch_embed='conv'"),
        (lambda: create("cbt_nano", num_classes=10, image_size=32, cells=(3,)), "cells must be"),
    ],
)
def test_bad_configuration_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "shape,match",
    [((2, 32, 32, 1), r"images must have shape \[B, H, W, C\] \(NHWC\) with C = 3"),
     ((2, 3, 32, 32), r"images must have shape \[B, H, W, C\]"),
     ((2, 30, 32, 3), r"images \(height, width\) = \(30, 32\) must be divisible by the patch"),
     ((2, 8, 8, 3), r"images \(8, 8\) gives a 2x2 patch grid, too few tokens")])
def test_bad_images_name_the_argument(rng, shape, match):
    model = host_initialised("cbt_nano", rng=rng, num_classes=3, image_size=32, depth=1)
    with pytest.raises(ValueError, match=match):
        model(jnp.ones(shape))
