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


def free_port() -> int:
    """A TCP port on localhost that nothing listens on (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
