"""Decoder-only language models (bytes or any small vocabulary) with causal CBSA, causal softmax or
causal linear attention, their presets, and pure prefill / decode / generate functions.

    model = create_lm("lm_cbsa_nano")               # vocabulary 256 (bytes), 256 positions
    logits = model(tokens)                           # [B, N] int -> [B, N, V] float32

    graphdef, params = nnx.split(model)
    tokens = generate(graphdef, params, prompt, num_tokens=64, rule=TopK(k=8), rng=key)

Architecture: token + learned position embeddings, `depth` pre-LN blocks
`x <- x + attn(LN x); x <- x + MLP(LN x)` (or CRATE's `x <- ISTA(LN x)`), a final LayerNorm and the
output layer (tied to the token embedding by default). The attention is causal, so token t's
logits depend on tokens 1..t only.

Decoding state: `model.init_state(batch_size)` is an `LMState` (the position of the next token and
one state per block, `cbsa_jax.attention.CausalCBSAState` / `CausalLinearState` /
`CausalSoftmaxState`); `model(tokens, state=s, return_state=True)` continues the sequence `s`
summarises. CBSA and linear attention carry O(1) states (decoding costs O(m p) / O(p^2) per token
whatever the prefix length); softmax attention carries a key/value cache of `max_len` tokens.
Nothing is stored on the module. Positions are learned up to `max_len`: a sequence (prompt plus
generated tokens) may not be longer.

Sequence parallelism: under an ambient mesh (`jax.set_mesh`) whose `seq` axis
(`cbsa_jax.sharding.SEQUENCE_AXIS`) has more than one device and divides the sequence length,
the activations `[B, T, D]` are split along T over it and the CBSA and linear attentions run
their kernels per shard of consecutive tokens (`cbsa_jax.nn.causal`); `python -m train` sets
that mesh from `config.mesh.seq`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from cbsa_jax.models.config import check_positive_ints, checked_replace, coerce_enums, lookup
from cbsa_jax.nn import causal, layers
from cbsa_jax.sharding import SEQUENCE_AXIS

__all__ = [
    "LMAttention",
    "LMConfig",
    "LMState",
    "LMBlock",
    "LanguageModel",
    "LM_PRESETS",
    "CBSA_CHUNK",
    "get_lm_config",
    "create_lm",
    "Greedy",
    "Temperature",
    "TopK",
    "prefill",
    "decode_step",
    "generate",
]


class LMAttention(enum.Enum):
    CBSA = "cbsa"  # causal CBSA, softmax contraction, S^T broadcast (learned queries)
    CBSA_EXACT = "cbsa_exact"  # causal CBSA with the exact contraction and broadcast
    SOFTMAX = "softmax"  # causal softmax attention, separate q, k, v
    LINEAR = "linear"  # causal linear attention (elu + 1), separate q, k, v


class LMFFN(enum.Enum):
    MLP = "mlp"  # x + MLP(LN x)
    ISTA = "ista"  # ISTA(LN x), no residual (CRATE)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Architecture of a decoder-only LM. Strings are accepted for the enum fields.

    Attributes:
      attention: the causal attention of every block.
      vocab_size: V (256 for bytes). max_len: the learned positions (longest sequence).
      dim, depth, heads, dim_head: D, blocks, H, p.
      ffn, mlp_ratio: the feed-forward step.
      num_queries: m, CBSA's learned representatives per head. eps: the exact contraction's
        distortion. chunk: tokens per scan step of CBSA / linear attention (speed only); None:
        `CBSA_CHUNK` for CBSA, the kernel's default (`causal.LINEAR_CHUNK`) for linear attention.
      tied_output: logits = LN(x) E^T with the token embedding E (else a separate Dense).
    """

    attention: LMAttention
    dim: int
    depth: int
    heads: int
    dim_head: int = 32
    vocab_size: int = 256
    max_len: int = 256
    ffn: LMFFN = LMFFN.MLP
    mlp_ratio: float = 4.0
    num_queries: int = 16
    eps: float = 1.0
    chunk: int | None = None
    tied_output: bool = True

    def __post_init__(self):
        coerce_enums(self, {"attention": LMAttention, "ffn": LMFFN})
        check_positive_ints(self, ("dim", "depth", "heads", "dim_head", "vocab_size", "max_len",
                                   "num_queries") + (("chunk",) if self.chunk is not None else ()))
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    def replace(self, **changes) -> LMConfig:
        return checked_replace(self, "LM", **changes)


class LMState(NamedTuple):
    """The decoding state of a `LanguageModel`: `position` (int32 scalar, the next token's
    position) and one attention state per block."""

    position: jax.Array
    layers: tuple[Any, ...]


#: Causal CBSA's chunk in the language models by default: the fastest of 16, 32 and 64 for the
#: presets' train step, whose heads (p = 32) are narrower than the kernel's default assumes.
CBSA_CHUNK = 16


def build_causal_attention(config: LMConfig, *, dtype, param_dtype,
                           rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, h, p = config.dim, config.heads, config.dim_head
    if config.attention in (LMAttention.CBSA, LMAttention.CBSA_EXACT):
        exact = config.attention is LMAttention.CBSA_EXACT
        return causal.CausalCBSA(d, h, p, num_queries=config.num_queries,
                                 contraction="exact" if exact else "softmax",
                                 broadcast="exact" if exact else "attention", eps=config.eps,
                                 chunk=config.chunk or CBSA_CHUNK, **kw)
    if config.attention is LMAttention.SOFTMAX:
        return causal.CausalSoftmaxAttention(d, h, p, **kw)
    if config.chunk is not None:
        kw["chunk"] = config.chunk
    return causal.CausalLinearAttention(d, h, p, **kw)


class LMBlock(nnx.Module):
    """`x + attn(LN x)`, then `x + MLP(LN x)` (or `ISTA(LN x)`), with the attention's state passed
    through."""

    def __init__(self, config: LMConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.dim
        self.norm1 = layers.layer_norm(d, **kw)
        self.attn = build_causal_attention(config, **kw)
        self.norm2 = layers.layer_norm(d, **kw)
        self.ffn_kind = config.ffn
        self.ffn = (layers.MLP(d, int(d * config.mlp_ratio), **kw) if config.ffn is LMFFN.MLP
                    else layers.ISTA(d, **kw))

    def __call__(self, x, *, state=None, return_state: bool = False):
        a = self.attn(self.norm1(x), state=state, return_state=return_state)
        a, state = a if return_state else (a, None)
        x = x + a
        y = self.ffn(self.norm2(x))
        out = x + y if self.ffn_kind is LMFFN.MLP else y
        return (out, state) if return_state else out


class LanguageModel(nnx.Module):
    """A decoder-only LM of `config`: `tokens [B, N]` (int) -> logits `[B, N, V]` (float32)."""

    def __init__(self, config: LMConfig, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.dim
        small = nnx.initializers.normal(0.02)
        self.token_embedding = layers.param(rngs, small, (config.vocab_size, d),
                                            ("vocab", "embed"), param_dtype)
        self.pos_embedding = layers.param(rngs, small, (config.max_len, d), ("tokens", "embed"),
                                          param_dtype)
        self.blocks = nnx.List([LMBlock(config, **kw) for _ in range(config.depth)])
        self.final_norm = layers.layer_norm(d, **kw)
        if not config.tied_output:
            self.head_kernel = layers.param(rngs, layers.DEFAULT_INIT, (d, config.vocab_size),
                                            ("embed", "vocab"), param_dtype)
        self.head_bias = layers.param(rngs, nnx.initializers.zeros, (config.vocab_size,),
                                      ("vocab",), param_dtype)

    def init_state(self, batch_size: int) -> LMState:
        """The empty prefix for `batch_size` sequences (softmax: caches of `max_len` tokens)."""
        states = tuple(block.attn.init_state(batch_size, self.config.max_len)
                       for block in self.blocks)
        return LMState(jnp.zeros((), jnp.int32), states)

    def __call__(self, tokens, *, state: LMState | None = None, return_state: bool = False):
        """`tokens [B, N]` continuing `state` (None: from the start) -> logits `[B, N, V]`, or
        (logits, the state after the N tokens) with `return_state=True`."""
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be an integer array of shape [B, N], got "
                             f"{tokens.dtype} {tokens.shape}")
        b, n = tokens.shape
        if n > self.config.max_len:
            raise ValueError(f"tokens has N = {n} positions, more than max_len = "
                             f"{self.config.max_len}")
        if state is None and return_state:
            state = self.init_state(b)
        start = jnp.zeros((), jnp.int32) if state is None else state.position
        dtype = self.dtype or self.token_embedding[...].dtype
        pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding[...], start, n, axis=0)
        x = (jnp.take(self.token_embedding[...], tokens, axis=0) + pos).astype(dtype)
        if causal.split_axis(SEQUENCE_AXIS, n) is not None:  # sequence parallelism
            free = PartitionSpec.UNCONSTRAINED
            x = jax.lax.with_sharding_constraint(x, PartitionSpec(free, SEQUENCE_AXIS, free))
        new_states = []
        for i, block in enumerate(self.blocks):
            if state is None:
                x = block(x)
            else:
                x, s = block(x, state=state.layers[i], return_state=True)
                new_states.append(s)
        x = self.final_norm(x).astype(jnp.float32)
        kernel = (self.token_embedding[...].T if self.config.tied_output
                  else self.head_kernel[...])
        logits = x @ kernel.astype(jnp.float32) + self.head_bias[...].astype(jnp.float32)
        if not return_state:
            return logits
        return logits, LMState(start + n, tuple(new_states))


# ----------------------------------------------------------------------------------------------
# presets: the three attentions at equal widths

_LM_WIDTHS = {  # dim, depth, heads, head width
    "nano": (64, 2, 4, 16),
    "tiny": (128, 4, 4, 32),
    "small": (256, 6, 8, 32),
}


def _build_presets() -> dict[str, LMConfig]:
    presets = {}
    for kind in ("cbsa", "softmax", "linear"):
        for size, (d, n, h, p) in _LM_WIDTHS.items():
            presets[f"lm_{kind}_{size}"] = LMConfig(kind, dim=d, depth=n, heads=h, dim_head=p)
    return presets


LM_PRESETS: dict[str, LMConfig] = _build_presets()


def get_lm_config(name: str, **overrides) -> LMConfig:
    """The LM preset's `LMConfig` with `overrides` applied (validated)."""
    return lookup(LM_PRESETS, name, "LM preset", **overrides)


def create_lm(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None, dtype=None,
              param_dtype=jnp.float32, **overrides) -> LanguageModel:
    """Build the LM preset `name` (e.g. "lm_cbsa_tiny"); `overrides` replace `LMConfig` fields."""
    return LanguageModel(get_lm_config(name, **overrides), dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs if rngs is not None else nnx.Rngs(seed))


# ----------------------------------------------------------------------------------------------
# sampling: pure functions of (graphdef, params)


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The most likely token."""

    def __call__(self, logits, rng):
        del rng
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """Sample from `softmax(logits / temperature)`."""

    temperature: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def __call__(self, logits, rng):
        return jax.random.categorical(rng, logits / self.temperature, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Sample among the k most likely tokens, at `temperature`."""

    k: int = 8
    temperature: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def __call__(self, logits, rng):
        values, indices = jax.lax.top_k(logits, min(self.k, logits.shape[-1]))
        pick = jax.random.categorical(rng, values / self.temperature, axis=-1)
        return jnp.take_along_axis(indices, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)


def prefill(graphdef, params, tokens) -> tuple[jax.Array, LMState]:
    """One parallel pass over the prompt `tokens [B, P]`: (logits `[B, P, V]`, state after it)."""
    return nnx.merge(graphdef, params)(tokens, return_state=True)


def decode_step(graphdef, params, token, state: LMState) -> tuple[jax.Array, LMState]:
    """Feed one token per sequence `token [B]`: (logits `[B, V]`, new state)."""
    logits, state = nnx.merge(graphdef, params)(jnp.asarray(token)[:, None], state=state,
                                                return_state=True)
    return logits[:, 0], state


@functools.partial(jax.jit, static_argnames=("graphdef", "num_tokens", "rule"))
def _generate(graphdef, params, prompt, rng, *, num_tokens: int, rule):
    logits, state = prefill(graphdef, params, prompt)
    keys = jax.random.split(rng, num_tokens)
    first = rule(logits[:, -1], keys[0])

    def body(carry, key):
        token, state = carry
        logits, state = decode_step(graphdef, params, token, state)
        nxt = rule(logits, key)
        return (nxt, state), nxt

    _, rest = jax.lax.scan(body, (first, state), keys[1:])
    return jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def generate(graphdef, params, prompt, *, num_tokens: int, rule=Greedy(), rng=None) -> jax.Array:  # noqa: B008
    """Continue `prompt [B, P]` (int) by `num_tokens` tokens sampled with `rule` (`Greedy()`,
    `Temperature(t)`, `TopK(k, t)`): one prefill, then a `lax.scan` of one-token decoding steps
    under one jit. Returns the new tokens `[B, num_tokens]` (int32). `rng` (a PRNG key) is needed
    by the sampling rules; Greedy ignores it."""
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape [B, P] with P >= 1, got {prompt.shape}")
    if not (isinstance(num_tokens, int) and num_tokens >= 1):
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    max_len = graphdef_config(graphdef, params).max_len
    if prompt.shape[1] + num_tokens - 1 > max_len:
        raise ValueError(f"prompt ({prompt.shape[1]} tokens) + num_tokens ({num_tokens}) - 1 "
                         f"exceeds max_len = {max_len}")
    rng = jax.random.key(0) if rng is None else rng
    return _generate(graphdef, params, prompt.astype(jnp.int32), rng, num_tokens=num_tokens,
                     rule=rule)


def graphdef_config(graphdef, params) -> LMConfig:
    """The `LMConfig` of a split `LanguageModel` (static: no computation)."""
    return nnx.merge(graphdef, params).config
