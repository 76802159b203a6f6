"""Fixtures for the training-program tests: prepared data sets, and small finished runs of the
segmentation and language tasks (the reference of the fault tests, and a checkpoint of the wrong
task for the tools' bad-input tests). Nothing may write into a finished run's workdir."""

import pytest

from tests._runs import TaskRuns
from train.datasets import builders


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with the shipped `digits` builder prepared (once per session)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    builders.prepare("digits", path)
    return path


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory):
    return TaskRuns(tmp_path_factory)
