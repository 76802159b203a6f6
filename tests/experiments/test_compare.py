"""`python -m experiments.compare` end to end at tiny sizes: two models, two seeds, a resumed
run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from experiments import compare
from tests._configs import CONFIGS, tiny_flags
from train import cli, loop


def _tiny(data_dir: str) -> list[str]:
    """Overrides: one block, two steps of 32 images on `shapes/small` (32 px, 4 x 4 patches)."""
    return tiny_flags(data_dir=data_dir, dataset="shapes/small", num_train_steps=2,
                      eval_batch_size=100)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison, after a partial (interrupted) ViT run already in its workdir."""
    data_dir = str(tmp_path_factory.mktemp("tfds_shapes"))
    out = str(tmp_path_factory.mktemp("compare"))
    argv = ["--config", os.path.join(CONFIGS, "shapes.py"), "--models", "cbt_nano,vit_nano",
            "--seeds", "2", "--seeds-for", "cbt_nano", "--sweep-cells", "4", "--out", out,
            *_tiny(data_dir)]
    args, overrides = compare.parse_args(argv)
    base = cli.load_config(args.config, overrides)
    partial = os.path.join(out, "shapes", "vit_nano", "seed0")
    summary = loop.run(compare.run_config(base, compare.RunSpec("vit_nano", 0)), partial,
                       stop_at=1)
    assert summary["stopped_by"] == "stop_at"
    assert compare.main(argv) == 0
    with open(os.path.join(out, "shapes", "shapes.json")) as f:
        return argv, out, json.load(f)


def test_compare_writes_the_table_of_every_model(compared):
    _, out, payload = compared
    rows = {r["model"]: r for r in payload["table"]}
    assert list(rows) == ["cbt_nano", "vit_nano"]
    cbt, vit = rows["cbt_nano"], rows["vit_nano"]
    assert cbt["seeds"] == [0, 1] and vit["seeds"] == [0]
    finals = [r["final_accuracy"] for r in payload["runs"] if r["model"] == "cbt_nano"]
    assert cbt["final_accuracy"]["n"] == 2
    assert cbt["final_accuracy"]["mean"] == pytest.approx(np.mean(finals))
    assert cbt["final_accuracy"]["std"] == pytest.approx(np.std(finals, ddof=1))
    assert vit["final_accuracy"]["n"] == 1 and vit["final_accuracy"]["std"] == 0
    assert cbt["representatives"] == 16 and vit["representatives"] is None
    assert cbt["params"] > 0 and vit["params"] > 0 and cbt["params"] != vit["params"]
    for row in rows.values():
        assert row["gflops_per_image"] > 0 and row["images_per_sec"] > 0
        for key in ("final_accuracy", "best_accuracy", "jaccard", "jaccard_best_head"):
            assert 0 <= row[key]["mean"] <= 1, key
        assert row["best_accuracy"]["mean"] >= row["final_accuracy"]["mean"]
    base = payload["baselines"]
    assert 0 < base["center"] < 1 and 0 < base["everything"] < 1
    assert len(payload["runs"]) == 3  # cbt x 2 seeds, vit; the sweep point is cbt's seed 0
    assert {r["steps"] for r in payload["runs"]} == {2}
    text = open(os.path.join(out, "shapes", "shapes.md")).read()
    assert "cbt_nano" in text and "vit_nano" in text and "centre box" in text
    with Image.open(os.path.join(out, "shapes", "shapes.png")) as image:
        assert image.size[0] > 600 and image.size[1] > 300


def test_a_sweep_point_at_the_configs_cells_is_the_table_run(compared):
    _, _, payload = compared
    (point,) = payload["sweep"]
    assert point["representatives"] == 16 and point["cells"] == [4, 4]
    assert point["seeds"] == [0]
    assert {r["workdir"].rsplit(os.sep, 2)[-2] for r in payload["runs"]} == {"cbt_nano",
                                                                             "vit_nano"}


def test_plan_names_one_workdir_per_run():
    table, sweep = compare.plan(["cbt_nano", "vit_nano"], 3, ["cbt_nano"], [2, 8, 14],
                                "cbt_nano", (8, 8))
    assert [s.name for s in table] == ["cbt_nano/seed0", "cbt_nano/seed1", "cbt_nano/seed2",
                                       "vit_nano/seed0"]
    assert [s.name for s in sweep] == ["cbt_nano_cells2x2/seed0", "cbt_nano/seed0",
                                       "cbt_nano_cells14x14/seed0"]
    table, _ = compare.plan(["cbt_nano", "vit_nano"], 2, None, None, "cbt_nano", (8, 8))
    assert len(table) == 4


def test_fewer_representatives_cost_fewer_forward_flops():
    from flax import nnx

    from cbsa_jax.models import create

    flops = {}
    for k in (1, 4):
        model = nnx.eval_shape(lambda k=k: create("cbt_nano", num_classes=5, image_size=16,
                                                  depth=1, cells=(k, k)))
        model.eval()
        flops[k] = compare.forward_gflops(model, (16, 16, 3))
    assert 0 < flops[1] < flops[4]


def test_an_interrupted_run_continues_from_its_checkpoint(compared):
    _, out, _ = compared
    lines = [json.loads(line) for line in open(os.path.join(out, "shapes", "vit_nano", "seed0",
                                                            "metrics.jsonl"))]
    train_steps = [line["step"] for line in lines if line["split"] == "train"]
    assert train_steps == [1, 2]  # step 1 from the partial run, not trained again


def test_rerun_skips_finished_runs_and_stops_on_an_interrupted_one(compared, monkeypatch,
                                                                   capsys):
    argv, out, payload = compared

    def must_not_train(config, workdir, **kwargs):
        raise AssertionError(f"retrained {workdir}")

    monkeypatch.setattr(loop, "run", must_not_train)
    results = os.path.join(out, "published")
    assert compare.main([*argv, "--results", results]) == 0
    with open(os.path.join(results, "shapes.json")) as f:
        again = json.load(f)
    assert again["table"] == payload["table"] and again["sweep"] == payload["sweep"]
    assert sorted(os.listdir(results)) == ["shapes.json", "shapes.md", "shapes.png"]

    def interrupted(config, workdir, **kwargs):
        return {"stopped_by": "SIGTERM", "step": 1, "total_steps": 2}

    monkeypatch.setattr(loop, "run", interrupted)
    more = [a if a != "cbt_nano,vit_nano" else "cbt_nano,vit_nano,tost_nano" for a in argv]
    assert compare.main(more) == 3
    assert "rerun to resume" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "shapes", "tost_nano", "seed0", "result.json"))


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    config = os.path.join(CONFIGS, "shapes.py")
    assert compare.main(["--config", config, "--models", "cbt_nano,nope", "--out",
                         str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--config", config, "--seeds", "0"])
    with pytest.raises(SystemExit):
        compare.main(["--config", config, "--sweep-cells", "two"])
    assert not any(tmp_path.iterdir())
