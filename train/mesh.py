"""The device mesh, and shardings from the parameters' logical axes.

Mesh axes: `data` and `fsdp` split the batch (and `fsdp` the parameters' embedding dims), `seq`
splits each sequence's tokens (a language model's sequence parallelism: `cbsa_jax.sharding`'s
"sequence" rule; the train and eval steps are traced under `jax.set_mesh` of this mesh, which is
where the model's causal layers find it), `model` splits heads, MLP widths and the vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cbsa_jax import training
from cbsa_jax.sharding import DEFAULT_RULES, logical_to_spec
from train import config as config_lib

__all__ = ["MeshError", "make_mesh", "batch_sharding", "state_shardings", "replicated",
           "split_host", "BATCH_AXES"]

AXES = ("data", "fsdp", "seq", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over data x fsdp


class MeshError(ValueError):
    """A mesh that does not fit the devices or the batch; the message is one line."""


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    sizes = [config.mesh[a] for a in AXES]
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"config.mesh {dict(zip(AXES, sizes, strict=True))}: {num_devices} "
                            f"devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise MeshError(f"config.mesh {dict(zip(AXES, sizes, strict=True))} needs "
                        f"{int(np.prod(sizes))} devices, {num_devices} are available")
    return tuple(sizes)


def split_host(*configs: ml_collections.ConfigDict) -> dict:
    """One XLA:CPU device per core for a single-process run of `configs`
    (`cbsa_jax.training.configure_host_devices`, for all their train and eval batch sizes), so
    that the default mesh, every device on `data`, splits each batch over the cores. Call it
    before JAX starts (the first device query). A mesh laid out by hand is left with the devices
    JAX gives, and so is an accelerator."""
    default = config_lib.DEFAULT_MESH
    if any(c.mesh[axis] != size for c in configs for axis, size in default.items()):
        return {"applied": False, "devices": None, "reason": "config.mesh is laid out by hand"}
    return training.configure_host_devices(
        [b for c in configs for b in (c.batch_size, c.eval_batch_size or c.batch_size)])


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A (data, fsdp, seq, model) mesh over all devices (or `devices`), GSPMD-style Auto axes.

    In a single process, a mesh with no -1 axis that needs fewer devices than there are uses
    the first ones (with a note); across processes every device must be used.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = [config.mesh[a] for a in AXES]
    wanted = int(np.prod(sizes))
    if -1 not in sizes and wanted < len(devices) and jax.process_count() == 1:
        print(f"note: config.mesh uses {wanted} of the {len(devices)} devices", flush=True)
        devices = devices[:wanted]
    shape = mesh_shape(config, len(devices))
    batch_ways = shape[0] * shape[1]
    for name in ("batch_size", "eval_batch_size"):
        value = config[name] or config.batch_size
        if value % batch_ways:
            layout = dict(zip(AXES, shape, strict=True))
            raise MeshError(f"config.{name} {value} is not divisible by the {batch_ways} "
                            f"data x fsdp devices of the mesh {layout}")
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(tree, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES):
    """Shardings with `tree`'s structure: each `nnx.Variable` placed by its `logical_axes`
    (optimizer moments inherit them from the parameters), everything else replicated."""
    mesh_axes = dict(mesh.shape)

    def place(x):
        if isinstance(x, nnx.Variable):
            axes = x.get_metadata().get("logical_axes")
            return x.replace(NamedSharding(mesh, logical_to_spec(axes, rules, mesh_axes,
                                                                 x.shape)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(place, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
