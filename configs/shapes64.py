"""CBT on the generated `shapes64` scenes: a main shape and up to two smaller distractors, 64 px.

12,000 training and 1,000 test scenes (no download); the label is the class of the shape with the
most visible pixels (the main one), and the per-pixel class map (`segmentation`) and its
foreground (`mask`, used by `python -m train.tools.attention_jaccard`) come with every image. The
conv stem embeds 8 x 8 patches: an 8 x 8 grid (64 patches + cls = 65 tokens) pooled to 4 x 4 = 16
representatives per head. Swap the model with `--config.model.name=crate_nano`, `tost_nano` or
`vit_nano` for the same-budget baselines (`python -m experiments.compare` does it for all of
them).

Recipe (one for every model): 60 epochs of 240 steps of 50 images, AdamW 1e-3 after a one-epoch
warmup, cosine decay, random flips, label smoothing 0.1; evaluated every 3 epochs, so that
`experiments.compare` can check the plateau (test accuracy moving by less than half a point over
the last fifth). On shapes64 2.0.0 30 epochs left the slowest seeds still climbing over the last
fifth; shapes64 3.0.0 (main shape off centre) is run for twice as long. What the recipe gives each
model is measured by `python -m experiments.compare` and recorded in docs/results/shapes64.json
(the tables: docs/results/README.md).
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
    c.model.patch_size = 8
    c.model.cells = (4, 4)
    c.batch_size = 50
    c.num_epochs = 60
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.warmup_epochs = 1.0
    c.weight_decay = 0.05
    c.label_smoothing = 0.1
    c.log_every_steps = 20
    c.eval_every_steps = 720  # every 3 epochs (240 steps each)
    c.checkpoint_every_steps = 720
    return c
