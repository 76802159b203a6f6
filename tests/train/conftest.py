"""Fixtures for the training-program tests: a prepared digits dataset."""

import pytest

from train.datasets import builders


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with the shipped `digits` builder prepared (once per session)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    builders.prepare("digits", path)
    return path
