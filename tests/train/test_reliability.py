"""Faults: kill -9 (also mid-checkpoint), SIGTERM, corrupt checkpoints, other models, NaNs."""

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import _runs
from tests._configs import CONFIGS, tiny_config
from tests._util import REPO, xla_flags
from train import __main__ as cli
from train import loop
from train.checkpoint import Checkpointer, CheckpointMismatch
from train.metrics import read_jsonl

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("reliability")

RUN = {"model.depth": 1, "batch_size": 256, "num_train_steps": 12, "log_every_steps": 1,
       "eval_every_steps": 6, "checkpoint_every_steps": 2, "warmup_epochs": 0.0,
       "progress": False, "mesh.data": 1}


def _command(workdir, data_dir, **extra):
    flags = {**RUN, "data_dir": data_dir, **extra}
    return [sys.executable, "-m", "train", "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in flags.items()]]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    env["PYTHONPATH"] = REPO
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    return env


@pytest.fixture(scope="module")
def straight(data_dir, env, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    subprocess.run(_command(workdir, data_dir), env=env, cwd=REPO, check=True,
                   capture_output=True)
    return _runs.final_metrics(workdir)


def test_kill_9_anywhere_or_sigterm_then_the_same_command_finishes_the_same_run(
        data_dir, env, straight, tmp_path):
    """Killed mid-checkpoint-write and at a random step, then stopped by SIGTERM (which saves a
    checkpoint at the next step and exits 0), rerunning the same command resumes from the last
    complete checkpoint every time and ends with the metrics of the uninterrupted run."""
    rng = random.Random(0)
    workdir = tmp_path / "killed"
    kills = []
    for attempt in range(3):
        proc = subprocess.Popen(_command(workdir, data_dir), env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        start_steps = _runs.steps_done(workdir)
        deadline = time.time() + 240
        if attempt == 0:  # wait for an asynchronous checkpoint write to be under way
            while time.time() < deadline and proc.poll() is None and not _runs.tmp_checkpoints(
                    workdir):
                time.sleep(0.002)
            kind = "mid-checkpoint"
        else:  # a random number of further steps
            target = start_steps + rng.randint(1, 3)
            while time.time() < deadline and proc.poll() is None and _runs.steps_done(
                    workdir) < target:
                time.sleep(0.01)
            kind = f"after step {_runs.steps_done(workdir)}"
        assert proc.poll() is None, f"the run ended before attempt {attempt}: {kills}"
        if attempt < 2:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills.append(kind)
            continue
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "SIGTERM: saved a checkpoint at step" in out, out
        stopped = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
        assert _runs.steps_done(workdir) == stopped < RUN["num_train_steps"], (stopped, kills)
        assert stopped == _runs.committed_steps(workdir)[-1]
        kills.append(f"SIGTERM {kind}, saved at {stopped}")
    assert kills[0] == "mid-checkpoint"
    finish = subprocess.run(_command(workdir, data_dir), env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert f"checkpoints/{stopped}" in finish.stdout  # resumed from the SIGTERM's checkpoint
    ours = _runs.final_metrics(workdir)
    assert set(ours) == set(straight), kills
    for key, (loss, acc) in straight.items():
        assert ours[key][0] == pytest.approx(loss, abs=1e-6), (key, kills)
        assert ours[key][1] == pytest.approx(acc, abs=1e-6), (key, kills)


def _tiny_state(value: float, shape=(3, 2)):
    return {"w": jnp.full(shape, value, jnp.float32), "step": jnp.asarray(int(value))}


def _target(shape=(3, 2)):
    return {"w": jax.ShapeDtypeStruct(shape, jnp.float32),
            "step": jax.ShapeDtypeStruct((), jnp.int32)}


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path), keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _tiny_state(step), {"step": step})
    ckpt.wait()
    _runs.corrupt_checkpoint(tmp_path / "3")  # damage the newest
    with caplog.at_level(logging.WARNING):
        state, meta, step = ckpt.restore(_target())
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(state["w"], np.full((3, 2), 2.0))
    assert any("checkpoints" in r.getMessage() or "cannot be restored" in r.getMessage()
               for r in caplog.records)
    # a checkpoint directory that lost its files altogether
    shutil.rmtree(tmp_path / "2" / "state")
    with caplog.at_level(logging.WARNING):
        _, _, step = ckpt.restore(_target())
    assert step == 1
    ckpt.close()


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    ckpt.save(1, _tiny_state(1.0), {"step": 1})
    ckpt.wait()
    with pytest.raises(CheckpointMismatch, match=r"w: checkpoint \(3, 2\), model \(4, 2\)"):
        ckpt.restore(_target((4, 2)))
    ckpt.close()


def test_training_a_different_model_in_a_used_workdir_exits_2(data_dir, tmp_path, capsys):
    loop.run(tiny_config(data_dir=data_dir, num_train_steps=1, checkpoint_every_steps=1),
             str(tmp_path))
    code = cli.main(["--workdir", str(tmp_path), f"--config.data_dir={data_dir}",
                     "--config.model.depth=2", "--config.mesh.data=1", "--config.progress=False"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "does not match the model" in err[0] and "blocks/1" in err[0]


def test_a_non_finite_step_is_skipped_and_training_goes_on(data_dir):
    config = tiny_config(data_dir=data_dir)
    exp = loop.experiment(config, num_classes=10, channels=1, image_size=8, steps_per_epoch=10,
                          devices=jax.devices()[:1])
    state = exp.task.init(jax.random.key(0))
    step = jax.jit(exp.task.train_step)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(32, 8, 8, 1)), jnp.float32)
    labels = jnp.arange(32, dtype=jnp.int32) % 10
    bad = images.at[3, 2, 2, 0].set(jnp.nan)
    after_bad, metrics = step(state, {"image": bad, "label": labels})
    assert int(metrics["nonfinite"]) == 1 and int(after_bad.step) == 1
    for a, b in zip(jax.tree.leaves(after_bad.params), jax.tree.leaves(state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    after_good, metrics = step(after_bad, {"image": images, "label": labels})
    assert int(metrics["nonfinite"]) == 0 and int(after_good.step) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after_good.params),
                                                          jax.tree.leaves(state.params),
                                                          strict=True))


def test_nonfinite_stop_names_the_step_and_exits_3(data_dir, tmp_path, capsys):
    # std ~ 0 turns every pixel into +-inf: the very first step is non-finite
    code = cli.main(["--workdir", str(tmp_path), f"--config.data_dir={data_dir}",
                     "--config.std=(1e-45,)", "--config.nonfinite=stop", "--config.model.depth=1",
                     "--config.mesh.data=1", "--config.progress=False",
                     "--config.num_train_steps=3", "--config.log_every_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "non-finite loss or gradient at step 1" in err[0]


def test_a_non_finite_evaluation_is_never_the_best(data_dir, tmp_path):
    summary = loop.run(tiny_config(data_dir=data_dir, std=(1e-45,), num_train_steps=2,
                                   eval_every_steps=1), str(tmp_path))
    assert summary["best_accuracy"] is None
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    assert ckpt.best_step() is None and ckpt.all_steps() == [1, 2]
    ckpt.close()
    lines = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if m["split"] == "train"]
    assert all(m["nonfinite_steps"] == 1 for m in lines)


@pytest.mark.parametrize("args,message", [
    (["--config.data_dir=/dev/null/tfds", "--config.input=tfds"],
     "config.data_dir: cannot prepare 'digits'"),
    (["--config.model.name=cbt_mega"], "config.model.name must be one of"),
    (["--config.mesh.data=16"], "needs 16 devices"),
    (["--config.num_epochs"], "needs a value"),
])
def test_more_bad_command_lines_exit_2(data_dir, tmp_path, capsys, args, message):
    # the prepared data_dir: a fresh machine would otherwise generate digits (progress on stderr)
    data = [] if args[0].startswith("--config.data_dir") else [f"--config.data_dir={data_dir}"]
    code = cli.main(["--workdir", str(tmp_path), *data, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_last_n_and_the_best_checkpoints_are_kept(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step, accuracy in zip(range(1, 7), [0.1, 0.9, 0.2, float("nan"), 0.3, None], strict=True):
        metrics = None if accuracy is None else {"accuracy": accuracy}
        ckpt.save(step, _tiny_state(step), {"step": step}, metrics=metrics)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.best_step() == 2
    state, meta, step = ckpt.restore(_target())
    assert step == 6 and int(state["step"]) == 6
    ckpt.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "language"])
def test_every_task_survives_kill_9_sigterm_and_a_corrupt_checkpoint(task, task_runs, tmp_path,
                                                                     caplog):
    """The same command, killed with SIGKILL while a checkpoint is being written, then stopped
    by SIGTERM, then resumed past a corrupted newest checkpoint, ends with every metric of the
    uninterrupted run (the `task_runs` reference)."""
    workdir, logs = tmp_path / "run", tmp_path
    command = _runs.train_command(workdir, task_runs.flags(task), "--config",
                                  os.path.join(CONFIGS, _runs.TASK_RUNS[task][0]))
    keys = ("loss", "miou" if task == "segmentation" else "bits_per_byte")
    reference = _runs.final_metrics(task_runs[task], keys)

    proc = _runs.start(command, logs / "killed.log", _runs.env())
    caught = _runs.wait_for(lambda: _runs.tmp_checkpoints(workdir), [proc])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, (logs / "killed.log").read_text()

    first = _runs.line_count(workdir)
    proc = _runs.start(command, logs / "term.log", _runs.env())
    _runs.wait_for(lambda: _runs.committed_steps(workdir) and max(
        _runs.train_steps(workdir, first), default=0) > _runs.committed_steps(workdir)[-1], [proc])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=240)
    out = (logs / "term.log").read_text()
    assert proc.returncode == 0 and "SIGTERM: saved a checkpoint at step" in out, out
    stopped = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    steps = _runs.committed_steps(workdir)
    assert stopped == steps[-1] < _runs.TASK_STEPS["num_train_steps"] and len(steps) >= 2, steps

    _runs.corrupt_checkpoint(workdir / "checkpoints" / str(stopped))
    first = _runs.line_count(workdir)
    with caplog.at_level(logging.WARNING):
        summary = loop.run(task_runs.config(task), str(workdir))
    assert any(f"checkpoints/{stopped} cannot be restored" in r.getMessage()
               for r in caplog.records)
    assert _runs.train_steps(workdir, first)[0] == steps[-2] + 1  # the previous checkpoint's
    assert summary["step"] == _runs.TASK_STEPS["num_train_steps"]
    ours = _runs.final_metrics(workdir, keys)
    assert set(ours) == set(reference)
    for key, values in reference.items():
        assert ours[key] == pytest.approx(values, abs=1e-6), key


def test_a_checkpoint_of_another_task_is_one_error(task_runs, tmp_path, capsys):
    workdir = tmp_path / "segmentation"
    shutil.copytree(task_runs["segmentation"], workdir)
    before = sorted(os.listdir(workdir / "checkpoints"))
    code = cli.main(["--config", os.path.join(CONFIGS, "lm_stdlib.py"), "--workdir",
                     str(workdir), *task_runs.flags("language")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: checkpoint {workdir}/checkpoints/8 holds a 'segmentation' "
                             f"run of 'cbt_nano', the config trains 'language' with "
                             f"'lm_cbsa_nano'")
    assert sorted(os.listdir(workdir / "checkpoints")) == before
