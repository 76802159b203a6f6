"""`python -m experiments.synthetic_compression --out OUT`: the synthetic-compression experiment.

Tokens are drawn from a union of K low-dimensional subspaces (`cbsa_jax.interpret.
union_of_subspaces`). With the true bases as U, it stacks

- exact CBSA steps: `X <- X - eta * grad_X sum_k R(A_k X U_k)` with `A = P + S` (segment
  pooling P of the shuffled tokens into m representatives, refined by one extraction step S), and
- the efficient surrogate with the same bases: the contraction `alpha (I + alpha Q Q^T)^-1 Q ~
  alpha (Q - alpha Q Q^T Q)` with the similarity-weighted sum replaced by the softmax average,
  `alpha (Q - softmax(Q Q^T / sqrt(p)) Q)`, broadcast with `S^T` as the reference layer does,

and records after every step the all-token coding rate `R^c(X; U)` and the principal angles
between each subspace and the span of its tokens. Writes `OUT/synthetic_compression.json`
(`coding_rate`, `coding_rate_surrogate`: step 0 first), `OUT/synthetic_compression.png`.
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

import cbsa_jax as cj
from cbsa_jax import attention as att
from cbsa_jax.interpret import principal_angles, union_of_subspaces

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["main", "run"]


def _coefficients(x, u, rule, n):
    w = cj.heads(x, u)
    s = cj.extraction_weights(rule.pool(w), w)
    return jnp.asarray(rule.matrix(n), x.dtype) + s, s


@jax.jit
def _exact_step(x, u, a, eps, eta):
    return cj.cbsa_step(x, u, a, eps, eta)


@jax.jit
def _surrogate_step(x, u, a, s, eps, eta):
    q = cj.representatives_of(x, u, a)
    m, p = q.shape[-2:]
    alpha = cj.rate_scale(m, p, eps)
    contracted = alpha * (q - att.softmax_contraction(q))
    return x - eta * cj.project(cj.broadcast(s, contracted), u)


def _angles(x, bases, labels) -> list[float]:
    """The largest principal angle (degrees) between each U_k and its tokens' top-d span."""
    out = []
    d = bases.shape[-1]
    for k in range(bases.shape[1]):
        tokens = np.asarray(x)[labels == k]
        top = np.linalg.svd(tokens.T, full_matrices=False)[0][:, :d]
        out.append(float(np.degrees(np.max(np.asarray(principal_angles(bases[:, k], top))))))
    return out


def run(*, subspaces=4, dim=4, ambient=32, tokens=256, representatives=16, steps=10, eps=0.5,
        eta=2.0, noise=0.05, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    x0, bases, labels = union_of_subspaces(rng, subspaces=subspaces, dim=dim, ambient=ambient,
                                           tokens=tokens, noise=noise)
    u = jnp.asarray(bases, jnp.float32)
    rule = cj.SegmentPooling(representatives)
    result = {"settings": dict(subspaces=subspaces, dim=dim, ambient=ambient, tokens=tokens,
                               representatives=representatives, steps=steps, eps=eps, eta=eta,
                               noise=noise, seed=seed)}
    for name in ("exact", "surrogate"):
        x = jnp.asarray(x0, jnp.float32)
        rates = [float(cj.compression_rate(x, u, eps))]
        angles = [_angles(x, bases, labels)]
        for _ in range(steps):
            a, s = _coefficients(x, u, rule, tokens)
            x = _exact_step(x, u, a, eps, eta) if name == "exact" else _surrogate_step(
                x, u, a, s, eps, eta)
            rates.append(float(cj.compression_rate(x, u, eps)))
            angles.append(_angles(x, bases, labels))
        suffix = "" if name == "exact" else "_surrogate"
        result["coding_rate" + suffix] = rates
        result["principal_angles_deg" + suffix] = angles
    return result


def _plot(result: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = range(len(result["coding_rate"]))
    axes[0].plot(steps, result["coding_rate"], "o-", label="exact CBSA step")
    axes[0].plot(steps, result["coding_rate_surrogate"], "s--", label="efficient surrogate")
    axes[0].set(xlabel="step (layer)", ylabel="R^c(X; U)", title="all-token coding rate")
    axes[0].legend()
    for key, style in (("principal_angles_deg", "o-"), ("principal_angles_deg_surrogate", "s--")):
        worst = [max(a) for a in result[key]]
        axes[1].plot(steps, worst, style, label=key.replace("principal_angles_deg", "exact")
                     .replace("exact_surrogate", "surrogate"))
    axes[1].set(xlabel="step (layer)", ylabel="degrees",
                title="largest principal angle, tokens vs subspace")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.synthetic_compression",
                                     description=__doc__)
    parser.add_argument("--out", required=True)
    for flag, default in (("subspaces", 4), ("dim", 4), ("ambient", 32), ("tokens", 256),
                          ("representatives", 16), ("steps", 10), ("seed", 0)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    for flag, default in (("eps", 0.5), ("eta", 2.0), ("noise", 0.05)):
        parser.add_argument(f"--{flag}", type=float, default=default)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(**{k: v for k, v in vars(args).items() if k != "out"})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # the usage-error exit code of every command here
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synthetic_compression.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(result, os.path.join(args.out, "synthetic_compression.png"))
    print("R^c per exact step:", " ".join(f"{r:.3f}" for r in result["coding_rate"]))
    print("R^c per surrogate step:", " ".join(f"{r:.3f}" for r in
                                              result["coding_rate_surrogate"]))
    print(f"wrote {args.out}/synthetic_compression.json and .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
