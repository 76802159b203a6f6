"""`python -m experiments.compare` end to end at tiny sizes: two models, two seeds, a resumed
run."""

import json
import os
import signal
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cbsa_jax.models import create
from experiments import _runs as experiments_runs
from experiments import compare
from experiments._runs import RESULT
from tests import _runs
from tests._configs import CONFIGS, tiny_flags
from train import cli, loop

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("compare")


def _tiny(data_dir: str) -> list[str]:
    """Overrides: one block, two steps of 32 images on `shapes/small` (32 px, 4 x 4 patches)."""
    return tiny_flags(data_dir=data_dir, dataset="shapes/small", num_train_steps=2,
                      eval_batch_size=100)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_shapes"))


@pytest.fixture(scope="module")
def compared(shapes_dir, tmp_path_factory):
    """One comparison, after a partial (interrupted) ViT run already in its workdir."""
    data_dir = shapes_dir
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
    assert payload["dataset"] == "shapes/small" and payload["dataset_version"] == "1.0.0"
    assert len(payload["runs"]) == 3  # cbt x 2 seeds, vit; the sweep point is cbt's seed 0
    assert {r["steps"] for r in payload["runs"]} == {2}
    for run in payload["runs"]:  # its eval curve and plateau measure come from metrics.jsonl
        assert run["curve"][-1] == [run["final_step"], run["final_accuracy"]]
        assert set(run["plateau"]) == {"from_step", "evaluations", "range", "holds"}
    ranges = [r["plateau"]["range"] for r in payload["runs"] if r["model"] == "cbt_nano"]
    known = [x for x in ranges if x is not None]  # None: a single evaluation is no range
    assert cbt["plateau_worst_seed"] == (max(known) if known else None)
    mean = compare.plateau(compare.mean_curve([r["curve"] for r in payload["runs"]
                                               if r["model"] == "cbt_nano"]), 2)
    assert (cbt["plateau_range"], cbt["plateau_holds"]) == (mean["range"], mean["holds"])
    # Train images/s: each row's step timed side by side before training, kept beside the runs.
    speed = payload["speed"]
    assert set(speed["steps"]) == {"cbt_nano", "vit_nano"} and speed["rounds"] == 5
    for row in rows.values():
        step = speed["steps"][row["model"]]
        assert len(step["wall_seconds"]) == 5 and step["batch_size"] == payload["recipe"][
            "batch_size"]
        assert row["images_per_sec"] == pytest.approx(step["batch_size"]
                                                      / np.median(step["wall_seconds"]))
        assert row["step_seconds"] == step["step_wall_seconds"]
        assert row["images_per_sec_in_runs"] > 0
    with open(os.path.join(out, "shapes", "step_times.json")) as f:
        assert json.load(f)["steps"] == speed["steps"]
    text = open(os.path.join(out, "shapes", "shapes.md")).read()
    assert "cbt_nano" in text and "vit_nano" in text and "centre box" in text
    assert "timed side by side" in text
    with Image.open(os.path.join(out, "shapes", "shapes.png")) as image:
        assert image.size[0] > 600 and image.size[1] > 300


def test_a_sweep_point_at_the_configs_cells_is_the_table_run(compared):
    _, _, payload = compared
    (point,) = payload["sweep"]
    assert point["representatives"] == 16 and point["cells"] == [4, 4]
    assert point["seeds"] == [0, 1]  # the sweep model's seeds, run once for both
    assert {r["workdir"].rsplit(os.sep, 2)[-2] for r in payload["runs"]} == {"cbt_nano",
                                                                             "vit_nano"}


def test_plan_names_one_workdir_per_run():
    table, sweep = compare.plan(["cbt_nano", "vit_nano"], 3, ["cbt_nano"], [2, 8, 14],
                                "cbt_nano", (8, 8))
    assert [s.name for s in table] == ["cbt_nano/seed0", "cbt_nano/seed1", "cbt_nano/seed2",
                                       "vit_nano/seed0"]
    assert [s.name for s in sweep] == [f"{run}/seed{s}" for run in
                                       ("cbt_nano_cells2x2", "cbt_nano", "cbt_nano_cells14x14")
                                       for s in range(3)]
    table, sweep = compare.plan(["cbt_nano", "vit_nano"], 2, None, [4], "cbt_nano", (8, 8))
    assert len(table) == 4 and [s.name for s in sweep] == ["cbt_nano_cells4x4/seed0",
                                                           "cbt_nano_cells4x4/seed1"]
    # A sweep model outside --seeds-for gets seed 0 only, in the sweep too.
    _, sweep = compare.plan(["vit_nano"], 3, ["vit_nano"], [4], "cbt_nano", (8, 8))
    assert [s.name for s in sweep] == ["cbt_nano_cells4x4/seed0"]


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
    assert again["speed"] == payload["speed"]  # timed once, read back
    assert sorted(os.listdir(results)) == ["shapes.json", "shapes.md", "shapes.png"]

    def interrupted(config, workdir, **kwargs):
        return {"stopped_by": "SIGTERM", "step": 1, "total_steps": 2}

    monkeypatch.setattr(loop, "run", interrupted)
    more = [a if a != "cbt_nano,vit_nano" else "cbt_nano,vit_nano,tost_nano" for a in argv]
    more += ["--speed-rounds", "0"]
    assert compare.main(more) == 3
    assert "rerun to resume" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "shapes", "tost_nano", "seed0", "result.json"))
    # The runs finished before the interrupted one are on record for another sitting.
    with open(os.path.join(out, "shapes", "shapes.partial.json")) as f:
        partial = json.load(f)
    assert partial["partial"] and partial["recipe"] == payload["recipe"]
    assert partial["dataset_version"] == payload["dataset_version"] == "1.0.0"
    assert partial["runs"] == payload["runs"]
    # ... with the rows whose every seed has finished (not ToST's), as the whole comparison
    # wrote them (this sitting timed no steps: the runs' own images/s)
    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in ("images_per_sec", "step_seconds")}
                for r in rows]

    assert [r["model"] for r in partial["table"]] == ["cbt_nano", "vit_nano"]
    assert partial["sweep"] and untimed(partial["sweep"]) == untimed(payload["sweep"])
    assert untimed(partial["table"]) == untimed(payload["table"])


def _runs_names(record: dict) -> list[str]:
    return [experiments_runs.run_name(r) for r in record["runs"]]


def _elsewhere(argv: list[str], out: str) -> list[str]:
    return [*argv[:argv.index("--out") + 1], out, *argv[argv.index("--out") + 2:]]


def test_runs_from_an_earlier_record_are_kept_not_trained(compared, monkeypatch, tmp_path,
                                                          capsys):
    """`--runs-from` the comparison's JSON in a new --out (another machine, a later sitting):
    every finished run is restored into its workdir and nothing is trained; a run the record
    lacks is trained; a whole comparison removes its partial record."""
    argv, out, payload = compared
    record = os.path.join(out, "shapes", "shapes.json")
    trained = []

    def fake_run(config, workdir, **kwargs):
        trained.append(workdir)
        return {"stopped_by": "SIGTERM", "step": 0, "total_steps": 2}

    monkeypatch.setattr(loop, "run", fake_run)
    elsewhere = _elsewhere(argv, str(tmp_path / "elsewhere"))
    results = str(tmp_path / "published")
    assert compare.main([*elsewhere, "--runs-from", record, "--speed-rounds", "0",
                         "--results", results]) == 0
    assert trained == []
    with open(os.path.join(results, "shapes.json")) as f:
        again = json.load(f)
    for ours, theirs in zip(again["runs"], payload["runs"], strict=True):
        assert ours["restored_from"] == record
        assert ours["workdir"].startswith(str(tmp_path / "elsewhere"))
        assert {k: v for k, v in ours.items() if k not in ("workdir", "restored_from")} == \
            {k: v for k, v in theirs.items() if k != "workdir"}
        assert ours["machine"]["processor"]  # where the run finished
    assert [r["final_accuracy"] for r in again["table"]] == \
        [r["final_accuracy"] for r in payload["table"]]
    assert sorted(os.listdir(results)) == ["shapes.json", "shapes.md", "shapes.png"]
    assert "kept from" in capsys.readouterr().out
    assert "Runs finished on" not in compare.markdown(again)  # one machine
    again["runs"][0]["machine"] = {"processor": "Intel Xeon", "device": "cpu"}
    assert "Runs finished on: Intel Xeon (cpu) (1), " in compare.markdown(again)
    del again["runs"][1]["machine"]
    assert "; 1 without a recorded machine." in compare.markdown(again)
    # A row the record lacks is trained (here: stopped at once), and the partial record, written
    # before the first run (here that row), holds the restored runs.
    more = [a if a != "cbt_nano,vit_nano" else "tost_nano,cbt_nano,vit_nano" for a in elsewhere]
    fresh = str(tmp_path / "fresh")
    assert compare.main([*_elsewhere(more, fresh), "--runs-from", record, "--speed-rounds",
                         "0", "--results", results]) == 3
    assert trained == [os.path.join(fresh, "shapes", "tost_nano", "seed0")]
    with open(os.path.join(results, "partial", "shapes.json")) as f:
        assert len(json.load(f)["runs"]) == len(payload["runs"])
    # A comparison that has finished nothing writes no record.
    empty = str(tmp_path / "empty")
    assert compare.main([*_elsewhere(more, empty), "--speed-rounds", "0"]) == 3
    assert os.listdir(os.path.join(empty, "shapes")) == ["tost_nano"]
    # A comparison of fewer runs than the record keeps the record, with the runs it lacks.
    fewer = [a if a != "cbt_nano,vit_nano" else "cbt_nano" for a in elsewhere]
    assert compare.main([*_elsewhere(fewer, str(tmp_path / "fewer")), "--runs-from", record,
                         "--speed-rounds", "0", "--results", results]) == 0
    assert "it holds runs outside this comparison (vit_nano/seed0)" in capsys.readouterr().out
    with open(os.path.join(results, "partial", "shapes.json")) as f:
        kept = json.load(f)
    assert sorted(_runs_names(kept)) == sorted(_runs_names(payload))
    assert kept["dataset_version"] == "1.0.0" and kept["mass"] == 0.6


def test_name_sets_the_comparisons_folder_and_files(compared, tmp_path):
    """`--name`: another budget of the same config beside the first, in its own folder and files
    (here from the first's runs, so nothing is trained)."""
    argv, out, payload = compared
    record = os.path.join(out, "shapes", "shapes.json")
    elsewhere = _elsewhere(argv, str(tmp_path / "elsewhere"))
    results = str(tmp_path / "published")
    assert compare.main([*elsewhere, "--name", "shapes_longer", "--runs-from", record,
                         "--speed-rounds", "0", "--results", results]) == 0
    assert sorted(os.listdir(results)) == ["shapes_longer.json", "shapes_longer.md",
                                           "shapes_longer.png"]
    assert os.path.isdir(tmp_path / "elsewhere" / "shapes_longer" / "cbt_nano" / "seed0")
    with open(os.path.join(results, "shapes_longer.json")) as f:
        again = json.load(f)
    assert again["name"] == "shapes_longer" and "--name shapes_longer" in again["command"]
    assert len(again["runs"]) == len(payload["runs"])


def test_runs_from_a_record_of_another_recipe_is_one_error(compared, tmp_path, capsys):
    argv, out, _ = compared
    record = os.path.join(out, "shapes", "shapes.json")
    elsewhere = _elsewhere(argv, str(tmp_path / "elsewhere"))
    assert compare.main([*elsewhere, "--runs-from", record, "--config.learning_rate=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--runs-from" in err[0] and "fields learning_rate" in err[0], err
    with open(record) as f:
        older = {**json.load(f), "dataset_version": "0.9.0"}
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert compare.main([*elsewhere, "--runs-from", str(tmp_path / "older.json")]) == 2
    err = capsys.readouterr().err
    assert "was made on version 0.9.0 of the data set, this comparison trains on 1.0.0" in err
    del older["dataset_version"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert compare.main([*elsewhere, "--runs-from", str(tmp_path / "older.json")]) == 2
    assert "made on an unrecorded version of the data set" in capsys.readouterr().err
    (tmp_path / "older.json").write_text(json.dumps({**older, "dataset_version": "1.0.0",
                                                     "mass": 0.5}))
    assert compare.main([*elsewhere, "--runs-from", str(tmp_path / "older.json")]) == 2
    assert "at --mass 0.5, this comparison at 0.6" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"runs": []}')
    for bad in (str(tmp_path / "other.json"), str(tmp_path / "missing.json")):
        assert compare.main([*elsewhere, "--runs-from", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--runs-from: " in err[0] and bad in err[0], err
    assert not os.path.exists(tmp_path / "elsewhere")


BAD = [
    (["--models", "cbt_nano"], "the following arguments are required: --config"),
    (["--config", "{shapes}", "--models", "cbt_nano,nope"], "--models: unknown presets ['nope']"),
    (["--config", "{lm}"], "--config: compare trains image classifiers and segmenters, the "
                           "config's task is 'language'"),
    (["--config", "{shapes}", "--decoders", "cbt"], "--decoders: only for a segmentation config, "
                                                    "the config's task is 'classification'"),
    (["--config", "{seg}", "--decoders", "cbt,mlp"], "--decoders: expected some of ('cbt', "
                                                     "'softmax', 'linear'), got ['mlp']"),
    (["--config", "{seg}", "--decoders", ""], "--decoders: expected some of"),
    (["--config", "{nowhere}"], "--config: no config file at {nowhere}"),
    (["--config", "{shapes}", "--out", "{file}"], "--out: {file} is a file"),
    (["--config", "{shapes}", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--config", "{shapes}", "--seeds", "-2"], "--seeds must be >= 1, got -2"),
    (["--config", "{shapes}", "--sweep-cells", "two"], "--sweep-cells: expected comma-separated"),
    (["--config", "{shapes}", "--sweep-cells", "4,0"], "--sweep-cells must be positive"),
    (["--config", "{shapes}", "--mass", "0"], "--mass must be in (0, 1], got 0.0"),
    (["--config", "{shapes}", "--mass", "nan"], "--mass must be in (0, 1], got nan"),
    (["--config", "{shapes}", "--mass", "1.5"], "--mass must be in (0, 1], got 1.5"),
    (["--config", "{shapes}", "--speed-rounds", "-1"], "--speed-rounds must be >= 0, got -1"),
    (["--config", "{shapes}", "--models", ""], "nothing to do: give --models and/or"),
    (["--config", "{shapes}", "--name", "../up"], "--name: expected a file name of letters"),
    (["--config", "{shapes}", "--name", ""], "--name: expected a file name of letters"),
    (["--config", "{shapes}", "--config.batch_size=0"], "config.batch_size must be an integer"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_arguments_are_one_line_naming_the_argument(args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    paths = {"shapes": os.path.join(CONFIGS, "shapes.py"),
             "lm": os.path.join(CONFIGS, "lm_stdlib.py"),
             "seg": os.path.join(CONFIGS, "shapes64_seg.py"),
             "nowhere": str(tmp_path / "nowhere.py"), "file": str(tmp_path / "file")}
    args = [a.format(**paths) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = compare.main(args)
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**paths) in err[0]
    assert out == "" and not os.path.exists(tmp_path / "out")


def test_a_run_workdir_holding_another_model_is_one_error(shapes_dir, tmp_path, capsys):
    """A stale workdir under --out (another model's checkpoints where cbt_nano's go) stops the
    comparison with one line, before anything is trained over it."""
    argv = ["--config", os.path.join(CONFIGS, "shapes.py"), "--models", "cbt_nano", "--out",
            str(tmp_path), *_tiny(shapes_dir)]
    args, overrides = compare.parse_args(argv)
    base = cli.load_config(args.config, overrides)
    config = compare.run_config(base, compare.RunSpec("vit_nano", 0))
    workdir = tmp_path / "shapes" / "cbt_nano" / "seed0"
    model = create("vit_nano", num_classes=5, image_size=32, depth=1, patch_size=8)
    loop.save_initial(model, config, str(workdir), num_classes=5, image_size=(32, 32))
    assert compare.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: cbt_nano/seed0: checkpoint {workdir}/checkpoints/0 holds a 'classification' "
        f"run of 'vit_nano', the config trains 'classification' with 'cbt_nano'"), err
    assert sorted(os.listdir(workdir / "checkpoints")) == ["0"]


@pytest.mark.slow
def test_compare_killed_mid_run_resumes_that_run_exactly(shapes_dir, tmp_path):
    """SIGKILL while a run trains; the same command again resumes it from its last checkpoint
    and ends with the metrics of the run that never stopped."""
    out = tmp_path / "out"
    argv = ["--config", os.path.join(CONFIGS, "shapes.py"), "--models", "cbt_nano", "--out",
            str(out), "--speed-rounds", "0", *_tiny(shapes_dir), "--config.num_train_steps=6",
            "--config.checkpoint_every_steps=1", "--config.eval_every_steps=3"]
    run = out / "shapes" / "cbt_nano" / "seed0"
    proc = _runs.start([sys.executable, "-m", "experiments.compare", *argv], tmp_path / "log",
                       _runs.env())
    caught = _runs.wait_for(lambda: _runs.committed_steps(run) and _runs.steps_done(run) >
                            _runs.committed_steps(run)[-1], [proc])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, (tmp_path / "log").read_text()
    resumed_from, lines = _runs.committed_steps(run)[-1], _runs.line_count(run)
    assert resumed_from < 6 and not (run / RESULT).exists()

    assert compare.main(argv) == 0
    assert _runs.train_steps(run, lines) == list(range(resumed_from + 1, 7))
    args, overrides = compare.parse_args(argv)
    config = compare.run_config(cli.load_config(args.config, overrides),
                                compare.RunSpec("cbt_nano", 0))
    reference = loop.run(config, str(tmp_path / "reference"))
    ours, theirs = _runs.final_metrics(run), _runs.final_metrics(tmp_path / "reference")
    assert set(ours) == set(theirs)
    for key, values in theirs.items():
        assert ours[key] == pytest.approx(values, abs=1e-6), key
    with open(run / RESULT) as f:
        result = json.load(f)
    assert result["final_accuracy"] == pytest.approx(reference["final_eval"]["accuracy"])


def test_plan_gives_every_model_every_decoder():
    table, sweep = compare.plan(["cbt_nano", "vit_nano"], 2, ["cbt_nano"], [2], "cbt_nano",
                                (8, 8), ("cbt", "linear"), "cbt")
    assert [s.name for s in table] == [
        "cbt_nano_cbt_decoder/seed0", "cbt_nano_cbt_decoder/seed1",
        "cbt_nano_linear_decoder/seed0", "cbt_nano_linear_decoder/seed1",
        "vit_nano_cbt_decoder/seed0", "vit_nano_linear_decoder/seed0"]
    assert [s.name for s in sweep] == ["cbt_nano_cbt_decoder_cells2x2/seed0",
                                       "cbt_nano_cbt_decoder_cells2x2/seed1"]


def test_compare_ranks_segmenters_by_miou(tmp_path):
    """A segmentation config (one run: the cheapest decoder, linear; the plan of every encoder with
    every decoder is tested above): the ranking metric is mIoU, read from the run's eval lines, and
    the table names the decoder and its parameters."""
    out = tmp_path / "out"
    argv = ["--config", os.path.join(CONFIGS, "shapes64_seg.py"), "--models", "cbt_nano",
            "--decoders", "linear", "--out", str(out), "--speed-rounds", "0",
            *tiny_flags(data_dir=str(tmp_path / "data"), dataset="shapes64/small",
                        image_size=32, num_train_steps=2, batch_size=10, eval_batch_size=50,
                        eval_every_steps=1)]
    assert compare.main(argv) == 0
    with open(out / "shapes64_seg" / "shapes64_seg.json") as f:
        payload = json.load(f)
    assert payload["task"] == "segmentation" and payload["metric"] == "miou"
    (row,), (run,) = payload["table"], payload["runs"]
    assert row["decoder"] == "linear" and row["decoder_params"] == (64 + 1) * 6  # dim 64, 6 classes
    assert row["params"] > row["decoder_params"]
    lines = [json.loads(line) for line in open(os.path.join(run["workdir"], "metrics.jsonl"))]
    evals = [line for line in lines if line["split"] == "test"]
    assert [e["step"] for e in evals] == [1, 2]
    assert run["curve"] == [[e["step"], e["miou"]] for e in evals]
    assert row["final_miou"]["mean"] == run["final_miou"] == evals[-1]["miou"]
    assert row["best_miou"]["mean"] == max(e["miou"] for e in evals)
    assert row["pixel_accuracy"]["mean"] == evals[-1]["pixel_accuracy"]
    assert "accuracy" not in run["final_eval"] and "segmentation" not in run
    assert payload["baselines"] == {}
    assert row["images_per_sec"] == row["images_per_sec_in_runs"] == run["images_per_sec_in_run"]
    text = (out / "shapes64_seg" / "shapes64_seg.md").read_text()
    assert "final mIoU" in text and "decoder params" in text and "Jaccard" not in text


def test_the_plateau_is_the_last_fifths_accuracy_range():
    evals = [(100, 0.50), (200, 0.80), (300, 0.90), (400, 0.95), (500, 0.953)]
    p = compare.plateau(evals, total_steps=500)  # the last fifth starts at step 400
    assert p["from_step"] == 400 and p["evaluations"] == 2
    assert p["range"] == pytest.approx(0.003) and p["holds"]
    moving = compare.plateau(evals[:-1] + [(500, 0.97)], total_steps=500)
    assert moving["range"] == pytest.approx(0.02) and not moving["holds"]
    assert not compare.plateau([(500, 0.9)], total_steps=500)["holds"]  # one point is no range


def test_a_rows_plateau_is_its_seeds_mean_curve_with_the_worst_seed_beside_it():
    def run(*accuracies):
        curve = [[100 * (i + 1), a] for i, a in enumerate(accuracies)]
        return {"curve": curve, "steps": 500, "plateau": compare.plateau(curve, 500)}

    # each seed moves by 0.6 point over the last fifth, in opposite directions: the mean is flat
    seeds = [run(0.5, 0.8, 0.9, 0.950, 0.956), run(0.5, 0.8, 0.9, 0.956, 0.950)]
    assert not any(s["plateau"]["holds"] for s in seeds)
    found = compare.row_plateau(seeds)
    assert found["plateau_range"] == pytest.approx(0.0) and found["plateau_holds"]
    assert found["plateau_worst_seed"] == pytest.approx(0.006)
    # both climbing: the mean moves too
    climbing = compare.row_plateau([run(0.5, 0.8, 0.9, 0.95, 0.96), run(0.5, 0.8, 0.9, 0.94, 0.96)])
    assert climbing["plateau_range"] == pytest.approx(0.015) and not climbing["plateau_holds"]
    # only the steps every seed evaluated are averaged
    assert compare.mean_curve([[[1, 0.2], [2, 0.4]], [[2, 0.6], [3, 0.9]]]) == [(2, 0.5)]
    # a run without a curve (a file made before the measure) is no plateau
    assert not compare.row_plateau([{"plateau": {"range": 0.001}}])["plateau_holds"]


def test_step_times_are_kept_and_timed_again_together_for_a_new_row(tmp_path, monkeypatch):
    calls = []

    def measure(configs, *, rounds):
        calls.append(sorted(configs))
        return {key: {"step_wall_seconds": 0.5, "per_sec": 2.0} for key in configs}

    monkeypatch.setattr(experiments_runs, "measure_step_times", measure)
    path = str(tmp_path / "step_times.json")
    first = experiments_runs.kept_step_times(path, {"a": None, "b": None}, rounds=3)
    assert set(first) == {"a", "b"} and calls == [["a", "b"]]
    assert experiments_runs.kept_step_times(path, {"a": None}, rounds=3) == first  # read back
    experiments_runs.kept_step_times(path, {"a": None, "c": None}, rounds=3)
    assert calls[-1] == ["a", "c"]  # a new row: every row timed again, side by side
    with open(path, "w") as f:  # the files lm_compare wrote before: the steps alone
        json.dump({"a": {"step_cpu_seconds": 1.0}}, f)
    assert experiments_runs.kept_step_times(path, {"a": None}, rounds=3) == {
        "a": {"step_cpu_seconds": 1.0}}
    assert len(calls) == 2


def test_a_resumed_run_reports_the_wall_clock_of_every_sitting(monkeypatch, tmp_path):
    """A sitting that a SIGTERM ends records its wall clock; the finished run's `wall_seconds`
    is the sum over its sittings, and `sittings` counts them."""
    calls = []

    def fake_run(config, workdir):
        calls.append(workdir)
        time.sleep(0.05)
        done = len(calls) == 3
        return {"stopped_by": "finished" if done else "SIGTERM", "step": 10 if done else 4,
                "total_steps": 10}

    monkeypatch.setattr(experiments_runs.loop, "run", fake_run)
    workdir = str(tmp_path)
    for _ in range(2):
        with pytest.raises(experiments_runs.Interrupted, match="stopped at step 4 of 10"):
            experiments_runs.train_once(None, workdir, dict)
    with open(tmp_path / experiments_runs.SITTINGS) as f:
        first_two = json.load(f)["wall_seconds"]
    assert len(first_two) == 2 and all(s >= 0.05 for s in first_two)
    result = experiments_runs.train_once(None, workdir, lambda summary: {"step": summary["step"]})
    assert result["sittings"] == 3 and result["step"] == 10 and result["machine"]["processor"]
    assert result["wall_seconds"] >= sum(first_two) + 0.05
    assert experiments_runs.train_once(None, workdir, dict) == result and len(calls) == 3
