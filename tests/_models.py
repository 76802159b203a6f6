"""Helpers for model tests: abstract models filled with host-drawn parameters.

Drawing parameters with numpy avoids compiling one random-number kernel per parameter shape
(seconds each on a 2-core CPU), so tests can afford many architectures.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax.models import create


def fill_on_host(state: nnx.State, rng: np.random.Generator) -> nnx.State:
    """Give every (abstract) variable of `state` a host-drawn value at init-like scale."""

    def draw(path, v):
        key = str(path[-1])
        if key in ("scale", "var"):
            value = np.ones(v.shape)
        elif key in ("bias", "mean", "out_bias", "head_bias", "b1", "b2"):
            value = np.zeros(v.shape)
        elif key in ("step_x", "step_rep", "temp", "temperature"):
            value = rng.normal(0.0, 1.0, v.shape)
        elif key == "weight":  # ISTA dictionary
            value = rng.uniform(-1, 1, v.shape) * np.sqrt(6.0 / v.shape[0])
        else:
            value = rng.normal(0.0, 0.02, v.shape)
        return jnp.asarray(value, v.dtype)

    for path, variable in nnx.to_flat_state(state):
        variable.set_value(draw(path, variable))
    return state


def host_initialised(name: str, *, rng: np.random.Generator, **kwargs):
    """`create(name, **kwargs)` with every parameter drawn on the host at init-like scale."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create(name, **kwargs)))
    return nnx.merge(graphdef, fill_on_host(state, rng))


def count_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model,
                                                                                  nnx.Param)))
