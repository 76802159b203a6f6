"""Write an official PyTorch CBT checkpoint as a training checkpoint of `python -m train`.

    python -m train.tools.convert_official --checkpoint cbt_tiny.pth \\
        --config configs/imagenet_cbt_tiny.py --workdir runs/cbt_tiny_converted --num_classes 1000
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

from cbsa_jax.convert import cbt_from_torch
from train import cli
from train import config as config_lib
from train.loop import save_initial

__all__ = ["main", "convert"]


def convert(checkpoint: str, config, workdir: str, *, num_classes: int) -> str:
    """Convert and save; returns the checkpoint directory."""
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m train.tools.convert_official",
                                     description=__doc__)
    cli.config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="the official .pth / .pth.tar")
    parser.add_argument("--num_classes", type=int, default=1000)
    try:
        args, overrides = cli.parse(parser, argv)
        workdir = args.workdir or os.path.join("runs", "converted")
        path = convert(args.checkpoint, cli.load_config(args.config, overrides), workdir,
                       num_classes=args.num_classes)
    except SystemExit as e:
        return cli.exit_code(e)
    except cli.BAD_INPUT as e:
        return cli.fail(e)
    print(f"wrote {path}/0; evaluate with: python -m train --config "
          f"{args.config or config_lib.DEFAULT_CONFIG} --workdir {workdir} "
          f"--config.model.selection=reference --config.eval_only=True", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
