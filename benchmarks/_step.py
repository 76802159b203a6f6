"""A minimal jitted train step for the benchmarks (the training program may replace it).

`make_step(model, tx)` splits an NNX model into its graph, parameters and the rest (BatchNorm
statistics), and returns `(step, state)`: `step(state, images, labels) -> (state, loss)` is one
AdamW step on the mean softmax cross-entropy, jitted with the state donated, so the parameters
and optimizer moments are updated in place. Everything is a pure function of arrays: the state
holds the parameters and statistics as flat lists of arrays (rebuilt into `nnx.State` inside the
trace), because passing `nnx.State` through a jitted call flattens and rebuilds every
`nnx.Variable` in Python on each call, for every parameter, statistic and AdamW moment of the
state (docs/performance.md, appendix).

`host_initialised(abstract_model, seed)` fills an abstract model (`nnx.eval_shape`) with
parameters drawn by numpy at init-like scale, which avoids compiling one random-number kernel per
parameter shape (each one a compilation, slow on a CPU).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = ["StepState", "make_step", "default_optimizer", "host_initialised",
           "cpu_compiler_options", "YNN_WITHOUT_CONVOLUTION", "fill_on_host"]

# XLA:CPU's YNNPACK library fusions without its convolutions (XLA's default set is these three
# plus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION): YNNPACK computes the weight gradients of the
# conv stem (stride-2 3x3 convolutions, i.e. window-dilated convolutions in the backward) slowly,
# XLA's own convolution emitter faster (`benchmarks.models --train-variants tuned,xla-default`
# compares the two; docs/performance.md).
YNN_WITHOUT_CONVOLUTION = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def cpu_compiler_options() -> dict:
    """The compiler options the benchmarks' train step uses: on the CPU, YNNPACK without
    convolutions; elsewhere none."""
    return dict(YNN_WITHOUT_CONVOLUTION) if jax.default_backend() == "cpu" else {}


class StepState(NamedTuple):
    params: list  # the leaves of the parameters' nnx.State
    rest: list  # the leaves of the BatchNorm statistics and any other non-parameter state
    opt_state: optax.OptState


def default_optimizer(learning_rate: float = 1e-4, weight_decay: float = 0.05):
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def make_step(model: nnx.Module, tx: optax.GradientTransformation | None = None, *,
              compiler_options: dict | None = None):
    """`(step, state)` for `model` (an NNX module mapping images to logits) and `tx`.

    The model is put in training mode (BatchNorm batch statistics). `step` is jitted with
    `donate_argnums=0`; pass the returned state back in and never reuse the old one.
    """
    tx = default_optimizer() if tx is None else tx
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, params_def = jax.tree.flatten(params)
    rest, rest_def = jax.tree.flatten(rest)

    def loss_fn(params, rest, images, labels):
        m = nnx.merge(graphdef, jax.tree.unflatten(params_def, params),
                      jax.tree.unflatten(rest_def, rest), copy=True)
        logits = m(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels).mean()
        _, _, new_rest = nnx.split(m, nnx.Param, ...)
        return loss, jax.tree.leaves(new_rest)

    def step(state: StepState, images, labels):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.rest, images, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return StepState(params, rest, opt_state), loss

    state = StepState(params, rest, tx.init(params))
    jitted = jax.jit(step, donate_argnums=0)
    if compiler_options:
        jitted = _with_options(jitted, compiler_options)
    return jitted, state


def _with_options(jitted, options):
    cache = {}

    def call(state, images, labels):
        key = jax.tree.structure((state, images, labels)), tuple(
            (x.shape, x.dtype) for x in jax.tree.leaves((state, images, labels)))
        if key not in cache:
            cache[key] = jitted.lower(state, images, labels).compile(compiler_options=options)
        return cache[key](state, images, labels)

    call.lower = jitted.lower
    return call


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
