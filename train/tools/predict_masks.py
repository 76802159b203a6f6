"""`python -m train.tools.predict_masks --workdir DIR --out OUT`: predicted masks of a
segmentation run.

Loads the newest checkpoint of a `config.task = "segmentation"` run, predicts a class for every
pixel of its evaluation split, and writes to OUT:

- `pred_00000.png`, ... : the predicted class maps of the first `--images` images, one colour per
  class (the palette of `palette(num_classes)`);
- `examples.png`: image | ground truth | prediction for the first `--rows` images (ignored pixels
  white);
- `metrics.json`: `miou`, `pixel_accuracy`, `iou_per_class` over the split (or its first
  `--limit` batches), the step and the number of images. The same line is printed.

Bad arguments (a count below 1, an `--out` that is a file), a missing or empty workdir, a run of
another task and missing data exit with code 2 and one line naming the argument.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib import image as mpimg

from cbsa_jax import training
from train import cli
from train import data as data_lib
from train.loop import load_experiment
from train.tasks import segmentation as seg_lib

__all__ = ["main", "palette", "predict"]


def palette(num_classes: int) -> np.ndarray:
    """`[K, 3]` uint8 colours: class 0 black, then matplotlib's tab10/tab20, then seeded random."""
    base = np.array([[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                     [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                     [188, 189, 34], [23, 190, 207]], np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(base), 3), np.uint8)
    return np.concatenate([base, extra])


def _colour(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """`[H, W]` class map -> `[H, W, 3]` uint8; labels outside the palette (ignore) white."""
    out = np.full((*labels.shape, 3), 255, np.uint8)
    inside = (labels >= 0) & (labels < len(colours))
    out[inside] = colours[labels[inside]]
    return out


def _display(image: np.ndarray, config) -> np.ndarray:
    """A normalised model input back to uint8 RGB for drawing."""
    channels = image.shape[-1]
    mean = np.asarray(list(config.mean) * channels if len(config.mean) == 1 else config.mean)
    std = np.asarray(list(config.std) * channels if len(config.std) == 1 else config.std)
    pixels = np.clip((image * std + mean) * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1) if channels == 1 else pixels[..., :3]


def predict(exp, state, *, limit: int | None = None, keep: int = 16):
    """(confusion `[K, K]` int64, up to `keep` (image, truth, prediction) triples) over the run's
    evaluation split (its first `limit` batches when given)."""
    config = exp.config
    source = data_lib.open_input(config)
    model = exp.model(state)
    graphdef, params = nnx.split(model)
    # compiled with the training step's compiler options, so that its logits round as the
    # training loop's evaluation does
    forward = jax.jit(lambda p, x: jnp.argmax(nnx.merge(graphdef, p)(x), axis=-1))
    compiled = {}
    k, ignore = exp.num_classes, config.segmentation.ignore_index
    confusion = np.zeros((k, k), np.int64)
    kept = []
    for i, batch in enumerate(source.eval_batches(("image", "segmentation"))):
        if limit is not None and i >= limit:
            break
        batch = {k: np.asarray(v) for k, v in batch.items()}
        images = jnp.asarray(batch["image"])
        if images.shape not in compiled:
            compiled[images.shape] = forward.lower(params, images).compile(
                compiler_options=training.compiler_options() or None)
        prediction = np.asarray(compiled[images.shape](params, images))
        confusion += np.asarray(seg_lib.confusion_matrix(
            batch["segmentation"], prediction, k, ignore_index=ignore,
            weights=batch["valid"][:, None, None]), np.int64)
        for image, truth, pred, valid in zip(batch["image"], batch["segmentation"], prediction,
                                             batch["valid"], strict=True):
            if valid and len(kept) < keep:
                kept.append((_display(image, config), truth, pred))
    return confusion, kept


def _write(out: str, kept, num_classes: int, *, images: int, rows: int) -> None:
    colours = palette(num_classes)
    for i, (_, _, pred) in enumerate(kept[:images]):
        mpimg.imsave(os.path.join(out, f"pred_{i:05d}.png"), _colour(pred, colours))
    if kept:
        gap = np.full((kept[0][0].shape[0], 2, 3), 255, np.uint8)
        grid = [np.concatenate([img, gap, _colour(truth, colours), gap, _colour(pred, colours)],
                               axis=1) for img, truth, pred in kept[:rows]]
        mpimg.imsave(os.path.join(out, "examples.png"), np.concatenate(grid, axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m train.tools.predict_masks",
                                description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a segmentation run's directory")
    parser.add_argument("--out", required=True, help="where the PNGs and metrics.json go")
    parser.add_argument("--images", type=int, default=16, help="prediction PNGs to write")
    parser.add_argument("--rows", type=int, default=8, help="images in examples.png")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N batches")
    parser.add_argument("--data_dir", default=None, help="override the run's TFDS data_dir")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return cli.exit_code(e)
    for name in ("images", "rows", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return cli.fail(f"--{name} must be >= 1, got {value}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return cli.fail(f"--out: {args.out} is a file, not a directory")
    try:
        overrides = {"data_dir": args.data_dir} if args.data_dir else None
        exp, state, meta = load_experiment(args.workdir, overrides=overrides)
        if exp.config.task != "segmentation":
            raise ValueError(f"--workdir: {args.workdir} holds a {exp.config.task!r} run, not "
                             f"segmentation")
        confusion, kept = predict(exp, state, limit=args.limit,
                                  keep=max(args.images, args.rows))
    except FileNotFoundError as e:
        return cli.fail(f"--workdir: {e}")
    except ValueError as e:  # DataError and ConfigError among them
        return cli.fail(e)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        return cli.fail(f"--out: {e}")
    _write(args.out, kept, exp.num_classes, images=args.images, rows=args.rows)
    result = {**seg_lib.summarize(confusion), "step": int(meta["step"]),
              "pixels": int(confusion.sum()), "model": exp.config.model.name,
              "decoder": exp.config.segmentation.decoder, "workdir": args.workdir}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
