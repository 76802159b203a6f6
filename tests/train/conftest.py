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


def small_config(data_dir: str, **overrides):
    """A one-block CBT on digits that compiles and steps in seconds."""
    c = config_lib.load(os.path.join(os.path.dirname(config_lib.DEFAULT_CONFIG), "digits.py"))
    c.data_dir = data_dir
    c.model.depth = 1
    c.batch_size = 32
    c.num_train_steps = 3
    c.log_every_steps = 1
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.warmup_epochs = 0.0
    c.mesh.data = 1
    c.progress = False
    for dotted, value in overrides.items():
        node, parts = c, dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config_lib.validate(c)
