"""Shared test setup.

Eight virtual CPU devices are requested before JAX is imported anywhere, so the multi-device tests
(meshes of 8) run on one CPU, as the conventions require. Everything else runs on device 0.

XLA's LLVM backend compiles at optimisation level 0 in the tests (and in the programs they start,
which inherit `XLA_FLAGS`: `tests._util.xla_flags`). The suite compiles hundreds of small
programs and runs each a few times, so compiling is most of its time, and level 0 takes about a
quarter less (the whole suite's test durations summed: 2,275 -> 1,721 s, both runs beside one
training on the same 2 cores; `tests/cbsa_jax/models/test_vit.py` alone: 101 -> 69 CPU s).
The optimised HLO is the same (`tests/test_suite_setup.py`: a CBSA layer's gradient) and the
results differ at most by rounding, which every tolerance of the suite allows; outside the
tests, training and the benchmarks compile at XLA's usual level. A level set in the caller's
`XLA_FLAGS` is kept.
"""

import os

_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Compiled programs are cached on disk for the session: the training tests build the same
# programs in several runs, and a CPU compile costs seconds. The directory is made once by the
# first process and inherited (through the environment) by the pytest-xdist workers, so each
# program is compiled by one of them. The process that made it removes it when the session ends.
_OWN_CACHE = None
if not os.environ.get("CBSA_JAX_TEST_XLA_CACHE"):
    _OWN_CACHE = os.environ["CBSA_JAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="cbsa_jax_xla_")
jax.config.update("jax_compilation_cache_dir", os.environ["CBSA_JAX_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    """Remove the compilation cache this process made (after the workers, which run inside the
    controller's session, have ended); a directory given by the caller stays."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """The tests of programs (training, experiments, benchmarks: the longest, several run
    subprocesses) first and the library's unit tests last, so the two workers do not end with
    one of them still running a long test alone."""
    trains = tuple(f"{os.sep}tests{os.sep}{d}{os.sep}" for d in ("train", "experiments",
                                                                  "benchmarks"))
    items.sort(key=lambda item: 0 if any(part in str(item.path) for part in trains) else 1)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
