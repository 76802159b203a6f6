"""Write an official PyTorch CBT checkpoint as a training checkpoint of `python -m train`.

    python -m train.convert --checkpoint cbt_tiny.pth --config configs/imagenet_cbt_tiny.py \\
        --workdir runs/cbt_tiny_converted --num_classes 1000
    python -m train --config configs/imagenet_cbt_tiny.py --workdir runs/cbt_tiny_converted \\
        --config.model.selection=reference --config.eval_only=True

The model's widths come from the config's preset (and `--config.model.*` overrides); the step is
0 and the optimizer state fresh, so training from the workdir fine-tunes the converted weights.
The saved config records `model.selection="reference"` (the reference's token selection, needed
to reproduce its logits); pass the same override when you evaluate or fine-tune.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "convert", "save_initial"]


def convert(checkpoint: str, config, workdir: str, *, num_classes: int) -> str:
    """Convert and save; returns the checkpoint directory."""
    from cbsa_jax.convert import cbt_from_torch
    from train import config as config_lib

    config.model.selection = "reference"
    config_lib.validate(config)
    model_config = config_lib.model_config(config)
    if model_config.attention.value != "cbsa":
        raise config_lib.ConfigError(f"--config: the preset {config.model.name!r} is not a CBT "
                                     f"(attention {model_config.attention.value!r})")
    size = config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    model = cbt_from_torch(checkpoint, image_size=size, patch_size=model_config.patch_size,
                           num_classes=num_classes, dim=model_config.dim,
                           depth=model_config.depth, heads=model_config.heads,
                           dim_head=model_config.dim_head)
    return save_initial(model, config, workdir, num_classes=num_classes, image_size=size,
                        converted_from=os.path.abspath(checkpoint))


def save_initial(model, config, workdir: str, *, num_classes: int, image_size,
                 **meta) -> str:
    """Save `model`'s weights as the step-0 training checkpoint of `config` in `workdir` (fresh
    optimizer state; `meta` is recorded beside it); returns the checkpoint directory."""
    import jax
    from flax import nnx

    from train.checkpoint import Checkpointer
    from train.loop import experiment

    exp = experiment(config, num_classes=num_classes, channels=model.config.channels,
                     image_size=image_size, steps_per_epoch=1, devices=jax.devices()[:1])
    _, params, batch_stats = nnx.split(model, nnx.Param, ...)
    state = jax.jit(exp.task.state_from, out_shardings=exp.state_sharding)(params, batch_stats)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    ckpt.save(0, state, exp.meta(0, **meta))
    ckpt.wait()
    ckpt.close()
    return ckpt.directory


def main(argv: list[str] | None = None) -> int:
    from train import config as config_lib
    from train.__main__ import USAGE_ERROR, parse_args

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m train.convert", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="the official .pth / .pth.tar")
    parser.add_argument("--num_classes", type=int, default=1000)
    own, rest = parser.parse_known_args(argv)
    try:
        args, overrides = parse_args(rest)
        config = config_lib.load(args.config)
        config_lib.apply_overrides(config, overrides)
        workdir = args.workdir or os.path.join("runs", "converted")
        path = convert(own.checkpoint, config, workdir, num_classes=own.num_classes)
    except (config_lib.ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    print(f"wrote {path}/0; evaluate with: python -m train --config "
          f"{args.config or config_lib.DEFAULT_CONFIG} --workdir {workdir} "
          f"--config.model.selection=reference --config.eval_only=True", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
