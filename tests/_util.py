"""Small helpers shared by the tests."""

import os
import socket

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The parity fixtures made from the official PyTorch code (`../shared/fixtures` beside the
#: checkout); tests that need them skip with a reason when the folder is absent.
FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures")


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def xla_flags(devices: int | None = None) -> str:
    """`XLA_FLAGS` for a process a test starts: this one's (conftest.py's compile flags) without
    its device count, and `devices` virtual CPU devices when given (None: the program's own
    choice, as a user's run makes it)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
