"""CBT on the generated `shapes` dataset: one of 5 shapes on a textured background, 32 x 32 RGB.

10,000 training and 2,000 test images with the shape's pixel mask (used by
`python -m train.tools.attention_jaccard`). A convolutional stem embeds 8 x 8 patches: a 4 x 4
grid with one representative cell per patch (16 per head; `--config.model.cells="(2, 2)"` pools
them to 4; docs/training.md compares the two). Swap the model with
`--config.model.name=crate_nano` or `vit_nano` for the same-budget baselines.
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "shapes"
    c.input = "memory"  # held and augmented on the devices; no TensorFlow
    c.image_size = 32
    c.mean, c.std = (0.5,), (0.25,)
    c.augment = "flip"
    c.model.name = "cbt_nano"
    c.model.patch_size = 8
    c.model.cells = (4, 4)
    c.batch_size = 128
    c.num_epochs = 60
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_epochs = 2.0
    c.weight_decay = 0.05
    c.label_smoothing = 0.1
    c.log_every_steps = 78
    c.eval_every_steps = 390
    c.checkpoint_every_steps = 390
    return c
