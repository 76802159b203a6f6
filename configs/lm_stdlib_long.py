"""The byte-level language model of `lm_stdlib.py` on 65,536-byte sequences, each split over 8
devices (sequence parallelism).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m train --config configs/lm_stdlib_long.py --workdir /tmp/lm_long

trains causal CBSA (`lm_cbsa_tiny`, 65,536 learned positions) on `stdlib_bytes/seq65536`, one
sequence of 65,536 + 1 bytes per step. `config.mesh.seq = 8`: every sequence's tokens are split
into 8 consecutive shards of 8,192, one per device; the attention layers run their kernels per
shard inside `jax.shard_map` and exchange only the per-head prefix statistics (m (p + 2) numbers
per head and shard), everything else is per token. On a CPU the flag above makes 8 host devices
of one process (the same cores: this shows the program runs, not a speed-up); on 8 accelerators
it splits the work. `lm_linear_tiny` is sequence-parallel the same way; `lm_softmax_tiny` is not
(XLA gathers the keys).
"""

from configs.lm_stdlib import get_config as lm_stdlib


def get_config():
    c = lm_stdlib()
    c.dataset = "stdlib_bytes/seq65536"  # 65,536 + 1 bytes per example; ~170 train, ~18 test
    c.batch_size = 1
    c.mesh.data = 1
    c.mesh.seq = 8
    c.shuffle_buffer = 256  # every training window (a larger buffer holds 64 KiB per entry)
    c.num_train_steps = 400
    c.warmup_epochs = 0.1
    c.log_every_steps = 5
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    return c
