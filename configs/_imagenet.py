"""The reference's ImageNet-1k recipe, shared by the imagenet_* configs.

Lion (lr 2e-4, betas 0.9/0.99, weight decay 0.05), global batch 256, 150 epochs with a 20-epoch
linear warmup then cosine decay, evaluated per step; label smoothing 0.1; gradient clipping at
global norm 1.0 (the reference comments it out; here it is applied); bfloat16 compute.
RandomResizedCrop(224) + horizontal flip for training, Resize(256) + CenterCrop(224) for eval.

TFDS needs the ImageNet tarballs in `manual_dir` (`--config.manual_dir=/path/to/tars`) the first
time; `--config.data_dir` says where the prepared dataset lives.
"""

from train.config import base_config


def recipe(model_name: str):
    c = base_config()
    c.dataset = "imagenet2012"
    c.eval_split = "validation"
    c.image_size = 224
    c.mean, c.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.augment = "crop_flip"
    c.eval_crop_fraction = 0.875
    c.model.name = model_name
    c.model.dtype = "bfloat16"
    c.batch_size = 256
    c.num_epochs = 150
    c.optimizer = "lion"
    c.learning_rate = 2e-4
    c.b1, c.b2 = 0.9, 0.99
    c.weight_decay = 0.05
    c.warmup_epochs = 20.0
    c.schedule = "cosine"
    c.label_smoothing = 0.1
    c.grad_clip_norm = 1.0
    c.log_every_steps = 100
    c.eval_every_steps = 0  # once per epoch
    c.checkpoint_every_steps = 2_000
    c.shuffle_buffer = 50_000
    return c
