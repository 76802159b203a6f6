"""CIFAR-10 (TFDS `cifar10`, downloaded by TFDS on first use), CBT-T widths on 4 x 4 patches.

32 x 32 images give an 8 x 8 patch grid pooled to 4 x 4 = 16 representatives per head. The
linear patch embedding replaces the conv stem, which needs patches of 8 or 16.
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "cifar10"
    c.image_size = 32
    c.mean, c.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    c.augment = "crop_flip"
    c.crop_scale = (0.35, 1.0)
    c.randaugment_layers = 2
    c.randaugment_magnitude = 9
    c.mixup_alpha = 0.2
    c.label_smoothing = 0.1
    c.model.name = "cbt_tiny"
    c.model.patch_embed = "linear"
    c.model.patch_norm = False
    c.model.patch_size = 4
    c.model.cells = (4, 4)
    c.batch_size = 128
    c.num_epochs = 200
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.weight_decay = 0.05
    c.warmup_epochs = 10.0
    c.grad_clip_norm = 1.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2_000
    return c
