"""The one way the tests build a small training config.

`tiny_config(name, **overrides)` is `configs/NAME` made quick: a one-block model, batch 32, three
steps, progress bar off, one data shard, no warmup, a log line every step and no evaluation or
checkpoint before step 1000, then `overrides` (dotted names: `**{"model.depth": 2}`), validated.
`tiny_flags(**overrides)` is the same as `--config.FIELD=VALUE` flags, for the command lines.
"""

from __future__ import annotations

import os

from train import config as config_lib

__all__ = ["CONFIGS", "TINY", "tiny_config", "tiny_flags"]

CONFIGS = os.path.dirname(config_lib.DEFAULT_CONFIG)

#: What makes a config quick to test (each test overrides what it needs).
TINY = {"model.depth": 1, "batch_size": 32, "num_train_steps": 3, "log_every_steps": 1,
        "eval_every_steps": 1000, "checkpoint_every_steps": 1000, "warmup_epochs": 0.0,
        "mesh.data": 1, "progress": False}


def tiny_config(name: str = "digits.py", **overrides):
    """`configs/NAME` with `TINY` and then `overrides` applied, validated."""
    config = config_lib.load(os.path.join(CONFIGS, name))
    for dotted, value in {**TINY, **overrides}.items():
        node, parts = config, dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return config_lib.validate(config)


def tiny_flags(**overrides) -> list[str]:
    """`TINY` and `overrides` as `--config.FIELD=VALUE` flags."""
    return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
