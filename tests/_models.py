"""Helpers for model tests: abstract models filled with host-drawn parameters.

Drawing parameters with numpy avoids compiling one random-number kernel per parameter shape
(seconds each on a 2-core CPU), so tests can afford many architectures.
"""

import numpy as np
from flax import nnx

from benchmarks._step import fill_on_host
from benchmarks.models import count_params
from cbsa_jax.models import create

__all__ = ["count_params", "fill_on_host", "host_initialised"]


def host_initialised(name: str, *, rng: np.random.Generator, **kwargs):
    """`create(name, **kwargs)` with every parameter drawn on the host at init-like scale."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create(name, **kwargs)))
    return nnx.merge(graphdef, fill_on_host(state, rng))
