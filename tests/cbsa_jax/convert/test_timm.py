"""Pretrained softmax ViTs: timm / AugReg / big_vision layouts, the adapted (pooled-query)
attention, exact parity with the official adapted ViT, position-embedding resampling, files."""

import json
import math
import os

import numpy as np
import pytest
from flax import nnx

from cbsa_jax import attention as att
from cbsa_jax import convert
from cbsa_jax.convert import (
    adapt,
    load_safetensors,
    resample_pos_embedding,
    save_safetensors,
    save_timm,
    vit_from_timm,
)
from cbsa_jax.nn import AgentAttention
from cbsa_jax.representatives import GridPooling, Selection
from tests._models import fill_on_host, forward
from tests._models import random_timm_state_dict as _random_timm
from tests._util import FIXTURES

HEADS = 2


def _fixture():
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"parity fixtures folder {os.path.abspath(FIXTURES)} is absent")
    data = np.load(os.path.join(FIXTURES, "vit_adapt_small.npz"))
    state_dict = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    return data, state_dict, json.loads(str(data["config_json"]))


# ----------------------------------------------------------------------------------------------
# a float64 NumPy transcription of a timm ViT with the official adapted attention, written from
# the fixture's description (checked against the fixture below)


def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _pool_1d(g, r):
    mat = np.zeros((r, g))
    for i in range(r):
        lo, hi = (i * g) // r, -((-(i + 1) * g) // r)
        mat[i, lo:hi] = 1 / (hi - lo)
    return mat


def _heads(t, h):  # [B, N, C] -> [B, H, N, C/H], head-major channels
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).transpose(0, 2, 1, 3)


def reference_vit(sd, images_nchw, heads, *, adapted=(), reference_selection=False, cells=8):
    """Logits and the tokens after block 0 of a timm ViT whose blocks in `adapted` take the
    official pooled-query path (`fc_norm` keys: timm's global_pool="avg")."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = np.asarray(images_nchw, np.float64)
    w = sd["patch_embed.proj.weight"]
    d, c, p, _ = w.shape
    b, _, hh, ww = x.shape
    gh, gw = hh // p, ww // p
    patches = np.einsum("bchiwj,dcij->bhwd", x.reshape(b, c, gh, p, gw, p), w)
    patches = patches.reshape(b, gh * gw, d) + sd["patch_embed.proj.bias"]
    cls = np.broadcast_to(sd["cls_token"], (b, 1, d))
    x = np.concatenate([cls, patches], axis=1) + sd["pos_embed"]
    n, scale = x.shape[1], (d // heads) ** -0.5
    after0 = None
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        pre = f"blocks.{i}."
        y = _ln(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
        q, k, v = np.split(y @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"], 3, -1)
        if i in adapted:
            g = math.isqrt(n)  # the reference's int(sqrt(N))
            sel = q[:, :-1] if reference_selection else q[:, 1:]
            rep = np.einsum("ih,jw,bhwc->bijc", _pool_1d(g, cells), _pool_1d(g, cells),
                            sel.reshape(b, g, g, d)).reshape(b, cells * cells, d)
            rep, qh, kh, vh = (_heads(t, heads) for t in (rep, q, k, v))
            delta = _softmax(rep * scale @ kh.transpose(0, 1, 3, 2)) @ vh
            out = _softmax(qh * scale @ rep.transpose(0, 1, 3, 2)) @ delta
        else:
            qh, kh, vh = (_heads(t, heads) for t in (q, k, v))
            out = _softmax(qh * scale @ kh.transpose(0, 1, 3, 2)) @ vh
        out = out.transpose(0, 2, 1, 3).reshape(b, n, d)
        x = x + out @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        y = _ln(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
        hidden = y @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"]
        hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
        x = x + hidden @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        after0 = x if after0 is None else after0
    if "fc_norm.weight" in sd:
        pooled = _ln(x[:, 1:].mean(1), sd["fc_norm.weight"], sd["fc_norm.bias"])
    else:
        pooled = _ln(x[:, 0], sd["norm.weight"], sd["norm.bias"])
    return pooled @ sd["head.weight"].T + sd["head.bias"], after0


def _images(size, seed=1):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)


def _logits(model, images):
    return np.asarray(forward(model, images))


def _state(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


# ----------------------------------------------------------------------------------------------
# parity with the official adapted ViT


def test_the_numpy_transcription_reproduces_the_fixture():
    data, sd, config = _fixture()
    assert config["layer_norm_eps"] == 1e-6 and config["cbsa_pool_grid"] == [8, 8]
    for tag, adapted in (("softmax", ()), ("cbsa", (0, 1))):
        logits, after0 = reference_vit(sd, data["input"], 3, adapted=adapted,
                                       reference_selection=True)
        assert np.max(np.abs(logits - data[f"logits_{tag}"])) <= 1e-4
        assert np.max(np.abs(after0 - data[f"tokens_after_block0_{tag}"])) <= 1e-4


@pytest.mark.parametrize("attention,selection,tag", [
    ("softmax", "patches", "softmax"), ("adapted", "reference", "cbsa")])
def test_parity_with_the_official_adapted_vit(attention, selection, tag):
    data, sd, config = _fixture()
    model = vit_from_timm(sd, heads=config["num_heads"], image_size=config["image_size"],
                          attention=attention, selection=selection)
    assert model.config.depth == 2 and model.config.dim == 192 and model.num_classes == 10
    logits, info = forward(model, data["input_nhwc"], capture=True)
    layer = info["layers"][0]
    errors = {"tokens_in": np.abs(layer["block_in"] - data["tokens_in"]).max(),
              "block0": np.abs(layer["block_out"] - data[f"tokens_after_block0_{tag}"]).max(),
              "logits": np.abs(logits - data[f"logits_{tag}"]).max()}
    assert max(errors.values()) <= 1e-4, errors
    # the two paths differ, and the reference's token selection matters on the adapted path
    other = "cbsa" if tag == "softmax" else "softmax"
    assert np.abs(logits - data[f"logits_{other}"]).max() > 1e-2
    if tag == "cbsa":
        patches = vit_from_timm(sd, heads=3, attention="adapted", selection="patches")
        assert np.abs(_logits(patches, data["input_nhwc"]) - data["logits_cbsa"]).max() > 1e-3


def test_the_adapted_layer_is_a_cbsa_broadcast():
    """With tied q = k = v the adapted layer is contract_and_broadcast(extraction=AGGREGATE,
    contraction=IDENTITY, broadcast=TOKEN_SOFTMAX) on grid-pooled representatives."""
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: AgentAttention(16, 2, 8, cells=(4, 4), qkv_bias=True, rngs=nnx.Rngs(0))))
    layer = nnx.merge(graphdef, fill_on_host(state, np.random.default_rng(0)))
    bias = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    for j in range(3):  # tie the projections and their biases
        layer.proj[j].set_value(layer.proj[0][...])
        layer.qkv_bias[j].set_value(bias)
    x = np.random.default_rng(0).normal(size=(2, 1 + 36, 16)).astype(np.float32)
    rule = GridPooling(grid=(6, 6), cells=(4, 4), prefix=1)

    @nnx.jit
    def both(layer, x):
        w = layer.project_in(x)
        res = att.contract_and_broadcast(w, representatives=rule, extraction="aggregate",
                                         contraction="identity", broadcast="token_softmax")
        return layer(x), layer.project_out(res.out), res.out, att.agent(
            w, w, w, representatives=rule)

    out, via_cb, cb, agent = both(layer, x)
    np.testing.assert_allclose(out, via_cb, atol=2e-5)
    np.testing.assert_allclose(cb, agent, atol=2e-5)
    assert np.abs(out).max() > 0.1


# ----------------------------------------------------------------------------------------------
# layouts


def _to_google(sd, heads, *, big_vision, scanned=False):
    """The same ViT written in the AugReg (vit_jax) or big_vision `.npz` layout."""
    d = sd["cls_token"].shape[-1]
    hd = d // heads
    attn, mlp = ("MultiHeadDotProductAttention_0", "MlpBlock_0") if big_vision else (
        "MultiHeadDotProductAttention_1", "MlpBlock_3")
    norm2 = "LayerNorm_1" if big_vision else "LayerNorm_2"
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"],
           "Transformer/encoder_norm/scale": sd["norm.weight"],
           "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    if big_vision:  # the position embedding is added before cls: fold cls's entry into cls
        out["cls"] = sd["cls_token"] + sd["pos_embed"][:, :1]
        out["pos_embedding"] = sd["pos_embed"][:, 1:]
    else:
        out["cls"] = sd["cls_token"]
        out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    blocks = []
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        pre = f"blocks.{i}."
        wq, wk, wv = np.split(sd[pre + "attn.qkv.weight"], 3)
        bq, bk, bv = np.split(sd[pre + "attn.qkv.bias"], 3)
        block = {"LayerNorm_0/scale": sd[pre + "norm1.weight"],
                 "LayerNorm_0/bias": sd[pre + "norm1.bias"],
                 f"{norm2}/scale": sd[pre + "norm2.weight"],
                 f"{norm2}/bias": sd[pre + "norm2.bias"],
                 f"{attn}/out/kernel": sd[pre + "attn.proj.weight"].T.reshape(heads, hd, d),
                 f"{attn}/out/bias": sd[pre + "attn.proj.bias"],
                 f"{mlp}/Dense_0/kernel": sd[pre + "mlp.fc1.weight"].T,
                 f"{mlp}/Dense_0/bias": sd[pre + "mlp.fc1.bias"],
                 f"{mlp}/Dense_1/kernel": sd[pre + "mlp.fc2.weight"].T,
                 f"{mlp}/Dense_1/bias": sd[pre + "mlp.fc2.bias"]}
        for name, wt, bias in (("query", wq, bq), ("key", wk, bk), ("value", wv, bv)):
            block[f"{attn}/{name}/kernel"] = wt.T.reshape(d, heads, hd)
            block[f"{attn}/{name}/bias"] = bias.reshape(heads, hd)
        blocks.append(block)
    if scanned:
        for key in blocks[0]:
            out[f"Transformer/encoderblock/{key}"] = np.stack([blk[key] for blk in blocks])
    else:
        for i, block in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
    prefix = "params/" if big_vision else "opt/target/"
    return {prefix + k: v for k, v in out.items()}


def test_every_layout_loads_to_the_same_logits(tmp_path):
    sd = _random_timm()
    images = _images(32)
    expected, _ = reference_vit(sd, images.transpose(0, 3, 1, 2), HEADS)
    timm = vit_from_timm(sd, heads=HEADS)
    assert (timm.config.dim, timm.config.depth, timm.config.patch_size, timm.num_classes) == (
        16, 2, 4, 5)
    assert timm.config.qkv_bias and timm.config.mlp_ratio == 2 and timm.image_size == (32, 32)
    ours = _logits(timm, images)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    sources = {"augreg": _to_google(sd, HEADS, big_vision=False),
               "big_vision": _to_google(sd, HEADS, big_vision=True),
               "big_vision_scanned": _to_google(sd, HEADS, big_vision=True, scanned=True)}
    for name, arrays in sources.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        model = vit_from_timm(str(path), heads=None if "big" in name else HEADS)
        assert convert.detect_layout(convert.load_vit_weights(str(path))) == name.split("_s")[0]
        np.testing.assert_allclose(_logits(model, images), ours, atol=2e-5, err_msg=name)
    np.savez(tmp_path / "timm.npz", **sd)  # a timm state dict as .npz loads too
    assert all(np.array_equal(a, _state(vit_from_timm(str(tmp_path / "timm.npz"),
                                                      heads=HEADS))[p])
               for p, a in _state(timm).items())


def test_mean_pooling_and_a_position_table_without_the_cls_slot():
    """timm's global_pool="avg" (fc_norm after the patch mean) and no_embed_class (pos_embed
    [1, N, D], cls gets no position)."""
    sd = _random_timm()
    sd["fc_norm.weight"], sd["fc_norm.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    images = _images(32)
    model = vit_from_timm({**sd, "pos_embed": sd["pos_embed"][:, 1:]}, heads=HEADS)
    assert model.config.pool.value == "patch_mean"
    zero_cls = {**sd, "pos_embed": np.concatenate([0 * sd["pos_embed"][:, :1],
                                                   sd["pos_embed"][:, 1:]], axis=1)}
    expected, _ = reference_vit(zero_cls, images.transpose(0, 3, 1, 2), HEADS)
    np.testing.assert_allclose(_logits(model, images), expected, atol=1e-4)
    assert set(convert.timm_state_dict(model)) == set(zero_cls)


def test_adapted_in_the_first_k_blocks():
    sd = _random_timm()
    images = _images(32)
    model = vit_from_timm(sd, heads=HEADS, attention="adapted", attention_blocks=1,
                          selection="reference")
    kinds = [type(block.attn).__name__ for block in model.blocks]
    assert kinds == ["AgentAttention", "SoftmaxAttention"]
    expected, _ = reference_vit(sd, images.transpose(0, 3, 1, 2), HEADS, adapted=(0,),
                                reference_selection=True)
    np.testing.assert_allclose(_logits(model, images), expected, atol=1e-4)
    # switching a loaded softmax model keeps its weights
    switched = adapt(vit_from_timm(sd, heads=HEADS), blocks=1, selection="reference")
    assert switched.config == model.config
    np.testing.assert_allclose(_logits(switched, images), _logits(model, images), atol=1e-6)
    back = adapt(vit_from_timm(sd, heads=HEADS, attention="adapted"), attention="softmax")
    np.testing.assert_allclose(_logits(back, images),
                               reference_vit(sd, images.transpose(0, 3, 1, 2), HEADS)[0],
                               atol=1e-4)


# ----------------------------------------------------------------------------------------------
# position embeddings


def _bilinear(grid, out_h, out_w):
    """torch's F.interpolate(mode='bilinear', align_corners=False), no antialias."""

    def weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        mat = np.zeros((n_out, n_in))
        np.add.at(mat, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(mat, (np.arange(n_out), hi), src - lo)
        return mat

    h, w, _ = grid.shape
    return np.einsum("ih,jw,hwd->ijd", weights(h, out_h), weights(w, out_w), grid)


def test_resample_pos_embedding():
    pe = np.random.default_rng(0).normal(size=(1, 1 + 6 * 4, 5)).astype(np.float32)
    assert resample_pos_embedding(pe, (6, 4), (6, 4), 1) is pe
    for new in ((9, 7), (3, 2), (6, 10)):
        out = resample_pos_embedding(pe, (6, 4), new, 1)
        assert out.shape == (1, 1 + new[0] * new[1], 5)
        np.testing.assert_array_equal(out[:, :1], pe[:, :1])
        ref = _bilinear(pe[0, 1:].reshape(6, 4, 5).astype(np.float64), *new)
        np.testing.assert_allclose(out[0, 1:], ref.reshape(-1, 5), atol=1e-5)
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embedding(pe, (5, 5), (6, 6), 1)


def test_another_image_size_resamples_the_position_embedding():
    sd = _random_timm()
    images = _images(48)  # 12 x 12 patches instead of 8 x 8
    model = vit_from_timm(sd, heads=HEADS, image_size=48, attention="adapted")
    resized = dict(sd)
    pos = sd["pos_embed"]
    resized["pos_embed"] = np.concatenate(
        [pos[:, :1], _bilinear(pos[0, 1:].reshape(8, 8, -1), 12, 12).reshape(1, 144, -1)], 1)
    expected, _ = reference_vit(resized, images.transpose(0, 3, 1, 2), HEADS, adapted=(0, 1))
    np.testing.assert_allclose(_logits(model, images), expected, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# files and errors


def test_safetensors_files(tmp_path):
    # a file written by hand from the format: header length, JSON header, raw buffer
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], np.float32)
    bf16 = (b.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "b": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]},
                         "c": {"dtype": "I64", "shape": [], "data_offsets": [28, 36]}}).encode()
    raw = a.tobytes() + bf16.tobytes() + np.int64(7).tobytes()
    (tmp_path / "hand.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
    loaded = load_safetensors(tmp_path / "hand.safetensors")
    np.testing.assert_array_equal(loaded["a"], a)
    np.testing.assert_array_equal(loaded["b"], b)
    assert loaded["c"].shape == () and int(loaded["c"]) == 7 and set(loaded) == {"a", "b", "c"}
    save_safetensors({"a": a, "c": np.int64(7)}, tmp_path / "ours.safetensors")
    again = load_safetensors(tmp_path / "ours.safetensors")
    np.testing.assert_array_equal(again["a"], a)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_save_timm_round_trips(tmp_path):
    sd = _random_timm()
    model = vit_from_timm(sd, heads=HEADS, attention="adapted", attention_blocks=1)
    exported = convert.timm_state_dict(model)
    assert set(exported) == set(sd)
    for key, value in sd.items():
        np.testing.assert_allclose(exported[key], value, atol=1e-7, err_msg=key)
    for suffix in (".safetensors", ".npz"):
        save_timm(model, tmp_path / f"vit{suffix}")
        again = vit_from_timm(str(tmp_path / f"vit{suffix}"), heads=HEADS)
        before = _state(model)
        assert all(np.array_equal(v, before[p]) for p, v in _state(again).items())


def test_mismatched_checkpoints_name_the_keys():
    sd = _random_timm()
    bad = dict(sd)
    del bad["blocks.1.norm2.bias"]
    bad["blocks.0.attn.q_norm.weight"] = np.ones(8, np.float32)
    bad["blocks.1.mlp.fc1.weight"] = np.zeros((32, 24), np.float32)  # wrong width
    with pytest.raises(ValueError) as info:
        vit_from_timm(bad, heads=HEADS)
    message = str(info.value)
    for key in ("blocks.1.norm2.bias", "blocks.0.attn.q_norm.weight", "blocks.1.mlp.fc1.weight",
                "missing keys", "unknown keys", "mis-shaped keys"):
        assert key in message, (key, message)
    assert "(32, 24)" in message and "(16, 32)" in message
    with pytest.raises(ValueError, match="heads must be a positive integer dividing the width 16"):
        vit_from_timm(sd, heads=3)
    with pytest.raises(ValueError, match="heads is required"):
        vit_from_timm(sd)
    wide = convert.vit_config_from_weights(sd, heads=HEADS)[0].replace(dim=32, dim_head=16)
    with pytest.raises(ValueError, match="patch_embed.proj.weight: checkpoint"):
        convert.load_vit(sd, wide, num_classes=5, image_size=32)


def test_a_new_head_for_other_classes():
    sd = _random_timm()
    model = vit_from_timm(sd, heads=HEADS, num_classes=3)
    assert model.head_kernel.shape == (16, 3)
    np.testing.assert_array_equal(model.blocks[1].ffn.w1[...], sd["blocks.1.mlp.fc1.weight"].T)
    assert not np.any(model.head_kernel[...]) and not np.any(model.head_bias[...])  # zero init
    assert Selection(model.config.selection) is Selection.PATCHES
