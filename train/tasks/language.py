"""Language modelling: the task (`config.task = "language"`), its loss and its metrics.

The task trains a decoder-only `cbsa_jax.models.lm.LanguageModel` (the preset `config.model.name`,
e.g. `lm_cbsa_tiny`, with the `config.model.*` fields it shares with `LMConfig` overridden) on
fixed-length token sequences: batches hold `tokens` int32 `[B, T + 1]` (read from the dataset's
`config.language.tokens_key` feature): the inputs are `tokens[:, :-1]`, the targets
`tokens[:, 1:]` (next-token prediction), and the loss is their mean cross-entropy in nats
(float32). The model's positions are sized to T.

Evaluation adds up, over the valid rows, the summed cross-entropy, the number of predicted tokens
and the number predicted right; `finalize` gives `loss` (nats per token), `bits_per_byte`
(= loss / ln 2, one token per byte), `accuracy` (next-token top-1), `tokens` and
`neg_bits_per_byte`, the ranking metric (higher is better).

With `config.mesh.seq` > 1 every sequence is split over that many devices (sequence parallelism,
`cbsa_jax.models.lm`); it must divide T.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cbsa_jax.models.lm import LanguageModel, LMConfig, get_lm_config
from cbsa_jax.training import TaskDef
from train import config as config_lib

__all__ = ["language", "lm_config", "next_token_losses", "summarize"]

LN2 = math.log(2.0)


def lm_config(config: ml_collections.ConfigDict, *, vocab_size: int, seq_len: int) -> LMConfig:
    """The `LMConfig` of `config.model` for sequences of `seq_len` inputs over `vocab_size`."""
    overrides = config_lib.model_overrides(config)
    fields = set(LMConfig.__dataclass_fields__)
    foreign = sorted(set(overrides) - fields)
    if foreign:
        raise ValueError(f"config.model fields {foreign} do not apply to a language model "
                         f"(its fields: {sorted(fields & set(config_lib.MODEL_FIELDS))})")
    return get_lm_config(config.model.name, **overrides, vocab_size=vocab_size, max_len=seq_len)


def next_token_losses(model, tokens) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-token cross-entropy (nats, float32) and hits of `tokens [B, T + 1]`: both `[B, T]`."""
    logits = model(tokens[:, :-1]).astype(jnp.float32)
    targets = tokens[:, 1:]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return losses, hits


def summarize(sums) -> dict[str, float]:
    """Eval sums (`loss`, `correct`, `tokens`) -> metrics."""
    n = max(float(np.asarray(sums["tokens"])), 1.0)
    loss = float(np.asarray(sums["loss"])) / n
    return {"loss": loss, "bits_per_byte": loss / LN2, "neg_bits_per_byte": -loss / LN2,
            "accuracy": float(np.asarray(sums["correct"])) / n, "tokens": n}


def language(config: ml_collections.ConfigDict, *, num_classes: int, channels: int,
             image_size: tuple[int, ...], dtype) -> TaskDef:
    """Next-token prediction on `tokens [B, T + 1]` (`image_size` = (T + 1,), `num_classes` = the
    vocabulary)."""
    del channels
    seq_len = int(image_size[0]) - 1
    shards = config.mesh.seq
    if shards > 1 and seq_len % shards:
        raise config_lib.ConfigError(f"config.mesh.seq = {shards} must divide the sequence "
                                     f"length T = {seq_len} of config.dataset")
    key = "tokens"  # the input pipeline reads config.language.tokens_key into it
    model_config = lm_config(config, vocab_size=num_classes, seq_len=seq_len)

    def build(rngs: nnx.Rngs) -> LanguageModel:
        return LanguageModel(model_config, dtype=dtype, rngs=rngs)

    def loss(model, batch, step):
        del step
        losses, hits = next_token_losses(model, batch[key])
        value = jnp.mean(losses)
        return value, {"accuracy": jnp.mean(hits), "bits_per_byte": value / LN2}

    def eval_sums(model, batch):
        losses, hits = next_token_losses(model, batch[key])
        valid = batch["valid"].astype(jnp.float32)
        return {"loss": jnp.sum(losses.sum(axis=-1) * valid),
                "correct": jnp.sum(hits.sum(axis=-1) * valid),
                "tokens": jnp.sum(valid) * seq_len}

    return TaskDef(build=build, loss=loss, eval_sums=eval_sums, finalize=summarize,
                   ranking="neg_bits_per_byte", train_keys=(key,), eval_keys=(key,),
                   progress="bits_per_byte")
