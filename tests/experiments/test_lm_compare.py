"""`python -m experiments.lm_compare` end to end at tiny sizes: two nano LMs on `stdlib_bytes/small`
at one context, equal CPU budgets, a rerun that reads the finished runs back, and its section of
docs/results/README.md."""

import json
import os

import numpy as np
import pytest

from experiments import lm_compare
from experiments import results_readme as rr

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("lm_compare")


def _argv(data_dir: str, out: str) -> list[str]:
    return ["--contexts", "64", "--models", "lm_cbsa_nano,lm_linear_nano", "--budget_cpu_s",
            "1e-3", "--tokens_per_step", "256", "--eval_bytes", "512", "--rounds", "2", "--out",
            out, "--results", os.path.join(out, "results"), f"--config.data_dir={data_dir}",
            "--config.model.depth=1", "--config.mesh.data=1"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_compare")
    argv = _argv(str(tmp_path_factory.mktemp("tfds_stdlib")), str(out))
    assert lm_compare.main(argv) == 0
    return argv, str(out), json.loads((out / "results" / "lm_compare.json").read_text())


def test_every_model_gets_the_budget_and_is_evaluated(compared):
    _, out, payload = compared
    rows = {r["model"]: r for r in payload["rows"]}
    assert list(rows) == ["lm_cbsa_nano", "lm_linear_nano"]
    timing = payload["step_times"]["64"]
    for model, row in rows.items():
        assert row["context"] == 64 and row["batch_size"] == 4
        assert row["steps"] == lm_compare.steps_for(1e-3, timing[model]["step_cpu_seconds"]) == 1
        assert row["train_step_cpu_seconds"] == timing[model]["step_cpu_seconds"] > 0
        assert len(timing[model]["cpu_seconds"]) == 2
        assert row["eval_split"] == "test[:8]" and row["test_bytes"] == 8 * 64
        assert 0 < row["test_bits_per_byte"] < 9 and 0 <= row["test_next_byte_accuracy"] <= 1
        assert row["parameters"] > 0
    assert rows["lm_cbsa_nano"]["parameters"] != rows["lm_linear_nano"]["parameters"]
    assert os.path.exists(os.path.join(out, "results", "lm_compare.md"))
    assert lm_compare.steps_for(10.0, 0.3) == 33 and lm_compare.steps_for(0.1, 0.3) == 1


def test_a_rerun_reads_the_finished_runs_back(compared):
    argv, out, payload = compared
    assert lm_compare.main(argv) == 0
    with open(os.path.join(out, "lm_compare.json")) as f:
        again = json.load(f)
    assert again["rows"] == payload["rows"] and again["step_times"] == payload["step_times"]


def test_its_results_section_renders(compared):
    _, _, payload = compared
    text = rr.render_section("lm_compare.json", rr.LM_COMPARE, {"lm_compare.json": payload})
    assert "| context, bytes |" in text and "`lm_cbsa_nano`" in text
    assert "0.001 CPU seconds per model" in text
    cbsa = next(r for r in payload["rows"] if r["attention"] == "cbsa")
    assert f"{cbsa['test_bits_per_byte']:.2f}" in text
    assert np.isfinite(cbsa["test_bits_per_byte"])


@pytest.mark.parametrize("args, message", [
    (["--contexts", "100"], "stdlib_bytes has no config of 100 bytes"),
    (["--models", "lm_cbsa_mega"], "unknown LM presets ['lm_cbsa_mega']"),
    (["--budget_cpu_s", "0"], "--budget_cpu_s must be > 0"),
    (["--rounds", "x"], "argument --rounds: invalid int value: 'x'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert lm_compare.main(["--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
