"""Models with host-drawn parameters, for the benchmarks and the tests.

`host_initialised(abstract_model, seed)` fills an abstract model (`nnx.eval_shape`) with
parameters drawn by numpy at init-like scale, which avoids compiling one random-number kernel per
parameter shape (each one a compilation, slow on a CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["host_initialised", "fill_on_host"]


def fill_on_host(state: nnx.State, rng: np.random.Generator) -> nnx.State:
    """Give every variable of an (abstract) `state` a numpy-drawn value at init-like scale, in
    place: norms' scales and running variances 1, biases and running means 0, step sizes N(0, 1),
    the ISTA dictionary as torch's kaiming_uniform_, other floats N(0, 0.02), integers 0."""

    def draw(name: str, shape, dtype):
        if name in ("scale", "var"):
            value = np.ones(shape)
        elif name in ("bias", "mean", "out_bias", "head_bias", "b1", "b2"):
            value = np.zeros(shape)
        elif name in ("step_x", "step_rep", "temp", "temperature"):
            value = rng.normal(0.0, 1.0, shape)
        elif name == "weight":  # the ISTA dictionary, as torch's kaiming_uniform_
            value = rng.uniform(-1, 1, shape) * np.sqrt(6.0 / shape[0])
        else:
            value = rng.normal(0.0, 0.02, shape)
        return jnp.asarray(value, dtype)

    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        if isinstance(value, jax.ShapeDtypeStruct) or hasattr(value, "shape"):
            if jnp.issubdtype(value.dtype, jnp.floating):
                variable.set_value(draw(str(path[-1]), value.shape, value.dtype))
            else:
                variable.set_value(jnp.zeros(value.shape, value.dtype))
    return state


def host_initialised(abstract_model: nnx.Module, seed: int = 0) -> nnx.Module:
    """A concrete copy of `abstract_model` with every parameter drawn by numpy on the host."""
    graphdef, state = nnx.split(nnx.clone(abstract_model))  # leave the abstract model abstract
    return nnx.merge(graphdef, fill_on_host(state, np.random.default_rng(seed)))
