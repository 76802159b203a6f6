"""Fine-tune a pretrained `vit_timm_nano` (configs/mnist_vit_timm.py) with the adapted attention.

    python -m train.tools.adapt_vit --checkpoint vit_nano.safetensors \\
        --config configs/mnist_adapt.py --workdir runs/mnist_adapt
    python -m train --config configs/mnist_adapt.py --workdir runs/mnist_adapt

Every block runs the pooled-query (agent) attention on the pretrained q, k, v: queries pooled to
8 x 8 = 64 representatives, linear in the 197 tokens. Pass `--config.model.attention=softmax`
(and `--attention softmax` to `train.tools.adapt_vit`) for the same-budget softmax baseline.
"""

from configs.mnist_vit_timm import get_config as pretrain_config


def get_config():
    c = pretrain_config()
    c.model.attention = "agent"
    c.num_epochs = 3
    c.learning_rate = 5e-4
    c.warmup_epochs = 0.5
    c.eval_every_steps = 40  # every epoch
    c.checkpoint_every_steps = 40
    return c
