"""Train steps for NNX models, compiled one way wherever they run.

`python -m train`, the benchmarks and a user's own loop build and compile their steps here, so
that what a benchmark times is what training runs.

- `TaskDef` (what a task supplies: model, loss, eval sums, metrics) and `make_task`, which adds
  what every task shares: gradients, the non-finite guard, the optimizer update, BatchNorm
  statistics, EMA. `classification` is the image-classification `TaskDef`.
- `CompiledStep` (`compile_step`): a step `fn(state, batch) -> (state, out)` jitted with the
  state donated and sharded, passed in and out as a flat list of arrays (flattening an
  `nnx.State` costs Python time for every variable at every call; a flat list does not), and
  compiled ahead of time with `compiler_options()`.
- `compiler_options()`: the XLA options for this backend and host processor.
- `configure_host_allocator()`: the process's malloc settings for XLA:CPU (see there).
- `configure_host_devices()`: one XLA:CPU device per core, for a data-parallel step (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from cbsa_jax.reporting import HostCPU, host_cpu

__all__ = [
    "TrainState",
    "TaskDef",
    "Task",
    "make_task",
    "classification",
    "CompiledStep",
    "compile_step",
    "classification_step",
    "step_devices",
    "compiler_options",
    "configure_host_allocator",
    "configure_host_devices",
    "host_device_count",
    "usable_cores",
    "release_host_memory",
    "YNN_WITHOUT_CONVOLUTION",
]


# ----------------------------------------------------------------------------------------------
# the state and the task


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step; `nnx.State` leaves keep their sharding axes."""

    step: jax.Array  # int32 scalar: the number of train steps taken
    params: nnx.State
    batch_stats: nnx.State  # BatchNorm running statistics (empty for models without BN)
    opt_state: optax.OptState
    ema_params: nnx.State | None  # None when EMA is off


@dataclasses.dataclass(frozen=True)
class TaskDef:
    """What one task supplies; everything else is shared.

    Attributes:
      build: `rngs -> model` (an `nnx.Module`).
      loss: `(model, batch, step) -> (scalar loss, {name: scalar})` with the model in train mode;
        the dict's entries are averaged into the logged train metrics.
      eval_sums: `(model, batch) -> {name: array}` summed over the batch's valid rows (eval mode);
        a loop adds them up over the eval set (any shapes: a confusion matrix is fine).
      finalize: `{name: np.ndarray} -> {name: float}`, the eval metrics; it must include `loss`
        and `ranking`.
      ranking: the finalized metric that picks the best checkpoint (higher is better).
      train_keys, eval_keys: the batch entries each step reads (eval also gets `valid`).
      progress: the finalized or train metric shown next to the loss on a progress bar.
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


def make_task(definition: TaskDef, tx: optax.GradientTransformation,
              schedule: optax.Schedule | None = None, *, ema_decay: float = 0.0) -> Task:
    """Wire a task and an optimizer into pure init / train / eval functions.

    `train_step(state, batch) -> (state, metrics)`: the loss and its gradients in train mode,
    the optimizer update and BatchNorm statistics, EMA when `ema_decay` > 0; a step whose loss or
    gradient norm is not finite changes nothing but the step counter (`metrics["nonfinite"]`
    says so). `metrics` holds the task's, `loss`, `grad_norm`, `lr` (`schedule(step)`, 0 without
    one) and `nonfinite`. `eval_step(state, batch)` returns the task's eval sums (EMA parameters
    when kept).
    """
    ema = float(ema_decay)
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
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
        lr = schedule(state.step) if schedule is not None else jnp.zeros((), jnp.float32)
        return new, {"loss": loss, **metrics, "grad_norm": grad_norm, "lr": lr,
                     "nonfinite": (~finite).astype(jnp.int32)}

    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]):
        params = state.ema_params if ema else state.params
        model = nnx.merge(graphdef, params, state.batch_stats)
        model.eval()
        return definition.eval_sums(model, batch)

    return Task(graphdef=graphdef, tx=tx, init=init, state_from=state_from,
                train_step=train_step, eval_step=eval_step, abstract_state=abstract_state,
                definition=definition)


def _targets(labels, num_classes: int, smoothing: float):
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(onehot, smoothing) if smoothing else onehot


def classification(build: Callable[[nnx.Rngs], nnx.Module], *, num_classes: int,
                   label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                   seed: int = 0) -> TaskDef:
    """Image classification: softmax cross-entropy (label smoothing, batch mixup with
    `Beta(mixup_alpha, mixup_alpha)` weights drawn from `fold_in(key(seed), step)`); eval top-1
    and top-5. Batches: `image` float32 `[B, H, W, C]`, `label` int32 `[B]` (eval: `valid`)."""
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    mixup = float(mixup_alpha)
    smoothing = float(label_smoothing)

    def loss(model, batch, step):
        images, labels = batch["image"], batch["label"]
        targets = _targets(labels, num_classes, smoothing)
        if mixup:  # mix each example with its mirror in the batch (as timm's 'batch' mode)
            key = jax.random.fold_in(jax.random.key(seed), step)
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


# ----------------------------------------------------------------------------------------------
# compilation


# XLA:CPU's YNNPACK library fusions without its convolutions (XLA's default set is these three
# plus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION): YNNPACK computes the weight gradients of the
# conv stem (stride-2 3x3 convolutions, window-dilated in the backward) slowly, XLA's own
# convolution emitter faster (`python -m benchmarks.models --train-variants tuned,xla-default`).
YNN_WITHOUT_CONVOLUTION = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def compiler_options(backend: str | None = None, cpu: HostCPU | None = None) -> dict[str, str]:
    """XLA compiler options for a train or eval step on `backend` (default: JAX's).

    On the CPU: YNNPACK's matrix-product and reduction fusions without its convolutions, on an
    x86-64 processor with AVX2 and FMA (YNNPACK's fast kernels need them; the choice follows
    the instruction set, not the vendor: AMD's and Intel's AVX-512 parts get the same).
    Elsewhere, and on other CPUs: XLA's defaults (an empty dict).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return {}
    cpu = host_cpu() if cpu is None else cpu
    return dict(YNN_WITHOUT_CONVOLUTION) if cpu.has("avx2", "fma") else {}


def _signature(tree) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


class CompiledStep:
    """`fn(state, batch) -> (state, out)` jitted and compiled for flat states.

    The state travels as `flatten(state)`, the list of its array leaves, and comes back the same
    way; `unflatten` rebuilds the pytree (for a checkpoint or an evaluation). With `donate`, the
    state's buffers are donated: pass the returned leaves back in and never reuse the old ones.
    `state_shardings` (a pytree like the state, or None) and `batch_sharding` place the inputs;
    `out_sharding` places `out`. Each batch signature (shapes and dtypes) is compiled once, ahead
    of time, with `options` (default `compiler_options()`). With `mesh`, the step is traced under
    `jax.set_mesh(mesh)`: the ambient mesh that the model's layers read (the language models'
    sequence parallelism over its `seq` axis).
    """

    def __init__(self, fn: Callable, abstract_state, *, donate: bool = True,
                 state_shardings=None, batch_sharding=None, out_sharding=None,
                 options: Mapping[str, Any] | None = None, returns_state: bool = True,
                 mesh: jax.sharding.Mesh | None = None):
        leaves, self.treedef = jax.tree.flatten(abstract_state)
        self.num_leaves = len(leaves)
        self.returns_state = returns_state
        self.options = dict(compiler_options() if options is None else options)
        treedef = self.treedef

        if returns_state:
            def flat(leaves, batch):
                state, out = fn(jax.tree.unflatten(treedef, leaves), batch)
                return jax.tree.leaves(state), out
        else:
            def flat(leaves, batch):
                return fn(jax.tree.unflatten(treedef, leaves), batch)

        kwargs: dict[str, Any] = {}
        if state_shardings is not None:
            flat_shardings = treedef.flatten_up_to(state_shardings)
            kwargs["in_shardings"] = (flat_shardings, batch_sharding)
            kwargs["out_shardings"] = ((flat_shardings, out_sharding) if returns_state
                                       else out_sharding)
        self.jitted = jax.jit(flat, donate_argnums=0 if donate else (), **kwargs)
        self.batch_sharding = batch_sharding
        self.mesh = mesh
        self._compiled: dict[tuple, Any] = {}

    def flatten(self, state) -> list:
        """The state's leaves, in the order the compiled step takes them."""
        leaves = self.treedef.flatten_up_to(state)
        return list(leaves)

    def unflatten(self, leaves: Sequence):
        """The state pytree of `leaves`."""
        if len(leaves) != self.num_leaves:
            raise ValueError(f"leaves: expected {self.num_leaves} arrays, got {len(leaves)}")
        return jax.tree.unflatten(self.treedef, leaves)

    def lower(self, leaves, batch):
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            return self.jitted.lower(leaves, batch)

    def compile(self, leaves, batch):
        """The compiled executable for this batch signature (compiled on first use)."""
        key = _signature(batch)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self.lower(leaves, batch).compile(compiler_options=self.options or None)
            self._compiled[key] = compiled
        return compiled

    def __call__(self, leaves, batch):
        return self.compile(leaves, batch)(leaves, batch)


def compile_step(fn: Callable, abstract_state, **kwargs) -> CompiledStep:
    """`CompiledStep(fn, abstract_state, **kwargs)`."""
    return CompiledStep(fn, abstract_state, **kwargs)


def step_devices(batch_size: int) -> list:
    """The devices a training step of `batch_size` runs on by default: as many of JAX's devices
    as divide the batch (`host_device_count`), the batch split over them. On a CPU split by
    `configure_host_devices`, its devices; else, with one accelerator, that one."""
    devices = jax.devices()
    return devices[:host_device_count([batch_size], len(devices))]


def classification_step(model: nnx.Module, tx: optax.GradientTransformation, *,
                        num_classes: int, options: Mapping[str, Any] | None = None,
                        devices: Sequence | None = None) -> tuple[CompiledStep, list]:
    """(the compiled train step of the classification task on `model`'s architecture, the
    initial state's leaves from `model`'s parameters and statistics): the step a `python -m
    train` classification run with `tx` compiles, for benchmarks. Batches are `{"image": [B, H,
    W, C], "label": [B]}`. On one device by default; with several `devices` (`step_devices`),
    as the training program's default mesh lays them out: the state replicated, the batch split
    over them (`step.batch_sharding`: put each batch there), the outputs replicated."""
    task = make_task(classification(lambda rngs: nnx.clone(model), num_classes=num_classes), tx)
    _, params, batch_stats = nnx.split(model, nnx.Param, ...)
    state = task.state_from(params, batch_stats)
    if devices is None or len(devices) == 1:
        step = compile_step(task.train_step, task.abstract_state, options=options)
        return step, step.flatten(state)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = compile_step(
        task.train_step, task.abstract_state, options=options,
        state_shardings=jax.tree.map(lambda _: replicated, task.abstract_state),
        batch_sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
        out_sharding=replicated, mesh=mesh)
    return step, [jax.device_put(x, replicated) for x in step.flatten(state)]


# ----------------------------------------------------------------------------------------------
# the process's allocator


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ALLOCATOR: dict[str, Any] | None = None
_LIBC: ctypes.CDLL | None = None  # glibc, once configure_host_allocator has set it


def configure_host_allocator() -> dict[str, Any]:
    """Keep the memory XLA:CPU's steps free, so that the next step reuses it.

    XLA:CPU allocates a step's temporary buffer (hundreds of MB for a ViT train step) at every
    call and frees it at the end. glibc's malloc serves allocations above its mmap threshold
    (at most 32 MiB) with a fresh `mmap` and returns them with `munmap`, so every step faults its
    whole working set back in, 4 KiB at a time. This sets, for the whole process, through
    `mallopt`: no mmap for allocations (`M_MMAP_MAX = 0`), one arena (`M_ARENA_MAX = 1`: large
    blocks grow the main heap instead of failing over to mmap in a thread's 64 MiB arena), and
    no trimming of the heap's top at all (`M_TRIM_THRESHOLD = -1`), so freed blocks stay mapped
    and are reused: with any finite threshold a step whose temporaries exceed it (2.4 GB for
    the CBT-T train step at batch 64) hands them back at its end and faults them in again at
    the next call. It touches nothing where the C library is not glibc; it is applied once per
    process and reports what it did (`{"applied": bool, ..., "threads": the process's threads
    when it was applied}`). Set `CBSA_JAX_ALLOCATOR=default` to leave malloc as it is.

    Nothing is handed back by itself, so a process that runs one program after another (one
    model's training, then the next's) calls `release_host_memory` between them: without it the
    heap holds every earlier program's largest buffers too (an `experiments.lm_compare` process
    reached 22 GB and was killed for memory).

    Call it as early as the program can, before other libraries start threads: glibc fixes the
    arena limit when a second thread first allocates, and threads started before that (some
    libraries start them at import) keep arenas of their own, where large blocks are still
    mapped afresh. `import train` applies it before its modules import anything else.
    """
    global _ALLOCATOR, _LIBC
    if _ALLOCATOR is not None:
        return _ALLOCATOR
    if os.environ.get("CBSA_JAX_ALLOCATOR", "") == "default":
        _ALLOCATOR = {"applied": False, "reason": "CBSA_JAX_ALLOCATOR=default"}
        return _ALLOCATOR
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        version = libc.gnu_get_libc_version if libc is not None else None
    except (OSError, AttributeError):
        libc, version = None, None
    if version is None:
        _ALLOCATOR = {"applied": False, "reason": "not glibc"}
        return _ALLOCATOR
    version.restype = ctypes.c_char_p
    settings = {"M_ARENA_MAX": (_M_ARENA_MAX, 1), "M_MMAP_MAX": (_M_MMAP_MAX, 0),
                "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, -1)}  # -1: never trim
    results = {name: bool(libc.mallopt(code, value)) for name, (code, value) in settings.items()}
    _ALLOCATOR = {"applied": all(results.values()), "glibc": version().decode(),
                  **{name: value for name, (_, value) in settings.items()},
                  "threads": len(os.listdir("/proc/self/task"))}
    _LIBC = libc if _ALLOCATOR["applied"] else None
    return _ALLOCATOR


def release_host_memory() -> bool:
    """Hand the heap's free memory back to the system, as `configure_host_allocator` stops glibc
    from doing at every free: the free top of the heap and every free page inside it
    (`malloc_trim(0)`, after a garbage collection so that dropped arrays are freed first). For
    the gap between two programs of one process; a program's next step faults in again what it
    uses. Returns whether memory was released (False where the setting is not applied)."""
    if _LIBC is None:
        return False
    gc.collect()
    return bool(_LIBC.malloc_trim(0))


# ----------------------------------------------------------------------------------------------
# the process's CPU devices


HOST_DEVICES_ENV = "CBSA_JAX_HOST_DEVICES"
MAX_HOST_DEVICES = 8  # the split is measured on 2 cores only; more devices stay unmeasured


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, as XLA sizes
    its thread pool)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def host_device_count(batch_sizes: Sequence[int], cores: int) -> int:
    """The largest device count, at most `cores` and `MAX_HOST_DEVICES`, that divides every
    batch size (1 when none does)."""
    sizes = [int(b) for b in batch_sizes]
    if any(b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    if cores < 1:
        raise ValueError(f"cores must be a positive integer, got {cores}")
    limit = min(cores, MAX_HOST_DEVICES)
    return max(d for d in range(1, limit + 1) if all(b % d == 0 for b in sizes))


def configure_host_devices(batch_sizes: Sequence[int] = (), *, cores: int | None = None
                           ) -> dict[str, Any]:
    """Split the host CPU into one XLA device per core, so that a step whose batch is sharded over
    the devices runs one shard per core.

    XLA:CPU runs one operation of a program at a time, each spread over the cores as far as it
    parallelises; the small operations of a small model leave cores idle (the CBT-T train step at
    batch 8 kept 1.67 of 2 cores busy). With one device per core, each runs its half of the batch
    at once, and the gradients are summed across them: the `configs/mnist.py` step (`cbt_nano`,
    batch 100) takes 276 ms instead of 336, the CBT-T step at batch 8 236 ms instead of 255, CBT-S
    at batch 8 is unchanged (2-core AMD EPYC, docs/performance.md). The count is
    `host_device_count(batch_sizes, cores)` (cores: `usable_cores()`), and only the CPU backend
    changes (`jax_num_cpu_devices`; an accelerator's devices are untouched).

    A process-level setting, like `configure_host_allocator`: it must come before JAX starts its
    backends (the first operation or device query). It leaves the process alone, and says why,
    when `XLA_FLAGS` (`--xla_force_host_platform_device_count`) or `jax_num_cpu_devices` already
    set the count, or the backends have started. `CBSA_JAX_HOST_DEVICES=N` asks for N devices
    (1: one device for the whole CPU, as JAX's default). Returns `{"applied": bool, "devices":
    count or None, "reason": ...}`.
    """
    requested = os.environ.get(HOST_DEVICES_ENV, "").strip()
    if requested:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"{HOST_DEVICES_ENV} must be a positive integer, got {requested!r}")
        count, reason = int(requested), f"{HOST_DEVICES_ENV}={requested}"
    else:
        cores = usable_cores() if cores is None else cores
        count = host_device_count(batch_sizes, cores)
        reason = f"{cores} cores, batch sizes {sorted(set(int(b) for b in batch_sizes))}"
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return {"applied": False, "devices": None, "reason": "XLA_FLAGS sets the count"}
    if jax.config.jax_num_cpu_devices != -1:
        return {"applied": False, "devices": None, "reason": "jax_num_cpu_devices is set"}
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX's backends have started
        return {"applied": False, "devices": None, "reason": "JAX's backends have started"}
    return {"applied": True, "devices": count, "reason": reason}
