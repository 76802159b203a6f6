"""`python -m benchmarks.device_check`, the prepared accelerator check, at smoke sizes on the CPU
(the real run needs a lent GPU; this proves every stage runs and reports)."""

import json

import pytest

from benchmarks import device_check, official
from cbsa_jax.models import PRESETS


def test_the_smoke_check_runs_every_stage_and_reports(tmp_path, capsys):
    summary = device_check.main(["--out", str(tmp_path), "--smoke"])
    stages = summary["stages"]
    assert list(stages) == list(device_check.STAGES)
    tests = stages["tests"]
    assert tests["status"] == "ok" and tests["exit_code"] == 0
    assert tests["passed"] > 0 and tests["failures"] == tests["errors"] == 0
    assert "JAX_DEFAULT_MATMUL_PRECISION" not in tests["command"]  # set in the environment
    assert stages["gpu"]["status"] == "ok" and stages["gpu"]["attention_rows"] > 0
    assert stages["official"]["status"].startswith("skipped")  # no --official checkout
    causal = stages["causal"]
    assert causal["status"] == "ok" and causal["longest_cbsa_tokens"] == 64
    written = json.loads((tmp_path / "device_check.json").read_text())
    assert written["stages"].keys() == stages.keys() and written["smoke"] is True
    assert {p.name for p in tmp_path.iterdir()} >= {"device_check.json", "gpu.json",
                                                     "causal.json", "tests.xml"}


def test_a_stage_past_the_budget_is_skipped_and_an_accelerator_is_required(tmp_path):
    summary = device_check.main(["--out", str(tmp_path), "--smoke", "--stages", "official,gpu",
                                 "--budget-s", "-1"])
    assert all(s["status"].startswith("skipped: budget") for s in summary["stages"].values())
    with pytest.raises(SystemExit, match="no accelerator"):
        device_check.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        device_check.parse_args(["--out", str(tmp_path), "--stages", "nope"])


def test_the_mfu_uses_the_papers_flops(monkeypatch):
    """MFU = 2 x the paper's multiply-adds x 3 (train) or 1 (inference) x batch / time / peak."""
    monkeypatch.setattr(device_check, "paper_gflop", lambda preset, size, classes: 2.0)
    rows = [{"case": "train", "preset": "cbt_small", "batch": 4, "ours_ms": 10.0,
             "official_ms": 20.0},
            {"case": "infer", "preset": "cbt_small", "batch": 4, "ours_ms": 10.0,
             "official_ms": 40.0},
            {"case": "layer", "N": 197, "ours_ms": 1.0}]
    device_check.add_mfu(rows, peak_tflops=1.0, image_size=224, num_classes=1000)
    assert rows[0]["mfu"] == pytest.approx(3 * 2.0 * 4 / 0.01 / 1e3)
    assert rows[0]["official_mfu"] == pytest.approx(rows[0]["mfu"] / 2)
    assert rows[1]["mfu"] == pytest.approx(2.0 * 4 / 0.01 / 1e3)
    assert "mfu" not in rows[2]


def test_the_official_stage_sizes_name_real_presets():
    for sizes in (device_check.OFFICIAL, device_check.OFFICIAL_SMOKE):
        args = official.parse_args(["--repo", "x", *(f"--{k.replace('_', '-')}={v}"
                                                     for k, v in sizes.items())])
        assert set(args.presets) <= set(PRESETS)
    assert official.parse_args(["--repo", "x", "--dtype", "bfloat16"]).tolerance == 5e-2
