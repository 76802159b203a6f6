"""`python -m train [--config configs/NAME.py] [--workdir DIR] [--config.FIELD=VALUE ...]`

With no arguments it trains the embedded default, `configs/digits.py`, into `runs/digits`.
Multi-host: pass `--coordinator_address HOST:PORT --num_processes N --process_id I` (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` to let
`jax.distributed.initialize()` detect the cluster (TPU pods, SLURM, ...).

Bad configs, unknown datasets, missing data and meshes that do not fit exit with code 2 and one
line on stderr; a run stopped for a non-finite loss (config.nonfinite='stop') exits with code 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main", "parse_args"]

USAGE_ERROR = 2


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Split `--config.a.b=v` overrides from the other flags."""
    overrides: dict[str, str] = {}
    rest = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                value = next(it, None)
                if value is None:
                    raise SystemExit(f"error: {arg} needs a value (--config.FIELD=VALUE)")
            overrides[key] = value
        else:
            rest.append(arg)
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="config file (default configs/digits.py)")
    parser.add_argument("--workdir", default=None, help="output dir (default runs/<config>)")
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true",
                        help="jax.distributed.initialize() with cluster auto-detection")
    return parser.parse_args(rest), overrides


def _enable_compilation_cache() -> None:
    """Persist compiled programs (JAX_COMPILATION_CACHE_DIR, default ~/.cache/cbsa_jax/xla), so
    a restarted or resumed run does not compile again."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        default = os.path.join(os.path.expanduser("~"), ".cache", "cbsa_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", default)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _init_distributed(args: argparse.Namespace) -> None:
    env = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (args.coordinator_address or env or args.distributed):
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; no-op else
    kwargs = {}
    if args.coordinator_address:
        kwargs = dict(coordinator_address=args.coordinator_address,
                      num_processes=args.num_processes, process_id=args.process_id)
    jax.distributed.initialize(**kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return USAGE_ERROR
        return USAGE_ERROR if e.code else 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)
    _enable_compilation_cache()
    from train import config as config_lib

    try:
        config = config_lib.load(args.config)
        config_lib.apply_overrides(config, overrides)
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    name = os.path.splitext(os.path.basename(args.config or config_lib.DEFAULT_CONFIG))[0]
    workdir = args.workdir or os.path.join("runs", name)

    _init_distributed(args)
    import jax

    from train import loop
    from train.checkpoint import CheckpointMismatch
    from train.data import DataError
    from train.mesh import MeshError

    if jax.process_index() == 0:
        what = "evaluating" if config.eval_only else "training"
        print(f"{what} {args.config or config_lib.DEFAULT_CONFIG} "
              f"({config.model.name} on {config.dataset}) in {os.path.abspath(workdir)}",
              flush=True)
    try:
        loop.run(config, workdir)
    except (config_lib.ConfigError, DataError, MeshError, CheckpointMismatch,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except loop.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
