"""The tiny CBT behind `tests/data/tiny_cbt.pth.tar` (no torch needed to read it).

`tests/data/make_tiny_pth.py` regenerates the file with PyTorch; the tests only read it.
"""

import os

TINY = dict(image_size=128, patch_size=16, num_classes=3, dim=16, depth=1, heads=2, dim_head=8)
TINY_PTH = os.path.join(os.path.dirname(__file__), "tiny_cbt.pth.tar")
