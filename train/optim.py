"""Optimisers, per-step learning-rate schedules and the weight-decay mask, with optax."""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

__all__ = ["learning_rate_schedule", "decay_mask", "make_optimizer"]


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
    """Linear warmup over `warmup_epochs` (peak * (step + 1) / warmup), then cosine to
    `min_lr_ratio * peak` at `total_steps`, or constant. Evaluated per step."""
    peak = float(config.learning_rate)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1),
                                            alpha=float(config.min_lr_ratio))
    else:
        after = optax.constant_schedule(peak)
    if not warmup:
        return after
    ramp = optax.linear_schedule(peak / warmup, peak, warmup - 1)  # (step + 1) / warmup
    return optax.join_schedules([ramp, after], [warmup])


def _path_names(path) -> list[str]:
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return names


def decay_mask(params: nnx.State, config: ml_collections.ConfigDict):
    """True where weight decay applies: matrices and tensors, unless a path component is in
    `config.no_decay_names`; vectors and scalars (norms, biases, step sizes) only when
    `config.decay_vectors`."""
    skip = set(config.no_decay_names)

    def decide(path, x):
        if skip.intersection(_path_names(path)):
            return False
        return bool(config.decay_vectors) or x.ndim >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: ml_collections.ConfigDict, params: nnx.State,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping (if `grad_clip_norm` > 0), then Lion / AdamW / SGD with masked
    decoupled weight decay."""
    mask = decay_mask(params, config)
    wd = float(config.weight_decay)
    if config.optimizer == "lion":
        base = optax.lion(schedule, b1=config.b1, b2=config.b2, weight_decay=wd, mask=mask)
    elif config.optimizer == "adamw":
        base = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=wd, mask=mask)
    else:
        base = optax.chain(optax.add_decayed_weights(wd, mask),
                           optax.sgd(schedule, momentum=config.momentum or None))
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), base)
    return base
