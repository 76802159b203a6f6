"""Logical axis names of every parameter, and the rules that place them on a device mesh.

Each parameter created by `cbsa_jax.nn` carries `logical_axes` metadata: one name per array dim,
e.g. the CBSA subspace bases `U [D, H, p]` are `("embed", "heads", "head_dim")`. A rule table maps
logical names to mesh axes; the default puts the embedding (model width) dim over `fsdp` (fully
sharded data parallel) and heads over `model` (tensor parallel). Nothing here depends on Flax.

    rules = DEFAULT_RULES
    spec = logical_to_spec(("embed", "heads", "head_dim"), rules, mesh_axis_names)
    # PartitionSpec('fsdp', 'model', None)

A mesh axis is used at most once per array; a dim whose size the mesh axis does not divide stays
replicated (so a 3-head model still runs on a model axis of 2).

One logical name is for activations, not parameters: `"sequence"`, a sequence's tokens, which the
default rules split over the mesh axis `seq` (sequence parallelism: the causal attentions of
`cbsa_jax.nn.causal` then run their kernels per shard of consecutive tokens, exchanging only the
O(m p) prefix statistics; see `SEQUENCE_AXIS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec

__all__ = ["AXES", "DEFAULT_RULES", "SEQUENCE_AXIS", "logical_to_spec"]

#: Every logical axis name used by the library's parameters, and "sequence" (activations).
AXES = (
    "embed",  # model width D
    "heads",  # attention heads H
    "head_dim",  # per-head width p
    "mlp",  # hidden width of a ViT MLP
    "representatives",  # learned queries m
    "tokens",  # position embedding length
    "classes",  # classifier outputs
    "vocab",  # a language model's vocabulary (token embedding, output layer)
    "conv_in",  # conv input channels
    "conv_out",  # conv output channels
    "kernel",  # conv spatial taps
    "patch",  # flattened patch features of a linear patch embedding
    "sequence",  # a sequence's tokens (activations of a language model, [B, T, D])
)

#: Logical axis -> mesh axis (or None: replicated). FSDP over `fsdp`; heads, MLP and a language
#: model's vocabulary over `model`.
DEFAULT_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "heads": "model",
    "head_dim": None,
    "mlp": "model",
    "representatives": None,
    "tokens": None,
    "classes": None,
    "vocab": "model",  # a language model's embedding and logits split by vocabulary entries
    "conv_in": None,
    "conv_out": "fsdp",
    "kernel": None,
    "patch": None,
    "sequence": "seq",  # sequence parallelism
}

#: The mesh axis that splits a sequence's tokens (`DEFAULT_RULES["sequence"]`): when the ambient
#: mesh (`jax.set_mesh`) has it with more than one device, the causal layers of `cbsa_jax.nn`
#: split their sequences over it.
SEQUENCE_AXIS: str = DEFAULT_RULES["sequence"]


def logical_to_spec(
    axes: Sequence[str | None] | None,
    rules: Mapping[str, str | None],
    mesh_axes: Mapping[str, int],
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """The `PartitionSpec` for one array.

    Args:
      axes: logical name per dim (None, or an entry None, means replicated).
      rules: logical name -> mesh axis name or None.
      mesh_axes: the mesh's axis names and sizes (axes of size 1 are ignored).
      shape: the array shape; when given, a dim not divisible by its mesh axis stays replicated.
    """
    if axes is None:
        return PartitionSpec()
    unknown = [a for a in axes if a is not None and a not in rules]
    if unknown:
        raise ValueError(f"logical axes {unknown} have no sharding rule; rules cover "
                         f"{sorted(rules)}")
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = rules.get(name) if name is not None else None
        size = mesh_axes.get(target, 1) if target is not None else 1
        ok = (target is not None and target not in used and size > 1
              and (shape is None or shape[i] % size == 0))
        spec.append(target if ok else None)
        if ok:
            used.add(target)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)
