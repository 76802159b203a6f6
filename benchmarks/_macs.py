"""Multiply-adds as the paper counts them: a walk over the jaxpr of a function.

fvcore (which the CBT paper's GMACs come from) counts one multiply-add (MAC) per multiply-add of
every matmul / einsum / linear / convolution and leaves element-wise work aside (it adds a few
element-wise terms for norms and pooling, compared in docs/models.md). `count_macs(fn, *args)` does
the same on `jax.make_jaxpr(fn)(*args)`: the MACs of every `dot_general` (output size x contracted
size) and `conv_general_dilated` (output size x input features per group x kernel window), recursing
into every sub-jaxpr (jit / pjit, custom_jvp / custom_vjp, remat, cond: the most expensive branch;
scan: the body times its length; while: the body times `while_trips`, since a while loop's trip
count is not in the jaxpr). XLA's cost analysis, by contrast, counts a multiply-add as two FLOPs and
also counts element-wise work.

`ista_association(kind)` forces the ISTA association while a model is traced: `"tokens"` is the
reference's three products (what fvcore counts), `"auto"` what this library executes
(`cbsa_jax.unroll.ista_association`).
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
from jax.extend import core as jex_core

from cbsa_jax import unroll

__all__ = ["count_macs", "jaxpr_macs", "ista_association"]


def _size(shape) -> int:
    return math.prod(int(s) for s in shape)


def _dot_macs(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return _size(eqn.outvars[0].aval.shape) * _size(lhs[i] for i in lhs_contract)


def _conv_macs(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    # rhs = [out features, in features / groups, *window] in some order
    return _size(eqn.outvars[0].aval.shape) * (_size(rhs) // out_features)


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_macs(jaxpr, *, while_trips: int | None = None) -> int:
    """MACs of `jaxpr` (a `Jaxpr` or `ClosedJaxpr`); see the module docstring."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_macs(eqn)
        elif name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif name == "cond":
            total += max(jaxpr_macs(b, while_trips=while_trips) for b in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_macs(eqn.params["jaxpr"],
                                                       while_trips=while_trips)
        elif name == "while":
            body = jaxpr_macs(eqn.params["body_jaxpr"], while_trips=while_trips)
            if body and while_trips is None:
                raise ValueError("a while loop does matrix products and its trip count is not "
                                 "in the jaxpr: pass while_trips")
            total += body * (while_trips or 0) + jaxpr_macs(eqn.params["cond_jaxpr"],
                                                            while_trips=while_trips)
        else:
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):  # jit, custom_jvp / custom_vjp, remat, ...
                    total += jaxpr_macs(sub, while_trips=while_trips)
    return total


def count_macs(fn, *args, while_trips: int | None = None, **kwargs) -> int:
    """Multiply-adds of `fn(*args, **kwargs)` (arrays or `jax.ShapeDtypeStruct`s), from its
    jaxpr: nothing is compiled or run."""
    return jaxpr_macs(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args),
                      while_trips=while_trips)


@contextlib.contextmanager
def ista_association(kind: str):
    """Trace `cbsa_jax.unroll.ista_step` (what `nn.layers.ISTA` calls) with `association=kind`."""
    if kind not in unroll.ISTA_ASSOCIATIONS:
        raise ValueError(f"kind must be one of {', '.join(unroll.ISTA_ASSOCIATIONS)}, got "
                         f"{kind!r}")
    original = unroll.ista_step
    unroll.ista_step = functools.partial(original, association=kind)
    try:
        yield
    finally:
        unroll.ista_step = original
