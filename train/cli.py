"""What the command lines of `python -m train` and its tools share.

- `split_overrides(argv)`: the one `--config.FIELD` parser; `--config.a.b=VALUE` and
  `--config.a.b VALUE` are the same override;
- `config_arguments(parser)`: `--config FILE` and `--workdir DIR`;
- `load_config(path, overrides)`: the config file (default configs/digits.py) with the overrides
  applied and validated, or `ConfigError` naming the field;
- `fail(message)`: one line `error: ...` on stderr and `USAGE_ERROR` (exit code 2), the answer to
  bad input everywhere;
- `ArgumentParser`: argparse whose errors (a missing or malformed flag) are that same one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import ml_collections

from train import config as config_lib

__all__ = ["USAGE_ERROR", "BAD_INPUT", "ArgumentParser", "split_overrides", "parse",
           "config_arguments", "load_config", "fail", "exit_code"]

USAGE_ERROR = 2
#: What a command answers with one line and `USAGE_ERROR` rather than a traceback.
BAD_INPUT = (config_lib.ConfigError, ValueError, FileNotFoundError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line naming the flag (`error: argument
    --num_tokens: invalid int value: 'x'`, `--help` for the usage) and exit code 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, `{"a.b": "VALUE"}`) from `--config.a.b=VALUE` or `--config.a.b
    VALUE`. A `--config.FIELD` with no value raises `config.ConfigError`."""
    overrides: dict[str, str] = {}
    rest = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                value = next(it, None)
                if value is None:
                    raise config_lib.ConfigError(f"{arg} needs a value (--config.FIELD=VALUE)")
            if not key:
                raise config_lib.ConfigError(f"{arg}: name a config field (--config.FIELD=VALUE)")
            overrides[key] = value
        else:
            rest.append(arg)
    return rest, overrides


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]
          ) -> tuple[argparse.Namespace, dict[str, str]]:
    """(`parser`'s flags, the `--config.FIELD` overrides) of `argv`."""
    rest, overrides = split_overrides(argv)
    return parser.parse_args(rest), overrides


def config_arguments(parser: argparse.ArgumentParser, *, workdir_required: bool = False) -> None:
    """Add `--config` and `--workdir` to `parser`."""
    parser.add_argument("--config", default=None,
                        help=f"config file (default {config_lib.DEFAULT_CONFIG})")
    parser.add_argument("--workdir", default=None, required=workdir_required,
                        help="output directory (default runs/<config name>)")


def load_config(path: str | None, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """`path`'s config (None: the default) with `overrides` applied, validated."""
    config = config_lib.load(path)
    config_lib.apply_overrides(config, overrides)
    return config_lib.validate(config)


def fail(message: object) -> int:
    """Print `error: message` (one line) on stderr; return `USAGE_ERROR`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return USAGE_ERROR


def exit_code(e: SystemExit) -> int:
    """The exit code for argparse's `SystemExit` (it has printed the usage or the help)."""
    return USAGE_ERROR if e.code else 0
