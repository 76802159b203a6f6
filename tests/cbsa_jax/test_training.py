"""`cbsa_jax.training`: the train step every task shares, its flat compiled form, the compiler
options and the host allocator."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cbsa_jax import training
from cbsa_jax.models import create
from cbsa_jax.reporting import HostCPU
from tests._models import fill_on_host
from tests._util import REPO, xla_flags


def _model(rng, **kw):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create(
        "cbt_nano", num_classes=5, image_size=16, patch_size=4, cells=(2, 2), depth=1, **kw)))
    return nnx.merge(graphdef, fill_on_host(state, rng))


def _batch(rng, n=4):
    return {"image": jnp.asarray(rng.normal(size=(n, 16, 16, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 5, n), jnp.int32)}


def test_the_flat_compiled_step_equals_the_plain_step(rng):
    model = _model(rng)
    task = training.make_task(training.classification(lambda r: nnx.clone(model), num_classes=5),
                              optax.adamw(1e-3))
    _, params, stats = nnx.split(model, nnx.Param, ...)
    batch = _batch(rng)
    plain_state, plain_metrics = jax.jit(task.train_step)(task.state_from(params, stats), batch)
    # XLA's default options, as the plain jit: the same program, so the same numbers
    step = training.compile_step(task.train_step, task.abstract_state, options={})
    leaves = step.flatten(task.state_from(params, stats))
    assert all(isinstance(x, jax.Array) for x in leaves)
    leaves, metrics = step(leaves, batch)
    for a, b in zip(jax.tree.leaves(plain_state), jax.tree.leaves(step.unflatten(leaves)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(metrics[key], plain_metrics[key], rtol=1e-6)
    assert int(step.unflatten(leaves).step) == 1
    assert len(step._compiled) == 1  # one batch signature, compiled once
    step(leaves, batch)
    assert len(step._compiled) == 1
    with pytest.raises(ValueError, match="leaves: expected"):
        step.unflatten(leaves[:-1])


def test_classification_step_is_the_training_programs_step(rng):
    """The benchmarks' helper builds the same step: its loss is the cross-entropy of the model's
    own logits, and the update moves the parameters."""
    model = _model(rng)
    batch = _batch(rng)
    step, leaves = training.classification_step(model, optax.adamw(1e-3), num_classes=5)
    before = [np.asarray(x) for x in leaves]
    logits = model(batch["image"])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    leaves, metrics = step(leaves, batch)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, leaves, strict=True))


def test_a_non_finite_step_changes_nothing_but_the_counter(rng):
    model = _model(rng)
    step, leaves = training.classification_step(model, optax.adamw(1e-3), num_classes=5)
    before = step.unflatten([np.asarray(x) for x in leaves])
    batch = _batch(rng)
    batch["image"] = batch["image"].at[0, 0, 0, 0].set(jnp.nan)
    leaves, metrics = step(leaves, batch)
    after = step.unflatten(leaves)
    assert int(metrics["nonfinite"]) == 1 and int(after.step) == 1
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compiler_options_follow_the_backend_and_the_instruction_set():
    avx512 = HostCPU("GenuineIntel", "x", ("avx2", "fma", "avx512f"))
    epyc = HostCPU("AuthenticAMD", "y", ("avx2", "fma", "avx512f"))
    old = HostCPU("GenuineIntel", "z", ("avx2",))
    assert training.compiler_options("cpu", avx512) == training.YNN_WITHOUT_CONVOLUTION
    assert training.compiler_options("cpu", epyc) == training.compiler_options("cpu", avx512)
    assert training.compiler_options("cpu", old) == {}
    assert training.compiler_options("gpu", avx512) == {}
    assert training.compiler_options("tpu", epyc) == {}


def test_make_task_checks_the_ema_decay():
    with pytest.raises(ValueError, match="ema_decay"):
        training.make_task(training.classification(lambda r: None, num_classes=2),
                           optax.sgd(0.1), ema_decay=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        training.classification(lambda r: None, num_classes=0)


_FAULTS = textwrap.dedent("""
    import resource, sys
    from cbsa_jax import training
    applied = training.configure_host_allocator()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x) * x[::-1]))  # 48 MB temporaries per call
    x = jnp.ones((12 << 20,), jnp.float32)
    for _ in range(3):
        f(x).block_until_ready()
    faults = 0
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(applied["applied"], faults // 8)
""")


def _run_script(script: str, allocator: str = "train") -> list[str]:
    """The words `script` prints, run in a fresh process (the allocator is set once per process)
    with `CBSA_JAX_ALLOCATOR=allocator`, glibc's tunables and `XLA_FLAGS` unset (the scripts'
    programs are a few large operations, fast to compile and slow to run at the tests' LLVM
    optimisation level 0)."""
    env = {**os.environ, "PYTHONPATH": REPO, "CBSA_JAX_ALLOCATOR": allocator,
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    env.pop("GLIBC_TUNABLES", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, check=True).stdout.split()


def _faults(allocator: str) -> tuple[str, int]:
    out = _run_script(_FAULTS, allocator)
    return out[-2], int(out[-1])


# glibc's malloc and free, called directly: blocks of a chosen size, no Python allocator between
_LIBC = """
    import ctypes, ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
"""

_LARGE_BLOCK = textwrap.dedent(_LIBC + """
    import resource
    from cbsa_jax import training
    applied = training.configure_host_allocator()
    size = 5 << 28  # 1.25 GiB: above any threshold below it, e.g. the 1 GiB this once used
    def use():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    use()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    use()
    print(applied["applied"], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_allocator_setting_keeps_a_block_larger_than_a_gigabyte():
    """A train step's temporaries can exceed a gigabyte (2.4 GB: CBT-T at batch 64); freed, they
    stay in the heap and the next step faults nothing in. With glibc's trimming they are handed
    back and faulted in again page by page (1.25 GiB: 327,680 faults)."""
    out = _run_script(_LARGE_BLOCK)
    assert out[-2] == "True"
    assert int(out[-1]) < (5 << 28) / 4096 / 20, out


_RELEASE = textwrap.dedent(_LIBC + """
    from cbsa_jax import training
    print(training.release_host_memory())  # before the setting: nothing to do
    applied = training.configure_host_allocator()
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    size = 1 << 30
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    kept = resident()
    released = training.release_host_memory()
    print(applied["applied"], released, kept - resident())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_release_host_memory_hands_the_kept_heap_back():
    """What the setting keeps between steps goes back to the system on request (between two
    programs of one process), and nothing happens where the setting is not applied."""
    out = _run_script(_RELEASE)
    assert out[0] == "False" and out[1:3] == ["True", "True"], out
    assert int(out[3]) > (1 << 30) * 0.9, out  # the freed gigabyte is no longer resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_allocator_setting_stops_the_per_call_page_faults():
    """With glibc's defaults a call that needs large temporaries maps them afresh and faults them
    in page by page at every call; with the training program's setting the memory is mostly
    reused."""
    applied, tuned = _faults("train")
    skipped, default = _faults("default")
    assert applied == "True" and skipped == "False"
    assert default > (64 << 20) / 4096  # more than a 64 MB buffer faulted in, at every call
    assert tuned < default / 3


def test_host_device_count_divides_every_batch_within_the_cores():
    assert training.host_device_count([100, 100], 2) == 2
    assert training.host_device_count([100, 50], 16) == 5  # at most 8, dividing both
    assert training.host_device_count([8, 64], 32) == training.MAX_HOST_DEVICES == 8
    assert training.host_device_count([6], 4) == 3
    assert training.host_device_count([7, 8], 2) == 1
    assert training.host_device_count([], 2) == 2
    with pytest.raises(ValueError, match="batch_sizes must be positive"):
        training.host_device_count([0], 2)
    with pytest.raises(ValueError, match="cores must be a positive integer"):
        training.host_device_count([8], 0)


def test_configure_host_devices_leaves_a_count_set_elsewhere_alone(monkeypatch):
    assert "xla_force_host_platform_device_count" in os.environ["XLA_FLAGS"]  # conftest's 8
    before = len(jax.devices())
    assert training.configure_host_devices([8]) == {
        "applied": False, "devices": None, "reason": "XLA_FLAGS sets the count"}
    monkeypatch.setenv("XLA_FLAGS", "")
    assert training.configure_host_devices([8])["reason"] == "JAX's backends have started"
    assert len(jax.devices()) == before
    monkeypatch.setenv(training.HOST_DEVICES_ENV, "two")
    with pytest.raises(ValueError, match="CBSA_JAX_HOST_DEVICES must be a positive integer"):
        training.configure_host_devices([8])


_SPLIT = textwrap.dedent("""
    import train
    from train import config as config_lib, mesh
    from cbsa_jax import training
    import jax
    config = config_lib.base_config()
    config.batch_size, config.eval_batch_size = 100, 50
    print(mesh.split_host(config)["applied"], len(jax.devices()), training.usable_cores())
""")


def test_a_fresh_process_splits_the_cpu_into_one_device_per_core():
    """What `python -m train` does before JAX starts: as many CPU devices as the cores, at most
    8, dividing the train and eval batches; `CBSA_JAX_HOST_DEVICES` sets the count."""
    def run(**extra):
        env = {k: v for k, v in os.environ.items() if k != training.HOST_DEVICES_ENV}
        env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(), **extra)
        return subprocess.run([sys.executable, "-c", _SPLIT], env=env, capture_output=True,
                              text=True, timeout=300, check=True).stdout.split()

    applied, devices, cores = run()
    assert applied == "True"
    assert int(devices) == training.host_device_count([100, 50], int(cores))
    out = run(**{training.HOST_DEVICES_ENV: "3"})
    assert out[:2] == ["True", "3"], out


def test_the_benchmarks_step_on_several_devices_is_the_one_device_step(rng):
    """`classification_step(devices=...)` splits the batch over the devices as the training
    program's default mesh does: the same loss and update as on one device."""
    batch = _batch(rng, 8)
    one, one_leaves = training.classification_step(_model(np.random.default_rng(1)),
                                                   optax.adamw(1e-3), num_classes=5)
    devices = training.step_devices(8)
    assert len(devices) == 8  # conftest's 8 CPU devices, all dividing the batch
    split, split_leaves = training.classification_step(_model(np.random.default_rng(1)),
                                                       optax.adamw(1e-3), num_classes=5,
                                                       devices=devices)
    assert split.batch_sharding.mesh.devices.size == 8
    for _ in range(3):  # the loss of the third step sees the first two updates
        one_leaves, one_metrics = one(one_leaves, batch)
        split_leaves, split_metrics = split(split_leaves,
                                            jax.device_put(batch, split.batch_sharding))
        np.testing.assert_allclose(split_metrics["loss"], one_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(split_metrics["grad_norm"], one_metrics["grad_norm"],
                                   rtol=1e-4)
    assert training.step_devices(6)[-1] == jax.devices()[5]  # 6 of the 8 divide a batch of 6
