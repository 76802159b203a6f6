"""cbsa_jax: Contract-and-Broadcast Self-Attention as explicit gradient steps, in JAX.

The pure core (this package's top level) imports only jax and numpy:

- `coding_rate`, `compression_rate`, `cbsa_objective`  the objectives;
- `cbsa_gradient`, `cbsa_step` and the stages in `cbsa_jax.unroll`  their closed-form steps;
- `cbsa_jax.attention`  one contract-and-broadcast function and the attentions it unifies;
- `cbsa_jax.representatives`  how representatives start (torch-exact grid pooling, segments).

Flax modules live in `cbsa_jax.nn`, models in `cbsa_jax.models`.
"""

from cbsa_jax import attention, representatives, unroll
from cbsa_jax.attention import (
    Broadcast,
    Contraction,
    Extraction,
    agent,
    cbsa,
    cbsa_exact,
    channel,
    contract_and_broadcast,
    linear,
    mssa,
    softmax,
    tssa,
)
from cbsa_jax.coding_rate import (
    cbsa_objective,
    coding_rate,
    compression_rate,
    heads,
    rate_scale,
    representatives_of,
)
from cbsa_jax.representatives import AllTokens, GridPooling, SegmentPooling, Selection
from cbsa_jax.unroll import (
    broadcast,
    cbsa_gradient,
    cbsa_step,
    compression_gradient,
    contract,
    extraction_objective,
    extraction_step,
    extraction_weights,
    ista_data_term,
    ista_objective,
    ista_step,
    project,
)

__version__ = "0.1.0"

__all__ = [
    "AllTokens",
    "Broadcast",
    "Contraction",
    "Extraction",
    "GridPooling",
    "SegmentPooling",
    "Selection",
    "agent",
    "attention",
    "broadcast",
    "cbsa",
    "cbsa_exact",
    "cbsa_gradient",
    "cbsa_objective",
    "cbsa_step",
    "channel",
    "coding_rate",
    "compression_gradient",
    "compression_rate",
    "contract",
    "contract_and_broadcast",
    "extraction_objective",
    "extraction_step",
    "extraction_weights",
    "heads",
    "ista_data_term",
    "ista_objective",
    "ista_step",
    "linear",
    "mssa",
    "project",
    "rate_scale",
    "representatives",
    "representatives_of",
    "softmax",
    "tssa",
    "unroll",
]
