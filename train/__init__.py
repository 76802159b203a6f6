"""The training program (`python -m train`) and its tools (`train.tools`).

config -> data -> mesh -> state -> loop -> checkpoints: `train.config`, `train.data` (the input:
in device memory, or TFDS and tf.data; the data sets shipped here are in `train.datasets`),
`train.mesh`, `train.tasks` (classification, segmentation, language; the train and eval steps
every task shares, and their compilation, are `cbsa_jax.training`'s), `train.loop`,
`train.checkpoint`.
"""

import os

# TensorFlow (the input pipeline) reads its log level when it is first imported, which any
# module of this package may do: quiet its C++ start-up messages unless the user asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
