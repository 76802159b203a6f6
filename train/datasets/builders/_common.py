"""What the builders share: turning a split's arrays into TFDS examples."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["examples"]


def examples(arrays: Mapping[str, np.ndarray], keys: np.ndarray | None = None
             ) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(key, example)` for every row of `arrays` (features with a leading example axis); the
    key is the row's `index` feature unless `keys` are given (TFDS orders the stored examples by
    their keys' hashes, so the same keys give the same prepared files)."""
    keys = arrays["index"] if keys is None else keys
    for row, key in enumerate(np.asarray(keys)):
        yield int(key), {name: value[row] for name, value in arrays.items()}
