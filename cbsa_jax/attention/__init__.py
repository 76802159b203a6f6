"""Contract-and-broadcast attention: the non-causal operator and its causal (prefix) forms.

- `cbsa_jax.attention.noncausal`: `contract_and_broadcast`, the one configurable operator, and
  the attentions it unifies (`cbsa`, `cbsa_exact`, `mssa`, `tssa`, `softmax`, `linear`,
  `channel`, `agent`);
- `cbsa_jax.attention.causal`: `causal_cbsa` (the CBSA step on every prefix, an O(m p) state),
  the causal softmax and linear baselines, and their one-token decoding steps.

Every public name of both is importable from `cbsa_jax.attention` itself.
"""

from cbsa_jax.attention import causal, noncausal
from cbsa_jax.attention.causal import (
    CausalCBSAState,
    CausalLinearState,
    CausalSoftmaxState,
    causal_cbsa,
    causal_cbsa_step,
    causal_linear,
    causal_linear_step,
    causal_softmax,
    causal_softmax_step,
    check_chunk,
    init_causal_cbsa_state,
    init_causal_linear_state,
    init_causal_softmax_state,
)
from cbsa_jax.attention.noncausal import (
    Broadcast,
    CBResult,
    Contraction,
    Extraction,
    agent,
    cbsa,
    cbsa_exact,
    channel,
    contract_and_broadcast,
    exact_contraction,
    first_order_contraction,
    linear,
    mssa,
    softmax,
    softmax_contraction,
    tssa,
)

__all__ = [
    "causal",
    "noncausal",
    "CausalCBSAState",
    "CausalLinearState",
    "CausalSoftmaxState",
    "causal_cbsa",
    "causal_cbsa_step",
    "causal_linear",
    "causal_linear_step",
    "causal_softmax",
    "causal_softmax_step",
    "check_chunk",
    "init_causal_cbsa_state",
    "init_causal_linear_state",
    "init_causal_softmax_state",
    "Broadcast",
    "CBResult",
    "Contraction",
    "Extraction",
    "agent",
    "cbsa",
    "cbsa_exact",
    "channel",
    "contract_and_broadcast",
    "exact_contraction",
    "first_order_contraction",
    "linear",
    "mssa",
    "softmax",
    "softmax_contraction",
    "tssa",
]
