"""The tasks `python -m train` trains, as sibling modules, and their registry.

Each module defines one `cbsa_jax.training.TaskDef` factory `(config, *, num_classes, channels,
image_size, dtype) -> TaskDef`: `classification` (images -> a class), `segmentation` (images ->
per-pixel classes), `language` (bytes -> the next byte). `config.task` picks one.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cbsa_jax.training import TaskDef
from train.tasks import classification, language, segmentation

__all__ = ["TASKS", "task_def", "classification", "language", "segmentation"]

#: config.task -> the factory of its `TaskDef` (each module's function of the task's name).
TASKS: dict[str, Callable[..., TaskDef]] = {
    "classification": classification.classification,
    "segmentation": segmentation.segmentation,
    "language": language.language,
}


def task_def(config: ml_collections.ConfigDict, **kwargs) -> TaskDef:
    """The `TaskDef` of `config.task`, built with the dataset's facts in `kwargs`."""
    if config.task not in TASKS:
        raise ValueError(f"config.task must be one of {sorted(TASKS)}, got {config.task!r}")
    return TASKS[config.task](config, **kwargs)
