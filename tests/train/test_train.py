"""`python -m train`: steps, exact resumption, TFDS datasets, meshes, errors. (Its jobs of several
processes: test_distributed.py.)"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests._configs import tiny_config
from tests._util import REPO
from train import __main__ as cli
from train import loop
from train.metrics import read_jsonl


def _lines(workdir, split="train"):
    return [m for m in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if m["split"] == split]


def _losses(workdir):
    return {m["step"]: m["loss"] for m in _lines(workdir)}


def test_metrics_lines_and_summary(data_dir, tmp_path):
    summary = loop.run(tiny_config(data_dir=data_dir, eval_every_steps=2), str(tmp_path))
    assert summary["step"] == 3 and summary["stopped_by"] == "finished"
    train, test = _lines(tmp_path), _lines(tmp_path, "test")
    assert [m["step"] for m in train] == [1, 2, 3]
    for m in train:
        assert {"step", "split", "loss", "accuracy", "lr", "images_per_sec"} <= set(m)
        assert m["images_per_sec"] > 0 and 0 <= m["accuracy"] <= 1
    assert [m["step"] for m in test] == [2, 3]
    assert all(m["examples"] == 360 and {"loss", "accuracy", "top5"} <= set(m) for m in test)
    assert os.listdir(tmp_path / "tensorboard")  # event files


@pytest.mark.parametrize("input_", ["memory", "tfds"])
def test_resume_continues_exactly(data_dir, tmp_path, input_):
    """Stopping at step 3 and resuming gives the run that never stopped, across an epoch
    boundary (5 steps per epoch here): same losses, same parameters."""
    config = tiny_config(data_dir=data_dir, batch_size=256, num_train_steps=7, input=input_)
    straight = tmp_path / "straight"
    loop.run(config, str(straight))
    resumed = tmp_path / "resumed"
    first = loop.run(config, str(resumed), stop_at=3)
    assert first["stopped_by"] == "stop_at" and first["step"] == 3
    assert sorted(os.listdir(resumed / "checkpoints")) == ["3"]
    summary = loop.run(config, str(resumed))
    assert summary["step"] == 7
    a, b = _losses(straight), _losses(resumed)
    assert [b[s] for s in range(1, 8)] == pytest.approx([a[s] for s in range(1, 8)], abs=1e-6)
    assert len(set(a.values())) == 7  # the losses differ step to step: nothing is replayed


def test_a_run_restarted_with_the_same_command_picks_up_where_it_stopped(data_dir, tmp_path):
    config = tiny_config(data_dir=data_dir, batch_size=256, num_train_steps=7,
                         checkpoint_every_steps=3)
    first = loop.run(tiny_config(data_dir=data_dir, batch_size=256, num_train_steps=7,
                                  checkpoint_every_steps=3), str(tmp_path))
    assert first["step"] == 7
    again = loop.run(config, str(tmp_path))  # finished: nothing left to do
    assert again["step"] == 7 and len(_lines(tmp_path)) == 7


@pytest.mark.parametrize("name,augment,resume", [("cifar10", "flip", False),
                                                  ("imagenet2012", "crop_flip", True)])
def test_one_step_and_resume_on_mock_tfds_data(tmp_path, name, augment, resume):
    """Any TFDS classification dataset by name, here through tfds.testing.mock_data."""
    mock_dir = str(tmp_path / "tfds")
    kw = dict(dataset=name, image_size=32, input="tfds",
              augment=augment, eval_crop_fraction=0.875, batch_size=8,
              num_train_steps=2 if resume else 1, checkpoint_every_steps=1,
              eval_split="validation" if "imagenet" in name else "test",
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    kw["model.patch_size"] = 4
    config = tiny_config(data_dir=mock_dir, **kw)
    with tfds.testing.mock_data(num_examples=24):
        first = loop.run(config, str(tmp_path / "run"), stop_at=1 if resume else None)
        assert first["step"] == 1
        if resume:  # the data iterator of a TFDS-hosted dataset resumes too (the same program)
            first = loop.run(config, str(tmp_path / "run"))
            assert first["step"] == 2
        assert first["final_eval"]["examples"] == 24 and np.isfinite(first["final_eval"]["loss"])
    assert [m["step"] for m in _lines(tmp_path / "run")] == ([1, 2] if resume else [1])


def test_sharded_meshes_give_the_single_device_loss(data_dir, tmp_path):
    assert len(jax.devices()) == 8
    kw = dict(optimizer="adamw", num_train_steps=3)
    loop.run(tiny_config(data_dir=data_dir, **kw), str(tmp_path / "single"))
    single = _losses(tmp_path / "single")
    # one mesh with every axis: the batch over data x fsdp, parameters over fsdp and model
    for i, mesh in enumerate([dict(data=2, fsdp=2, model=2)]):
        sharded = tmp_path / f"sharded{i}"
        loop.run(tiny_config(data_dir=data_dir, **kw, **{f"mesh.{k}": v for k, v in mesh.items()}),
                 str(sharded))
        losses = _losses(sharded)
        assert sorted(single) == sorted(losses) == [1, 2, 3], mesh
        assert max(abs(single[s] - losses[s]) for s in single) <= 1e-5, mesh


def test_eval_only_evaluates_the_latest_checkpoint(data_dir, tmp_path):
    trained = loop.run(tiny_config(data_dir=data_dir, num_train_steps=2), str(tmp_path))
    summary = loop.run(tiny_config(data_dir=data_dir, eval_only=True), str(tmp_path))
    assert summary["step"] == 2
    assert summary["eval"]["accuracy"] == pytest.approx(trained["final_eval"]["accuracy"])
    assert _lines(tmp_path, "test")[-1]["step"] == 2


def _main(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args,message", [
    (["--config.num_epochz=3"], "unknown config field 'num_epochz'"),
    (["--config.batch_size=many"], "--config.batch_size=many"),
    (["--config.optimizer=adam"], "config.optimizer must be one of"),
    (["--config", "configs/nope.py"], "--config: no config file at configs/nope.py"),
    (["--config.dataset=no_such_dataset_xyz"], "unknown dataset 'no_such_dataset_xyz'"),
    (["--config.dataset=no_such_dataset_xyz", "--config.input=tfds"],
     "unknown dataset 'no_such_dataset_xyz' (not a local builder"),
    (["--config.augment=crop_flip"], "config.augment must be one of ('none', 'flip', "
                                     "'translate') with config.input='memory'"),
    (["--config.input=host"], "config.input must be one of ('tfds', 'memory')"),
    (["--config.image_size=9"], "must be divisible by the patch size 2"),
    (["--config.batch_size=36", "--config.mesh.data=8"], "not divisible by the 8"),
    (["--config.data_dir=/nonexistent/dir", "--config.dataset=mnist", "--config.input=tfds"],
     "cannot prepare 'mnist'"),
])
def test_bad_configs_exit_2_with_one_line(data_dir, tmp_path, capsys, args, message):
    code, err = _main(["--workdir", str(tmp_path), f"--config.data_dir={data_dir}", *args],
                      capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_the_cli_trains_and_says_where(data_dir, tmp_path, capsys):
    code = cli.main(["--workdir", str(tmp_path), f"--config.data_dir={data_dir}",
                     "--config.num_train_steps=2", "--config.model.depth=1",
                     "--config.progress=False", "--config.mesh.data=1"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"in {tmp_path}" in out.splitlines()[0]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["workdir"] == str(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_importing_train_sets_malloc_before_threads_start_and_keeps_one_arena():
    """`python -m train`'s imports apply the allocator setting (in `train/__init__.py`) before
    the libraries its modules import start threads, which would otherwise keep malloc arenas of
    their own: after computations on XLA's threads the process has one arena (16 when the
    setting comes after the imports)."""
    code = ("import ctypes, os, tempfile\n"
            "import train.__main__\n"
            "from cbsa_jax import training\n"
            "import jax, jax.numpy as jnp\n"
            "for _ in range(3):\n"
            "    jax.jit(lambda x: jnp.sort(x) @ jnp.ones((512, 512)))(jnp.ones((4096, 512)))"
            ".block_until_ready()\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.fdopen.restype = ctypes.c_void_p\n"
            "with tempfile.TemporaryFile('w+') as f:\n"
            "    stream = ctypes.c_void_p(libc.fdopen(os.dup(f.fileno()), b'w'))\n"
            "    libc.malloc_info(0, stream); libc.fclose(stream)\n"
            "    f.seek(0); heaps = f.read().count('<heap nr=')\n"
            "print(training.configure_host_allocator()['applied'], heaps)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True,
                         env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.split() == ["True", "1"], out.stderr[-2000:]
