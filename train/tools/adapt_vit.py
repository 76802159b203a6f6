"""Adapt a pretrained softmax ViT to the pooled-query attention, as a training checkpoint.

    python -m train.tools.adapt_vit --checkpoint vit.safetensors --config configs/mnist_adapt.py \\
        --workdir runs/mnist_adapt
    python -m train --config configs/mnist_adapt.py --workdir runs/mnist_adapt

`--checkpoint` is a timm state dict (`.pth`, `.safetensors`, or `.npz` written by
`cbsa_jax.convert.save_timm`) or a big_vision / AugReg `.npz`. The model is the config's (a
`vit_timm_*` preset and `--config.model.*` overrides): its attention replaces softmax in every
block (`--attention adapted`, the default: `model.attention="agent"`, queries pooled to
`model.cells`), or in the first `--blocks K` only; the pretrained q, k, v, output, MLP and
norms are kept. The step is 0 and the optimizer state fresh, so `python -m train` with the same
config and workdir fine-tunes the adapted weights (checkpoints and resume as usual);
`--config.eval_only=True` evaluates them as they are. A checkpoint that does not fit the config
(another width, missing or extra keys) is one error naming the keys, exit code 2.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from cbsa_jax.convert import detect_layout, load_vit, load_vit_weights
from train import cli
from train import config as config_lib
from train.loop import save_initial

__all__ = ["main", "adapt"]

ATTENTIONS = {"adapted": "agent", "softmax": "softmax"}


def adapt(checkpoint: str, config, workdir: str, *, num_classes: int | None = None) -> str:
    """Load `checkpoint` into the config's model (attention already switched by the config) and
    save it as a step-0 training checkpoint; returns the checkpoint directory."""
    config_lib.validate(config)
    if config.task != "classification":
        raise config_lib.ConfigError(f"--config: adapt_vit writes an image classifier's "
                                     f"checkpoint, the config's task is {config.task!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num_classes must be >= 1, got {num_classes}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint: no file {checkpoint}")
    model_config = config_lib.model_config(config)
    try:
        weights = load_vit_weights(checkpoint)
    except (OSError, ValueError, KeyError, EOFError) as e:  # not a checkpoint this can read
        raise ValueError(f"--checkpoint: cannot read {checkpoint} as a timm or big_vision ViT "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    try:
        layout = detect_layout(weights)
    except ValueError as e:
        raise ValueError(f"--checkpoint: {checkpoint} is not a ViT checkpoint: {e}") from None
    patch = weights.get("patch_embed.proj.weight" if layout == "timm" else "embedding/kernel")
    if patch is not None and np.ndim(patch) == 4:  # the checkpoint's input channels
        model_config = model_config.replace(
            channels=int(np.shape(patch)[1 if layout == "timm" else 2]))
    head = weights.get("head.weight" if layout == "timm" else "head/kernel")
    if num_classes is None:
        if head is None:
            raise ValueError("--num_classes is required: the checkpoint has no classifier head")
        num_classes = int(np.shape(head)[0 if layout == "timm" else -1])
    size = config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    model = load_vit(weights, model_config, num_classes=num_classes, image_size=size,
                     layout=layout)
    return save_initial(model, config, workdir, num_classes=num_classes, image_size=size,
                        adapted_from=os.path.abspath(checkpoint), layout=layout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.ArgumentParser(prog="python -m train.tools.adapt_vit", description=__doc__)
    cli.config_arguments(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="pretrained ViT: timm .pth / .safetensors / .npz, big_vision .npz")
    parser.add_argument("--attention", choices=sorted(ATTENTIONS), default="adapted",
                        help="attention of the switched blocks (default: adapted)")
    parser.add_argument("--blocks", type=int, default=None,
                        help="switch only the first K blocks (default: all)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes of the new head (default: the checkpoint's head)")
    try:
        args, overrides = cli.parse(parser, argv)
        switch = {"model.attention": ATTENTIONS[args.attention]}
        if args.blocks is not None and args.blocks < 1:
            raise ValueError(f"--blocks must be >= 1, got {args.blocks}")
        if args.blocks is not None:
            switch["model.attention_blocks"] = str(args.blocks)
        workdir = args.workdir or os.path.join("runs", "adapted")
        path = adapt(args.checkpoint, cli.load_config(args.config, {**switch, **overrides}),
                     workdir, num_classes=args.num_classes)
    except SystemExit as e:
        return cli.exit_code(e)
    except cli.BAD_INPUT as e:
        return cli.fail(e)
    blocks = "every block" if args.blocks is None else f"the first {args.blocks} blocks"
    print(f"wrote {path}/0 ({args.attention} attention in {blocks}); fine-tune with: python -m "
          f"train --config {args.config or config_lib.DEFAULT_CONFIG} --workdir {workdir} "
          f"--config.model.attention={ATTENTIONS[args.attention]}"
          + (f" --config.model.attention_blocks={args.blocks}" if args.blocks is not None
             else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
