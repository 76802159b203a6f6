"""`python -m train.tools.generate --workdir DIR --prompt "def "`: sample text from a trained
byte language model.

Loads the newest checkpoint of a `config.task = "language"` run in DIR (EMA parameters when kept),
encodes the prompt as UTF-8 bytes, runs one parallel prefill over it and then `--num_tokens`
one-token decoding steps under one jit (`cbsa_jax.models.lm.generate`): with causal CBSA or
linear attention each step costs the same whatever the prefix length (an O(1) running state).
Sampling: `--greedy` (the most likely byte), or at `--temperature T` (finite, > 0; default 0.8),
among the `--top_k K` most likely bytes when given (`--top_k 1` is greedy too). Prints the prompt
and its continuation (bytes that are not valid UTF-8 are shown as U+FFFD).

Bad input (a missing workdir or one of another task, an empty or non-UTF-8 prompt, a prompt and
length beyond the model's positions, a length, count or temperature out of range) is one line
naming the argument, exit code 2.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from flax import nnx

from cbsa_jax.models import lm
from train import cli
from train.loop import load_experiment

__all__ = ["main", "sample", "sampling_rule", "encode_prompt"]


def sampling_rule(temperature: float | None, top_k: int = 0, *, greedy: bool = False):
    """`lm.Greedy()` for `greedy`, else top-k (k > 0) or plain sampling at `temperature` (a
    finite number > 0; None: 0.8). Raises ValueError naming the flag."""
    if top_k < 0:
        raise ValueError(f"--top_k must be >= 1 (0 = no truncation), got {top_k}")
    if greedy:
        if temperature is not None or top_k:
            raise ValueError("--greedy takes no --temperature or --top_k")
        return lm.Greedy()
    temperature = 0.8 if temperature is None else temperature
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"--temperature must be a finite number > 0 (use --greedy for the most "
                         f"likely byte), got {temperature}")
    return lm.TopK(k=top_k, temperature=temperature) if top_k else lm.Temperature(temperature)


def encode_prompt(prompt: str) -> bytes:
    """The prompt's UTF-8 bytes; ValueError naming `--prompt` if it is empty or not UTF-8 (a
    command line that is not UTF-8 reaches Python as surrogate escapes)."""
    if not prompt:
        raise ValueError("--prompt must not be empty")
    try:
        return prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        offset = len(prompt[:e.start].encode("utf-8"))
        raise ValueError(f"--prompt is not valid UTF-8 (an invalid byte at offset {offset})"
                         ) from None


def _check_counts(num_tokens: int, samples: int) -> None:
    for name, value in (("num_tokens", num_tokens), ("samples", samples)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"--{name} must be >= 1, got {value}")


def sample(model: lm.LanguageModel, prompt: str, *, num_tokens: int, rule, seed: int = 0,
           count: int = 1) -> list[str]:
    """`count` continuations of `prompt` (bytes) by `num_tokens` tokens, decoded as UTF-8."""
    data = encode_prompt(prompt)
    _check_counts(num_tokens, count)
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
    parser = cli.ArgumentParser(prog="python -m train.tools.generate",
                                description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a language run's output directory")
    parser.add_argument("--prompt", default="def ", help="text to continue (UTF-8)")
    parser.add_argument("--num_tokens", type=int, default=200, help="bytes to generate")
    parser.add_argument("--greedy", action="store_true", help="always the most likely byte")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature, finite and > 0 (default 0.8)")
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k truncation")
    parser.add_argument("--samples", type=int, default=1, help="continuations to draw")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return cli.exit_code(e)
    try:  # the arguments first: a bad one costs no checkpoint load
        rule = sampling_rule(args.temperature, args.top_k, greedy=args.greedy)
        encode_prompt(args.prompt)
        _check_counts(args.num_tokens, args.samples)
        exp, state, meta = load_experiment(args.workdir)
        if exp.config.task != "language":
            raise ValueError(f"--workdir: {args.workdir} holds a {exp.config.task!r} run, not a "
                             f"language model")
        texts = sample(exp.model(state), args.prompt, num_tokens=args.num_tokens, rule=rule,
                       seed=args.seed, count=args.samples)
    except FileNotFoundError as e:
        return cli.fail(f"--workdir: {e}")
    except ValueError as e:
        return cli.fail(e)
    print(f"# {exp.config.model.name}, step {int(state.step)}, {type(rule).__name__}",
          flush=True)
    for text in texts:
        print(args.prompt + text)
        print("# ---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
