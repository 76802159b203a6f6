"""The embedded default: a CBT on scikit-learn's 8x8 handwritten digits, in minutes on a CPU.

`python -m train` (no arguments) runs this. 1,437 training and 360 test images; the patch grid is
4 x 4 (patches of 2 x 2 pixels) pooled to 2 x 2 = 4 representatives per head.
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.input = "memory"  # held and augmented on the devices; no TensorFlow
    c.image_size = 8
    c.mean, c.std = (0.25,), (0.35,)
    c.augment = "translate"
    c.translate = 1
    c.model.name = "cbt_nano"
    c.model.patch_size = 2
    c.model.cells = (2, 2)
    c.batch_size = 64
    c.num_epochs = 100
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_epochs = 3.0
    c.weight_decay = 0.05
    c.label_smoothing = 0.1
    c.log_every_steps = 23
    c.eval_every_steps = 115  # every 5 epochs (23 steps each)
    c.checkpoint_every_steps = 230
    return c
