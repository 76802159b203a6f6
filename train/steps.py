"""One train step and one eval step for every task, and the registry of tasks.

A task (classification here; segmentation and language in the modules beside this one) is a
`TaskDef`: how to build its model, its loss on a batch, the sums its evaluation adds up over the
eval set, how those sums become metrics, and which metric ranks checkpoints. `make_task` wraps a
`TaskDef` with what every task shares: gradients, the non-finite guard, the optimizer update,
BatchNorm statistics, EMA. `python -m train` picks the task with `config.task`.

Batches are dicts of arrays whose keys the task names (`TaskDef.train_keys`, `eval_keys`); the
eval batches also carry `valid` (1 for real examples, 0 for the padding that fills the last batch).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from cbsa_jax.models import VisionTransformer
from train import config as config_lib

__all__ = ["TASKS", "TaskDef", "TrainState", "Task", "make_task", "task_def", "classification",
           "vision_model_config"]


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


# ----------------------------------------------------------------------------------------------
# classification


def _targets(labels, num_classes: int, smoothing: float):
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(onehot, smoothing) if smoothing else onehot


def vision_model_config(config: ml_collections.ConfigDict, *, channels: int,
                        image_size: tuple[int, int]):
    """The `ModelConfig` of `config.model` for `channels`-channel images of `image_size`."""
    model_config = config_lib.model_config(config).replace(channels=channels)
    model_config.grid_for(image_size, name="config.image_size")
    return model_config


def classification(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
                   image_size: tuple[int, int], dtype) -> TaskDef:
    """Image classification: softmax cross-entropy (label smoothing, batch mixup); eval top-1/5.

    Batches: `image` float32 [B, H, W, C], `label` int32 [B].
    """
    model_config = vision_model_config(config, channels=channels, image_size=image_size)
    mixup = float(config.mixup_alpha)
    smoothing = float(config.label_smoothing)

    def build(rngs: nnx.Rngs) -> VisionTransformer:
        return VisionTransformer(model_config, num_classes=num_classes, image_size=image_size,
                                 dtype=dtype, rngs=rngs)

    def loss(model, batch, step):
        images, labels = batch["image"], batch["label"]
        targets = _targets(labels, num_classes, smoothing)
        if mixup:  # mix each example with its mirror in the batch (as timm's 'batch' mode)
            key = jax.random.fold_in(jax.random.key(config.seed), step)
            lam = jax.random.beta(key, mixup, mixup)
            images = lam * images + (1 - lam) * images[::-1]
            targets = lam * targets + (1 - lam) * targets[::-1]
        logits = model(images)
        value = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return value, {"accuracy": accuracy}

    def eval_sums(model, batch):
        labels, valid = batch["label"], batch["valid"]
        logits = model(batch["image"]).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        _, top = jax.lax.top_k(logits, min(5, num_classes))
        hit1 = (top[:, 0] == labels).astype(jnp.float32)
        hit5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
        return {"loss": jnp.sum(losses * valid), "top1": jnp.sum(hit1 * valid),
                "top5": jnp.sum(hit5 * valid), "count": jnp.sum(valid)}

    def finalize(sums):
        n = max(float(sums["count"]), 1.0)
        return {"loss": float(sums["loss"]) / n, "accuracy": float(sums["top1"]) / n,
                "top5": float(sums["top5"]) / n, "examples": float(sums["count"])}

    return TaskDef(build=build, loss=loss, eval_sums=eval_sums, finalize=finalize,
                   ranking="accuracy", train_keys=("image", "label"),
                   eval_keys=("image", "label"), progress="accuracy")


#: config.task -> "module:function" returning a `TaskDef` (imported when first used).
TASKS: dict[str, str] = {
    "classification": "train.steps:classification",
    "segmentation": "train.segmentation:segmentation",
    "language": "train.language:language",
}


def task_def(config: ml_collections.ConfigDict, **kwargs) -> TaskDef:
    """The `TaskDef` of `config.task`, built with the dataset's facts in `kwargs`."""
    if config.task not in TASKS:
        raise ValueError(f"config.task must be one of {sorted(TASKS)}, got {config.task!r}")
    module, _, name = TASKS[config.task].partition(":")
    return getattr(importlib.import_module(module), name)(config, **kwargs)
