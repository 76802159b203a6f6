"""Causal Flax NNX layers for sequences: CBSA on every prefix and its causal baselines.

Each maps `x [B, N, D] -> [B, N, D]` with `__call__(x, *, state=None, return_state=False)`; the
decoding state is passed in and out (`init_state(batch_size, max_len)`), never stored on the
module, so a decoder prefills a prompt, then feeds one token at a time. The pure functions they
call are in `cbsa_jax.attention.causal`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from cbsa_jax.attention import causal as att
from cbsa_jax.attention.noncausal import Broadcast, Contraction
from cbsa_jax.nn.layers import HeadsProjection, cast, param

__all__ = ["CausalCBSA", "CausalSoftmaxAttention", "CausalLinearAttention"]


def _check_batch_size(batch_size) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class CausalCBSA(HeadsProjection):
    """Causal CBSA (`cbsa_jax.attention.causal_cbsa`): token t gets the CBSA step computed on the
    prefix x_1..x_t, with `num_queries` learned representative queries per head; linear in N,
    an O(m p) state per head for decoding.

    `x [B, N, D]` -> `[B, N, D]`; with `return_state=True` -> (out, `CausalCBSAState`). Pass the
    state of a prefix as `state` to continue it (prefill, then one token at a time).
    """

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, num_queries: int = 16,
                 contraction: Contraction | str = Contraction.SOFTMAX,
                 broadcast: Broadcast | str = Broadcast.ATTENTION, eps: float = 1.0,
                 chunk: int = 64, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not (isinstance(num_queries, int) and num_queries >= 1):
            raise ValueError(f"num_queries must be a positive integer, got {num_queries!r}")
        self.contraction, self.broadcast = Contraction(contraction), Broadcast(broadcast)
        self.eps, self.chunk = eps, att.check_chunk(chunk)
        if self.contraction is Contraction.EXACT and not (
                isinstance(eps, int | float) and eps > 0):
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        normal = nnx.initializers.normal(1.0)
        self.queries = param(rngs, normal, (heads, num_queries, dim_head),
                             ("heads", "representatives", "head_dim"), param_dtype)
        self.step_x = param(rngs, normal, (heads,), ("heads",), param_dtype)
        self.step_rep = param(rngs, normal, (heads,), ("heads",), param_dtype)

    def init_state(self, batch_size: int, max_len: int | None = None) -> att.CausalCBSAState:
        """The empty prefix for `batch_size` sequences (`max_len` is ignored: the state does not
        grow)."""
        _check_batch_size(batch_size)
        return att.init_causal_cbsa_state((batch_size,), self.heads, self.queries.shape[1],
                                          self.dim_head)

    def __call__(self, x, *, state=None, return_state: bool = False):
        w = self.project_in(x)
        queries = cast(self.dtype or w.dtype, self.queries[...])[0]
        step_x, step_rep = cast(jnp.float32, self.step_x[...], self.step_rep[...])
        y, state = att.causal_cbsa(w, queries, step_x=step_x, step_rep=step_rep, chunk=self.chunk,
                                   contraction=self.contraction, broadcast=self.broadcast,
                                   eps=self.eps, state=state)
        out = self.project_out(y)
        return (out, state) if return_state else out


class CausalSoftmaxAttention(HeadsProjection):
    """Causal multi-head softmax attention with separate q, k, v projections: the O(N^2)
    baseline (`jax.nn.dot_product_attention(is_causal=True)`), decoding from a key/value cache
    of `max_len` tokens (`init_state(batch_size, max_len)`)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *,
                 implementation: str | None = None, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         projections=3)
        self.implementation = implementation

    def init_state(self, batch_size: int, max_len: int | None = None) -> att.CausalSoftmaxState:
        _check_batch_size(batch_size)
        if max_len is None:
            raise ValueError("causal softmax attention needs max_len: its cache holds every "
                             "past key and value")
        return att.init_causal_softmax_state((batch_size,), self.heads, self.dim_head, max_len,
                                             dtype=self.dtype or jnp.float32)

    def __call__(self, x, *, state=None, return_state: bool = False):
        q, k, v = (self.project_in(x, i) for i in range(3))
        if return_state and state is None:
            raise ValueError("return_state=True needs a state (init_state(batch_size, max_len))")
        y, state = att.causal_softmax(q, k, v, state=state, implementation=self.implementation)
        out = self.project_out(y)
        return (out, state) if return_state else out


class CausalLinearAttention(HeadsProjection):
    """Causal linear attention with separate q, k, v projections and the feature map elu + 1
    (`cbsa_jax.attention.causal_linear`): linear in N, an O(p^2) state per head."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, chunk: int = 64, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         projections=3)
        self.chunk = att.check_chunk(chunk)

    def init_state(self, batch_size: int, max_len: int | None = None) -> att.CausalLinearState:
        _check_batch_size(batch_size)
        return att.init_causal_linear_state((batch_size,), self.heads, self.dim_head)

    def __call__(self, x, *, state=None, return_state: bool = False):
        q, k, v = (self.project_in(x, i) for i in range(3))
        y, state = att.causal_linear(q, k, v, chunk=self.chunk, state=state)
        out = self.project_out(y)
        return (out, state) if return_state else out
