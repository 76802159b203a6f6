"""The segmentation task end to end: shapes64 training, resume, metrics, the segment CLI, bad
labels and the ADE20K config on mock TFDS data."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests._configs import tiny_config
from train import __main__ as train_main
from train import config as config_lib
from train import loop
from train.metrics import read_jsonl
from train.tools import predict_masks as segment

CONFIGS = os.path.join(os.path.dirname(config_lib.DEFAULT_CONFIG))


@pytest.fixture(scope="module")
def shapes64_dir(tmp_path_factory):
    from train.datasets import builders as datasets

    path = str(tmp_path_factory.mktemp("tfds_seg"))
    datasets.prepare("shapes64/small", path)
    return path


def _config(name: str, **overrides):
    return tiny_config(name, **{"num_train_steps": 2, **overrides})


def test_shapes64_trains_resumes_and_the_segment_cli_agrees(shapes64_dir, tmp_path):
    kw = dict(dataset="shapes64/small", data_dir=shapes64_dir, batch_size=10, eval_batch_size=50,
              **{"model.depth": 1})
    run = str(tmp_path / "run")
    first = loop.run(_config("shapes64_seg.py", **kw), run, stop_at=1)
    assert first["step"] == 1 and first["stopped_by"] == "stop_at"
    second = loop.run(_config("shapes64_seg.py", **kw), run)
    assert second["step"] == 2
    final = second["final_eval"]
    assert final["examples"] == 100 and final["pixels"] == 100 * 64 * 64
    assert 0 <= final["miou"] <= 1 and 0 <= final["pixel_accuracy"] <= 1
    assert sorted(k for k in final if k.startswith("iou_")) == [f"iou_{c}" for c in range(6)]
    assert second["best_miou"] == final["miou"]
    lines = read_jsonl(os.path.join(run, "metrics.jsonl"))
    assert [line["step"] for line in lines if line["split"] == "train"] == [1, 2]
    assert "accuracy" in lines[0]  # train pixel accuracy

    out = str(tmp_path / "masks")
    assert segment.main(["--workdir", run, "--out", out, "--images", "3", "--rows", "2"]) == 0
    assert sorted(os.listdir(out)) == ["examples.png", "metrics.json", "pred_00000.png",
                                       "pred_00001.png", "pred_00002.png"]
    with open(os.path.join(out, "metrics.json")) as f:
        result = json.load(f)
    np.testing.assert_allclose(result["miou"], final["miou"], rtol=1e-9)
    np.testing.assert_allclose(result["pixel_accuracy"], final["pixel_accuracy"], rtol=1e-9)
    from matplotlib import image as mpimg

    assert mpimg.imread(os.path.join(out, "examples.png")).shape[:2] == (128, 64 * 3 + 4)


def test_bad_segmentation_inputs_exit_2_with_one_line(shapes64_dir, tmp_path, capsys):
    base = ["--config", os.path.join(CONFIGS, "shapes64_seg.py"), "--workdir",
            str(tmp_path / "run"), "--config.dataset=shapes64/small",
            f"--config.data_dir={shapes64_dir}", "--config.mesh.data=1",
            "--config.progress=False", "--config.num_train_steps=1", "--config.batch_size=10"]
    # shapes64 has classes 0..5: with 4 classes, labels 4 and 5 are neither classes nor ignored
    assert train_main.main([*base, "--config.segmentation.num_classes=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels [4, 5] outside [0, 4)" in err[0], err
    assert train_main.main([*base, "--config.image_size=62"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "divisible by the patch size 8" in err[0], err
    assert segment.main(["--workdir", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "--workdir: no directory" in capsys.readouterr().err


def test_ade20k_config_one_step_on_mock_data(tmp_path):
    """configs/ade20k_cbt_tiny.py through TFDS scene_parse150 (mocked), shrunk to CPU size (one
    block, 8 x 8 patches of 80 x 80 images: the 10 x 10 grid the reference decoder's cells need):
    annotations 0..150 with label 0 ignored, 150 classes."""
    c = _config("ade20k_cbt_tiny.py", data_dir=str(tmp_path / "tfds"), image_size=80,
                batch_size=2, num_train_steps=1, checkpoint_every_steps=1,
                **{"model.depth": 1, "model.patch_size": 8, "model.dtype": "float32"})
    assert c.segmentation.num_classes == 150 and c.segmentation.reduce_zero_label
    with tfds.testing.mock_data(num_examples=4, max_value=151):
        summary = loop.run(c, str(tmp_path / "run"))
    assert summary["step"] == 1
    final = summary["final_eval"]
    assert final["examples"] == 4 and np.isfinite(final["loss"]) and 0 <= final["miou"] <= 1
    assert len([k for k in final if k.startswith("iou_")]) == 150
