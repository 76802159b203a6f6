"""`python -m train.tools.generate --workdir DIR --prompt "def "`: sample text from a trained
byte language model.

Loads the newest checkpoint of a `config.task = "language"` run in DIR (EMA parameters when kept),
encodes the prompt as UTF-8 bytes, runs one parallel prefill over it and then `--num_tokens`
one-token decoding steps under one jit (`cbsa_jax.models.lm.generate`): with causal CBSA or
linear attention each step costs the same whatever the prefix length (an O(1) running state).
Sampling: greedy (`--temperature 0`), temperature, or top-k (`--top_k K`). Prints the prompt and
its continuation (bytes that are not valid UTF-8 are shown as U+FFFD).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import nnx

from cbsa_jax.models import lm
from train import cli
from train.loop import load_experiment

__all__ = ["main", "sample", "sampling_rule"]


def sampling_rule(temperature: float, top_k: int):
    """Greedy for temperature 0, else top-k (k > 0) or plain temperature sampling."""
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top_k must be >= 0, got {top_k}")
    if temperature == 0:
        return lm.Greedy()
    return lm.TopK(k=top_k, temperature=temperature) if top_k else lm.Temperature(temperature)


def sample(model: lm.LanguageModel, prompt: str, *, num_tokens: int, rule, seed: int = 0,
           count: int = 1) -> list[str]:
    """`count` continuations of `prompt` (bytes) by `num_tokens` tokens, decoded as UTF-8."""
    data = prompt.encode("utf-8")
    if not data:
        raise ValueError("--prompt must not be empty")
    max_len = model.config.max_len
    if len(data) + num_tokens - 1 > max_len:
        raise ValueError(f"--prompt ({len(data)} bytes) + --num_tokens ({num_tokens}) - 1 "
                         f"exceeds the model's {max_len} positions")
    tokens = np.tile(np.frombuffer(data, np.uint8).astype(np.int32), (count, 1))
    graphdef, params = nnx.split(model)
    new = lm.generate(graphdef, params, tokens, num_tokens=num_tokens, rule=rule,
                      rng=jax.random.key(seed))
    return [bytes(np.asarray(row, np.uint8)).decode("utf-8", errors="replace")
            for row in jax.device_get(new)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.tools.generate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a language run's output directory")
    parser.add_argument("--prompt", default="def ", help="text to continue (UTF-8)")
    parser.add_argument("--num_tokens", type=int, default=200, help="bytes to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k truncation")
    parser.add_argument("--samples", type=int, default=1, help="continuations to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        exp, state, meta = load_experiment(args.workdir)
        if exp.config.task != "language":
            raise ValueError(f"--workdir: {args.workdir} holds a {exp.config.task!r} run, not a "
                             f"language model")
        if args.num_tokens < 1 or args.samples < 1:
            raise ValueError("--num_tokens and --samples must be >= 1")
        rule = sampling_rule(args.temperature, args.top_k)
        texts = sample(exp.model(state), args.prompt, num_tokens=args.num_tokens, rule=rule,
                       seed=args.seed, count=args.samples)
    except (ValueError, FileNotFoundError) as e:
        return cli.fail(e)
    print(f"# {exp.config.model.name}, step {int(state.step)}, {type(rule).__name__}",
          flush=True)
    for text in texts:
        print(args.prompt + text)
        print("# ---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
