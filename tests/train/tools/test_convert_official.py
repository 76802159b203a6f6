"""`python -m train.tools.convert_official`: an official checkpoint becomes a training
checkpoint."""

import numpy as np

from cbsa_jax.convert import cbt_from_torch
from tests._models import forward
from tests.data.tiny import TINY, TINY_PTH
from train.loop import load_experiment
from train.tools import convert_official as convert_cli

PTH = TINY_PTH
OVERRIDES = ["--config.model.name=cbt_tiny", "--config.model.dim=16", "--config.model.depth=1",
             "--config.model.heads=2", "--config.model.dim_head=8", "--config.image_size=128",
             "--config.model.patch_size=16", "--config.model.cells=(8,8)", "--config.mesh.data=1"]


def test_converted_checkpoint_restores_to_the_reference_model(tmp_path, capsys):
    code = convert_cli.main(["--checkpoint", PTH, "--num_classes", "3", "--workdir",
                             str(tmp_path), *OVERRIDES])
    out = capsys.readouterr().out
    assert code == 0 and "--config.model.selection=reference" in out
    exp, state, meta = load_experiment(str(tmp_path))
    assert meta["step"] == 0 and meta["converted_from"].endswith("tiny_cbt.pth.tar")
    assert exp.config.model.selection == "reference"
    images = np.random.default_rng(0).normal(size=(2, 128, 128, 3)).astype(np.float32)
    expected = forward(cbt_from_torch(PTH, **TINY), images)
    np.testing.assert_allclose(forward(exp.model(state), images), expected, atol=1e-5)


def test_convert_refuses_a_non_cbt_preset(tmp_path, capsys):
    code = convert_cli.main(["--checkpoint", PTH, "--workdir", str(tmp_path),
                             "--config.model.name=crate_cbt_tiny", "--config.image_size=128",
                             "--config.model.patch_size=16", "--config.model.cells=(8,8)"])
    assert code == 2
    assert "is not a CBT" in capsys.readouterr().err
