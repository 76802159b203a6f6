"""The segmenter, its decoders, bilinear upsampling and the official CBT decoder's parity."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks._params import host_initialised
from cbsa_jax.convert import cbt_decoder_from_torch
from cbsa_jax.models import (
    DECODER_PRESETS,
    LinearDecoder,
    MaskTransformerDecoder,
    Segmenter,
    create_segmenter,
)
from cbsa_jax.models.segmenter import bilinear_matrix, upsample_bilinear
from tests._models import forward
from tests._util import FIXTURES

FIXTURE = os.path.join(FIXTURES,
                       "cbt_decoder_small.npz")


def _fixture():
    if not os.path.isfile(FIXTURE):
        pytest.skip(f"parity fixture {os.path.abspath(FIXTURE)} is absent")
    data = np.load(FIXTURE)
    state_dict = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    return data, state_dict


# ----------------------------------------------------------------------------------------------
# NumPy references, written from the fixture README (float64)


def _bilinear_numpy(x, size):
    """Half-pixel bilinear resize of `x [B, h, w, C]`, one output pixel at a time."""
    b, h, w, c = x.shape
    out_h, out_w = size
    y = np.zeros((b, out_h, out_w, c))

    def source(i, n_in, n_out):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(s)), n_in - 1)
        return lo, min(lo + 1, n_in - 1), s - lo

    for i in range(out_h):
        i0, i1, fi = source(i, h, out_h)
        for j in range(out_w):
            j0, j1, fj = source(j, w, out_w)
            y[:, i, j] = ((1 - fi) * ((1 - fj) * x[:, i0, j0] + fj * x[:, i0, j1])
                          + fi * ((1 - fj) * x[:, i1, j0] + fj * x[:, i1, j1]))
    return y


def _adaptive_pool(x, grid, cells):
    """torch's AdaptiveAvgPool2d on `[B, gh*gw, C]` (row-major) -> `[B, rh*rw, C]`."""
    b, _, c = x.shape
    x = x.reshape(b, *grid, c)
    out = []
    for i in range(cells[0]):
        h0, h1 = i * grid[0] // cells[0], -(-(i + 1) * grid[0] // cells[0])
        for j in range(cells[1]):
            w0, w1 = j * grid[1] // cells[1], -(-(j + 1) * grid[1] // cells[1])
            out.append(x[:, h0:h1, w0:w1].mean(axis=(1, 2)))
    return np.stack(out, axis=1)


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_decoder(sd, features, grid, cells=(10, 10)):
    """The reference decoder (class tokens appended, `w[:, :-K]` pooled): (tokens after each
    layer, masks [B, gh, gw, K])."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    k = sd["cls_emb"].shape[1]
    b = features.shape[0]
    x = np.concatenate([features.astype(np.float64), np.repeat(sd["cls_emb"], b, 0)], 1)
    tokens = []
    layer = 0
    while f"net.layers.{layer}.norm.weight" in sd:
        p = f"net.layers.{layer}."
        heads = sd[p + "fn.step_x"].shape[0]
        w = _layer_norm(x, sd[p + "norm.weight"], sd[p + "norm.bias"]) @ sd[p + "fn.proj.weight"].T
        rep = _adaptive_pool(w[:, :-k], grid, cells)
        dh = w.shape[-1] // heads
        wh, rep = (t.reshape(b, t.shape[1], heads, dh).transpose(0, 2, 1, 3) for t in (w, rep))
        scale = dh**-0.5
        a = _softmax(rep @ wh.transpose(0, 1, 3, 2) * scale)
        rep = rep + sd[p + "fn.step_rep"] * (a @ wh)
        z = _softmax(rep @ rep.transpose(0, 1, 3, 2) * scale) @ rep
        out = sd[p + "fn.step_x"] * (a.transpose(0, 1, 3, 2) @ z)
        out = out.transpose(0, 2, 1, 3).reshape(b, -1, heads * dh)
        x = x + out @ sd[p + "fn.to_out.weight"].T + sd[p + "fn.to_out.bias"]
        tokens.append(x)
        layer += 1
    x = _layer_norm(x, sd["decoder_norm.weight"], sd["decoder_norm.bias"])
    patches, classes = x[:, :-k], x[:, -k:]
    patches = patches / np.linalg.norm(patches, axis=-1, keepdims=True)
    classes = classes / np.linalg.norm(classes, axis=-1, keepdims=True)
    masks = _layer_norm(patches @ classes.transpose(0, 2, 1), sd["mask_norm.weight"],
                        sd["mask_norm.bias"])
    return tokens, masks.reshape(b, *grid, k)


# ----------------------------------------------------------------------------------------------
# parity with the official decoder


def test_official_decoder_parity():
    data, sd = _fixture()
    decoder = cbt_decoder_from_torch(sd)
    features = data["features"]
    masks, info = nnx.jit(lambda d, f: d(f, grid=(14, 14), capture=True))(decoder, features)
    up = nnx.jit(lambda d, f: d(f, grid=(14, 14), image_size=(224, 224)))(decoder, features)
    assert masks.shape == (2, 14, 14, 150) and up.shape == (2, 224, 224, 150)
    checks = {
        "tokens_in": (info["tokens_in"], data["tokens_in"]),
        "layer0_attn_out": (info["layers"][0]["attn_out"], data["layer0_attn_out"]),
        "tokens_after_layer0": (info["layers"][0]["tokens"], data["tokens_after_layer0"]),
        "masks": (np.asarray(masks).transpose(0, 3, 1, 2), data["masks"]),
        "masks_upsampled": (np.asarray(up)[..., :8].transpose(0, 3, 1, 2),
                            data["masks_upsampled"]),
    }
    for name, (ours, theirs) in checks.items():
        err = float(np.max(np.abs(np.asarray(ours) - theirs)))
        assert err <= 1e-4, (name, err)
    # every parameter matters: the masks move when any one is perturbed (here: the class LN)
    sd_bad = dict(sd, **{"mask_norm.bias": sd["mask_norm.bias"] + 0.01})
    moved = cbt_decoder_from_torch(sd_bad)(features, grid=(14, 14))
    assert np.max(np.abs(np.asarray(moved) - np.asarray(masks))) > 5e-3


def test_numpy_reference_matches_the_fixture():
    """The float64 transcription used for other grids reproduces the official outputs."""
    data, sd = _fixture()
    tokens, masks = _reference_decoder(sd, data["features"], (14, 14))
    assert np.max(np.abs(tokens[0] - data["tokens_after_layer0"])) <= 1e-4
    assert np.max(np.abs(masks.transpose(0, 3, 1, 2) - data["masks"])) <= 1e-4
    up = _bilinear_numpy(masks[..., :8], (224, 224))
    assert np.max(np.abs(up.transpose(0, 3, 1, 2) - data["masks_upsampled"])) <= 1e-4


@pytest.mark.parametrize("grid,image_size", [((11, 16), (176, 256)), ((17, 10), (100, 61))])
def test_official_decoder_on_non_square_grids(grid, image_size, rng):
    _, sd = _fixture()
    features = rng.standard_normal((1, grid[0] * grid[1], 192)).astype(np.float32)
    decoder = cbt_decoder_from_torch(sd)
    masks, up = nnx.jit(lambda d, f: (d(f, grid=grid), d(f, grid=grid, image_size=image_size)))(
        decoder, features)
    _, expected = _reference_decoder(sd, features, grid)
    assert masks.shape == (1, *grid, 150) and up.shape == (1, *image_size, 150)
    assert np.max(np.abs(np.asarray(masks) - expected)) <= 1e-4
    expected_up = _bilinear_numpy(expected[..., :5], image_size)
    assert np.max(np.abs(np.asarray(up)[..., :5] - expected_up)) <= 1e-4


def test_converter_names_bad_keys():
    _, sd = _fixture()
    missing = {k: v for k, v in sd.items() if k != "mask_norm.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['mask_norm.bias'\]"):
        cbt_decoder_from_torch(missing)
    bad = dict(sd, **{"net.layers.1.fn.to_out.weight": np.zeros((192, 299), np.float32)})
    with pytest.raises(ValueError, match=r"mis-shaped keys: net.layers.1.fn.to_out.weight: "
                                         r"checkpoint \(192, 299\)"):
        cbt_decoder_from_torch(bad)
    extra = dict(sd, **{"net.layers.0.fn.mlp.weight": np.zeros((3,), np.float32)})
    with pytest.raises(ValueError, match=r"unknown keys \['net.layers.0.fn.mlp.weight'\]"):
        cbt_decoder_from_torch(extra)
    no_classes = {k: v for k, v in sd.items() if k != "cls_emb"}
    with pytest.raises(ValueError, match="cls_emb"):
        cbt_decoder_from_torch(no_classes)


def test_converter_reads_sizes_from_shapes(rng):
    """A decoder of another width, depth, class count and head split converts and runs."""
    d, k, heads, dh, depth = 48, 7, 2, 12, 3
    sd = {"cls_emb": rng.standard_normal((1, k, d)), "decoder_norm.weight": np.ones(d),
          "decoder_norm.bias": np.zeros(d), "mask_norm.weight": np.ones(k),
          "mask_norm.bias": np.zeros(k)}
    for i in range(depth):
        p = f"net.layers.{i}."
        sd.update({p + "norm.weight": np.ones(d), p + "norm.bias": np.zeros(d),
                   p + "fn.proj.weight": rng.standard_normal((heads * dh, d)) / d**0.5,
                   p + "fn.to_out.weight": rng.standard_normal((d, heads * dh)) / 5,
                   p + "fn.to_out.bias": rng.standard_normal(d) / 10,
                   p + "fn.step_x": rng.standard_normal((heads, 1, 1)),
                   p + "fn.step_rep": rng.standard_normal((heads, 1, 1))})
    sd = {key: np.asarray(v, np.float32) for key, v in sd.items()}
    decoder = cbt_decoder_from_torch(sd)
    assert (len(decoder.blocks), decoder.num_classes, decoder.dim) == (depth, k, d)
    features = rng.standard_normal((2, 12 * 10, d)).astype(np.float32)
    _, expected = _reference_decoder(sd, features, (12, 10))
    assert np.max(np.abs(np.asarray(decoder(features, grid=(12, 10))) - expected)) <= 1e-4


# ----------------------------------------------------------------------------------------------
# upsampling


@pytest.mark.parametrize("src,dst", [((3, 5), (7, 12)), ((4, 4), (16, 16)), ((9, 6), (4, 5)),
                                     ((1, 3), (2, 3))])
def test_bilinear_matches_the_half_pixel_reference(src, dst, rng):
    x = rng.standard_normal((2, *src, 3)).astype(np.float32)
    ours = np.asarray(upsample_bilinear(x, dst))
    assert ours.shape == (2, *dst, 3)
    np.testing.assert_allclose(ours, _bilinear_numpy(x, dst), atol=1e-5)
    assert np.allclose(bilinear_matrix(dst[0], src[0]).sum(axis=1), 1.0)  # weights sum to one


def test_bilinear_upsampling_equals_jax_image_resize(rng):
    """For upsampling, torch's clamped half-pixel rule equals jax.image.resize's."""
    x = rng.standard_normal((1, 5, 7, 2)).astype(np.float32)
    ours = upsample_bilinear(x, (20, 21))
    theirs = jax.image.resize(x, (1, 20, 21, 2), "bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the segmenter


def _host_segmenter(name, **kwargs):
    """`create_segmenter` with parameters drawn on the host (no per-shape RNG compiles)."""
    return host_initialised(nnx.eval_shape(lambda: create_segmenter(name, **kwargs)))


@pytest.fixture(scope="module")
def nano():
    model = _host_segmenter("cbt_nano", num_classes=6, decoder="cbt", image_size=32)
    model.eval()
    return model


def test_pad_then_crop_is_exact(nano, rng):
    """An image off the patch multiple gives the crop of its zero-padded version's logits."""
    images = rng.standard_normal((2, 30, 37, 3)).astype(np.float32)
    padded = np.pad(images, ((0, 0), (0, 2), (0, 3), (0, 0)))
    out, full = forward(nano, images), forward(nano, padded)
    assert out.shape == (2, 30, 37, 6) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(full)[:, :30, :37])


def test_segmenter_composes_encoder_norm_decoder(nano, rng):
    images = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)

    def by_hand(m, x):
        tokens, grid = m.encoder.encode(x)
        assert grid == (8, 8)
        return m.decoder(m.encoder.head_norm(tokens[:, 1:]), grid=grid, image_size=(32, 32))

    logits, info = forward(nano, images, capture=True)
    masks = nnx.jit(by_hand)(nano, images)
    assert info["grid"] == (8, 8)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(masks), atol=1e-5)
    assert len(info["encoder"]) == 4 and len(info["decoder"]["layers"]) == 2
    # the encoder's classification path still works and reuses encode
    assert jax.eval_shape(lambda x: nano.encoder(x), images).shape == (1, 1)


@pytest.mark.parametrize("decoder", ["cbt", "softmax", "linear"])
def test_decoders_train(decoder, rng):
    """Each decoder gives finite logits and gradients reaching encoder and decoder."""
    model = _host_segmenter("cbt_nano", num_classes=4, decoder=decoder, image_size=16, depth=1)
    images = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, (2, 16, 16)))

    def loss(m):
        logits = m(images)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))

    grads = nnx.jit(nnx.grad(loss))(model)
    flat = dict(nnx.to_flat_state(grads))
    norms = {".".join(map(str, k)): float(jnp.linalg.norm(v[...])) for k, v in flat.items()}
    assert all(np.isfinite(v) for v in norms.values())
    assert norms["encoder.pos_embedding"] > 0
    dec = [v for k, v in norms.items() if k.startswith("decoder.")]
    assert dec and min(dec) >= 0 and max(dec) > 0
    if decoder == "cbt":
        assert norms["decoder.class_embedding"] > 0
        assert norms["decoder.blocks.0.attn.step_rep"] > 0


def test_decoders_reject_bad_inputs():
    dec = nnx.eval_shape(lambda: MaskTransformerDecoder(16, 3, depth=1, heads=2, dim_head=8,
                                                        cells=(4, 4), rngs=nnx.Rngs(0)))
    linear = nnx.eval_shape(lambda: LinearDecoder(16, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="gh\\*gw = 20"):
        jax.eval_shape(lambda x: dec(x, grid=(4, 5)), jnp.zeros((1, 24, 16)))
    with pytest.raises(ValueError, match="representative cells"):
        jax.eval_shape(lambda x: dec(x, grid=(3, 3)), jnp.zeros((1, 9, 16)))
    with pytest.raises(ValueError, match="D = 16"):
        jax.eval_shape(lambda x: linear(x, grid=(2, 2)), jnp.zeros((1, 4, 8)))
    seg = nnx.eval_shape(lambda: create_segmenter("vit_nano", num_classes=2, decoder="linear",
                                                  image_size=16))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda x: seg(x), jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="unknown decoder"):
        nnx.eval_shape(lambda: create_segmenter("cbt_nano", num_classes=2, decoder="fpn"))
    with pytest.raises(ValueError, match="width"):
        Segmenter(seg.encoder, nnx.eval_shape(lambda: LinearDecoder(32, 2, rngs=nnx.Rngs(0))))


def test_official_preset_sizes():
    cbt = DECODER_PRESETS["cbt"]
    assert (cbt.depth, cbt.heads, cbt.dim_head, cbt.cells) == (2, 3, 100, (10, 10))
    model = nnx.eval_shape(lambda: create_segmenter("cbt_tiny", num_classes=150))
    dec = model.decoder
    assert dec.class_embedding.shape == (1, 150, 192)
    assert dec.blocks[0].attn.proj[0].shape == (192, 3, 100)
    assert dec.blocks[0].attn.cells == (10, 10)
