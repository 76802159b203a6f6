"""The language task: its metrics, and a smoke run of `python -m train` on `stdlib_bytes/small`
(train, checkpoint, resume, metrics) followed by `python -m train.tools.generate` on the
checkpoint."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cbsa_jax.models import lm
from tests._configs import CONFIGS, tiny_config
from train import config as config_lib
from train import loop as loop_lib
from train.tasks import language
from train.tools import generate


def _config(data_dir, **overrides):
    return tiny_config("lm_stdlib.py", **{
        "dataset": "stdlib_bytes/small", "data_dir": data_dir, "model.name": "lm_cbsa_nano",
        "model.depth": 1, "batch_size": 8, "num_train_steps": 4, "eval_every_steps": 2,
        "checkpoint_every_steps": 2, **overrides})


def test_metrics_are_per_token_and_skip_padding():
    model = lm.create_lm("lm_cbsa_nano", depth=1, max_len=8)
    config = _config(None)
    task = language.language(config, num_classes=256, channels=0, image_size=(9,), dtype=None)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 9)), jnp.int32)
    sums = task.eval_sums(model, {"tokens": tokens, "valid": jnp.asarray([1.0, 1.0, 0.0])})
    losses, hits = language.next_token_losses(model, tokens)
    assert float(sums["tokens"]) == 16.0
    np.testing.assert_allclose(sums["loss"], losses[:2].sum(), rtol=1e-6)
    metrics = task.finalize({k: np.asarray(v) for k, v in sums.items()})
    np.testing.assert_allclose(metrics["loss"], float(losses[:2].mean()), rtol=1e-6)
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["neg_bits_per_byte"] == -metrics["bits_per_byte"]
    assert task.ranking == "neg_bits_per_byte"
    assert 4.0 < metrics["loss"] < 7.0  # ~ln 256 at initialisation


def test_foreign_model_fields_are_named():
    config = _config(None)
    config.model.patch_size = 4
    with pytest.raises(ValueError, match=r"config.model fields \['patch_size'\] do not apply"):
        language.language(config, num_classes=256, channels=0, image_size=(65,), dtype=None)


def test_lm_only_fields_reach_the_model_and_are_refused_elsewhere():
    config = _config(None)
    config.model.num_queries, config.model.chunk, config.model.tied_output = 4, 8, False
    task = language.language(config, num_classes=256, channels=0, image_size=(17,), dtype=None)
    model = task.build(nnx.Rngs(0))
    assert model.config.num_queries == 4 and model.config.chunk == 8
    assert not model.config.tied_output
    with pytest.raises(config_lib.ConfigError,
                       match=r"config.model fields \['num_queries'\] apply to language models"):
        tiny_config("digits.py", **{"model.num_queries": 4})


def _one_step(config, devices, tokens):
    """(metrics, updated parameters, the step's lowered text) of one train step of `config`."""
    exp = loop_lib.experiment(config, num_classes=256, channels=0, image_size=tokens.shape[1:],
                              steps_per_epoch=10, devices=devices)
    state = jax.jit(exp.task.init, out_shardings=exp.state_sharding)(jax.random.key(0))
    step = exp.train_step()
    leaves = step.flatten(state)
    batch = {"tokens": jax.device_put(tokens, exp.batch_sharding)}
    text = step.lower(leaves, batch).as_text()
    leaves, metrics = step(leaves, batch)
    return jax.device_get(metrics), jax.device_get(step.unflatten(leaves).params), text


def test_sequence_parallel_train_step_equals_one_device():
    """`config.mesh.seq = 8`: each sequence split over 8 devices (the causal kernels inside
    `shard_map`, exchanging prefix statistics); one train step (SGD, so the update is the
    gradient) gives the 1-device loss, gradient norm and parameters to 1e-5 (float32)."""
    tokens = np.random.default_rng(0).integers(0, 256, (2, 65)).astype(np.int32)
    runs = []
    for seq in (1, 8):
        config = _config(None, **{"mesh.seq": seq, "batch_size": 2, "optimizer": "sgd",
                                  "momentum": 0.0, "learning_rate": 1.0, "weight_decay": 0.0})
        runs.append(_one_step(config, jax.devices()[:seq], tokens))
    (m1, p1, text1), (m8, p8, text8) = runs
    assert "manual_computation" in text8 and "manual_computation" not in text1
    for key in ("loss", "grad_norm", "accuracy"):
        assert abs(float(m1[key]) - float(m8[key])) <= 1e-5, key
    assert float(m1["grad_norm"]) > 1e-2
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_sequence_parallelism_is_checked_against_the_task_and_the_length():
    with pytest.raises(config_lib.ConfigError, match="must divide the sequence length T = 64"):
        language.language(_config(None, **{"mesh.seq": 3}), num_classes=256, channels=0,
                          image_size=(65,), dtype=None)
    with pytest.raises(config_lib.ConfigError, match="applies to language models only"):
        tiny_config("digits.py", **{"mesh.seq": 2})
    long = config_lib.validate(config_lib.load(os.path.join(CONFIGS, "lm_stdlib_long.py")))
    assert (long.dataset, long.mesh.seq, long.mesh.data) == ("stdlib_bytes/seq65536", 8, 1)
    task = language.language(long, num_classes=256, channels=0, image_size=(65537,), dtype=None)
    assert nnx.eval_shape(lambda: task.build(nnx.Rngs(0))).config.max_len == 65536


def test_train_resume_and_generate(tmp_path, capsys):
    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    first = loop_lib.run(_config(data_dir), workdir, stop_at=2)
    assert first["step"] == 2 and first["stopped_by"] == "stop_at"
    summary = loop_lib.run(_config(data_dir), workdir)
    assert summary["step"] == 4 and summary["stopped_by"] == "finished"
    assert "resumed from" in capsys.readouterr().out
    final = summary["final_eval"]
    assert final["bits_per_byte"] == pytest.approx(final["loss"] / math.log(2))
    assert 0 < final["bits_per_byte"] < 8.5 and final["tokens"] > 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if r["split"] == "test"] == [2, 4]
    assert all("bits_per_byte" in r for r in rows)

    args = ["--workdir", workdir, "--prompt", "def ", "--num_tokens", "12", "--greedy"]
    assert generate.main(args) == 0
    out = capsys.readouterr().out
    text = out.splitlines()[1]
    assert text.startswith("def ") and len(text.encode("utf-8", errors="replace")) >= 4
    assert generate.main(["--workdir", workdir, "--prompt", "", "--num_tokens", "4"]) == 2
    assert "must not be empty" in capsys.readouterr().err


def test_sample_continues_the_prompt_greedily():
    model = lm.create_lm("lm_linear_nano", depth=1, max_len=16)
    texts = generate.sample(model, "ab", num_tokens=5, rule=lm.Greedy(), count=2)
    assert len(texts) == 2 and texts[0] == texts[1]
    graphdef, params = nnx.split(model)
    expected = lm.generate(graphdef, params, jnp.asarray([[97, 98]]), num_tokens=5)
    assert texts[0] == bytes(np.asarray(expected[0], np.uint8)).decode("utf-8", "replace")
    with pytest.raises(ValueError, match="exceeds the model's 16 positions"):
        generate.sample(model, "abc", num_tokens=15, rule=lm.Greedy())
