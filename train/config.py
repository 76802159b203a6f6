"""Experiment configs: loading `configs/NAME.py`, `--config.FIELD=VALUE` overrides, validation.

A config file defines `get_config() -> ml_collections.ConfigDict`; `base_config()` holds every
field with its default, so a file only sets what differs. Everything is validated when the config
is loaded, before any data or device is touched; a problem raises `ConfigError` with one line that
names the field, and `python -m train` prints that line and exits with code 2.
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from cbsa_jax.models import PRESETS, ModelConfig

__all__ = ["ConfigError", "base_config", "load", "apply_overrides", "validate",
           "model_overrides", "model_config", "vision_model_config", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "digits.py")

TASKS = ("classification", "segmentation", "language")
AUGMENTS = ("none", "flip", "translate", "crop_flip")
SEGMENTATION_AUGMENTS = ("none", "flip")  # the class map moves with the image
INPUTS = ("tfds", "memory")  # train.data: tf.data on the host | arrays on the devices
MEMORY_AUGMENTS = ("none", "flip", "translate")  # what config.input = "memory" does in JAX
DECODERS = ("cbt", "softmax", "linear")
OPTIMIZERS = ("adamw", "lion", "sgd")
SCHEDULES = ("cosine", "constant")
NONFINITE = ("skip", "stop")
#: The default mesh: every device on `data` (-1 fills the remaining devices).
DEFAULT_MESH = {"data": -1, "fsdp": 1, "seq": 1, "model": 1}
DTYPES = ("float32", "bfloat16")
MODEL_FIELDS = ("attention", "dim", "depth", "heads", "dim_head", "ffn", "patch_size",
                "patch_embed", "patch_norm", "cells", "selection", "eps", "mlp_ratio", "pool",
                "qkv_bias", "norm_eps", "attention_blocks", "other_attention",
                # language models only (cbsa_jax.models.lm.LMConfig)
                "num_queries", "chunk", "tied_output")


class ConfigError(ValueError):
    """A bad config or command line: the message is one line naming the field."""


def base_config() -> ml_collections.ConfigDict:
    """Every field the training program reads, with its default."""
    c = ml_collections.ConfigDict()
    c.task = "classification"  # classification | segmentation | language (train.tasks.TASKS)
    # data
    c.dataset = "digits"  # a local builder (digits, shapes) or any TFDS image classification name
    # tfds: any TFDS name, tf.data on the host (needs TensorFlow); memory: the shipped data sets
    # (train.datasets) on the devices, augmented there (MEMORY_AUGMENTS), no TensorFlow
    c.input = "tfds"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    c.manual_dir = ml_collections.FieldReference(None, field_type=str)  # e.g. imagenet2012
    c.train_split = "train"
    c.eval_split = "test"
    c.image_size = 32
    c.mean = (0.5,)  # per channel, in [0, 1] units; one value is broadcast to all channels
    c.std = (0.5,)
    c.augment = "flip"  # none | flip | translate | crop_flip (RandomResizedCrop + flip)
    c.translate = 1  # max shift in pixels for augment=translate
    c.crop_scale = (0.08, 1.0)  # RandomResizedCrop area range for augment=crop_flip
    c.eval_crop_fraction = 1.0  # eval: resize shorter side to size / fraction, center crop
    c.randaugment_layers = 0  # 0 = off
    c.randaugment_magnitude = 9
    c.mixup_alpha = 0.0  # 0 = off
    c.label_smoothing = 0.0
    c.shuffle_buffer = 16_384  # tfds input (the memory input shuffles whole splits)
    c.data_shards = 0  # 0 = one per process; fixing it makes the data order host-count invariant
    # segmentation (config.task = "segmentation"): per-pixel classes from a class-map feature
    c.segmentation = ml_collections.ConfigDict()
    c.segmentation.label_key = "segmentation"  # the dataset's [H, W, 1] class-map feature
    c.segmentation.num_classes = 0  # 0 = the dataset's `label` classes + 1 (0 = background)
    c.segmentation.ignore_index = 255  # pixels with this label count nowhere
    c.segmentation.reduce_zero_label = False  # ADE20K: 0 ("other") -> ignore, k -> k - 1
    c.segmentation.decoder = "cbt"  # cbt | softmax | linear (cbsa_jax.models.segmenter)
    c.segmentation.decoder_depth = 2
    # language (config.task = "language"): fixed-length token sequences, next-token prediction
    c.language = ml_collections.ConfigDict()
    c.language.tokens_key = "tokens"  # the dataset's [T + 1] int feature
    c.language.vocab_size = 256  # bytes
    # model
    c.model = ml_collections.ConfigDict()
    c.model.name = "cbt_nano"
    for name in MODEL_FIELDS:  # None = the preset's value
        c.model[name] = ml_collections.FieldReference(None, field_type=object)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    # optimisation
    c.batch_size = 128  # global
    c.eval_batch_size = 0  # 0 = batch_size
    c.num_epochs = 10
    c.num_train_steps = 0  # > 0 overrides num_epochs
    c.seed = 0
    c.optimizer = "adamw"  # adamw | lion | sgd
    c.learning_rate = 1e-3
    c.schedule = "cosine"  # cosine | constant (after warmup)
    c.warmup_epochs = 0.0
    c.min_lr_ratio = 0.0  # cosine floor, as a fraction of the peak
    c.weight_decay = 0.05
    c.b1 = 0.9
    c.b2 = 0.999
    c.momentum = 0.9  # sgd
    c.grad_clip_norm = 1.0  # 0 = off
    c.decay_vectors = False  # decay 0-d/1-d params (norms, biases, step sizes)?
    c.no_decay_names = ("cls_token", "pos_embedding")  # parameter names never decayed
    c.ema_decay = 0.0  # 0 = off
    c.nonfinite = "skip"  # skip | stop: what a non-finite loss or gradient does
    # mesh: -1 fills the remaining devices
    # (seq > 1 splits each sequence of a language model: sequence parallelism)
    c.mesh = ml_collections.ConfigDict(DEFAULT_MESH)
    # loop
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = once per epoch
    c.checkpoint_every_steps = 0  # 0 = once per epoch
    c.keep_checkpoints = 3
    c.eval_only = False
    c.progress = True
    # several processes (train/distributed.py), in seconds; the defaults suit a pod
    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialization_timeout = 300.0  # every process must join within this
    c.distributed.heartbeat_timeout = 60.0  # a process silent this long is lost: the others exit
    c.distributed.collective_timeout = 1800.0  # no step, eval batch or checkpoint: hung; 0 = off
    return c


def load(path: str | None) -> ml_collections.ConfigDict:
    """`get_config()` of the file at `path` (default: configs/digits.py), over `base_config()`."""
    path = DEFAULT_CONFIG if path is None else path
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no config file at {path}")
    spec = importlib.util.spec_from_file_location(f"_train_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: say where, in one line
        raise ConfigError(f"--config: cannot load {path}: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config: {path}: get_config() must return a ConfigDict")
    return config


def _parse_value(text: str, current):
    """A command-line value, typed after the field's current value."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string, e.g. an enum value for a None-defaulted field
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, int | float):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Apply `{"optimizer": "lion", "model.depth": "2"}`; unknown fields raise ConfigError."""
    for dotted, text in overrides.items():
        node, parts = config, dotted.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config field {dotted!r}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigError(f"unknown config field {dotted!r}; fields here are "
                              f"{sorted(node.keys())}")
        try:
            value = _parse_value(text, node[leaf])
            node[leaf] = value
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--config.{dotted}={text}: {e}") from None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive_int(config, name: str, allow_zero: bool = False) -> None:
    value = config[name]
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero
                                                                      else value >= 1)
    _check(ok, f"config.{name} must be an integer {'>= 0' if allow_zero else '>= 1'}, "
               f"got {value!r}")


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    """The model fields the config sets (None = the preset's): `ModelConfig` or `LMConfig`."""
    out = {}
    for name in MODEL_FIELDS:
        value = config.model[name]
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every field; raise ConfigError naming the first bad one. Returns the config."""
    base = base_config()
    unknown = sorted(set(config.keys()) - set(base.keys()))
    _check(not unknown, f"unknown config fields {unknown}")
    for group in ("model", "segmentation", "language", "distributed"):
        unknown = sorted(set(config[group].keys()) - set(base[group].keys()))
        _check(not unknown, f"unknown config fields {[group + '.' + k for k in unknown]}")
    _check(config.task in TASKS, f"config.task must be one of {TASKS}, got {config.task!r}")
    if config.task == "segmentation":
        seg = config.segmentation
        _check(config.augment in SEGMENTATION_AUGMENTS,
               f"config.augment must be one of {SEGMENTATION_AUGMENTS} for segmentation (the "
               f"class map moves with the image), got {config.augment!r}")
        _check(seg.decoder in DECODERS, f"config.segmentation.decoder must be one of {DECODERS}, "
                                        f"got {seg.decoder!r}")
        for name in ("num_classes", "ignore_index", "decoder_depth"):
            _check(isinstance(seg[name], int) and seg[name] >= (1 if name == "decoder_depth"
                                                                  else 0),
                   f"config.segmentation.{name} must be an integer >= "
                   f"{1 if name == 'decoder_depth' else 0}, got {seg[name]!r}")
    if config.task == "language":
        _check(isinstance(config.language.vocab_size, int) and config.language.vocab_size >= 2,
               f"config.language.vocab_size must be an integer >= 2, got "
               f"{config.language.vocab_size!r}")
    _check(isinstance(config.dataset, str) and config.dataset != "",
           "config.dataset must be a dataset name")
    size = config.image_size
    _check((isinstance(size, int) and size >= 1) or (
        isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) and s >= 1
                                                                  for s in size)),
           f"config.image_size must be a positive int or (height, width), got {size!r}")
    for name in ("batch_size", "num_epochs", "keep_checkpoints", "log_every_steps",
                 "randaugment_magnitude"):
        _positive_int(config, name, allow_zero=name == "randaugment_magnitude")
    for name in ("eval_batch_size", "num_train_steps", "eval_every_steps",
                 "checkpoint_every_steps", "randaugment_layers", "translate", "seed",
                 "shuffle_buffer", "data_shards"):
        _positive_int(config, name, allow_zero=True)
    _check(config.augment in AUGMENTS, f"config.augment must be one of {AUGMENTS}, got "
                                       f"{config.augment!r}")
    _check(config.input in INPUTS, f"config.input must be one of {INPUTS}, got {config.input!r}")
    if config.input == "memory":  # what only the TFDS input does
        _check(config.augment in MEMORY_AUGMENTS,
               f"config.augment must be one of {MEMORY_AUGMENTS} with config.input='memory', got "
               f"{config.augment!r} (it runs in the TFDS input: config.input='tfds')")
        _check(not config.randaugment_layers,
               f"config.randaugment_layers must be 0 with config.input='memory', got "
               f"{config.randaugment_layers} (RandAugment runs in the TFDS input)")
        _check(config.eval_crop_fraction == 1,
               f"config.eval_crop_fraction must be 1 with config.input='memory', got "
               f"{config.eval_crop_fraction} (the centre crop runs in the TFDS input)")
    _check(config.optimizer in OPTIMIZERS, f"config.optimizer must be one of {OPTIMIZERS}, got "
                                           f"{config.optimizer!r}")
    _check(config.schedule in SCHEDULES, f"config.schedule must be one of {SCHEDULES}, got "
                                         f"{config.schedule!r}")
    _check(config.nonfinite in NONFINITE, f"config.nonfinite must be one of {NONFINITE}, got "
                                          f"{config.nonfinite!r}")
    _check(config.model.dtype in DTYPES, f"config.model.dtype must be one of {DTYPES}, got "
                                         f"{config.model.dtype!r}")
    for name in ("learning_rate",):
        _check(isinstance(config[name], float | int) and config[name] > 0,
               f"config.{name} must be > 0, got {config[name]!r}")
    for name in ("weight_decay", "grad_clip_norm", "mixup_alpha", "label_smoothing",
                 "warmup_epochs", "min_lr_ratio"):
        _check(isinstance(config[name], float | int) and config[name] >= 0,
               f"config.{name} must be >= 0, got {config[name]!r}")
    _check(config.label_smoothing < 1, "config.label_smoothing must be < 1")
    _check(0 <= config.ema_decay < 1, f"config.ema_decay must be in [0, 1), got "
                                      f"{config.ema_decay!r}")
    for name in ("b1", "b2", "momentum"):
        _check(0 <= config[name] < 1, f"config.{name} must be in [0, 1), got {config[name]!r}")
    _check(0 < config.eval_crop_fraction <= 1, "config.eval_crop_fraction must be in (0, 1]")
    lo, hi = config.crop_scale
    _check(0 < lo <= hi <= 1, f"config.crop_scale must be 0 < lo <= hi <= 1, got "
                              f"{config.crop_scale!r}")
    _check(len(config.mean) == len(config.std) and all(s > 0 for s in config.std),
           "config.mean and config.std must have the same length and std > 0")
    for axis in ("data", "fsdp", "seq", "model"):
        v = config.mesh[axis]
        _check(isinstance(v, int) and (v >= 1 or v == -1),
               f"config.mesh.{axis} must be a positive integer or -1, got {v!r}")
    _check(sum(config.mesh[a] == -1 for a in ("data", "fsdp", "seq", "model")) <= 1,
           "config.mesh: at most one axis may be -1")
    for name in ("initialization_timeout", "heartbeat_timeout", "collective_timeout"):
        value = config.distributed[name]
        _check(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
               and (value > 0 or name == "collective_timeout") and value < float("inf"),
               f"config.distributed.{name} must be a number of seconds "
               f"{'>= 0 (0 = off)' if name == 'collective_timeout' else '> 0'}, got {value!r}")
    _check(config.mesh.seq == 1 or config.task == "language",
           f"config.mesh.seq = {config.mesh.seq}: sequence parallelism applies to language "
           f"models only (config.task = 'language')")
    if config.task == "language":  # the language model checks its own preset when built
        return config
    _check(config.model.name in PRESETS,
           f"config.model.name must be one of {sorted(PRESETS)}, got {config.model.name!r}")
    foreign = sorted(set(model_overrides(config)) - set(ModelConfig.__dataclass_fields__))
    _check(not foreign, f"config.model fields {foreign} apply to language models only "
                        f"(config.task = 'language'), not to {config.model.name!r}")
    try:
        model = PRESETS[config.model.name].replace(**model_overrides(config))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from None
    size = (size, size) if isinstance(size, int) else tuple(size)
    try:
        model.grid_for(size, name="config.image_size")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return config


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The vision model's `ModelConfig`: the preset `config.model.name` with the fields set."""
    return PRESETS[config.model.name].replace(**model_overrides(config))


def vision_model_config(config: ml_collections.ConfigDict, *, channels: int,
                        image_size: tuple[int, int]) -> ModelConfig:
    """The `ModelConfig` of `config.model` for `channels`-channel images of `image_size`."""
    model = model_config(config).replace(channels=channels)
    model.grid_for(image_size, name="config.image_size")
    return model
