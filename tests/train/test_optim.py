"""Schedules, the weight-decay mask, clipping that is really applied, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cbsa_jax.models import create
from tests._configs import tiny_config
from tests._models import fill_on_host
from train import config as config_lib
from train import optim


def _config(**kw):
    c = config_lib.base_config()
    for k, v in kw.items():
        c[k] = v
    return c


def test_warmup_then_cosine_per_step():
    schedule = optim.learning_rate_schedule(_config(learning_rate=1.0, warmup_epochs=2.0,
                                                    min_lr_ratio=0.1), steps_per_epoch=5,
                                            total_steps=30)
    lrs = np.array([float(schedule(s)) for s in range(31)])
    np.testing.assert_allclose(lrs[:10], np.linspace(0.1, 1.0, 10), rtol=1e-6)  # 10 warmup steps
    assert lrs[10] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[10:]) < 0) and lrs[30] == pytest.approx(0.1)
    cosine_mid = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 10 / 20))
    assert lrs[20] == pytest.approx(cosine_mid, rel=1e-5)
    constant = optim.learning_rate_schedule(_config(schedule="constant", learning_rate=0.5),
                                            steps_per_epoch=5, total_steps=30)
    assert float(constant(0)) == float(constant(29)) == 0.5


def test_weight_decay_skips_vectors_and_named_parameters():
    params = nnx.state(nnx.eval_shape(lambda: create("cbt_nano", num_classes=3, image_size=32,
                                                     depth=1)), nnx.Param)
    mask = {"/".join(map(str, p)): bool(v.get_value()) for p, v in
            nnx.to_flat_state(optim.decay_mask(params, _config()))}
    assert mask["blocks/0/attn/proj/0"] and mask["blocks/0/ffn/weight"] and mask["head_kernel"]
    for name in ("blocks/0/attn/step_x", "blocks/0/attn/step_rep", "blocks/0/norm1/scale",
                 "head_bias", "cls_token", "pos_embedding"):
        assert not mask[name], name
    everything = {"/".join(map(str, p)): bool(v.get_value()) for p, v in nnx.to_flat_state(
        optim.decay_mask(params, _config(decay_vectors=True, no_decay_names=())))}
    assert all(everything.values())


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd"])
def test_clipping_is_applied(name):
    """With clipping at 1.0 a gradient 1000x larger gives exactly the clipped gradient's update."""
    params = {"w": jnp.ones((3, 2))}
    big = {"w": jnp.full((3, 2), 1000.0)}
    clipped = {"w": big["w"] / optax.tree.norm(big)}
    schedule = optax.constant_schedule(0.1)
    c = _config(optimizer=name, weight_decay=0.0, grad_clip_norm=1.0)
    tx = optim.make_optimizer(c, params, schedule)
    raw = optim.make_optimizer(_config(optimizer=name, weight_decay=0.0, grad_clip_norm=0.0),
                               params, schedule)
    got, _ = tx.update(big, tx.init(params), params)
    want, _ = raw.update(clipped, raw.init(params), params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
    unclipped, _ = raw.update(big, raw.init(params), params)
    if name == "sgd":  # scale-sensitive: the clip must show
        assert not np.allclose(unclipped["w"], got["w"])


def test_decoupled_weight_decay_uses_the_mask():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optim.make_optimizer(_config(optimizer="sgd", weight_decay=0.5, momentum=0.0,
                                      grad_clip_norm=0.0), params, optax.constant_schedule(1.0))
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.5)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_ema_tracks_the_parameters_and_batchnorm_statistics_update(data_dir):
    from train import loop

    config = tiny_config(data_dir=data_dir, ema_decay=0.5)
    exp = loop.experiment(config, num_classes=10, channels=1, image_size=8, steps_per_epoch=4,
                          devices=jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: exp.task.init(jax.random.key(0)))
    state = exp.task.state_from(fill_on_host(abstract.params, np.random.default_rng(0)),
                                fill_on_host(abstract.batch_stats, np.random.default_rng(1)))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(32, 8, 8, 1)), jnp.float32)
    labels = jnp.arange(32, dtype=jnp.int32) % 10
    new, _ = jax.jit(exp.task.train_step)(state, {"image": images, "label": labels})
    for e, p0, p1 in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(state.params),
                         jax.tree.leaves(new.params), strict=True):
        np.testing.assert_allclose(e, 0.5 * p0 + 0.5 * p1, rtol=1e-5, atol=1e-7)
    # the conv stem's BatchNorm statistics move inside the jitted step (momentum 0.9)
    old_stats, new_stats = jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats)
    assert old_stats and len(old_stats) == len(new_stats)
    for before, after in zip(old_stats, new_stats, strict=True):
        assert np.all(np.isfinite(after)) and not np.allclose(before, after)
