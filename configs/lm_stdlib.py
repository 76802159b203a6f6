"""A byte-level language model on the Python standard library's own sources, on a CPU.

`python -m train --config configs/lm_stdlib.py --workdir /tmp/lm` trains causal CBSA
(`lm_cbsa_tiny`: 4 blocks of width 128, 4 heads of 32, 16 learned representatives per head) on
256-byte windows of the `stdlib_bytes` corpus (this Python's stdlib `.py` files, tests excluded,
prepared offline: nothing is downloaded), and reports `loss` (nats per byte), `bits_per_byte` and
next-byte `accuracy` on the held-out files. The baselines at equal width:
`--config.model.name=lm_softmax_tiny` (causal softmax attention) and
`--config.model.name=lm_linear_tiny` (causal linear attention).
`python -m train.tools.generate --workdir /tmp/lm --prompt "def "` samples from the trained model.
"""

from train.config import base_config


def get_config():
    c = base_config()
    c.task = "language"
    c.dataset = "stdlib_bytes"  # 256 + 1 bytes per example
    c.input = "memory"  # held on the devices; no TensorFlow
    c.language.tokens_key = "tokens"
    c.language.vocab_size = 256
    c.model.name = "lm_cbsa_tiny"
    c.batch_size = 32
    c.num_train_steps = 2000
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.warmup_epochs = 0.08  # ~100 steps (1,300 steps per epoch)
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.1
    c.grad_clip_norm = 1.0
    c.no_decay_names = ("token_embedding", "pos_embedding")
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    return c
