"""Putting a flat `{key: array}` checkpoint into an NNX model through a key map.

A key map sends each source key to (path in `nnx.state(model)`, transform), or to (tuple of
paths, transform returning one array per path) for a fused source; `assign` checks that every
key is used and every parameter set, with shapes, and reports every problem at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["Transform", "IDENTITY", "assign"]

Transform = Callable[[np.ndarray], np.ndarray]
IDENTITY: Transform = lambda a: a  # noqa: E731


def assign(factory: Callable[[], nnx.Module], weights: Mapping[str, np.ndarray],
           key_map: Mapping[str, tuple[tuple, Transform]], *,
           ignore: Callable[[str], bool] = lambda key: False,
           keep_init: Callable[[tuple], bool] | None = None) -> nnx.Module:
    """Build `factory()` with every parameter taken from `weights` through `key_map`; eval mode.

    `key_map` maps a source key to (path in `nnx.state(model)`, transform), or to (tuple of
    paths, transform returning one array per path) for a fused source (timm's qkv). Every source
    key must be mapped (or `ignore`d) and every mapped key present with the right shape;
    otherwise one ValueError lists every unknown, missing and mis-shaped key with both shapes.
    The model is
    built abstractly (`nnx.eval_shape`, nothing allocated) unless `keep_init` names parameter
    paths that may keep their initial value (e.g. a new head); those are then initialised.
    A model parameter that no key covers and `keep_init` does not allow is a bug in the key
    map and raises AssertionError.
    """
    model = nnx.eval_shape(factory) if keep_init is None else factory()
    graphdef, state = nnx.split(model)
    targets = dict(nnx.to_flat_state(state))
    unknown = sorted(k for k in weights if k not in key_map and not ignore(k))
    missing = sorted(k for k in key_map if k not in weights)
    mismatched, assigned = [], set()
    for key, (path, transform) in key_map.items():
        if key not in weights:
            continue
        paths = path if path and isinstance(path[0], tuple) else (path,)
        for p in paths:
            if p not in targets:
                raise AssertionError(f"key map sends {key} to {'.'.join(map(str, p))}, which the "
                                     f"model does not have")
        variables = [targets[p] for p in paths]
        try:
            values = transform(weights[key])
            values = [np.asarray(v) for v in (values if len(paths) > 1 else (values,))]
        except ValueError:
            values = None
        if values is None or len(values) != len(paths) or any(
                v.shape != var.shape for v, var in zip(values, variables, strict=True)):
            expects = " + ".join(str(tuple(var.shape)) for var in variables)
            where = ", ".join(".".join(map(str, p)) for p in paths)
            mismatched.append(f"{key}: checkpoint {tuple(np.shape(weights[key]))}, model expects "
                              f"{expects} at {where}")
            continue
        for v, var in zip(values, variables, strict=True):
            var.set_value(jnp.asarray(v, var.dtype))
        assigned.update(paths)
    problems = []
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if missing:
        problems.append(f"missing keys {missing}")
    if mismatched:
        problems.append("mis-shaped keys: " + "; ".join(mismatched))
    if problems:
        raise ValueError("state_dict does not match the model: " + " | ".join(problems))
    unset = sorted(".".join(map(str, p)) for p in targets
                   if p not in assigned and not (keep_init is not None and keep_init(p)))
    if unset:  # a key map that forgot a parameter is a bug here, not in the checkpoint
        raise AssertionError(f"model parameters not covered by the key map: {unset}")
    model = nnx.merge(graphdef, state)
    model.eval()
    return model
