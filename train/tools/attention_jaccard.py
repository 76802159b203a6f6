"""`python -m train.tools.attention_jaccard --workdir DIR`: emergent segmentation, the Jaccard
index of a trained model's attention maps against the masks of its test split (shapes, mnist5k).

No mask is ever used in training. From the last layer of the newest checkpoint:

- `cls_attention`: the cls row of the effective token-to-token map, averaged over heads; the
  patches holding the top 60% of its mass (`--mass`) form the mask;
- `cls_attention_best_head`: the same from the single head with the best mean Jaccard (chosen on
  the split itself, as attention-map segmentation is usually reported);
- `assignment` (models with representatives: CBSA, agent): in each head, the patches assigned
  (argmax of S) to the cls token's own representative; a patch is foreground when most heads
  say so;
- `center` / `everything`: masks that ignore the image (the central half of the area; all
  pixels), for scale.

Patch masks are upsampled to pixels and scored by Jaccard (intersection over union) against the
true shape masks; the means over the split are printed and written to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cbsa_jax import interpret
from train import cli
from train import data as data_lib
from train.loop import load_experiment

__all__ = ["main", "evaluate"]


def _to_pixels(patch_mask: np.ndarray, grid, size) -> np.ndarray:
    """`[..., gh*gw]` bool -> `[..., H, W]` by repeating each patch."""
    gh, gw = grid
    m = patch_mask.reshape(*patch_mask.shape[:-1], gh, gw)
    return np.repeat(np.repeat(m, size[0] // gh, axis=-2), size[1] // gw, axis=-1)


def _center_mask(size) -> np.ndarray:
    h, w = size
    mask = np.zeros(size, bool)
    dh, dw = int(round(h * (1 - 0.5**0.5) / 2)), int(round(w * (1 - 0.5**0.5) / 2))
    mask[dh:h - dh, dw:w - dw] = True
    return mask


def evaluate(exp, state, *, mass: float = 0.6, batch_size: int = 250,
             limit: int | None = None, source: data_lib.Input | None = None) -> dict:
    """Mean Jaccard of each mask source over the run's evaluation split (read from `source`,
    default: the run's input opened here)."""
    config = exp.config
    source = data_lib.open_input(config) if source is None else source
    if "mask" not in source.features:
        raise ValueError(f"dataset {config.dataset!r} has no 'mask' feature (use shapes)")
    model = exp.model(state)
    forward = nnx.jit(lambda m, x: m(x, capture=True))
    size, grid = exp.image_size, None
    scores: dict[str, list[np.ndarray]] = {}
    for batch in source.examples(config.eval_split, ("image", "mask"), batch_size=batch_size,
                                 limit=limit or None):
        images = data_lib.resize_images(jnp.asarray(batch["image"], jnp.float32), size)
        true = np.asarray(data_lib.resize_labels(batch["mask"], size))[..., 0] > 0
        _, info = forward(model, data_lib.normalize(images, config))
        grid = info["grid"]
        last = info["layers"][-1]
        cls = np.asarray(last["effective_map"])[:, :, 0, 1:]  # [B, H, patches]
        per_head = np.asarray(interpret.top_mass_mask(jnp.asarray(cls), mass))
        averaged = np.asarray(interpret.top_mass_mask(jnp.asarray(cls.mean(axis=1)), mass))
        add = scores.setdefault
        add("cls_attention", []).append(np.asarray(interpret.jaccard(
            _to_pixels(averaged, grid, size), true)))
        add("cls_attention_per_head", []).append(np.asarray(interpret.jaccard(
            _to_pixels(per_head, grid, size), true[:, None])))
        if last.get("weights") is not None:
            assign = np.asarray(interpret.hard_assignment(last["weights"]))  # [B, H, N]
            same = assign[:, :, 1:] == assign[:, :, :1]  # patches sharing cls's representative
            vote = same.mean(axis=1) > 0.5
            add("assignment", []).append(np.asarray(interpret.jaccard(
                _to_pixels(vote, grid, size), true)))
        add("center", []).append(np.asarray(interpret.jaccard(
            np.broadcast_to(_center_mask(size), true.shape), true)))
        add("everything", []).append(np.asarray(interpret.jaccard(np.ones_like(true), true)))
    result = {k: np.concatenate(v) for k, v in scores.items()}
    per_head = result.pop("cls_attention_per_head").mean(axis=0)  # [H]
    out = {k: float(v.mean()) for k, v in result.items()}
    out["cls_attention_best_head"] = float(per_head.max())
    out["best_head"] = int(per_head.argmax())
    out["examples"] = int(result["center"].shape[0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tools.attention_jaccard",
                                     description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mass", type=float, default=0.6)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument("--data_dir", default=None, help="override the run's TFDS data_dir")
    parser.add_argument("--json", default=None, help="write the result here (default: "
                        "WORKDIR/attention_jaccard.json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.mass <= 1:
        return cli.fail(f"--mass must be in (0, 1], got {args.mass}")
    try:
        overrides = {"data_dir": args.data_dir} if args.data_dir else None
        exp, state, meta = load_experiment(args.workdir, overrides=overrides)
        result = evaluate(exp, state, mass=args.mass, limit=args.limit)
    except (FileNotFoundError, ValueError) as e:
        return cli.fail(e)
    result.update(model=exp.config.model.name, step=meta["step"], mass=args.mass)
    path = args.json or os.path.join(args.workdir, "attention_jaccard.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
