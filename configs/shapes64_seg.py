"""Semantic segmentation of the generated `shapes64` scenes: 6 classes per pixel (background + the
5 shapes), 64 x 64 RGB, no download.

The encoder is CBT-nano on 8 x 8 patches (an 8 x 8 grid pooled to 4 x 4 representatives, the
geometry of `configs/shapes64.py`); the decoder is the CBT mask transformer (2 CBSA blocks of 4
heads x 16 over the patch tokens and 6 class embeddings, 4 x 4 representative cells), whose mask
logits on the grid are upsampled bilinearly to the pixels. Baselines on the same encoder:
`--config.segmentation.decoder=linear` or `softmax`; `--config.model.name=vit_nano` swaps the
encoder. Per-pixel cross-entropy; eval writes `miou`, `pixel_accuracy` and `iou_<k>` to
metrics.jsonl, and `python -m train.tools.predict_masks --workdir ... --out ...` draws the
predicted masks. 60 epochs of 240 steps, evaluated every 3 epochs so that the plateau can be
checked (`experiments.compare --decoders cbt,softmax,linear` trains the decoders side by side).
On shapes64 3.0.0, 30 epochs left the CBT decoder's mean test mIoU (3 seeds) still moving by 0.6
point over the last fifth; the recipe now trains as long as `configs/shapes64.py`, and at 60
epochs every decoder's mean test mIoU moves by at most 0.37 point over the last fifth
(docs/results/shapes64_seg.json).
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.task = "segmentation"
    c.dataset = "shapes64"
    c.input = "memory"  # held and augmented on the devices; no TensorFlow
    c.image_size = 64
    c.mean, c.std = (0.5,), (0.25,)
    c.augment = "flip"  # image and class map flip together
    c.segmentation.label_key = "segmentation"
    c.segmentation.num_classes = 6  # background + 5 shapes
    c.segmentation.decoder = "cbt"
    c.segmentation.decoder_depth = 2
    c.model.name = "cbt_nano"
    c.model.patch_size = 8
    c.model.cells = (4, 4)
    c.batch_size = 50
    c.num_epochs = 60
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_epochs = 1.0
    c.weight_decay = 0.05
    c.log_every_steps = 20
    c.eval_every_steps = 720  # every 3 epochs (240 steps each)
    c.checkpoint_every_steps = 720
    return c
