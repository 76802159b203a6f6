"""The train state and the jitted train / eval steps (pure functions of arrays)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from cbsa_jax.models import VisionTransformer

__all__ = ["TrainState", "Task", "make_task"]


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step; `nnx.State` leaves keep their sharding axes."""

    step: jax.Array  # int32 scalar: the number of train steps taken
    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running statistics (empty for models without BN)
    opt_state: optax.OptState
    ema_params: nnx.State | None  # None when config.ema_decay == 0


@struct.dataclass(frozen=True)
class Task:
    """The static half of training: the model's graph and the functions over `TrainState`."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    init: Callable = struct.field(pytree_node=False)  # key -> a fresh TrainState
    state_from: Callable = struct.field(pytree_node=False)  # (params, batch_stats) -> step 0
    train_step: Callable = struct.field(pytree_node=False)
    eval_step: Callable = struct.field(pytree_node=False)
    abstract_state: TrainState = struct.field(pytree_node=False)


def _targets(labels, num_classes: int, smoothing: float):
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(onehot, smoothing) if smoothing else onehot


def make_task(config: ml_collections.ConfigDict, build: Callable[[nnx.Rngs], VisionTransformer],
              tx: optax.GradientTransformation, schedule: optax.Schedule,
              num_classes: int) -> Task:
    """Wire a model builder, an optimizer and the config into init / train / eval functions."""
    ema = float(config.ema_decay)
    mixup = float(config.mixup_alpha)
    smoothing = float(config.label_smoothing)

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

    def train_step(state: TrainState, images, labels):
        targets = _targets(labels, num_classes, smoothing)
        if mixup:  # mix each example with its mirror in the batch (as timm's 'batch' mode)
            key = jax.random.fold_in(jax.random.key(config.seed), state.step)
            lam = jax.random.beta(key, mixup, mixup)
            images = lam * images + (1 - lam) * images[::-1]
            targets = lam * targets + (1 - lam) * targets[::-1]

        def loss_fn(params, batch_stats):
            # fresh Variables at this trace level, so BatchNorm may update its statistics
            model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, batch_stats))
            model.train()
            logits = model(images)
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            return loss, (logits, nnx.state(model, nnx.BatchStat))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "nonfinite": (~finite).astype(jnp.int32),
        }
        return new, metrics

    def eval_step(state: TrainState, images, labels, mask):
        params = state.ema_params if ema else state.params
        model = nnx.merge(graphdef, params, state.batch_stats)
        model.eval()
        logits = model(images).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        k = min(5, num_classes)
        _, top = jax.lax.top_k(logits, k)
        hit1 = (top[:, 0] == labels).astype(jnp.float32)
        hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
        return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(hit1 * mask),
                "top5": jnp.sum(hit5 * mask), "count": jnp.sum(mask)}

    return Task(graphdef=graphdef, tx=tx, init=init, state_from=state_from,
                train_step=train_step, eval_step=eval_step, abstract_state=abstract_state)
