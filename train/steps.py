"""One train step and one eval step for every task.

A task (`train.tasks`: classification, segmentation, language) is a `TaskDef`: how to build its
model, its loss on a batch, the sums its evaluation adds up over the eval set, how those sums
become metrics, and which metric ranks checkpoints. `make_task` wraps a `TaskDef` with what every
task shares: gradients, the non-finite guard, the optimizer update, BatchNorm statistics, EMA.
`python -m train` picks the task with `config.task` (`train.tasks.task_def`).

Batches are dicts of arrays whose keys the task names (`TaskDef.train_keys`, `eval_keys`); the
eval batches also carry `valid` (1 for real examples, 0 for the padding that fills the last batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

__all__ = ["TaskDef", "TrainState", "Task", "make_task"]


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step; `nnx.State` leaves keep their sharding axes."""

    step: jax.Array  # int32 scalar: the number of train steps taken
    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running statistics (empty for models without BN)
    opt_state: optax.OptState
    ema_params: nnx.State | None  # None when config.ema_decay == 0


@dataclasses.dataclass(frozen=True)
class TaskDef:
    """What one task supplies; everything else is shared.

    Attributes:
      build: `rngs -> model` (an `nnx.Module`).
      loss: `(model, batch, step) -> (scalar loss, {name: scalar})` with the model in train mode;
        the dict's entries are averaged into the logged train metrics.
      eval_sums: `(model, batch) -> {name: array}` summed over the batch's valid rows (eval mode);
        the loop adds them up over the eval set (any shapes: a confusion matrix is fine).
      finalize: `{name: np.ndarray} -> {name: float}`, the eval metrics written to
        metrics.jsonl; it must include `loss` and `ranking`.
      ranking: the finalized metric that picks the best checkpoint (higher is better).
      train_keys, eval_keys: the batch entries each step reads (eval also gets `valid`).
      progress: the finalized or train metric shown next to the loss on the progress bar.
    """

    build: Callable[[nnx.Rngs], nnx.Module]
    loss: Callable
    eval_sums: Callable
    finalize: Callable[[Mapping[str, np.ndarray]], dict[str, float]]
    ranking: str
    train_keys: tuple[str, ...]
    eval_keys: tuple[str, ...]
    progress: str = "accuracy"


@struct.dataclass(frozen=True)
class Task:
    """The static half of training: the model's graph and the functions over `TrainState`."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    init: Callable = struct.field(pytree_node=False)  # key -> a fresh TrainState
    state_from: Callable = struct.field(pytree_node=False)  # (params, batch_stats) -> step 0
    train_step: Callable = struct.field(pytree_node=False)  # (state, batch) -> (state, metrics)
    eval_step: Callable = struct.field(pytree_node=False)  # (state, batch) -> sums
    abstract_state: TrainState = struct.field(pytree_node=False)
    definition: TaskDef = struct.field(pytree_node=False)

    @property
    def finalize(self):
        return self.definition.finalize

    @property
    def ranking(self) -> str:
        return self.definition.ranking


def make_task(config: ml_collections.ConfigDict, definition: TaskDef,
              tx: optax.GradientTransformation, schedule: optax.Schedule) -> Task:
    """Wire a task, an optimizer and the config into init / train / eval functions."""
    ema = float(config.ema_decay)
    build = definition.build

    def init(key: jax.Array) -> TrainState:
        model = build(nnx.Rngs(params=key))
        _, params, batch_stats = nnx.split(model, nnx.Param, ...)
        return state_from(params, batch_stats)

    def state_from(params: nnx.State, batch_stats: nnx.State) -> TrainState:
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params),
                          ema_params=jax.tree.map(jnp.copy, params) if ema else None)

    abstract_model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
    abstract_state = jax.eval_shape(init, jax.random.key(0))

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        def loss_fn(params, batch_stats):
            # fresh Variables at this trace level, so BatchNorm may update its statistics
            model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, batch_stats))
            model.train()
            loss, metrics = definition.loss(model, batch, state.step)
            return loss, (metrics, nnx.state(model, nnx.BatchStat))

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats)
        grad_norm = optax.tree.norm(grads)
        # the global norm is finite iff every gradient is (one reduction, not one per leaf)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
            if ema:
                new = new.replace(ema_params=jax.tree.map(
                    lambda e, p: ema * e + (1 - ema) * p, state.ema_params, params))
            return new

        # a non-finite step changes nothing but the step counter
        new = jax.lax.cond(finite, update, lambda state: state, state)
        new = new.replace(step=state.step + 1)
        return new, {"loss": loss, **metrics, "grad_norm": grad_norm, "lr": schedule(state.step),
                     "nonfinite": (~finite).astype(jnp.int32)}

    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]):
        params = state.ema_params if ema else state.params
        model = nnx.merge(graphdef, params, state.batch_stats)
        model.eval()
        return definition.eval_sums(model, batch)

    return Task(graphdef=graphdef, tx=tx, init=init, state_from=state_from,
                train_step=train_step, eval_step=eval_step, abstract_state=abstract_state,
                definition=definition)
