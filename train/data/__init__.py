"""The training program's input: `open_input(config)` -> an `Input`, one interface over two
pipelines. Importing this package imports no TensorFlow.

* `config.input = "memory"` (:mod:`train.data.memory`): a shipped data set (digits, mnist5k,
  shapes, shapes64, stdlib_bytes, and their configs such as `shapes/small`) held in device
  memory, shuffled and augmented on the devices by JAX. Runs where TensorFlow is not installed.
* `config.input = "tfds"` (:mod:`train.data.tfds_pipeline`): any TFDS dataset (ImageNet, ADE20K,
  the shipped ones prepared as TFDS builders) through tf.data on the host. Imports TensorFlow,
  only when this input is opened.

Both give the same batches-per-epoch, sharding and resumption semantics (see `Input`);
:mod:`train.data.common` holds what they share.
"""

from __future__ import annotations

import ml_collections

from train.data.common import DataError, DataSpec, Input, device_batch, normalize
from train.data.memory import MemoryInput, resize_images, resize_labels

__all__ = ["open_input", "Input", "DataError", "DataSpec", "MemoryInput", "normalize",
           "device_batch", "resize_images", "resize_labels"]


def open_input(config: ml_collections.ConfigDict, *, process_index: int = 0,
               process_count: int = 1) -> Input:
    """The input `config.input` names, for this process of `process_count`.

    Raises `ConfigError` or `DataError` (one line, naming the field) for a dataset that input
    cannot read; `DataError` for `config.input = "tfds"` where TensorFlow is not installed.
    """
    if config.input == "memory":
        return MemoryInput(config, process_index=process_index, process_count=process_count)
    try:  # TensorFlow and TFDS: an optional heavy dependency, imported for this input only
        from train.data import tfds_pipeline
    except ImportError as e:
        raise DataError(f"config.input='tfds' needs TensorFlow and tensorflow-datasets "
                        f"(pip install 'cbsa_jax[train]'): {e}; the shipped data sets also run "
                        f"with config.input='memory'") from None
    return tfds_pipeline.TFDSInput(config, process_index=process_index,
                                   process_count=process_count)
