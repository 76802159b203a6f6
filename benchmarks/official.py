"""This library against the official PyTorch CBT, side by side in one process.

    python -m benchmarks.official --repo PATH [--json OUT] [--parts layer,train,infer]
                                  [--sizes 65,257,1025,4097] [--presets cbt_tiny,cbt_small]
                                  [--train-batches 8,64] [--infer-batches 1,64] [--rounds 5]
                                  [--schedule interleaved|alone] [--hugepages]
    python -m benchmarks.official --repo PATH --parts block
                                  [--blocks cbt_tiny:8:197,cbt_small:1:1025]

`PATH` is a checkout of https://github.com/QishuaiWen/CBSA (or its `CBSA_image_classification`
folder): its `models.py` (the CBT `VisionTransformer`, conv stem, `CBSA`, `ISTA`) is imported
from there; nothing of it is copied into this project. Needs PyTorch and einops
(`pip install -e .[compare]`).

For every case both models get the same random weights: the official model is built (torch's
initialisation, BatchNorm running statistics re-drawn so eval mode uses them) and converted with
`cbsa_jax.convert.cbt_from_torch`; the outputs are compared before anything is timed (the
`max_rel_diff` column, the largest difference over the largest magnitude; a case whose outputs
disagree by more than `--tolerance` is reported and not timed). Then each side is warmed up and
timed in `--rounds` interleaved rounds (official, ours, official, ...), each of about `--target-s`
and at least three calls per side (so that the medians are the steady state, not the first call
after the other framework's round), float32; the medians and their ratio (ours / official: below 1
is faster) are reported, and the ratio of the fastest calls beside it (on a loaded machine PyTorch's
OpenMP threads, which spin at their barriers, lose far more to other processes than XLA's thread
pool does, and the minima show what each side does when it has the cores), and the ratio of the
median CPU seconds per call (meaningful with one thread a side: `taskset -c 0 ... --threads 1`
compares one core against one core, which other processes disturb least). `--schedule alone`
times every round of the official side, then every round of ours, instead: a check that the
alternation itself does not bias the ratios (docs/performance.md, seventh look). PyTorch runs
with `torch.set_num_threads(os.cpu_count())` (or the cores `taskset` leaves it), JAX calls end
with `block_until_ready`.

The cases run inference first, then the layer and block cases, then the train steps (the JSON
lists them layer, train, infer, block). On a CPU the inference cases run in a process of their
own with glibc's malloc (`--infer-process own`, the default; `same`: in this process), as a
process that serves a model runs them: it does not import `train`, so the training program's
malloc setting, whose one arena makes small programs slower (CBT-T's batch-1 forward 10.4-11.6
ms instead of 9.2-9.7 on an Intel Xeon, and about a fifth slower after train steps on AMD:
docs/performance.md, seventh and eighth looks), is not its own. Those rows carry `"process":
"own"`.

Ours is what `python -m train` runs: the train step is `cbsa_jax.training`'s, built by
`make_task` from the classification task and compiled by `compile_step` exactly as
`train/loop.py` does (the state donated and passed as a flat list of arrays, the compiler options
of `cbsa_jax.training.compiler_options()`, chosen from the backend and the processor's
instruction set); the layer and inference cases use the same options (`--ours-options
xla-default` compiles with XLA's defaults instead). The process's malloc is set as `python -m
train` sets it (`cbsa_jax.training.configure_host_allocator`, one process: both frameworks alike;
`--allocator default` leaves glibc's defaults), and the train step runs on the devices `python -m
train` splits the CPU into, one per core, each batch split over them
(`cbsa_jax.training.configure_host_devices`; the layer, block and inference cases run on one
device; `--devices one` puts the train step on one device too). `--hugepages` restarts the
process with glibc's malloc asking for transparent huge pages (both frameworks alike;
docs/performance.md).

Cases (`--parts`):
- `layer`: the CBSA layer (D = 384, 6 heads of 64, with its in- and out-projections) forward and
  backward (gradients of the sum of its output in the input and every parameter), batch 1, at
  N = g^2 + 1 tokens (`--sizes`). Each row also times the layer's two projections alone in both
  frameworks (six N x 384 x 384 matrix products, forward and backward: `products_*_ms`) and
  gives ours over the official layer at that time (`floor_ratio`, the "products floor" column):
  the ratio ours would reach if everything else in the layer were free.
- `train`: one training step of CBT-T / CBT-S at 224 x 224 (`--presets`, `--train-batches`):
  forward in train mode (BatchNorm batch statistics), softmax cross-entropy, backward, AdamW
  update (lr 1e-4, weight decay 0.05; torch.optim.AdamW against the training program's step with
  optax.adamw, which also computes the gradient norm, guards against a non-finite step and
  returns its metrics, as every training step does).
- `infer`: the eval-mode forward (`--infer-batches`); torch under `torch.inference_mode()`.
- `block` (not in the default `--parts`): one transformer block split into its parts, forward and
  backward (gradients of `sum(out * r)` for a fixed random `r`, in the input and every
  parameter), for each `preset:batch:N` of `--blocks`: the whole block (`x + attn(LN x)`, then
  `ISTA(LN .)`), the attention with its LayerNorm, the CBSA layer alone (as `layer`), the ISTA
  step with its LayerNorm, and the LayerNorm alone: where in a block ours gains or loses.

On a GPU (JAX's backend is "gpu"; torch must see a CUDA device too) both models run on it, and
`--dtype bfloat16` gives ours bfloat16 compute and the official model `torch.autocast(bfloat16)`,
both with float32 parameters; every train and inference row records XLA's FLOPs of our step
(`gflop`), from which `benchmarks.device_check` reports the MFU.

Nothing is asserted about the times; the JSON records the machine and its load average.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import _harness as h
from cbsa_jax import training
from cbsa_jax.convert import cbt_from_torch
from cbsa_jax.models import PRESETS

PARTS = ("layer", "train", "infer", "block")
DEFAULT_PARTS = ("layer", "train", "infer")
BLOCK_PARTS = ("block", "attention", "cbsa", "ista", "norm")
# how this library's executables are compiled: as the training program compiles its steps
# (cbsa_jax.training.compiler_options) or with XLA's defaults
OPTIONS = {"train": training.compiler_options, "xla-default": dict}
SCHEDULES = ("interleaved", "alone")
ALLOCATORS = ("train", "default")
INFER_PROCESSES = ("own", "same")
OFFICIAL_MODULE = "cbsa_official_models"


# ----------------------------------------------------------------------------------------------
# the official code


def load_official(repo: str):
    """The official `models.py` as a module, imported from the checkout `repo`."""
    root = pathlib.Path(repo).expanduser().resolve()
    folder = next((p for p in (root / "CBSA_image_classification", root)
                   if (p / "models.py").is_file() and (p / "attn_layers.py").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"{root} holds neither models.py nor "
                                "CBSA_image_classification/models.py of the official CBT code")
    if OFFICIAL_MODULE in sys.modules:
        return sys.modules[OFFICIAL_MODULE]
    sys.path.insert(0, str(folder))  # models.py does `from attn_layers import *`
    spec = importlib.util.spec_from_file_location(OFFICIAL_MODULE, folder / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[OFFICIAL_MODULE] = module
    return module


def official_cbt(official, torch, preset: str, *, image_size: int, num_classes: int,
                 depth: int | None = None, seed: int = 0):
    """The official CBT `VisionTransformer` of our `preset`'s widths, torch's initialisation
    (seeded), BatchNorm running statistics re-drawn (so that eval mode exercises them)."""
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    net = official.VisionTransformer(
        attn=official.CBSA, ffn=official.ISTA, image_size=image_size, patch_size=cfg.patch_size,
        num_classes=num_classes, dim=cfg.dim, depth=cfg.depth if depth is None else depth,
        heads=cfg.heads, dim_head=cfg.dim_head)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net


def ours_from(net, preset: str, *, image_size: int, num_classes: int, depth: int | None = None,
              dtype=None):
    """The same weights in this library's model, through the converter (eval mode); `dtype` is
    the compute dtype (None: float32), the parameters stay float32."""
    cfg = PRESETS[preset]
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    return cbt_from_torch(state, image_size=image_size, patch_size=cfg.patch_size,
                          num_classes=num_classes, dim=cfg.dim,
                          depth=cfg.depth if depth is None else depth, heads=cfg.heads,
                          dim_head=cfg.dim_head, dtype=dtype)


def max_rel_diff(a, b) -> float:
    """max |a - b| / max |b| over all leaves (a, b: sequences of numpy arrays)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), 1e-30))
    return worst


class Torch:
    """The official side's device and precision: `device` "cpu" or "cuda"; with `bfloat16`, its
    forward passes run under `torch.autocast(bfloat16)` (parameters float32, as ours). Calls on a
    GPU end with `torch.cuda.synchronize()` so that a timed call includes its kernels."""

    def __init__(self, torch, device: str = "cpu", bfloat16: bool = False):
        self.torch, self.device, self.bfloat16 = torch, device, bfloat16

    def module(self, net):
        return net.to(self.device)

    def tensor(self, array: np.ndarray, grad: bool = False):
        t = self.torch.from_numpy(array).to(self.device)
        return t.requires_grad_(True) if grad else t

    def autocast(self):
        if not self.bfloat16:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device, dtype=self.torch.bfloat16)

    def sync(self, value=None):
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return value

    @staticmethod
    def numpy(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# interleaved timing


def interleaved(calls: dict[str, Callable[[], object]], *, rounds: int, target_s: float,
                min_per_round: int = 3, max_per_round: int = 1000,
                schedule: str = "interleaved") -> dict[str, dict[str, list[float]]]:
    """Time each of `calls` (name -> call that blocks until done) in `rounds` interleaved rounds
    after one warm-up call and one to three sizing calls each; every round runs each call k times,
    k sized from the slower side's median sizing call so that a round takes about `target_s` per
    side, within [`min_per_round`, `max_per_round`]. Right after the other framework's round the
    first call of a side is slower (caches, thread wake-ups, the allocator's pages), so a round
    needs more than one call for its median to be the steady state a training or serving loop
    sees: with one call a round the medians were those first calls, which flattered our train
    step and penalised the official one, and with short rounds our first calls set the median of
    the smallest layer (docs/performance.md, appendix, change 12).
    `schedule="alone"` runs every round of one call before the next call's: each side is timed
    while the other is idle, at the cost of load changes no longer hitting both sides alike.
    Returns name -> {"wall": seconds, "cpu": the process's CPU seconds} of every timed call."""
    sizing = {}
    for name, call in calls.items():
        ts = []
        for _ in range(4):  # the warm-up, then sizing calls until one fills a round
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
            if len(ts) > 1 and ts[-1] >= target_s:
                break
        sizing[name] = float(np.median(ts[1:]))
    per_round = max(min_per_round, 1,
                    min(max_per_round, math.ceil(target_s / max(max(sizing.values()), 1e-6))))
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    times = {name: {"wall": [], "cpu": []} for name in calls}
    if schedule == "interleaved":
        order = [name for _ in range(rounds) for name in calls]
    else:
        order = [name for name in calls for _ in range(rounds)]
    for name in order:
        for _ in range(per_round):
            c0, t0 = time.process_time(), time.perf_counter()
            calls[name]()
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def _row(case: str, what: str, times: dict[str, dict[str, list[float]]], diff: float,
         **extra) -> dict:
    med = {name: float(np.median(t["wall"])) for name, t in times.items()}
    low = {name: float(np.min(t["wall"])) for name, t in times.items()}
    cpu = {name: float(np.median(t["cpu"])) for name, t in times.items()}
    return {"case": case, "what": what, "official_ms": med["official"] * 1e3,
            "ours_ms": med["ours"] * 1e3, "ratio": med["ours"] / med["official"],
            "official_min_ms": low["official"] * 1e3, "ours_min_ms": low["ours"] * 1e3,
            "ratio_of_minima": low["ours"] / low["official"],
            "official_cpu_ms": cpu["official"] * 1e3, "ours_cpu_ms": cpu["ours"] * 1e3,
            "cpu_ratio": cpu["ours"] / max(cpu["official"], 1e-12),
            "max_rel_diff": diff, "repeats": len(times["ours"]["wall"]), "status": "ok",
            "official_times_ms": [t * 1e3 for t in times["official"]["wall"]],
            "ours_times_ms": [t * 1e3 for t in times["ours"]["wall"]], **extra}


def _skipped(case: str, what: str, status: str, diff: float | None = None, **extra) -> dict:
    return {"case": case, "what": what, "official_ms": None, "ours_ms": None, "ratio": None,
            "ratio_of_minima": None, "cpu_ratio": None, "max_rel_diff": diff, "repeats": 0,
            "status": status, **extra}


# ----------------------------------------------------------------------------------------------
# the cases


def layer_case(official, side: Torch, n: int, *, preset: str = "cbt_small", rounds: int,
               target_s: float, tolerance: float, options: dict | None = None, dtype=None,
               seed: int = 0, schedule: str = "interleaved") -> dict:
    """The CBSA layer of `preset` (with projections), fwd+bwd at batch 1 and n = g^2 + 1."""
    g = math.isqrt(n - 1)
    if g * g + 1 != n:
        raise ValueError(f"layer sizes must be g^2 + 1 (a g x g grid and a cls token), got {n}")
    cfg = PRESETS[preset]
    what = f"CBSA layer D={cfg.dim} H={cfg.heads}, fwd+bwd, batch 1"
    size = g * cfg.patch_size
    net = official_cbt(official, side.torch, preset, image_size=size, num_classes=10, depth=1,
                       seed=seed)
    layer_t = side.module(net.transformer.layers[0][0].fn)
    model = ours_from(net, preset, image_size=size, num_classes=10, depth=1, dtype=dtype)
    layer_j = model.blocks[0].attn
    graphdef, params = nnx.split(layer_j)

    x_np = np.random.default_rng(seed).standard_normal((1, n, cfg.dim)).astype(np.float32)
    x_t = side.tensor(x_np, grad=True)
    t_params = [x_t, *layer_t.parameters()]

    def torch_call():
        for p in t_params:
            p.grad = None
        with side.autocast():
            out = layer_t(x_t).float().sum()
        out.backward()
        return side.sync([x_t.grad, *(p.grad for p in t_params[1:])])

    params, params_def = jax.tree.flatten(params)  # flat arrays, as cbsa_jax.training passes

    def loss(params, x):
        out = nnx.merge(graphdef, jax.tree.unflatten(params_def, params))(x, grid=(g, g))
        return jnp.sum(out.astype(jnp.float32))

    x_j = jnp.asarray(x_np)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x_j).compile(
        compiler_options=options)

    def ours_call():
        return jax.block_until_ready(compiled(params, x_j))

    with side.autocast():
        out_t = side.numpy(layer_t(x_t))
    out_j = np.asarray(layer_j(x_j, grid=(g, g)), np.float32)
    grads_t = torch_call()
    _, (_, gx_j) = ours_call()
    diff = max_rel_diff([out_j, np.asarray(gx_j, np.float32)], [out_t, side.numpy(grads_t[0])])
    if not diff <= tolerance:
        return _skipped("layer", what, f"outputs disagree ({diff:.1e} > {tolerance:.0e})", diff,
                        N=n)
    times = interleaved({"official": torch_call, "ours": ours_call}, rounds=rounds,
                        target_s=target_s, schedule=schedule)
    row = _row("layer", what, times, diff, N=n)
    row.update(projection_products(side, x_np, cfg.heads * cfg.dim_head, rounds=rounds,
                                   target_s=target_s, options=options, seed=seed,
                                   schedule=schedule))
    row["floor_ratio"] = row["products_ours_ms"] / row["official_ms"]
    return row


def projection_products(side: Torch, x_np: np.ndarray, inner: int, *, rounds: int,
                        target_s: float, options: dict | None = None, seed: int = 0,
                        schedule: str = "interleaved") -> dict:
    """The layer's two projections alone, in each framework: `sum((x U) K)` forward and backward
    (the gradients of x, U and K), six [N, D] x [D, inner] products, most of the layer's FLOPs.
    Median ms of each side (`products_official_ms`, `products_ours_ms`), timed as the layer is.
    Ours over the official layer at these times (`floor_ratio`) is the ratio ours would reach if
    all but these products cost nothing."""
    rng = np.random.default_rng(seed + 1)
    d = x_np.shape[-1]
    u_np = (rng.standard_normal((d, inner)) / math.sqrt(d)).astype(np.float32)
    k_np = (rng.standard_normal((inner, d)) / math.sqrt(inner)).astype(np.float32)
    x_t, u_t, k_t = (side.tensor(a, grad=True) for a in (x_np[0], u_np, k_np))

    def torch_call():
        for t in (x_t, u_t, k_t):
            t.grad = None
        ((x_t @ u_t) @ k_t).sum().backward()
        return side.sync(k_t.grad)

    x_j, u_j, k_j = (jnp.asarray(a) for a in (x_np[0], u_np, k_np))
    compiled = jax.jit(jax.grad(lambda x, u, k: jnp.sum((x @ u) @ k), argnums=(0, 1, 2))).lower(
        x_j, u_j, k_j).compile(compiler_options=options)

    def ours_call():
        return jax.block_until_ready(compiled(x_j, u_j, k_j))

    times = interleaved({"official": torch_call, "ours": ours_call}, rounds=rounds,
                        target_s=target_s, schedule=schedule)
    return {f"products_{name}_ms": float(np.median(t["wall"])) * 1e3
            for name, t in times.items()}


def _block_parts(block_t, block_j, grid):
    """part -> (official callable, its torch modules, our module, our call) of one block."""
    attn_t, ista_t = block_t
    return {
        "block": (lambda x: ista_t(attn_t(x) + x), [attn_t, ista_t], block_j,
                  lambda m, x: m(x, grid=grid)),
        "attention": (attn_t, [attn_t], nnx.List([block_j.norm1, block_j.attn]),
                      lambda m, x: m[1](m[0](x), grid=grid)),
        "cbsa": (attn_t.fn, [attn_t.fn], block_j.attn, lambda m, x: m(x, grid=grid)),
        "ista": (ista_t, [ista_t], nnx.List([block_j.norm2, block_j.ffn]),
                 lambda m, x: m[1](m[0](x))),
        "norm": (attn_t.norm, [attn_t.norm], block_j.norm1, lambda m, x: m(x)),
    }


def block_case(official, side: Torch, preset: str, batch: int, n: int, part: str, *,
               rounds: int, target_s: float, tolerance: float, options: dict | None = None,
               dtype=None, seed: int = 0, schedule: str = "interleaved") -> dict:
    """A part of the first transformer block of `preset` (`BLOCK_PARTS`), fwd+bwd at `batch`
    sequences of n = g^2 + 1 tokens."""
    g = math.isqrt(n - 1)
    if g * g + 1 != n:
        raise ValueError(f"block sizes must be g^2 + 1 (a g x g grid and a cls token), got {n}")
    cfg = PRESETS[preset]
    what = f"{preset} block: {part}, fwd+bwd, batch {batch}"
    base = {"preset": preset, "batch": batch, "N": n, "part": part}
    size = g * cfg.patch_size
    net = official_cbt(official, side.torch, preset, image_size=size, num_classes=10, depth=1,
                       seed=seed)
    model = ours_from(net, preset, image_size=size, num_classes=10, depth=1, dtype=dtype)
    call_t, modules_t, module_j, call_j = _block_parts(net.transformer.layers[0],
                                                      model.blocks[0], (g, g))[part]
    for m in modules_t:
        side.module(m)
    rng = np.random.default_rng(seed)
    x_np, r_np = (rng.standard_normal((batch, n, cfg.dim)).astype(np.float32) for _ in range(2))
    x_t, r_t = side.tensor(x_np, grad=True), side.tensor(r_np)
    t_params = [x_t] + [q for m in modules_t for q in m.parameters()]

    def torch_call():
        for q in t_params:
            q.grad = None
        with side.autocast():
            out = (call_t(x_t).float() * r_t).sum()
        out.backward()
        return side.sync([q.grad for q in t_params])

    graphdef, params = nnx.split(module_j)
    params, params_def = jax.tree.flatten(params)  # flat arrays, as cbsa_jax.training passes

    def loss(params, x, r):
        out = call_j(nnx.merge(graphdef, jax.tree.unflatten(params_def, params)), x)
        return jnp.sum(out.astype(jnp.float32) * r)

    x_j, r_j = jnp.asarray(x_np), jnp.asarray(r_np)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x_j, r_j).compile(
        compiler_options=options)

    def ours_call():
        return jax.block_until_ready(compiled(params, x_j, r_j))

    grads_t = torch_call()
    _, (_, gx_j) = ours_call()
    diff = max_rel_diff([np.asarray(gx_j, np.float32)], [side.numpy(grads_t[0])])
    if not diff <= tolerance:
        return _skipped("block", what, f"gradients disagree ({diff:.1e} > {tolerance:.0e})",
                        diff, **base)
    times = interleaved({"official": torch_call, "ours": ours_call}, rounds=rounds,
                        target_s=target_s, schedule=schedule)
    return _row("block", what, times, diff, **base)


def _images(batch: int, size: int, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, size, size)).astype(np.float32)  # NCHW
    return images, rng.integers(0, num_classes, batch)


def train_case(official, side: Torch, preset: str, batch: int, *, image_size: int,
               num_classes: int, rounds: int, target_s: float, tolerance: float,
               budget_gb: float, options: dict | None = None, dtype=None,
               seed: int = 0, split: bool = True, schedule: str = "interleaved") -> dict:
    """One AdamW step (train-mode forward, cross-entropy, backward, update) of both models;
    ours on the devices `python -m train` splits the batch over (`split`), else on one."""
    what = f"{preset} train step (fwd+bwd+AdamW), batch {batch}, {image_size}"
    base = {"preset": preset, "batch": batch}
    torch = side.torch
    net = side.module(official_cbt(official, torch, preset, image_size=image_size,
                                   num_classes=num_classes, seed=seed))
    model = ours_from(net, preset, image_size=image_size, num_classes=num_classes, dtype=dtype)
    images_np, labels_np = _images(batch, image_size, num_classes, seed)
    images_t, labels_t = side.tensor(images_np), side.tensor(labels_np)

    # train-mode forward of both, before any update
    net.train()
    model.train()
    with side.autocast():
        logits_t = side.numpy(net(images_t))
    probe = nnx.clone(model)
    logits_j = np.asarray(probe(jnp.asarray(images_np.transpose(0, 2, 3, 1))), np.float32)
    diff = max_rel_diff([logits_j], [logits_t])
    if not diff <= tolerance:
        return _skipped("train", what, f"outputs disagree ({diff:.1e} > {tolerance:.0e})", diff,
                        **base)

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)

    def torch_call():
        opt.zero_grad(set_to_none=True)
        with side.autocast():
            logits = net(images_t)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels_t)
        loss.backward()
        opt.step()
        return side.sync(loss)

    # the training program's step (train/loop.py's Experiment.train_step), on one device
    devices = training.step_devices(batch) if split else None
    step, leaves = training.classification_step(model, optax.adamw(1e-4, weight_decay=0.05),
                                                num_classes=num_classes, options=options,
                                                devices=devices)
    batch_j = {"image": jnp.asarray(images_np.transpose(0, 2, 3, 1)),
               "label": jnp.asarray(labels_np, jnp.int32)}
    if step.batch_sharding is not None:
        batch_j = jax.device_put(batch_j, step.batch_sharding)
    base["devices"] = len(devices) if devices else 1
    compiled = step.compile(leaves, batch_j)
    peak_gb = h.memory_analysis(compiled)["peak"] / h.GB * base["devices"]  # per device
    if peak_gb > budget_gb:
        return _skipped("train", what, f"oom (estimated {peak_gb:.1f} GB > {budget_gb} GB)",
                        diff, **base)
    holder = [leaves]

    def ours_call():
        holder[0], metrics = step(holder[0], batch_j)
        return jax.block_until_ready(metrics["loss"])

    times = interleaved({"official": torch_call, "ours": ours_call}, rounds=rounds,
                        target_s=target_s, schedule=schedule)
    return _row("train", what, times, diff, peak_mb=peak_gb * 1e3,
                gflop=h.cost_analysis(compiled)["flops"] / 1e9 * base["devices"], **base)


def infer_case(official, side: Torch, preset: str, batch: int, *, image_size: int,
               num_classes: int, rounds: int, target_s: float, tolerance: float,
               options: dict | None = None, dtype=None, seed: int = 0,
               schedule: str = "interleaved") -> dict:
    """The eval-mode forward of both models."""
    what = f"{preset} inference (eval forward), batch {batch}, {image_size}"
    torch = side.torch
    net = side.module(official_cbt(official, torch, preset, image_size=image_size,
                                   num_classes=num_classes, seed=seed).eval())
    model = ours_from(net, preset, image_size=image_size, num_classes=num_classes, dtype=dtype)
    graphdef, state = nnx.split(model)
    state, state_def = jax.tree.flatten(state)  # flat arrays, as cbsa_jax.training passes
    images_np, _ = _images(batch, image_size, num_classes, seed)
    images_t = side.tensor(images_np)
    images_j = jnp.asarray(images_np.transpose(0, 2, 3, 1))
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, jax.tree.unflatten(state_def, s))(x)).lower(
        state, images_j).compile(compiler_options=options)

    def torch_call():
        with torch.inference_mode(), side.autocast():
            return side.sync(net(images_t))

    def ours_call():
        return jax.block_until_ready(compiled(state, images_j))

    diff = max_rel_diff([np.asarray(ours_call(), np.float32)], [side.numpy(torch_call())])
    if not diff <= tolerance:
        return _skipped("infer", what, f"outputs disagree ({diff:.1e} > {tolerance:.0e})", diff,
                        preset=preset, batch=batch)
    times = interleaved({"official": torch_call, "ours": ours_call}, rounds=rounds,
                        target_s=target_s, schedule=schedule)
    return _row("infer", what, times, diff, preset=preset, batch=batch,
                gflop=h.cost_analysis(compiled)["flops"] / 1e9)


# ----------------------------------------------------------------------------------------------
# the command line


COLUMNS = [
    ("what", "<", lambda r: r["what"] + (f", N={r['N']:,}" if "N" in r else "")),
    ("official ms", ">", lambda r: h.fmt(r["official_ms"], ",.2f")),
    ("ours ms", ">", lambda r: h.fmt(r["ours_ms"], ",.2f")),
    ("ours / official", ">", lambda r: h.fmt(r["ratio"], ".2f")),
    ("ratio of minima", ">", lambda r: h.fmt(r["ratio_of_minima"], ".2f")),
    ("products floor", ">", lambda r: h.fmt(r.get("floor_ratio"), ".2f")),
    ("CPU-time ratio", ">", lambda r: h.fmt(r["cpu_ratio"], ".2f")),
    ("max rel diff", ">", lambda r: h.fmt(r["max_rel_diff"], ".1e")),
    ("runs", ">", lambda r: str(r["repeats"])),
    ("status", "<", lambda r: r["status"]),
]


def _block_spec(p: argparse.ArgumentParser, spec: str) -> tuple[str, int, int]:
    """`preset:batch:N` -> (preset, batch, N), or a parser error naming --blocks."""
    fields = spec.split(":")
    presets = [k for k in sorted(PRESETS) if k.startswith("cbt_") and "exact" not in k]
    try:
        preset, batch, n = fields[0], int(fields[1]), int(fields[2])
        if len(fields) != 3:
            raise ValueError
    except (IndexError, ValueError):
        p.error(f"--blocks: expected preset:batch:N (e.g. cbt_tiny:8:197), got {spec!r}")
    if preset not in presets:
        p.error(f"--blocks: unknown preset {preset!r} in {spec!r} (one of {', '.join(presets)})")
    if batch < 1 or n < 2 or math.isqrt(n - 1) ** 2 + 1 != n:
        p.error(f"--blocks: batch must be >= 1 and N = g^2 + 1 (a g x g grid and a cls token), "
                f"got {spec!r}")
    return preset, batch, n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.official", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True,
                   help="checkout of github.com/QishuaiWen/CBSA (or its "
                        "CBSA_image_classification folder)")
    p.add_argument("--json", help="write the rows and the machine to this JSON file")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--blocks", default="cbt_tiny:8:197,cbt_small:1:257,cbt_small:1:1025",
                   help="the `block` part's cases, preset:batch:N (N = g^2 + 1 tokens)")
    p.add_argument("--block-parts", default=",".join(BLOCK_PARTS),
                   help=f"comma-separated subset of {','.join(BLOCK_PARTS)}")
    p.add_argument("--sizes", default="65,257,1025,4097", help="CBSA layer token counts g^2 + 1")
    p.add_argument("--layer-preset", default="cbt_small",
                   help="the preset whose CBSA layer is timed (cbt_small: D=384, H=6)")
    p.add_argument("--presets", default="cbt_tiny,cbt_small")
    p.add_argument("--train-batches", default="8,64")
    p.add_argument("--infer-batches", default="1,64")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    p.add_argument("--schedule", default="interleaved", choices=SCHEDULES,
                   help="'interleaved': the sides' rounds alternate (load changes hit both "
                        "alike); 'alone': every round of the official side, then every round of "
                        "ours (each timed while the other framework's threads are idle)")
    p.add_argument("--target-s", type=float, default=0.5,
                   help="time per round and side, roughly (at least one call)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest max-relative difference of the outputs before a case is timed "
                        "(default 1e-3 in float32, 5e-2 in bfloat16)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype: bfloat16 runs ours with bfloat16 compute and the official "
                        "model under torch.autocast(bfloat16), both with float32 parameters")
    p.add_argument("--memory-budget-gb", type=float, default=h.default_memory_budget_gb())
    p.add_argument("--ours-options", default="train", choices=sorted(OPTIONS),
                   help="XLA compile options of this library's executables: 'train' (those "
                        "python -m train compiles its steps with) or 'xla-default'")
    p.add_argument("--allocator", default="train", choices=ALLOCATORS,
                   help="'train': the process's malloc as python -m train sets it "
                        "(cbsa_jax.training.configure_host_allocator; both frameworks, one "
                        "process); 'default': glibc's own")
    p.add_argument("--infer-process", default="own", choices=INFER_PROCESSES,
                   help="where the inference cases run on a CPU: 'own': in a process of their own "
                        "with glibc's malloc, as a process that serves a model has it (it does "
                        "not import train); 'same': in this process, with --allocator")
    p.add_argument("--devices", default="train", choices=("train", "one"),
                   help="our train step's devices: 'train': as python -m train splits the CPU, "
                        "one XLA device per core dividing the batch, each batch split over them "
                        "(cbsa_jax.training.configure_host_devices); 'one': one device")
    p.add_argument("--hugepages", action="store_true",
                   help="restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge "
                        "pages for large allocations, both frameworks alike: XLA's per-call "
                        "buffers otherwise page-fault every train step; docs/performance.md)")
    p.add_argument("--threads", type=int, default=training.usable_cores(),
                   help="torch.set_num_threads (default: every core this process may run on, "
                        "os.cpu_count() unless restricted by taskset)")
    args = p.parse_args(argv)
    args.parts = h.parse_list(args.parts)
    h.check_choices(p, args.parts, PARTS, "part")
    args.presets = h.parse_list(args.presets)
    h.check_choices(p, [*args.presets, args.layer_preset],
                    [k for k in sorted(PRESETS) if k.startswith("cbt_") and "exact" not in k],
                    "preset")
    args.block_parts = h.parse_list(args.block_parts)
    h.check_choices(p, args.block_parts, BLOCK_PARTS, "block part")
    args.blocks = [_block_spec(p, spec) for spec in h.parse_list(args.blocks)]
    args.sizes = h.parse_list(args.sizes, int)
    args.train_batches = h.parse_list(args.train_batches, int)
    args.infer_batches = h.parse_list(args.infer_batches, int)
    if args.tolerance is None:
        args.tolerance = 1e-3 if args.dtype == "float32" else 5e-2
    return args


def run_cases(jobs, payload: dict, path) -> None:
    """Run each case of `jobs`, append its row to `payload["rows"]`, print it and write the JSON
    after each, then hand the heap's free memory back (`training.release_host_memory`) before
    the next case. With the training program's malloc settings nothing freed is returned by
    itself, and both frameworks' buffers share one heap: without the release a full run on a
    2-core Intel Xeon with 24 GiB grew to 24 GB and was killed for memory in its last case
    (the CBT-S train step at batch 64, 11.5 GB in a process of its own)."""
    for job in jobs:
        row = job()
        row["load_average"] = os.getloadavg()
        payload["rows"].append(row)
        print("  " + "  ".join(fn(row) for _, _, fn in COLUMNS), flush=True)
        h.write_json(path, payload)
        training.release_host_memory()


def infer_argv(args: argparse.Namespace, path: str) -> list[str]:
    """The arguments of the process of their own that runs `args`' inference cases (`--infer-process
    own`): the same cases and timing, glibc's malloc, rows written to `path`."""
    argv = ["--repo", args.repo, "--json", path, "--parts", "infer", "--allocator", "default",
            "--infer-process", "same", "--presets", ",".join(args.presets),
            "--infer-batches", ",".join(map(str, args.infer_batches)),
            "--image-size", str(args.image_size), "--num-classes", str(args.num_classes),
            "--rounds", str(args.rounds), "--schedule", args.schedule,
            "--target-s", str(args.target_s), "--tolerance", str(args.tolerance),
            "--dtype", args.dtype, "--ours-options", args.ours_options,
            "--threads", str(args.threads)]
    return [*argv, "--hugepages"] if args.hugepages else argv


def run_infer_process(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Run the inference cases in a process of their own (`infer_argv`; its rows print as they
    come) and return (its rows, each marked `"process": "own"`, its malloc)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "infer.json")
        subprocess.run([sys.executable, "-m", "benchmarks.official", *infer_argv(args, path)],
                       check=True)
        with open(path) as f:
            data = json.load(f)
    return ([{**row, "process": "own"} for row in data["rows"]], data["machine"]["allocator"])


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.hugepages:
        h.reexec_with_hugepages("benchmarks.official", argv)
    allocator = (training.configure_host_allocator() if args.allocator == "train"
                 else {"applied": False, "reason": "--allocator default"})
    host_devices = (training.configure_host_devices(args.train_batches)
                    if args.devices == "train" and "train" in args.parts
                    else {"applied": False, "reason": f"--devices {args.devices}"})
    try:
        import torch
    except ImportError as e:
        raise SystemExit("benchmarks.official needs PyTorch: pip install -e '.[compare]'") from e
    official = load_official(args.repo)
    torch.set_num_threads(args.threads)
    gpu = jax.default_backend() == "gpu"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("benchmarks.official: JAX runs on a GPU but torch sees none; both "
                         "frameworks must run on the same device")
    side = Torch(torch, "cuda" if gpu else "cpu", bfloat16=args.dtype == "bfloat16")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    info = h.machine_info()
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_device=side.device, allocator=allocator, host_devices=host_devices)
    config = {k: v for k, v in vars(args).items()}
    command = "python -m benchmarks.official " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"benchmark": "official", "command": command, "machine": info, "config": config,
               "rows": []}
    print(f"# ours / official PyTorch CBT, {info['date']}, {info['processor']} "
          f"({info['cpu_count']} cores), jax {info['jax']}, torch {info['torch']} "
          f"({info['torch_threads']} threads); huge pages "
          f"{'on' if h.hugepages_enabled() else 'off'}; malloc "
          f"{'as python -m train sets it' if allocator['applied'] else 'glibc defaults'}; "
          f"load average {info['load_average']}",
          flush=True)
    common = dict(rounds=args.rounds, target_s=args.target_s, tolerance=args.tolerance,
                  options=OPTIONS[args.ours_options]() or None, dtype=dtype,
                  schedule=args.schedule)
    info["ours_compiler_options"] = common["options"] or {}
    # Inference first and the train steps last. On a CPU the inference cases run in a process of
    # their own with glibc's malloc (the module docstring); with --infer-process same (or on a
    # GPU) they run here, first, because after one of our train steps the process stays slower
    # for the small programs that follow (CBT-T inference at batch 1: 13 -> 15.5 ms with the
    # training program's malloc setting, docs/performance.md, seventh look). The JSON lists the
    # rows in the order of PARTS.
    jobs = []
    model_kw = dict(image_size=args.image_size, num_classes=args.num_classes, **common)
    t_start = time.perf_counter()
    own = "infer" in args.parts and args.infer_process == "own" and not gpu
    info["infer_process"] = "own" if own else "same"
    if own:  # first, while this process is idle
        rows, info["infer_allocator"] = run_infer_process(args)
        payload["rows"] += rows
        h.write_json(args.json, payload)
    elif "infer" in args.parts:
        jobs += [lambda p=p, b=b: infer_case(official, side, p, b, **model_kw)
                 for b in args.infer_batches for p in args.presets]
    if "layer" in args.parts:
        jobs += [lambda n=n: layer_case(official, side, n, preset=args.layer_preset, **common)
                 for n in args.sizes]
    if "block" in args.parts:
        jobs += [lambda b=b, part=part: block_case(official, side, *b, part, **common)
                 for b in args.blocks for part in args.block_parts]
    if "train" in args.parts:
        jobs += [lambda p=p, b=b: train_case(official, side, p, b,
                                             budget_gb=args.memory_budget_gb,
                                             split=args.devices == "train", **model_kw)
                 for b in args.train_batches for p in args.presets]
    run_cases(jobs, payload, args.json)
    payload["rows"].sort(key=lambda r: PARTS.index(r["case"]))  # stable: each part's own order
    payload["wall_s"] = time.perf_counter() - t_start
    payload["machine"]["load_average_end"] = os.getloadavg()
    h.write_json(args.json, payload)
    print()
    print(h.table(payload["rows"], COLUMNS))
    print(f"\nload average at the start {info['load_average']}, at the end "
          f"{payload['machine']['load_average_end']}; wall clock {payload['wall_s']:.0f} s")
    return payload


if __name__ == "__main__":
    main()
