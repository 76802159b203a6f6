"""A float64 numpy transcription of the official PyTorch CBT forward pass (eval mode).

Written line by line from `CBSA_image_classification/models.py` and `attn_layers.py` of the
reference, including its token selection for pooling (`w[:, :-1]` while cls sits at index 0). The
parity tests first prove it reproduces the fixtures made with the real PyTorch code, then use it
to check the JAX port at other grid sizes and depths (e.g. the full CBT-T at 224 x 224).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _conv3x3_s2(x, weight):
    """torch Conv2d(k=3, stride=2, padding=1, bias=False) on NCHW float64."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    cols = np.empty((b, c, 3, 3, ho, wo))
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = xp[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2]
    return np.einsum("bcijhw,ocij->bohw", cols, weight)


def _batch_norm(x, sd, prefix, eps=1e-5):
    mean, var = sd[prefix + "running_mean"], sd[prefix + "running_var"]
    scale, bias = sd[prefix + "weight"], sd[prefix + "bias"]
    return ((x - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps) * scale[:, None, None]
            + bias[:, None, None])


def _layer_norm(x, sd, prefix, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[prefix + "weight"] + sd[prefix + "bias"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _adaptive_pool(x, out):
    """torch AdaptiveAvgPool2d on [B, C, g, g]."""
    b, c, g, _ = x.shape
    y = np.empty((b, c, out, out))
    for i in range(out):
        for j in range(out):
            h0, h1 = (i * g) // out, -((-(i + 1) * g) // out)
            w0, w1 = (j * g) // out, -((-(j + 1) * g) // out)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def _cbsa(x, sd, prefix, heads, dim_head):
    b, n, c = x.shape
    g = int(n**0.5)
    w = x @ sd[prefix + "proj.weight"].T
    rep = _adaptive_pool(w[:, :-1, :].reshape(b, g, g, -1).transpose(0, 3, 1, 2), 8)
    rep = rep.reshape(b, heads * dim_head, -1).transpose(0, 2, 1)
    w = w.reshape(b, n, heads, dim_head).transpose(0, 2, 1, 3)
    rep = rep.reshape(b, 64, heads, dim_head).transpose(0, 2, 1, 3)
    scale = dim_head**-0.5
    attn = _softmax(rep @ w.transpose(0, 1, 3, 2) * scale)
    rep = rep + sd[prefix + "step_rep"] * (attn @ w)
    rep_attn = _softmax(rep @ rep.transpose(0, 1, 3, 2) * scale)
    x_delta = attn.transpose(0, 1, 3, 2) @ (rep_attn @ rep)
    x_delta = sd[prefix + "step_x"] * x_delta
    x_delta = x_delta.transpose(0, 2, 1, 3).reshape(b, n, heads * dim_head)
    return x_delta @ sd[prefix + "to_out.weight"].T + sd[prefix + "to_out.bias"]


def _ista(x, weight, eta=0.1, lam=0.1):
    x1 = x @ weight.T
    grad_1 = x1 @ weight
    grad_2 = x @ weight
    return np.maximum(x + eta * (grad_2 - grad_1) - eta * lam, 0.0)


def cbt_forward(state_dict, images_nchw, *, depth, heads, dim_head, patch_size=16):
    """Logits and features `[B, N, D]` of the reference CBT for NCHW images (float64)."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    x = np.asarray(images_nchw, np.float64)
    blocks = 4 if patch_size == 16 else 3
    for i in range(blocks):
        if i:
            x = _gelu(x)
        x = _conv3x3_s2(x, sd[f"to_patch_embedding.proj.{2 * i}.0.weight"])
        x = _batch_norm(x, sd, f"to_patch_embedding.proj.{2 * i}.1.")
    b, c = x.shape[:2]
    x = x.reshape(b, c, -1).transpose(0, 2, 1)
    n = x.shape[1]
    x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, c)), x], axis=1)
    x = x + sd["pos_embedding"][:, : n + 1]
    for layer in range(depth):
        pre = f"transformer.layers.{layer}."
        grad_x = _cbsa(_layer_norm(x, sd, pre + "0.norm."), sd, pre + "0.fn.", heads,
                       dim_head) + x
        x = _ista(_layer_norm(grad_x, sd, pre + "1.norm."), sd[pre + "1.fn.weight"])
    features = x
    logits = _layer_norm(x[:, 0], sd, "mlp_head.0.") @ sd["mlp_head.1.weight"].T + sd[
        "mlp_head.1.bias"]
    return logits, features


def random_cbt_state_dict(rng, *, image_size, patch_size, num_classes, dim, depth, heads,
                          dim_head):
    """Every parameter and buffer of the reference CBT drawn at random (torch key -> array)."""
    inner = heads * dim_head
    sd = {}
    widths = [dim // 8, dim // 4, dim // 2, dim] if patch_size == 16 else [dim // 4, dim // 2, dim]
    cin = 3
    for i, cout in enumerate(widths):
        base = f"to_patch_embedding.proj.{2 * i}"
        sd[f"{base}.0.weight"] = rng.normal(0, (cin * 9) ** -0.5, (cout, cin, 3, 3))
        sd[f"{base}.1.weight"] = rng.uniform(0.5, 1.5, cout)
        sd[f"{base}.1.bias"] = rng.normal(0, 0.1, cout)
        sd[f"{base}.1.running_mean"] = rng.normal(0, 0.1, cout)
        sd[f"{base}.1.running_var"] = rng.uniform(0.5, 1.5, cout)
        sd[f"{base}.1.num_batches_tracked"] = np.array(7, np.int64)
        cin = cout
    n = (image_size // patch_size) ** 2 + 1
    sd["cls_token"] = rng.normal(0, 1, (1, 1, dim))
    sd["pos_embedding"] = rng.normal(0, 1, (1, n, dim))
    for layer in range(depth):
        pre = f"transformer.layers.{layer}."
        for j in (0, 1):
            sd[pre + f"{j}.norm.weight"] = 1 + rng.normal(0, 0.1, dim)
            sd[pre + f"{j}.norm.bias"] = rng.normal(0, 0.1, dim)
        sd[pre + "0.fn.proj.weight"] = rng.normal(0, dim**-0.5, (inner, dim))
        sd[pre + "0.fn.step_x"] = rng.normal(0, 1, (heads, 1, 1))
        sd[pre + "0.fn.step_rep"] = rng.normal(0, 1, (heads, 1, 1))
        sd[pre + "0.fn.to_out.weight"] = rng.normal(0, inner**-0.5, (dim, inner))
        sd[pre + "0.fn.to_out.bias"] = rng.normal(0, 0.1, dim)
        bound = np.sqrt(6.0 / dim)
        sd[pre + "1.fn.weight"] = rng.uniform(-bound, bound, (dim, dim))
    sd["mlp_head.0.weight"] = 1 + rng.normal(0, 0.1, dim)
    sd["mlp_head.0.bias"] = rng.normal(0, 0.1, dim)
    sd["mlp_head.1.weight"] = rng.normal(0, dim**-0.5, (num_classes, dim))
    sd["mlp_head.1.bias"] = rng.normal(0, 0.1, num_classes)
    return {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in sd.items()}
