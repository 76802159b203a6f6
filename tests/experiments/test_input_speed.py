"""`python -m experiments.input_speed` at a tiny size: both inputs train digits, the table's ratio
is the ratio of the runs' speeds, and bad flags exit 2."""

import json

import pytest

from experiments import input_speed


def test_both_inputs_train_and_the_ratio_is_theirs(tmp_path):
    out = tmp_path / "input_speed.json"
    assert input_speed.main(["--configs", "digits", "--steps", "20", "--rounds", "1",
                             "--data_dir", str(tmp_path / "tfds"), "--json", str(out),
                             "--config.model.depth=1", "--config.batch_size=64"]) == 0
    payload = json.loads(out.read_text())
    assert payload["overrides"] == {"model.depth": "1", "batch_size": "64"}
    runs = {r["input"]: r for r in payload["runs"]}
    assert set(runs) == {"memory", "tfds"}
    for run in runs.values():
        assert run["images_per_sec"] > 0 and run["wall_seconds"] > 0
        assert 0 <= run["test_accuracy"] <= 1
    (row,) = payload["rows"]
    assert row["speed_ratio"] == pytest.approx(runs["memory"]["images_per_sec"]
                                               / runs["tfds"]["images_per_sec"])
    assert payload["machine"]["cpu_vendor"]


@pytest.mark.parametrize("argv,message", [
    (["--steps", "5"], "--steps must be >= 20"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--configs", ","], "--configs: give at least one"),
    (["--steps", "20", "--config.no_such_field=1"], "no_such_field"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    assert input_speed.main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_config_it_cannot_read_is_one_line(tmp_path, capsys):
    assert input_speed.main(["--configs", "nonexistent", "--steps", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nonexistent" in err and len(err.splitlines()) == 1
