"""Fixtures for the training-program tests: a prepared digits dataset and small configs."""

import os

import pytest

from train import config as config_lib


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with the shipped `digits` builder prepared (once per session)."""
    from train import datasets

    path = str(tmp_path_factory.mktemp("tfds"))
    datasets.prepare("digits", path)
    return path


def quick_config(name: str, **overrides):
    """`configs/NAME` made quick to test: progress off, one data shard, no warmup, logs every
    step, no evaluation or checkpoint before step 1000 unless `overrides` (dotted names, e.g.
    `**{"model.depth": 1}`) say otherwise. Validated."""
    c = config_lib.load(os.path.join(os.path.dirname(config_lib.DEFAULT_CONFIG), name))
    defaults = {"log_every_steps": 1, "eval_every_steps": 1000, "checkpoint_every_steps": 1000,
                "warmup_epochs": 0.0, "mesh.data": 1, "progress": False}
    for dotted, value in {**defaults, **overrides}.items():
        node, parts = c, dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config_lib.validate(c)


def small_config(data_dir: str, **overrides):
    """A one-block CBT on digits that compiles and steps in seconds."""
    return quick_config("digits.py", **{"data_dir": data_dir, "model.depth": 1, "batch_size": 32,
                                        "num_train_steps": 3, **overrides})
