"""timm's ViT architecture (`vit_timm_nano`) on real MNIST at 197 tokens, softmax attention.

The model `python -m experiments.adapt_mnist` pretrains, saves in timm's layout
(`cbsa_jax.convert.save_timm`) and adapts to the pooled-query attention (`configs/mnist_adapt.py`).
Same data, augmentation and token geometry as `configs/mnist.py` (2 x 2 patches of 28 x 28
digits: 196 patches + cls), a plain patch projection, qkv bias and LayerNorm eps 1e-6 instead of
the conv stem, and a short budget.
"""

from configs.mnist import get_config as mnist_config


def get_config():
    c = mnist_config()
    c.model.name = "vit_timm_nano"
    c.num_epochs = 10
    c.eval_every_steps = 200  # every 5 epochs (40 steps each)
    c.checkpoint_every_steps = 200
    return c
