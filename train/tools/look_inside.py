"""`python -m train.tools.look_inside --workdir DIR [--images PATHS] --out OUT`: look inside a
trained vision model.

From the newest checkpoint in DIR, on a few images (files given with --images, else the first
test images of the run's dataset), writes:

- `layer{l}_cls.png`: the cls row of every head's effective token-to-token map, upsampled and
  overlaid on each image;
- `layer{l}_representatives.png` (CBSA, agent): every head's representative maps (each row of S,
  token -> representative weights) for the first image;
- `layer{l}_assignment.png` (CBSA, agent): the hard token -> representative assignment;
- `coding_rate.png`, `sparsity.png`: per-layer coding rate of the attention input with the
  layer's own projection (eps^2 = 0.01, plain and on unit-normalised tokens) and sparsity of the
  ISTA output (fraction of exact zeros), averaged over the images;
- `interpret.json`: those numbers per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx
from PIL import Image

from cbsa_jax import interpret
from train import cli
from train import data as data_lib
from train.loop import load_experiment

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["main", "measure", "load_images"]


def load_images(paths: list[str], size: tuple[int, int], channels: int) -> np.ndarray:
    """Image files -> uint8 `[B, H, W, C]` resized (bilinear) to `size`."""
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--images: no file {path}")
        image = Image.open(path).convert("L" if channels == 1 else "RGB")
        image = image.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(image, np.uint8)
        out.append(array[..., None] if array.ndim == 2 else array)
    return np.stack(out)


def dataset_images(config, count: int) -> np.ndarray:
    """The first `count` uint8 images of the run's evaluation split, at the model's size
    (resized bilinearly as the input pipelines do)."""
    source = data_lib.open_input(config)
    stored = next(source.examples(config.eval_split, ("image",), batch_size=count, limit=count))
    size = config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = data_lib.resize_images(jnp.asarray(stored["image"], jnp.float32), size)
    return np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)


def measure(model, images: np.ndarray) -> tuple[list[dict], dict]:
    """Per-layer numbers (coding rate, sparsity) and the captured internals for `images`."""
    logits, info = nnx.jit(lambda m, x: m(x, capture=True))(model, jnp.asarray(images))
    layers = []
    for block, aux in zip(model.blocks, info["layers"], strict=True):
        u = block.attn.proj[0][...]
        entry = {
            "coding_rate": float(jnp.mean(interpret.layer_coding_rate(aux["attn_in"], u))),
            "coding_rate_normalized": float(jnp.mean(interpret.layer_coding_rate(
                aux["attn_in"], u, normalize=True))),
            "sparsity": float(jnp.mean(interpret.sparsity(aux["block_out"]))),
        }
        layers.append(entry)
    return layers, {"logits": logits, **info}


def _overlay(ax, image, heat, title):
    ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
    ax.imshow(heat, cmap="inferno", alpha=0.55, interpolation="bilinear")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _upsample(grid_values: np.ndarray, grid, size) -> np.ndarray:
    """`[gh*gw]` -> `[H, W]` (bilinear)."""
    values = jnp.asarray(grid_values, jnp.float32).reshape(grid)
    return np.asarray(jax.image.resize(values, size, method="bilinear"))


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _image_rows(images: np.ndarray, heads: int):
    """A figure with one row per image: the image, then one panel per head."""
    n_images = images.shape[0]
    fig, axes = plt.subplots(n_images, heads + 1,
                                   figsize=(1.6 * (heads + 1), 1.6 * n_images), squeeze=False)
    for b in range(n_images):
        axes[b, 0].imshow(images[b].squeeze(), cmap="gray" if images.shape[-1] == 1 else None)
        axes[b, 0].axis("off")
    return fig, axes


def _plots(out: str, layer: int, aux: dict, images: np.ndarray, grid, size, prefix: int):
    cls = np.asarray(aux["effective_map"])[:, :, 0, prefix:]  # [B, H, gh*gw]
    heads = cls.shape[1]
    fig, axes = _image_rows(images, heads)
    for b in range(images.shape[0]):
        for h in range(heads):
            _overlay(axes[b, h + 1], images[b], _upsample(cls[b, h], grid, size),
                     f"layer {layer} head {h}: cls row")
    written = [_save(fig, out, f"layer{layer}_cls.png")]
    if aux.get("weights") is None:
        return written
    s = np.asarray(aux["weights"])[:, :, :, prefix:]  # [B, H, m, gh*gw]
    m = s.shape[2]
    fig, axes = plt.subplots(heads, m, figsize=(1.2 * m, 1.3 * heads), squeeze=False)
    for h in range(heads):
        for j in range(m):
            _overlay(axes[h, j], images[0], _upsample(s[0, h, j], grid, size),
                     f"h{h} rep {j}")
    written.append(_save(fig, out, f"layer{layer}_representatives.png"))
    assign = np.asarray(interpret.hard_assignment(jnp.asarray(s)))  # [B, H, gh*gw]
    fig, axes = _image_rows(images, heads)
    for b in range(images.shape[0]):
        for h in range(heads):
            axes[b, h + 1].imshow(assign[b, h].reshape(grid), cmap="tab20", vmin=0,
                                  vmax=max(m - 1, 1), interpolation="nearest")
            axes[b, h + 1].set_title(f"head {h}: token -> rep", fontsize=7)
            axes[b, h + 1].axis("off")
    written.append(_save(fig, out, f"layer{layer}_assignment.png"))
    return written


def _layer_plots(out: str, layers: list[dict]) -> list[str]:
    index = list(range(len(layers)))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(index, [x["coding_rate"] for x in layers], "o-", label="R (eps^2 = 0.01)")
    ax2 = ax.twinx()
    ax2.plot(index, [x["coding_rate_normalized"] for x in layers], "s--", color="tab:orange",
             label="R, unit-norm tokens")
    ax.set(xlabel="layer", ylabel="coding rate", title="coding rate of the attention input")
    fig.legend(loc="upper right", fontsize=7)
    written = [_save(fig, out, "coding_rate.png")]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(index, [x["sparsity"] for x in layers], "o-")
    ax.set(xlabel="layer", ylabel="fraction of zeros", title="sparsity of the block output",
           ylim=(0, 1))
    written.append(_save(fig, out, "sparsity.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tools.look_inside",
                                     description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", nargs="*", default=None, help="image files (default: test "
                        "images of the run's dataset)")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--layers", default="last", help="comma-separated layer indices, 'all' "
                        "or 'last'")
    parser.add_argument("--data_dir", default=None, help="override the run's TFDS data_dir")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = {"data_dir": args.data_dir} if args.data_dir else None
        exp, state, meta = load_experiment(args.workdir, overrides=overrides)
        size, channels = exp.image_size, exp.model_config.channels
        raw = (load_images(args.images, size, channels) if args.images
               else dataset_images(exp.config, args.num_images))
    except (FileNotFoundError, ValueError) as e:
        return cli.fail(e)
    model = exp.model(state)
    layers, info = measure(model, np.asarray(data_lib.normalize(raw, exp.config)))
    depth = len(layers)
    chosen = (range(depth) if args.layers == "all" else [depth - 1] if args.layers == "last"
              else [int(i) for i in args.layers.split(",")])
    if any(not 0 <= i < depth for i in chosen):
        return cli.fail(f"--layers must be in [0, {depth - 1}], got {args.layers}")
    os.makedirs(args.out, exist_ok=True)
    written = _layer_plots(args.out, layers)
    for i in chosen:
        written += _plots(args.out, i, info["layers"][i], raw, info["grid"], size, prefix=1)
    result = {"workdir": os.path.abspath(args.workdir), "step": meta["step"],
              "model": exp.config.model.name, "attention": exp.model_config.attention.value,
              "images": args.images or f"first {raw.shape[0]} of {exp.config.dataset} "
                                       f"{exp.config.eval_split}",
              "predictions": np.asarray(jnp.argmax(info["logits"], -1)).tolist(),
              "layers": layers, "files": [os.path.basename(p) for p in written]}
    with open(os.path.join(args.out, "interpret.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {len(written)} figures and interpret.json to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
