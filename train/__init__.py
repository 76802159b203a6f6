"""The training program (`python -m train`) and its tools (`train.tools`).

config -> data -> mesh -> state -> loop -> checkpoints: `train.config`, `train.data` (the input:
in device memory, or TFDS and tf.data; the data sets shipped here are in `train.datasets`),
`train.mesh`, `train.tasks` (classification, segmentation, language; the train and eval steps
every task shares, and their compilation, are `cbsa_jax.training`'s), `train.loop`,
`train.checkpoint`.
"""

import os

from cbsa_jax import training

# TensorFlow (the input pipeline) reads its log level when it is first imported, which any
# module of this package may do: quiet its C++ start-up messages unless the user asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The process's malloc for XLA:CPU's steps, before the libraries this package's modules import
# start threads, which would otherwise keep malloc arenas of their own
# (`cbsa_jax.training.configure_host_allocator`).
training.configure_host_allocator()
