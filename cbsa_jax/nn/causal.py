"""Causal Flax NNX layers for sequences: CBSA on every prefix and its causal baselines.

Each maps `x [B, N, D] -> [B, N, D]` with `__call__(x, *, state=None, return_state=False)`; the
decoding state is passed in and out (`init_state(batch_size, max_len)`), never stored on the
module, so a decoder prefills a prompt, then feeds one token at a time. The pure functions they
call are in `cbsa_jax.attention.causal`.

Sequence parallelism: `CausalCBSA` and `CausalLinearAttention` take a `sequence_axis` (default
`cbsa_jax.sharding.SEQUENCE_AXIS`, "seq"). When they are called under an ambient mesh
(`jax.set_mesh`) on which that axis has more than one device, and it divides the sequence
length, the kernel runs inside `jax.shard_map` over that axis with the tokens split into
consecutive shards (`sequence_axis=` of `causal_cbsa` / `causal_linear`: each shard receives the
prefix statistics of the shards before it); the other mesh axes stay automatic. Otherwise (no
such axis, or a length it does not divide, e.g. one decoded token) the sequence is processed
whole. `CausalSoftmaxAttention` has no sequence-parallel kernel: under such a mesh XLA gathers
what it needs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from cbsa_jax.attention import causal as att
from cbsa_jax.attention.noncausal import Broadcast, Contraction
from cbsa_jax.nn.layers import HeadsProjection, cast, param
from cbsa_jax.sharding import SEQUENCE_AXIS

__all__ = ["CausalCBSA", "CausalSoftmaxAttention", "CausalLinearAttention", "split_axis"]


def _check_batch_size(batch_size) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_axis(sequence_axis) -> str | None:
    if sequence_axis is not None and not isinstance(sequence_axis, str):
        raise ValueError(f"sequence_axis must be a mesh axis name (str) or None, got "
                         f"{sequence_axis!r}")
    return sequence_axis


def split_axis(sequence_axis: str | None, n: int) -> str | None:
    """`sequence_axis` if the ambient mesh (`jax.set_mesh`) splits it over more than one device
    and that number divides the sequence length `n`; else None (process the sequence whole)."""
    if sequence_axis is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or sequence_axis not in mesh.axis_names:
        return None
    size = mesh.shape[sequence_axis]
    return sequence_axis if size > 1 and n % size == 0 else None


def _run(kernel, axis: str | None, split, replicated):
    """`kernel(*split, *replicated, sequence_axis=axis)` -> (out, state): inside
    `jax.shard_map` over `axis` (when not None) with the `split` arrays `[..., H, N, p]` split
    along N and the `replicated` ones (a pytree, None entries allowed) whole; only `axis` is
    manual, the mesh's other axes stay automatic."""
    if axis is None:
        return kernel(*split, *replicated, sequence_axis=None)
    tokens = PartitionSpec(*([None] * (split[0].ndim - 2)), axis)
    body = functools.partial(kernel, sequence_axis=axis)
    return jax.shard_map(body, in_specs=(tokens,) * len(split) + (PartitionSpec(),)
                         * len(replicated), out_specs=(tokens, PartitionSpec()),
                         axis_names={axis})(*split, *replicated)


class CausalCBSA(HeadsProjection):
    """Causal CBSA (`cbsa_jax.attention.causal_cbsa`): token t gets the CBSA step computed on the
    prefix x_1..x_t, with `num_queries` learned representative queries per head; linear in N,
    an O(m p) state per head for decoding.

    `x [B, N, D]` -> `[B, N, D]`; with `return_state=True` -> (out, `CausalCBSAState`). Pass the
    state of a prefix as `state` to continue it (prefill, then one token at a time).
    `sequence_axis`: the mesh axis a sequence may be split over (module docstring).
    """

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *, num_queries: int = 16,
                 contraction: Contraction | str = Contraction.SOFTMAX,
                 broadcast: Broadcast | str = Broadcast.ATTENTION, eps: float = 1.0,
                 chunk: int = att.DEFAULT_CHUNK, sequence_axis: str | None = SEQUENCE_AXIS,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not (isinstance(num_queries, int) and num_queries >= 1):
            raise ValueError(f"num_queries must be a positive integer, got {num_queries!r}")
        self.contraction, self.broadcast = Contraction(contraction), Broadcast(broadcast)
        self.eps, self.chunk = eps, att.check_chunk(chunk)
        self.sequence_axis = _check_axis(sequence_axis)
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
        kernel = functools.partial(_cbsa_kernel, chunk=self.chunk, contraction=self.contraction,
                                   broadcast=self.broadcast, eps=self.eps)
        y, state = _run(kernel, split_axis(self.sequence_axis, w.shape[-2]), (w,),
                        (queries, step_x, step_rep, state))
        out = self.project_out(y)
        return (out, state) if return_state else out


def _cbsa_kernel(w, queries, step_x, step_rep, state, *, sequence_axis, **kwargs):
    return att.causal_cbsa(w, queries, step_x=step_x, step_rep=step_rep, state=state,
                           sequence_axis=sequence_axis, **kwargs)


def _linear_kernel(q, k, v, state, *, sequence_axis, chunk):
    return att.causal_linear(q, k, v, chunk=chunk, state=state, sequence_axis=sequence_axis)


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
    (`cbsa_jax.attention.causal_linear`): linear in N, an O(p^2) state per head.
    `sequence_axis`: as in `CausalCBSA`."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, *,
                 chunk: int = att.LINEAR_CHUNK, sequence_axis: str | None = SEQUENCE_AXIS,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(dim, heads, dim_head, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         projections=3)
        self.chunk = att.check_chunk(chunk)
        self.sequence_axis = _check_axis(sequence_axis)

    def init_state(self, batch_size: int, max_len: int | None = None) -> att.CausalLinearState:
        _check_batch_size(batch_size)
        return att.init_causal_linear_state((batch_size,), self.heads, self.dim_head)

    def __call__(self, x, *, state=None, return_state: bool = False):
        q, k, v = (self.project_in(x, i) for i in range(3))
        kernel = functools.partial(_linear_kernel, chunk=self.chunk)
        y, state = _run(kernel, split_axis(self.sequence_axis, q.shape[-2]), (q, k, v), (state,))
        out = self.project_out(y)
        return (out, state) if return_state else out
