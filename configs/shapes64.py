"""CBT on the generated `shapes64` scenes: 1 to 3 shapes of distinct classes, 64 x 64 RGB.

8,000 training and 1,000 test images (no download); the label is the class of the largest
visible shape, and the per-pixel class map (`segmentation`) and its foreground (`mask`, used by
`python -m train.tools.attention_jaccard`) come with every image. The conv stem embeds 4 x 4
patches: a 16 x 16 grid (256 patches + cls) pooled to 8 x 8 = 64 representatives per head. Swap
the model with `--config.model.name=crate_nano`, `tost_nano` or `vit_nano` for the same-budget
baselines (`python -m experiments.compare` does it for all of them).

Recipe (one for every model): 8 epochs of 160 steps of 50 images, AdamW 1e-3 after a one-epoch
warmup, sized so that the four-model comparison fits a CPU budget. The label is hard to learn:
cbt_nano can fit a small subset of the training images, so the data and labels are sound, but at
this budget it does not leave chance. What the recipe gives each model is measured by
`python -m experiments.compare` and recorded in docs/results/shapes64.json (the tables:
docs/results/README.md).
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "shapes64"
    c.input = "memory"  # held and augmented on the devices; no TensorFlow
    c.image_size = 64
    c.mean, c.std = (0.5,), (0.25,)
    c.augment = "flip"
    c.model.name = "cbt_nano"
    c.model.patch_size = 4
    c.model.cells = (8, 8)
    c.batch_size = 50
    c.num_epochs = 8
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.warmup_epochs = 1.0
    c.weight_decay = 0.05
    c.label_smoothing = 0.1
    c.log_every_steps = 20
    c.eval_every_steps = 320  # every 2 epochs (160 steps each)
    c.checkpoint_every_steps = 320
    return c
