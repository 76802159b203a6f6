"""Flax NNX layers wrapping the pure functions (`layers`: images and sets of tokens; `causal`:
sequences); usable from Linen through `to_linen`."""

from flax.nnx import bridge as _bridge

from cbsa_jax.nn.causal import CausalCBSA, CausalLinearAttention, CausalSoftmaxAttention
from cbsa_jax.nn.layers import (
    CBSA,
    ISTA,
    MLP,
    MSSA,
    TSSA,
    AgentAttention,
    Block,
    ChannelAttention,
    LayerNorm,
    LinearAttention,
    RepresentativeInit,
    SoftmaxAttention,
)


def to_linen(layer_cls, *args, **kwargs):
    """Wrap an NNX layer class as a Linen module (`flax.nnx.bridge.to_linen`).

    Example, inside a Linen `@nn.compact` method::

        y = cbsa_jax.nn.to_linen(CBSA, 192, 3, 64, cells=(4, 4))(x)
    """
    return _bridge.to_linen(layer_cls, *args, **kwargs)


__all__ = [
    "CBSA",
    "ISTA",
    "MLP",
    "MSSA",
    "TSSA",
    "AgentAttention",
    "Block",
    "CausalCBSA",
    "CausalLinearAttention",
    "CausalSoftmaxAttention",
    "ChannelAttention",
    "LayerNorm",
    "LinearAttention",
    "RepresentativeInit",
    "SoftmaxAttention",
    "to_linen",
]
