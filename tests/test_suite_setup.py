"""What conftest.py changes for the whole suite holds."""

import os
import re

import jax
import jax.numpy as jnp
from flax import nnx

from cbsa_jax.nn import CBSA


def test_the_suite_compiles_at_llvm_level_0_and_the_optimised_hlo_is_unchanged():
    """conftest.py sets XLA's LLVM backend to level 0; XLA's HLO passes do not depend on it:
    the optimised program of a CBSA layer's gradient is the same text at the usual level."""
    assert "--xla_backend_optimization_level=0" in os.environ["XLA_FLAGS"].split()
    layer = CBSA(64, 2, 32, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    lowered = jax.jit(jax.grad(lambda s, x: nnx.merge(graphdef, s)(x).sum(),
                               argnums=(0, 1))).lower(state, jnp.ones((2, 65, 64)))

    def text(level):
        compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": level})
        return re.sub(r"metadata=\{[^}]*\}", "", compiled.as_text())

    usual, fast = text(2), text(0)
    assert "fusion" in usual and usual == fast
