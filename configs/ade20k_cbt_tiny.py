"""ADE20K semantic segmentation (TFDS `scene_parse150`, 150 classes): CBT-T encoder + the CBT
mask-transformer decoder, the reference's segmentation schedule.

The reference (Segmenter's recipe, which the paper follows): 512 x 512 inputs, global batch 8,
160k iterations, SGD with momentum 0.9, learning rate 1e-3, no weight decay, horizontal flips; the
decoder is 2 CBSA blocks of 3 heads x 100 over the 32 x 32 patch tokens and 150 class embeddings,
pooled to 10 x 10 representatives. ADE20K's label 0 ("other objects") is ignored and 1..150 become
classes 0..149 (`reduce_zero_label`). Differences from the reference, said plainly: images are
resized to 512 x 512 rather than randomly rescaled (0.5-2x) and cropped, there is no photometric
distortion, eval is single-scale on the resized image (not sliding-window at full resolution), and
the learning rate decays by a cosine rather than the polynomial (power 0.9) schedule. The encoder
trains from scratch unless a pretrained CBT-T checkpoint is converted in first.

TFDS downloads and prepares `scene_parse150` (about 1 GB) into `--config.data_dir` on first use;
the mock-data test (`tests/train/tasks/test_segmentation.py`) runs one step of this config.

Check the labels before quoting numbers: TFDS's `scene_parse150` builder (4.9) reads the Places
Challenge 2017 `annotations_instance` PNGs, stored as 3-channel images; this config reads their
first (R) channel as the class map. The paper's 150-class benchmark is ADEChallengeData2016's
single-channel `annotations`; a builder over those (same `annotation` key) needs no other change.
Labels >= 150 that are not the ignore value stop the run with one line (exit 2).
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.task = "segmentation"
    c.dataset = "scene_parse150"
    c.train_split = "train"
    c.eval_split = "test"  # TFDS's scene_parse150 'test' split is ADE20K's 2,000 validation images
    c.image_size = 512
    c.mean, c.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.augment = "flip"
    c.segmentation.label_key = "annotation"
    c.segmentation.num_classes = 150
    c.segmentation.reduce_zero_label = True
    c.segmentation.ignore_index = 255
    c.segmentation.decoder = "cbt"  # 2 blocks, 3 heads x 100, 10 x 10 representatives
    c.segmentation.decoder_depth = 2
    c.model.name = "cbt_tiny"
    c.model.dtype = "bfloat16"
    c.batch_size = 8
    c.num_train_steps = 160_000
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.grad_clip_norm = 0.0
    c.log_every_steps = 50
    c.eval_every_steps = 16_000
    c.checkpoint_every_steps = 4_000
    c.shuffle_buffer = 4_096
    return c
