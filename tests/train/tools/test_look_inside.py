"""The three inspection CLIs end to end on a tiny checkpoint made here."""

import json

import numpy as np
import pytest
from PIL import Image

from experiments import synthetic_compression as synthetic
from tests._configs import tiny_config
from train import loop
from train.tools import attention_jaccard as segment_eval
from train.tools import look_inside as interpret_cli

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("look_inside")


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """Two training steps of a one-block CBT on `shapes/small` (1,000 / 200 images)."""
    data_dir = str(tmp_path_factory.mktemp("tfds_shapes"))
    workdir = str(tmp_path_factory.mktemp("shapes_run"))
    loop.run(tiny_config("shapes.py", dataset="shapes/small", data_dir=data_dir,
                         num_train_steps=2, **{"model.depth": 2}), workdir)
    return workdir


def test_interpret_writes_maps_plots_and_numbers(shapes_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert interpret_cli.main(["--workdir", shapes_run, "--out", str(out), "--num_images", "2",
                               "--layers", "all"]) == 0
    result = json.loads((out / "interpret.json").read_text())
    assert result["attention"] == "cbsa" and len(result["layers"]) == 2
    for layer in result["layers"]:
        assert layer["coding_rate"] > 0 and layer["coding_rate_normalized"] > 0
        assert 0 <= layer["sparsity"] <= 1
    expected = {"coding_rate.png", "sparsity.png"} | {
        f"layer{i}_{kind}.png" for i in (0, 1) for kind in ("cls", "representatives",
                                                            "assignment")}
    assert set(result["files"]) == expected
    for name in expected:
        with Image.open(out / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_interpret_on_image_files(shapes_run, tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), np.uint8)).save(
            path)
        paths.append(str(path))
    out = tmp_path / "files"
    assert interpret_cli.main(["--workdir", shapes_run, "--out", str(out), "--images",
                               *paths]) == 0
    result = json.loads((out / "interpret.json").read_text())
    assert result["images"] == paths and len(result["predictions"]) == 2
    assert interpret_cli.main(["--workdir", shapes_run, "--out", str(out), "--images",
                               str(tmp_path / "missing.png")]) == 2


def test_segment_eval_scores_masks(shapes_run, tmp_path):
    path = tmp_path / "seg.json"
    assert segment_eval.main(["--workdir", shapes_run, "--limit", "40", "--json",
                              str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["examples"] == 40
    for key in ("cls_attention", "cls_attention_best_head", "assignment", "center",
                "everything"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["everything"] < 0.5  # shapes cover well under half of the image


def test_synthetic_compression_lowers_the_rate(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--steps", "4", "--tokens", "128"]) == 0
    result = json.loads((tmp_path / "synthetic_compression.json").read_text())
    for key in ("coding_rate", "coding_rate_surrogate"):
        rates = result[key]
        assert len(rates) == 5 and all(b < a for a, b in zip(rates, rates[1:], strict=False))
    assert len(result["principal_angles_deg"][0]) == 4
    assert (tmp_path / "synthetic_compression.png").exists()
    assert "R^c per exact step" in capsys.readouterr().out
    assert synthetic.main(["--out", str(tmp_path), "--subspaces", "9"]) == 2
