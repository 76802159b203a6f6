"""Helpers for model tests: abstract models filled with host-drawn parameters.

Drawing parameters with numpy avoids compiling one random-number kernel per parameter shape
(seconds each on a 2-core CPU), so tests can afford many architectures.
"""

import math

import numpy as np
from flax import nnx

from benchmarks._params import fill_on_host
from cbsa_jax.models import create
from cbsa_jax.reporting import count_params

__all__ = ["TIMM_TINY", "count_params", "fill_on_host", "forward", "host_initialised",
           "random_timm_state_dict"]

TIMM_TINY = dict(dim=16, depth=2, patch=4, channels=3, hidden=32, classes=5, grid=8)  # N = 65


def host_initialised(name: str, *, rng: np.random.Generator, **kwargs):
    """`create(name, **kwargs)` with every parameter drawn on the host at init-like scale."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create(name, **kwargs)))
    return nnx.merge(graphdef, fill_on_host(state, rng))


@nnx.jit(static_argnames="capture")
def forward(model, x, capture: bool = False):
    """`model(x)` (`capture=True`: with its maps), compiled: called eagerly, a model compiles one
    program per operation and shape, seconds per new input shape on a 2-core CPU."""
    return model(x, capture=True) if capture else model(x)


def random_timm_state_dict(seed=0, **sizes) -> dict[str, np.ndarray]:
    """A random timm ViT state dict (`TIMM_TINY` sizes unless `sizes` say otherwise)."""
    s = {**TIMM_TINY, **sizes}
    d, p, c, hid, k = s["dim"], s["patch"], s["channels"], s["hidden"], s["classes"]
    rng = np.random.default_rng(seed)

    def lin(o, i):
        return rng.normal(0, 1 / math.sqrt(i), (o, i)).astype(np.float32)

    def vec(n, base=0.0):
        return (base + 0.1 * rng.normal(size=n)).astype(np.float32)

    sd = {"cls_token": rng.normal(size=(1, 1, d)).astype(np.float32),
          "pos_embed": 0.5 * rng.normal(size=(1, 1 + s["grid"] ** 2, d)).astype(np.float32),
          "patch_embed.proj.weight": rng.normal(0, 1 / math.sqrt(c * p * p), (d, c, p, p)).astype(
              np.float32),
          "patch_embed.proj.bias": vec(d), "norm.weight": vec(d, 1.0), "norm.bias": vec(d),
          "head.weight": lin(k, d), "head.bias": vec(k)}
    for i in range(s["depth"]):
        pre = f"blocks.{i}."
        sd.update({pre + "norm1.weight": vec(d, 1.0), pre + "norm1.bias": vec(d),
                   pre + "attn.qkv.weight": lin(3 * d, d), pre + "attn.qkv.bias": vec(3 * d),
                   pre + "attn.proj.weight": lin(d, d), pre + "attn.proj.bias": vec(d),
                   pre + "norm2.weight": vec(d, 1.0), pre + "norm2.bias": vec(d),
                   pre + "mlp.fc1.weight": lin(hid, d), pre + "mlp.fc1.bias": vec(hid),
                   pre + "mlp.fc2.weight": lin(d, hid), pre + "mlp.fc2.bias": vec(d)})
    return sd
