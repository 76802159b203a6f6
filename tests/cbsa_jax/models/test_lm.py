"""The causal layers and the decoder-only LM: incremental decoding equals the full forward,
generation is deterministic and greedy, causality holds end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cbsa_jax import nn as cnn
from cbsa_jax.attention import causal as causal_attention
from cbsa_jax.models import lm

KINDS = ["cbsa", "softmax", "linear"]
SMALL = dict(dim=32, depth=1, heads=2, dim_head=8, max_len=16, chunk=4, num_queries=4)


def _tokens(n, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, size=(2, n)), jnp.int32)


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_decoding_gives_the_full_forward_logits(kind):
    model = lm.create_lm(f"lm_{kind}_nano", **SMALL)
    tokens = _tokens(11)
    full = jax.jit(lambda g, p, t: nnx.merge(g, p)(t), static_argnums=0)
    graphdef, params = nnx.split(model)
    expected = full(graphdef, params, tokens)
    logits, state = jax.jit(lm.prefill, static_argnums=0)(graphdef, params, tokens[:, :5])
    step = jax.jit(lm.decode_step, static_argnums=0)
    got = [logits]
    for t in range(5, 11):
        logits, state = step(graphdef, params, tokens[:, t], state)
        got.append(logits[:, None])
    got = jnp.concatenate(got, axis=1)
    assert got.shape == expected.shape == (2, 11, 256)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert int(state.position) == 11
    # the logits depend on the tokens: a vacuous model would pass the check above
    assert float(jnp.max(jnp.abs(expected[:, 1:] - expected[:, :1]))) > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_is_deterministic_and_greedy(kind):
    model = lm.create_lm(f"lm_{kind}_nano", **SMALL)
    graphdef, params = nnx.split(model)
    prompt = _tokens(4, seed=1)
    a = lm.generate(graphdef, params, prompt, num_tokens=6)
    b = lm.generate(graphdef, params, prompt, num_tokens=6, rng=jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 6) and a.dtype == jnp.int32
    # greedy: each new token is the argmax of the full forward on the sequence so far
    seq = jnp.concatenate([prompt, a], axis=1)
    np.testing.assert_array_equal(jnp.argmax(model(seq)[:, 3:-1], axis=-1), a)


def test_sampling_rules():
    logits = jnp.asarray([[0.0, 5.0, 1.0, 4.0]] * 64)
    keys = jax.random.key(0)
    assert set(np.asarray(lm.TopK(k=2)(logits, keys)).tolist()) <= {1, 3}
    assert len(set(np.asarray(lm.Temperature(10.0)(logits, keys)).tolist())) > 2
    np.testing.assert_array_equal(lm.Greedy()(logits, keys), 1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lm.Temperature(0.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        lm.TopK(k=0)


def test_causal_end_to_end():
    model = lm.create_lm("lm_cbsa_nano", **SMALL)
    tokens = _tokens(12)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % 256)
    forward = jax.jit(lambda t: model(t))
    a, b = np.asarray(forward(tokens)), np.asarray(forward(changed))
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert not np.allclose(a[:, 7:], b[:, 7:])


def test_presets_have_equal_widths():
    for size in ("nano", "tiny", "small"):
        configs = [lm.get_lm_config(f"lm_{kind}_{size}") for kind in KINDS]
        assert len({(c.dim, c.depth, c.heads, c.dim_head) for c in configs}) == 1


def test_scan_chunks_default_per_attention_and_follow_the_config():
    def chunk(kind, **kw):
        return nnx.eval_shape(lambda: lm.create_lm(f"lm_{kind}_nano", **kw)).blocks[0].attn.chunk

    assert chunk("cbsa") == lm.CBSA_CHUNK and chunk("linear") == causal_attention.LINEAR_CHUNK
    assert chunk("cbsa", chunk=8) == chunk("linear", chunk=8) == 8
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        lm.get_lm_config("lm_cbsa_nano", chunk=0)


def test_bad_input_is_named():
    model = lm.create_lm("lm_cbsa_nano", **SMALL)
    with pytest.raises(ValueError, match="more than max_len"):
        model(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match=r"tokens must be an integer array of shape \[B, N\]"):
        model(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="unknown LM preset"):
        lm.get_lm_config("lm_nope")
    with pytest.raises(ValueError, match="exceeds max_len"):
        lm.generate(*nnx.split(model), jnp.zeros((1, 10), jnp.int32), num_tokens=8)
    layer = cnn.CausalSoftmaxAttention(8, 2, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs max_len"):
        layer.init_state(2)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        cnn.CausalCBSA(8, 2, 4, chunk=0, rngs=nnx.Rngs(0))


def test_causal_cbsa_layer_state_continues_the_sequence():
    layer = cnn.CausalCBSA(8, 2, 4, num_queries=3, chunk=2, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 8)), jnp.float32)
    full = layer(x)
    head, state = layer(x[:, :3], state=layer.init_state(2), return_state=True)
    tail = layer(x[:, 3:], state=state)
    np.testing.assert_allclose(jnp.concatenate([head, tail], axis=1), full, rtol=1e-5,
                               atol=1e-5)
    assert [s.shape for s in state] == [(2, 2, 3), (2, 2, 3), (2, 2, 3, 4)]


@pytest.mark.parametrize("tied", [True, False])
def test_parameters_carry_logical_axes_with_a_vocab_axis(tied):
    from cbsa_jax.sharding import AXES, DEFAULT_RULES, logical_to_spec

    model = lm.create_lm("lm_cbsa_nano", depth=1, max_len=8, vocab_size=98, tied_output=tied)
    vocab_dims = 0
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata().get("logical_axes")
        value = variable.get_value()
        assert axes is not None and len(axes) == value.ndim, (path, axes)
        assert all(a is None or a in AXES for a in axes), (path, axes)
        for axis, size in zip(axes, value.shape, strict=True):
            assert (axis == "vocab") == (size == 98), (path, axes, value.shape)
            vocab_dims += axis == "vocab"
        spec = logical_to_spec(axes, DEFAULT_RULES, {"data": 1, "fsdp": 2, "model": 2},
                               value.shape)  # every axis has a rule
        if axes == ("vocab", "embed"):  # the token embedding: vocabulary over `model`
            assert tuple(spec) == ("model", "fsdp")
    assert vocab_dims == (2 if tied else 3)  # embedding + output bias (+ output kernel)
