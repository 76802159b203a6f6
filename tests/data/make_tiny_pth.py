"""Writes tests/data/tiny_cbt.pth.tar, a torch-format checkpoint for the .pth reader tests.

Run from the repository root with torch installed (`pip install -e ".[compare]"`):
`python -m tests.data.make_tiny_pth`. The tests never import this script: they read the committed
file, and take its architecture from `tests/data/tiny.py`.
The weights come from `tests.reference_numpy.random_cbt_state_dict`; the file wraps them the way
the reference training script saves checkpoints: {'epoch', 'arch', 'state_dict' (with
DataParallel 'module.' prefixes), 'best_acc1', 'optimizer'}.
"""

import os

import numpy as np

from tests.data.tiny import TINY, TINY_PTH
from tests.reference_numpy import random_cbt_state_dict


def main() -> None:
    import torch  # only this script needs PyTorch

    sd = random_cbt_state_dict(np.random.default_rng(123), **TINY)
    state_dict = {"module." + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    # one non-contiguous tensor, as views are saved by torch
    key = "module.transformer.layers.0.1.fn.weight"
    state_dict[key] = torch.from_numpy(sd[key[7:]].T.copy()).t()
    checkpoint = {
        "epoch": 3, "arch": "Ours_tiny", "state_dict": state_dict,
        "best_acc1": torch.tensor(12.5),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(2, 3)}},
                      "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.99), "params": [0]}]},
    }
    torch.save(checkpoint, TINY_PTH)
    print("wrote", TINY_PTH, os.path.getsize(TINY_PTH), "bytes")


if __name__ == "__main__":
    main()
