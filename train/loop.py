"""The training program: config -> data -> mesh -> state -> loop -> checkpoints.

`run(config, workdir)` trains (or, with `config.eval_only`, evaluates) and returns a summary. It
resumes automatically from the newest complete checkpoint in `workdir`; SIGTERM makes it save at
the next step boundary and return normally.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from cbsa_jax import training
from cbsa_jax.training import Task
from train import config as config_lib
from train import data as data_lib
from train import distributed, optim
from train import mesh as mesh_lib
from train.checkpoint import Checkpointer, CheckpointMismatch
from train.metrics import MetricsWriter, Progress
from train.tasks import task_def

__all__ = ["run", "experiment", "Experiment", "NonFiniteError", "load_experiment",
           "save_initial"]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient with `config.nonfinite == "stop"`."""


class _Preemption:
    """SIGTERM, checked at step boundaries. One process: a Python handler sets a flag. Several:
    JAX's preemption service catches SIGTERM on any of them, and all stop after the same step
    (`multihost_utils.reached_preemption_sync_point`), so they save the same checkpoint.

    JAX's protocol counts calls from 0 in each process (a SIGTERM before the first call sets the
    sync point to 1), so it is given the steps done since `start`, the step every process
    resumed from, not the global step."""

    def __init__(self, start: int = 0):
        self.requested = False
        self._previous = None
        self._synced = jax.process_count() > 1
        self._start = start

    def __enter__(self):
        if self._synced:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def due(self, step: int) -> bool:
        """Whether to save and stop after `step` (called by every process at every step)."""
        if self._synced and not self.requested:
            self.requested = multihost_utils.reached_preemption_sync_point(step - self._start)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def _evaluate(task: Task, eval_step: training.CompiledStep, leaves, source: data_lib.Input,
              batch_sharding) -> dict[str, float]:
    """Add up the task's eval sums over the whole eval split, then finalize them once
    (`leaves`: the state, flat, as the compiled steps take it)."""
    totals = None
    for batch in source.eval_batches(task.definition.eval_keys, batch_sharding):
        sums = jax.device_get(eval_step(leaves, batch))
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
        distributed.progress()
    return task.finalize(totals)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run derives from its config before touching the data or the state."""

    config: ml_collections.ConfigDict
    num_classes: int
    channels: int
    image_size: tuple[int, ...]
    steps_per_epoch: int
    total_steps: int
    mesh: jax.sharding.Mesh
    task: Task
    state_sharding: object
    batch_sharding: jax.sharding.NamedSharding

    @property
    def model_config(self):
        """The vision model's `ModelConfig` (classification and segmentation encoders)."""
        return config_lib.model_config(self.config).replace(channels=self.channels)

    def abstract_state(self):
        """The state's shapes, dtypes and shardings (a restore target)."""
        return _with_shardings(self.task.abstract_state, self.state_sharding)

    def model(self, state) -> nnx.Module:
        """The model of a `TrainState` (EMA parameters when kept), in eval mode."""
        params = state.ema_params if state.ema_params is not None else state.params
        model = nnx.merge(self.task.graphdef, params, state.batch_stats)
        model.eval()
        return model

    def train_step(self) -> training.CompiledStep:
        """The compiled train step: state donated and sharded, passed flat, compiled with
        `cbsa_jax.training.compiler_options()` (the benchmarks time this construction)."""
        return training.compile_step(self.task.train_step, self.task.abstract_state,
                                     state_shardings=self.state_sharding,
                                     batch_sharding=self.batch_sharding,
                                     out_sharding=mesh_lib.replicated(self.mesh), mesh=self.mesh)

    def eval_step(self) -> training.CompiledStep:
        """The compiled eval step (the state flat and kept, the sums replicated)."""
        return training.compile_step(self.task.eval_step, self.task.abstract_state,
                                     donate=False, returns_state=False,
                                     state_shardings=self.state_sharding,
                                     batch_sharding=self.batch_sharding,
                                     out_sharding=mesh_lib.replicated(self.mesh), mesh=self.mesh)

    def meta(self, step: int, **extra) -> dict:
        """The JSON saved beside a checkpoint: enough to rebuild this experiment."""
        epoch, position = divmod(step, self.steps_per_epoch)
        return {"step": step, "epoch": epoch, "position": position,
                "steps_per_epoch": self.steps_per_epoch,
                "num_classes": self.num_classes, "image_size": list(self.image_size),
                "channels": self.channels, "task": self.config.task,
                "config": json.loads(self.config.to_json()), **extra}


def experiment(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
               image_size, steps_per_epoch: int, devices=None) -> Experiment:
    """Task, model, optimizer, schedule, mesh and shardings for `config` on this dataset."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    mesh = mesh_lib.make_mesh(config, devices)
    total_steps = config.num_train_steps or config.num_epochs * steps_per_epoch
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else None
    try:
        definition = task_def(config, num_classes=num_classes, channels=channels,
                              image_size=size, dtype=dtype)
        abstract_params = nnx.state(nnx.eval_shape(lambda: definition.build(nnx.Rngs(0))),
                                    nnx.Param)
    except config_lib.ConfigError:
        raise
    except ValueError as e:  # a model the dataset's shapes cannot feed: a config problem
        raise config_lib.ConfigError(f"config.model: {e}") from None
    tx = optim.make_optimizer(config, abstract_params, schedule)
    task = training.make_task(definition, tx, schedule, ema_decay=config.ema_decay)
    return Experiment(config=config, num_classes=num_classes, channels=channels,
                      image_size=size, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                      mesh=mesh, task=task,
                      state_sharding=mesh_lib.state_shardings(task.abstract_state, mesh),
                      batch_sharding=mesh_lib.batch_sharding(mesh))


def _check_same_run(ckpt: Checkpointer, config: ml_collections.ConfigDict) -> None:
    """A workdir whose newest checkpoint holds another task or model is an error (before the
    parameter-by-parameter comparison, which would list every parameter)."""
    step = ckpt.latest_step()
    if step is None:
        return
    try:
        meta = ckpt.read_meta(step)
    except Exception:  # unreadable: restore() reports it and falls back
        return
    task, model = meta.get("task"), meta.get("config", {}).get("model", {}).get("name")
    if task is not None and (task, model) != (config.task, config.model.name):
        raise CheckpointMismatch(
            f"checkpoint {ckpt.directory}/{step} holds a {task!r} run of {model!r}, the config "
            f"trains {config.task!r} with {config.model.name!r}: use another --workdir")


def run(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None) -> dict:
    """Train or evaluate per `config` in `workdir`; returns the final summary dict.

    `stop_at`: stop once this many steps are done, saving a checkpoint as SIGTERM does (for
    time-sliced jobs); the schedule still spans the whole run, so the next call continues it.
    """
    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    process, processes = jax.process_index(), jax.process_count()
    lead = process == 0

    source = data_lib.open_input(config, process_index=process, process_count=processes)
    spec = source.spec
    exp = experiment(config, num_classes=spec.num_classes, channels=spec.channels,
                     image_size=spec.image_size, steps_per_epoch=spec.steps_per_epoch)
    task, state_sharding, batch_sharding = exp.task, exp.state_sharding, exp.batch_sharding
    steps_per_epoch, total_steps = exp.steps_per_epoch, exp.total_steps

    ranking = task.ranking
    best_key = f"best_{ranking}"
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        best_metric=ranking)
    _check_same_run(ckpt, config)
    restored = ckpt.restore(exp.abstract_state())
    if restored is not None:
        state, meta, _ = restored
        best = meta.get(best_key)
        if lead:
            print(f"resumed from {ckpt.directory}/{int(state.step)} "
                  f"(epoch {meta.get('epoch')}, batch {meta.get('position')})", flush=True)
        shards = len(spec.train_splits)
        if lead and meta.get("data_shards", shards) != shards:
            log.warning("the checkpoint was written reading %d data shards, this run reads %d: "
                        "its data order differs from the run that stopped (fix "
                        "config.data_shards to keep the order across host counts)",
                        meta["data_shards"], shards)
    else:
        if config.eval_only:
            raise FileNotFoundError(f"eval_only: no checkpoint in {ckpt.directory}")
        init = jax.jit(task.init, out_shardings=state_sharding)
        state, best = init(jax.random.key(config.seed)), None

    writer = MetricsWriter(workdir, enabled=lead)
    eval_step = exp.eval_step()

    def evaluate(leaves):
        return _evaluate(task, eval_step, leaves, source, batch_sharding)

    if config.eval_only:
        metrics = evaluate(eval_step.flatten(state))
        writer.write(int(state.step), config.eval_split, metrics)
        writer.close()
        ckpt.close()
        summary = {"step": int(state.step), "eval": metrics, "workdir": workdir}
        if lead:
            print(json.dumps(summary), flush=True)
        return summary

    train_step = exp.train_step()
    train_keys = task.definition.train_keys
    shown = task.definition.progress
    eval_every = config.eval_every_steps or steps_per_epoch
    ckpt_every = config.checkpoint_every_steps or steps_per_epoch
    step = int(state.step)
    leaves = train_step.flatten(state)  # the state, flat, from here on (donated at every step)
    del state
    batches = source.train_batches(train_keys, batch_sharding, start_step=step)
    progress = Progress(total_steps, step, enabled=lead and config.progress)
    pending: list[dict] = []
    window_start, window_steps = time.perf_counter(), 0
    started = time.perf_counter()
    last_eval = None
    stopped_by = "finished"

    def flush_metrics(step: int) -> None:
        nonlocal window_start, window_steps
        if not pending:
            return
        host = jax.device_get(pending)
        first_step = step - len(host) + 1
        bad = [first_step + i for i, m in enumerate(host) if m["nonfinite"]]
        elapsed = time.perf_counter() - window_start
        values = {k: float(np.mean([m[k] for m in host])) for k in host[-1]
                  if k not in ("lr", "nonfinite")}
        values["lr"] = float(host[-1]["lr"])
        values["images_per_sec"] = window_steps * config.batch_size / max(elapsed, 1e-9)
        values["nonfinite_steps"] = float(len(bad))
        pending.clear()
        window_start, window_steps = time.perf_counter(), 0
        writer.write(step, "train", values)
        bar = {"loss": values["loss"], "img/s": values["images_per_sec"]}
        if shown in values:
            bar = {"loss": values["loss"], shown[:4]: values[shown],
                   "img/s": values["images_per_sec"]}
        progress.update(0, bar)
        if bad:
            message = (f"non-finite loss or gradient at step {bad[0]}"
                       f"{f' (and {len(bad) - 1} more steps)' if len(bad) > 1 else ''}")
            if config.nonfinite == "stop":
                raise NonFiniteError(message + "; stopping (config.nonfinite='stop'); the last "
                                     "checkpoint holds the last finite state")
            progress.write(message + "; skipped (parameters unchanged)")

    with _Preemption(start=step) as preemption:
        while step < total_steps:
            leaves, metrics = train_step(leaves, next(batches))
            step += 1
            distributed.progress()
            window_steps += 1
            pending.append(metrics)
            progress.update(1)
            if step % config.log_every_steps == 0 or step == total_steps:
                flush_metrics(step)
            do_eval = step % eval_every == 0 or step == total_steps
            if do_eval:
                flush_metrics(step)
                last_eval = evaluate(leaves)
                window_start = time.perf_counter()  # images/s measures training only
                writer.write(step, config.eval_split, last_eval)
                progress.write(f"step {step}: {config.eval_split} {ranking} "
                               f"{last_eval[ranking]:.4f} loss {last_eval['loss']:.4f}")
            stop = preemption.due(step) or step == stop_at
            if do_eval or step % ckpt_every == 0 or stop:
                finite_eval = (do_eval and np.isfinite(last_eval["loss"])
                               and np.isfinite(last_eval[ranking]))
                if finite_eval and (best is None or last_eval[ranking] > best):
                    best = last_eval[ranking]
                ckpt.save(step, train_step.unflatten(leaves),
                          exp.meta(step, **{best_key: best}, data_shards=len(spec.train_splits)),
                          metrics={ranking: last_eval[ranking]} if finite_eval else None)
                distributed.progress()
            if stop:
                stopped_by = "SIGTERM" if preemption.requested else "stop_at"
                progress.write(f"{stopped_by}: saved a checkpoint at step {step}; exiting")
                break
    progress.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    summary = {
        "step": step, "total_steps": total_steps, "stopped_by": stopped_by,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "final_eval": last_eval, best_key: best, "workdir": os.path.abspath(workdir),
        "checkpoint": ckpt.directory,
    }
    if lead:
        print(json.dumps(summary), flush=True)
    return summary


def load_experiment(workdir: str, *, overrides: dict | None = None):
    """(Experiment, TrainState, meta) of the newest checkpoint in `workdir`, on one device.

    The config is the one saved with the checkpoint (`overrides` patch it, e.g. a data_dir).
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"no directory {workdir}")
    try:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, read_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{workdir} holds no training run (no checkpoints/)") from None
    try:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        meta = ckpt.read_meta(step)
        config = config_lib.base_config()
        config.update(ml_collections.ConfigDict(meta["config"]))
        config.mesh.data, config.mesh.fsdp, config.mesh.seq, config.mesh.model = 1, 1, 1, 1
        config_lib.apply_overrides(config, {k: str(v) for k, v in (overrides or {}).items()})
        exp = experiment(config, num_classes=meta["num_classes"], channels=meta["channels"],
                         image_size=tuple(meta["image_size"]),
                         steps_per_epoch=meta["steps_per_epoch"], devices=jax.devices()[:1])
        restored = ckpt.restore(exp.abstract_state())
        if restored is None:
            raise FileNotFoundError(f"no readable checkpoint in {ckpt.directory}")
        state, meta, _ = restored
        return exp, state, meta
    finally:
        ckpt.close()


def save_initial(model, config, workdir: str, *, num_classes: int, image_size,
                 **meta) -> str:
    """Save `model`'s weights as the step-0 training checkpoint of `config` in `workdir` (fresh
    optimizer state; `meta` is recorded beside it); returns the checkpoint directory. A
    `workdir` that is a file, or holds checkpoints already (training would resume from those,
    not from this one), is a ValueError."""
    directory = os.path.join(workdir, "checkpoints")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir: {workdir} is a file, not a directory")
    if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
        raise ValueError(f"--workdir: {workdir} already holds a run's checkpoints "
                         f"({directory}); training would resume from those, not from the "
                         f"step-0 checkpoint: choose a new --workdir")
    exp = experiment(config, num_classes=num_classes, channels=model.config.channels,
                     image_size=image_size, steps_per_epoch=1, devices=jax.devices()[:1])
    _, params, batch_stats = nnx.split(model, nnx.Param, ...)
    state = jax.jit(exp.task.state_from, out_shardings=exp.state_sharding)(params, batch_stats)
    ckpt = Checkpointer(directory, keep=config.keep_checkpoints)
    ckpt.save(0, state, exp.meta(0, **meta))
    ckpt.wait()
    ckpt.close()
    return ckpt.directory
