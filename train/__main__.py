"""`python -m train [--config configs/NAME.py] [--workdir DIR] [--config.FIELD=VALUE ...]`

With no arguments it trains the embedded default, `configs/digits.py`, into `runs/digits`.
Multi-host: pass `--coordinator_address HOST:PORT --num_processes N --process_id I` (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` to let
`jax.distributed.initialize()` detect the cluster (TPU pods, SLURM, ...).

Bad configs, unknown datasets, missing data and meshes that do not fit exit with code 2 and one
line on stderr; a run stopped for a non-finite loss (config.nonfinite='stop') exits with code 3.

The program sets the process's malloc for XLA:CPU's per-step buffers itself
(`cbsa_jax.training.configure_host_allocator`, applied when `train` is imported, before
other libraries start threads; `CBSA_JAX_ALLOCATOR=default` leaves it alone). A single-process
run with the default mesh splits the CPU into one XLA device per core (at most 8, dividing the
batch), each batch sharded over them (`train.mesh.split_host`; `CBSA_JAX_HOST_DEVICES=N` sets
the count, 1 keeps JAX's one device).
In a multi-process job, a process that stops because another one was lost or is stuck exits with
code 4 (`train.distributed.PEER_EXIT`) and one line naming it; the timeouts are
`config.distributed.*`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

import jax

from cbsa_jax import training
from train import cli, distributed, loop
from train import config as config_lib
from train import mesh as mesh_lib
from train.checkpoint import CheckpointMismatch
from train.data import DataError
from train.mesh import MeshError

__all__ = ["main", "parse_args"]

NONFINITE_EXIT = 3


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """(flags, `--config.FIELD` overrides) of a `python -m train` command line."""
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    cli.config_arguments(parser)
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true",
                        help="jax.distributed.initialize() with cluster auto-detection")
    return cli.parse(parser, argv)


def _enable_compilation_cache() -> None:
    """Persist compiled programs (JAX_COMPILATION_CACHE_DIR, default ~/.cache/cbsa_jax/xla), so
    a restarted or resumed run does not compile again."""
    if jax.config.jax_compilation_cache_dir is None:
        default = os.path.join(os.path.expanduser("~"), ".cache", "cbsa_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", default)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
        config = cli.load_config(args.config, overrides)
    except SystemExit as e:
        return cli.exit_code(e)
    except config_lib.ConfigError as e:
        return cli.fail(e)

    logging.getLogger("absl").setLevel(logging.WARNING)
    _enable_compilation_cache()
    name = os.path.splitext(os.path.basename(args.config or config_lib.DEFAULT_CONFIG))[0]
    workdir = args.workdir or os.path.join("runs", name)
    try:
        watchdog = distributed.initialize(
            config, coordinator_address=args.coordinator_address,
            num_processes=args.num_processes, process_id=args.process_id,
            auto=args.distributed)
    except ValueError as e:
        return cli.fail(e)
    try:  # before anything asks JAX for its devices
        split = mesh_lib.split_host(config) if watchdog is None else {"applied": False}
    except ValueError as e:  # CBSA_JAX_HOST_DEVICES
        return cli.fail(e)

    if jax.process_index() == 0:
        what = "evaluating" if config.eval_only else "training"
        print(f"{what} {args.config or config_lib.DEFAULT_CONFIG} "
              f"({config.model.name} on {config.dataset}) in {os.path.abspath(workdir)}",
              flush=True)
        if split["applied"] and split["devices"] > 1 and jax.default_backend() == "cpu":
            print(f"the CPU runs as {split['devices']} XLA devices, one per core, each batch "
                  f"split over them ({training.HOST_DEVICES_ENV}=1 keeps one device)",
                  flush=True)
    if watchdog is None:
        return _train(config, workdir)[0]
    try:
        code, error = _train(config, workdir)
    except jax.errors.JaxRuntimeError as e:  # most likely a collective that lost its peer
        watchdog.await_peers()  # ends this process with one line if a peer is lost
        traceback.print_exception(e)
        code, error = 1, e
    except Exception as e:
        traceback.print_exception(e)
        code, error = 1, e
    watchdog.finish(code, error)  # tells the other processes; exits here unless code is 0
    return code


def _train(config, workdir: str) -> tuple[int, Exception | None]:
    """(exit code, error) of the loop: bad input is one line and code 2, a non-finite stop
    code 3."""
    try:
        loop.run(config, workdir)
    except (config_lib.ConfigError, DataError, MeshError, CheckpointMismatch,
            FileNotFoundError) as e:
        return cli.fail(e), e
    except loop.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return NONFINITE_EXIT, e
    return 0, None


if __name__ == "__main__":
    sys.exit(main())
