"""Exact parity with the official PyTorch CBT, and loading its checkpoints."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from cbsa_jax import convert
from cbsa_jax.convert import cbt_from_torch, load_torch_state_dict
from tests._models import forward
from tests._util import FIXTURES
from tests.data.tiny import TINY, TINY_PTH
from tests.reference_numpy import cbt_forward, random_cbt_state_dict

FIXTURE_NAMES = ["cbt_parity_small.npz", "cbt_parity_grid10.npz"]
OUTPUT_KEYS = {"input", "logits", "features", "attn_maps", "block_in", "attn_in", "attn_out",
               "ffn_in", "block_out", "cbsa_w", "cbsa_pooled", "cbsa_attn", "cbsa_rep_attn",
               "layer_index", "config"}


def _fixture(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"parity fixtures folder {os.path.abspath(FIXTURES)} is absent")
    data = np.load(path)
    config = json.loads(str(data["config"][0]))
    state_dict = {k: data[k] for k in data.files if k not in OUTPUT_KEYS}
    return data, config, state_dict


def _kwargs(config):
    return {k: config[k] for k in ("image_size", "patch_size", "num_classes", "dim", "depth",
                                   "heads", "dim_head")}


def _run(model, images_nhwc):
    return forward(model, images_nhwc, capture=True)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_parity_with_the_pytorch_reference(name):
    data, config, state_dict = _fixture(name)
    model = cbt_from_torch(state_dict, **_kwargs(config))
    logits, info = _run(model, data["input"].transpose(0, 2, 3, 1))
    layer = info["layers"][int(data["layer_index"])]
    b, n, c = data["cbsa_w"].shape
    heads = config["heads"]
    ours = {
        "logits": logits, "features": info["features"],
        "block_in": layer["block_in"], "attn_in": layer["attn_in"],
        "attn_out": layer["attn_out"], "ffn_in": layer["ffn_in"],
        "block_out": layer["block_out"],
        # [B, H, N, p] -> the reference's [B, N, H*p]
        "cbsa_w": np.asarray(layer["w"]).transpose(0, 2, 1, 3).reshape(b, n, c),
        # [B, H, 64, p] -> the reference's pooled map [B, H*p, 8, 8] (head-major channels)
        "cbsa_pooled": np.asarray(layer["initial"]).transpose(0, 1, 3, 2).reshape(b, c, 8, 8),
        "cbsa_attn": layer["weights"], "cbsa_rep_attn": layer["rep_attention"],
        "attn_maps": layer["effective_map"],
    }
    assert heads == layer["weights"].shape[1]
    for key, value in ours.items():
        err = float(np.max(np.abs(np.asarray(value) - data[key])))
        assert err <= 1e-4, (key, err)


def test_the_numpy_transcription_reproduces_the_fixtures():
    """The float64 numpy port of the reference used below is itself checked against PyTorch."""
    for name in FIXTURE_NAMES:
        data, config, state_dict = _fixture(name)
        logits, features = cbt_forward(state_dict, data["input"], depth=config["depth"],
                                       heads=config["heads"], dim_head=config["dim_head"])
        assert np.max(np.abs(logits - data["logits"])) <= 1e-4
        assert np.max(np.abs(features - data["features"])) <= 1e-4


@pytest.mark.parametrize("image_size,depth,dim,heads,patch_size", [
    (224, 12, 192, 3, 16),  # the full CBT-T: 14 x 14 grid, 12 blocks
    (192, 3, 96, 2, 16),  # 12 x 12 grid, bins overlap unevenly (12 -> 8)
    (72, 2, 64, 2, 8),  # the 3-block stem of patch 8: 9 x 9 grid
])
def test_parity_holds_for_any_grid_and_depth(image_size, depth, dim, heads, patch_size):
    rng = np.random.default_rng(image_size)
    kw = dict(image_size=image_size, patch_size=patch_size, num_classes=11, dim=dim, depth=depth,
              heads=heads, dim_head=64)
    state_dict = random_cbt_state_dict(rng, **kw)
    images = rng.normal(size=(2, 3, image_size, image_size)).astype(np.float32)
    expected_logits, expected_features = cbt_forward(state_dict, images, depth=depth, heads=heads,
                                                     dim_head=64, patch_size=patch_size)
    logits, info = _run(cbt_from_torch(state_dict, **kw), images.transpose(0, 2, 3, 1))
    assert np.max(np.abs(np.asarray(logits) - expected_logits)) <= 1e-4
    assert np.max(np.abs(np.asarray(info["features"]) - expected_features)) <= 1e-4


def test_pooling_the_true_patches_is_a_different_model():
    """Selection matters: pooling the true patches moves attn_out well beyond float noise."""
    data, config, state_dict = _fixture(FIXTURE_NAMES[0])
    model = cbt_from_torch(state_dict, selection="patches", **_kwargs(config))
    _, info = _run(model, data["input"].transpose(0, 2, 3, 1))
    assert np.max(np.abs(np.asarray(info["layers"][0]["attn_out"]) - data["attn_out"])) > 0.1


@pytest.mark.parametrize("reader", ["builtin", "auto"])
def test_pth_checkpoints_load_with_wrapper_and_prefixes(reader):
    if reader == "auto":
        pytest.importorskip("torch", reason="the torch path of the reader needs torch")
    weights = load_torch_state_dict(TINY_PTH, reader=reader)
    expected = random_cbt_state_dict(np.random.default_rng(123), **TINY)
    assert set(weights) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)


def test_a_pth_path_converts_to_the_reference_logits():
    model = cbt_from_torch(TINY_PTH, **TINY)
    rng = np.random.default_rng(5)
    images = rng.normal(size=(2, 3, 128, 128)).astype(np.float32)
    expected, _ = cbt_forward(random_cbt_state_dict(np.random.default_rng(123), **TINY), images,
                              depth=1, heads=2, dim_head=8)
    np.testing.assert_allclose(forward(model, images.transpose(0, 2, 3, 1)), expected, atol=1e-4)


def test_the_builtin_reader_refuses_code(tmp_path):
    """The reader rebuilds tensors only: any other global in the pickle is refused."""
    import pickle
    import zipfile

    payload = pickle.dumps({"x": print}, protocol=2)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", payload)
    with pytest.raises(ValueError, match="print, which this reader does not load") as info:
        load_torch_state_dict(path, reader="builtin")
    assert str(info.value).startswith(f"{path} is not a torch checkpoint this can read "
                                      f"(UnpicklingError: checkpoint contains __builtin__.print")
    with zipfile.ZipFile(path, "w") as z:  # a truncated pickle: the same one-line error
        z.writestr("evil/data.pkl", pickle.dumps({"x": 1}, protocol=2)[:-3])
    truncated = r"this can read \(UnpicklingError: pickle data was truncated\)$"
    with pytest.raises(ValueError, match=truncated):
        load_torch_state_dict(path, reader="builtin")
    path.write_bytes(b"XXXX" + path.read_bytes()[4:])  # a damaged archive: the same one line
    with pytest.raises(ValueError, match=r"this can read \(BadZipFile: Bad magic number"):
        load_torch_state_dict(path, reader="builtin")


def _small_state_dict():
    kw = dict(image_size=128, patch_size=16, num_classes=3, dim=16, depth=1, heads=2, dim_head=8)
    return random_cbt_state_dict(np.random.default_rng(0), **kw), kw


def test_mismatched_checkpoints_list_every_problem():
    state_dict, kw = _small_state_dict()
    state_dict["transformer.layers.0.0.fn.extra"] = np.zeros(3)
    del state_dict["mlp_head.1.bias"]
    state_dict["transformer.layers.0.1.fn.weight"] = np.zeros((16, 17), np.float32)
    with pytest.raises(ValueError) as info:
        cbt_from_torch(state_dict, **kw)
    message = str(info.value)
    assert "unknown keys ['transformer.layers.0.0.fn.extra']" in message
    assert "missing keys ['mlp_head.1.bias']" in message
    assert ("transformer.layers.0.1.fn.weight: checkpoint (16, 17), model expects (16, 16)"
            in message)


def test_a_checkpoint_for_another_depth_is_refused():
    state_dict, kw = _small_state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['transformer.layers.1"):
        cbt_from_torch(state_dict, **{**kw, "depth": 2})


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="state_dict path"):
        load_torch_state_dict(tmp_path / "missing.pth")
    (tmp_path / "plain.pth").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        load_torch_state_dict(tmp_path / "plain.pth", reader="builtin")
    with pytest.raises(ValueError, match="state_dict must be a mapping or a .pth path"):
        load_torch_state_dict(42)
    with pytest.raises(ValueError, match="reader must be"):
        load_torch_state_dict({}, reader="fast")


def test_a_file_torch_cannot_read_is_one_value_error(tmp_path):
    """With torch installed, its reader's failure (an UnpicklingError of many lines) becomes one
    ValueError naming the file, as the builtin reader's does."""
    pytest.importorskip("torch", reason="the torch path of the reader needs torch")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(tmp_path / "text.pth", reader="torch")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'text.pth'} is not a torch checkpoint this can read ("
                              ) and "\n" not in message, message


def test_converted_models_are_in_eval_mode():
    state_dict, kw = _small_state_dict()
    model = cbt_from_torch(state_dict, **kw)
    norm = model.patch_embed.norms[0]
    assert norm.use_running_average
    before = np.asarray(norm.mean[...]).copy()
    model(np.ones((2, 128, 128, 3), np.float32))
    np.testing.assert_array_equal(norm.mean[...], before)  # running statistics untouched
    assert convert.torch_key_map(model.config)  # the key map is public for other tools
    assert jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))
