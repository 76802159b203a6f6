"""The benchmark scripts at tiny sizes: JSON schema, table printing, the 'does not fit' and 'too
slow' reporting, the GPU script's CPU smoke path. No timing is asserted."""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _harness as h
from benchmarks import _macs, attention, compare, gpu, models
from cbsa_jax import attention as att
from cbsa_jax import training
from tests._util import REPO

TINY = ["--sizes", "17", "--matmul-n", "128", "--target-s", "0.01", "--min-repeats", "1",
        "--max-repeats", "2"]


def _load(path):
    with open(path) as f:
        return json.load(f)  # strict JSON: NaN would have failed to serialise


def _check_attention_row(row):
    for key in ("attention", "N", "mode", "median_ms", "peak_mb", "status", "flops"):
        assert key in row, key
    assert row["mode"] in attention.MODES
    if row["status"] == "ok":
        assert row["median_ms"] > 0 and row["repeats"] >= 1
        assert row["peak_mb"] > 0 and row["flops"] > 0
    else:
        assert row["median_ms"] is None


def test_attention_benchmark_writes_rows_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "att.json"
    names = ("cbsa", "cbsa_exact", "mssa", "softmax_chunked")
    attention.main([*TINY, "--json", str(out), "--attentions", ",".join(names)])
    data = _load(out)
    assert data["benchmark"] == "attention"
    assert data["matmul"]["gflops"] > 0 and data["machine"]["cpu_count"] >= 1
    rows = data["rows"]
    assert {(r["attention"], r["mode"]) for r in rows} == {
        (a, m) for a in names for m in ("fwd", "fwdbwd")}
    for row in rows:
        _check_attention_row(row)
        assert row["N"] == 17 and row["status"] == "ok"
    assert set(data["summary"]) >= {"cbsa_exact_over_cbsa_fwd", "cbsa_over_mssa_fwdbwd"}
    text = capsys.readouterr().out
    assert "| attention" in text and "| cbsa_exact" in text and "cbsa_exact_over_cbsa" in text


def test_summary_ratios_and_exponents():
    def row(a, n, mode, ms, mb, status="ok"):
        return {"attention": a, "N": n, "mode": mode, "status": status,
                "median_ms": ms if status == "ok" else None, "peak_mb": mb}

    ns = (65, 1025, 4097, 16385)
    rows = [row("cbsa", n, "fwd", 1e-3 * n**1.2, 0.01 * n) for n in ns]
    rows += [row("cbsa_exact", n, "fwd", 1.5e-3 * n**1.2, 0.01 * n) for n in ns]
    rows += [row("mssa", 65, "fwd", 0.5e-3 * 65**1.2, 1.0),
             row("softmax", 4097, "fwd", 1e-2 * 4097**1.2, 1.0),
             row("softmax", 16385, "fwd", None, 9e9, status="oom (estimated 9 GB > budget)"),
             attention.hang_row("cbsa", 65, "fwdbwd", 1.0)]
    s = attention.summarise(rows)
    assert s["cbsa_fwd_time_exponent"]["N"] == [1025, 16385]  # N = 65 left out
    assert s["cbsa_fwd_time_exponent"]["value"] == pytest.approx(1.2)
    assert s["cbsa_fwd_memory_exponent"]["value"] == pytest.approx(1.0)
    assert s["cbsa_fwd_speedup_over"] == {"65": {"mssa": pytest.approx(0.5)},
                                          "4097": {"softmax": pytest.approx(10.0)}}
    assert s["cbsa_exact_over_cbsa_fwd"] == {str(n): pytest.approx(1.5) for n in ns}
    assert s["cbsa_over_mssa_fwd"] == {"65": pytest.approx(2.0)}
    assert not any(k.startswith("cbsa_fwdbwd") for k in s)  # the hang row is not a result
    text = attention.format_summary(s)
    assert "cbsa_fwd_time_exponent: 1.200" in text and "softmax 10.0x" in text


def test_every_row_has_the_schema_keys():
    hang = attention.hang_row("cbsa", 65, "fwd", 900)
    assert hang["status"] == "hang (> 900 s)"
    for key in ("attention", "N", "mode", "median_ms", "peak_mb"):
        assert key in hang, key
    assert h.error_text(ValueError()) == "ValueError: "  # an empty message does not crash
    assert h.error_text(RuntimeError("a\nb"), 1) == "RuntimeError: a"


def test_gpu_script_needs_neither_tensorflow_nor_train():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "train"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import benchmarks.gpu
        print("imported")
    """)
    root = pathlib.Path(REPO)
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def test_what_does_not_fit_is_reported_not_skipped(tmp_path, capsys):
    out = tmp_path / "oom.json"
    attention.main([*TINY, "--json", str(out), "--attentions", "softmax,cbsa", "--modes",
                    "fwdbwd", "--memory-budget-gb", "1e-6"])
    rows = _load(out)["rows"]
    assert [r["attention"] for r in rows] == ["softmax", "cbsa"]
    for row in rows:
        _check_attention_row(row)
        assert row["status"].startswith("oom (estimated ") and "GB > budget" in row["status"]
        assert row["peak_mb"] > 1e-6 * 1e3  # the estimate that was compared to the budget
    assert "oom (estimated" in capsys.readouterr().out


def test_what_would_take_too_long_is_reported(tmp_path):
    out = tmp_path / "slow.json"
    attention.main([*TINY, "--json", str(out), "--attentions", "mssa", "--modes", "fwd",
                    "--time-budget-s", "0"])
    (row,) = _load(out)["rows"]
    _check_attention_row(row)
    assert row["status"].startswith("timeout (estimated ") and row["estimated_s"] > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="g\\^2 \\+ 1"):
        attention.main(["--sizes", "18"])
    with pytest.raises(SystemExit):
        attention.main(["--attentions", "nope"])


def test_chunked_softmax_is_softmax_attention(rng):
    q, k, v = (jnp.asarray(rng.normal(size=(1, 2, 37, 8)), jnp.float32) for _ in range(3))
    expected = att.softmax(q, k, v)
    got = attention.softmax_chunked(q, k, v, chunk=10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_models_benchmark_tables(tmp_path, capsys):
    out = tmp_path / "models.json"
    models.main(["--json", str(out), "--presets", "cbt_nano", "--train-presets", "cbt_nano",
                 "--batch", "2", "--repeats", "1", "--matmul-n", "128", "--train-image-size",
                 "16"])
    data = _load(out)
    assert [r["preset"] for r in data["presets"]] == ["cbt_nano"]
    for row in data["presets"]:
        assert row["params"] > 0 and row["gflops_per_image"] > 0 and row["image_size"] == 32
        # XLA counts a multiply-add as two FLOPs plus element-wise work: above 2 x the MACs
        assert 0 < 2 * row["gmacs_per_image"] < row["gflops_per_image"]
        assert row["gmacs_reference_ista"] > row["gmacs_per_image"]  # 17 tokens > 64 / 2
        assert row["fvcore_gmacs"] is None and row["fvcore_deviation"] is None
    (train,) = data["train"]
    for key in ("step_ms", "images_per_s", "step_gflop", "achieved_gflops", "matmul_gflops",
                "fraction_of_matmul"):
        assert train[key] > 0, key
    assert math.isfinite(train["loss"]) and train["variant"] == "train"
    assert train["devices"] == 2  # as python -m train splits a batch of 2 (of conftest's 8)
    text = capsys.readouterr().out
    assert "| cbt_nano" in text and "GFLOPs / image" in text and "achieved GFLOP/s" in text


def test_gpu_benchmark_refuses_the_cpu_unless_allowed():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as e:
        gpu.main(["--sizes", "17"])
    assert e.value.code == 2


def test_gpu_benchmark_smoke_on_the_cpu(tmp_path, capsys, monkeypatch):
    # the train step itself is exercised by test_models_benchmark_tables (the same function in
    # float32); here only that the GPU script asks for bfloat16 and derives the MFU
    real = models.train_throughput
    seen = {}

    def cheap(name, **kw):
        seen.update(kw)
        return real(name, **{**kw, "dtype": None, "repeats": 1})

    monkeypatch.setattr(gpu.models_bench, "train_throughput", cheap)
    out = tmp_path / "gpu.json"
    gpu.main(["--allow-cpu", "--json", str(out), "--sizes", "17", "--attentions", "cbsa",
              "--modes", "fwdbwd", "--skip-presets", "--train-presets", "cbt_nano",
              "--batch", "2", "--repeats", "1", "--image-size", "16", "--matmul-n", "128",
              "--peak-tflops", "1"])
    data = _load(out)
    assert data["config"]["peak_tflops"] == 1
    (row,) = data["attention"]["rows"]
    assert row["dtype"] == "bfloat16" and row["status"] == "ok" and row["mfu"] > 0
    assert data["presets"] == []
    (train,) = data["train"]
    assert seen["dtype"] == jnp.bfloat16 and train["mfu"] > 0
    text = capsys.readouterr().out
    assert "MFU" in text and "CPU smoke test" in text


def test_compare_runs_both_sides(tmp_path):
    out = tmp_path / "cmp.json"
    compare.main(["--json", str(out), "--sizes", "17", "--rounds", "1", "--target-s", "0.001",
                  "--modes", "fwd,fwdbwd", "--cases", "cbsa_exact,layernorm,stem_dx"])
    rows = _load(out)["rows"]
    assert [(r["case"], r["mode"]) for r in rows] == [
        ("cbsa_exact", "fwd"), ("cbsa_exact", "fwdbwd"), ("layernorm", "fwd"),
        ("layernorm", "fwdbwd"), ("stem_dx", "bwd")]
    for row in rows:
        assert row["before_ms"] > 0 and row["after_ms"] > 0
        assert row["max_rel_diff"] < 1e-4  # the optimised code computes the same function
    with pytest.raises(ValueError, match="stem_dx times an input gradient"):
        compare.compare("stem_dx", 17, "fwd")


def test_harness_helpers(tmp_path):
    assert h.loglog_slope([1, 10, 100], [2, 20, 200]) == pytest.approx(1.0)
    assert h.loglog_slope([1], [1]) is None
    path = tmp_path / "x.json"
    h.write_json(str(path), {"a": float("nan"), "b": [1.0, float("inf")]})
    assert _load(path) == {"a": None, "b": [1.0, None]}
    text = h.table([{"x": 1}], [("x", ">", lambda r: str(r["x"]))])
    assert text.splitlines()[0] == "| x |" and text.splitlines()[1] == "|--:|"


def test_macs_of_products_convolutions_and_loops():
    a, b = jnp.zeros((2, 3, 5)), jnp.zeros((2, 5, 7))
    assert _macs.count_macs(jnp.matmul, a, b) == 2 * 3 * 5 * 7
    assert _macs.count_macs(lambda x, y: jnp.einsum("bij,bjk->ik", x, y), a, b) == 2 * 3 * 5 * 7
    x, k = jnp.zeros((2, 16, 16, 3)), jnp.zeros((3, 3, 3, 8))
    conv = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert conv.shape == (2, 8, 8, 8)
    assert _macs.count_macs(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
        x, k) == 2 * 8 * 8 * 8 * 27
    grouped = jnp.zeros((3, 3, 1, 6))  # depthwise-style: 6 outputs, 3 groups of 1 input channel
    assert _macs.count_macs(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=3), x, grouped) == 2 * 16 * 16 * 6 * 9
    m = jnp.zeros((4, 4))
    inner = jax.jit(lambda m: m @ m)  # a pjit sub-program, under a scan of length 5
    assert _macs.count_macs(lambda m: jax.lax.fori_loop(0, 5, lambda i, m: inner(m), m), m) \
        == 5 * 64
    assert _macs.count_macs(lambda m: jax.lax.cond(True, lambda m: m @ m @ m, lambda m: m, m),
                            m) == 2 * 64  # the dearer branch
    assert _macs.count_macs(jax.grad(lambda m: jnp.sum(m @ m)), m) == 3 * 64  # fwd + 2 bwd
    with pytest.raises(ValueError, match="while_trips"):
        _macs.count_macs(lambda m: jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (
            c[0] + 1, c[1] @ c[1]), (0, m)), m)


def test_cbt_tiny_macs_agree_with_fvcore_on_the_official_model():
    row = models.forward_cost("cbt_tiny", compile=False)
    assert row["fvcore_gmacs"] == models.FVCORE_GMACS["cbt_tiny"]
    assert abs(row["fvcore_deviation"]) < 0.01  # the paper's 0.654 GMACs, to 1%
    # one image of D = 192 holds 197 > 96 tokens: the operator-form ISTA is executed, 12 layers
    # x (3 N D^2 - N D^2 - D^3) fewer multiply-adds than the reference's association
    n, d = 197, 192
    saved = 12 * (2 * n * d * d - d**3) / 1e9
    assert row["gmacs_reference_ista"] - row["gmacs_per_image"] == pytest.approx(saved, rel=1e-9)
    with pytest.raises(ValueError, match="kind must be"), _macs.ista_association("left"):
        pass


def test_official_benchmark_interleaves_and_checks_its_arguments(tmp_path):
    from benchmarks import official

    order = []
    times = official.interleaved({"official": lambda: order.append("o"),
                                  "ours": lambda: order.append("j")}, rounds=3, target_s=0.0)
    # a sizing call that fills a round (target_s = 0) ends the sizing: min_per_round calls a round
    assert order == ["o", "o", "j", "j"] + (["o"] * 3 + ["j"] * 3) * 3
    assert [len(t["wall"]) for t in times.values()] == [9, 9]
    order.clear()
    times = official.interleaved({"official": lambda: order.append("o"),
                                  "ours": lambda: order.append("j")}, rounds=3, target_s=1.0,
                                 min_per_round=1, max_per_round=2)
    # fast calls: a warm-up and three sizing calls each, then rounds of max_per_round calls
    assert order == ["o"] * 4 + ["j"] * 4 + ["o", "o", "j", "j"] * 3
    assert [len(t["wall"]) for t in times.values()] == [6, 6]
    order.clear()
    times = official.interleaved({"official": lambda: order.append("o"),
                                  "ours": lambda: order.append("j")}, rounds=3, target_s=1.0,
                                 min_per_round=1, max_per_round=2, schedule="alone")
    # alone: every round of the official side, then every round of ours
    assert order == ["o"] * 4 + ["j"] * 4 + ["o"] * 6 + ["j"] * 6
    assert [len(t["wall"]) for t in times.values()] == [6, 6]
    with pytest.raises(ValueError, match="schedule must be one of"):
        official.interleaved({"ours": lambda: None}, rounds=1, target_s=0.0, schedule="paired")
    assert official.parse_args(["--repo", str(tmp_path), "--schedule", "alone"]).schedule == "alone"
    row = official._row("layer", "x", {"official": {"wall": [2.0, 4.0, 9.0], "cpu": [1, 2, 3]},
                                       "ours": {"wall": [1.0, 1.5, 3.0], "cpu": [1, 1, 1]}},
                        1e-7, N=65)
    assert row["ratio"] == pytest.approx(1.5 / 4.0)
    assert row["ratio_of_minima"] == pytest.approx(0.5)
    assert row["cpu_ratio"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="models.py"):
        official.load_official(str(tmp_path))
    with pytest.raises(SystemExit):
        official.parse_args(["--repo", str(tmp_path), "--presets", "crate_tiny"])
    args = official.parse_args(["--repo", str(tmp_path)])
    assert args.sizes == [65, 257, 1025, 4097] and args.parts == ["layer", "train", "infer"]
    assert args.train_batches == [8, 64] and args.infer_batches == [1, 64]
    args = official.parse_args(["--repo", str(tmp_path), "--parts", "block", "--blocks",
                                "cbt_tiny:8:197,cbt_small:1:65", "--block-parts", "norm,ista"])
    assert args.blocks == [("cbt_tiny", 8, 197), ("cbt_small", 1, 65)]
    assert args.block_parts == ["norm", "ista"]
    for bad in ("cbt_tiny:8", "cbt_tiny:eight:197", "crate_tiny:8:197", "cbt_tiny:8:196",
                "cbt_tiny:0:197", "cbt_tiny:8:197:1"):
        with pytest.raises(SystemExit):
            official.parse_args(["--repo", str(tmp_path), "--blocks", bad])
    with pytest.raises(SystemExit):
        official.parse_args(["--repo", str(tmp_path), "--block-parts", "mlp"])


def test_official_benchmark_records_each_calls_own_cpu_time(monkeypatch):
    """The `cpu` entries are the process-time deltas of each call: a fake process clock that
    each call advances by its own amount must come back call by call."""
    from benchmarks import official

    clock = [0.0]
    monkeypatch.setattr(official.time, "process_time", lambda: clock[0])

    def burn(seconds):
        def call():
            clock[0] += seconds
        return call

    times = official.interleaved({"official": burn(0.5), "ours": burn(0.25)}, rounds=2,
                                 target_s=0.0, min_per_round=2)
    assert times["official"]["cpu"] == [0.5] * 4 and times["ours"]["cpu"] == [0.25] * 4


def test_official_benchmark_smoke(tmp_path, capsys):
    """Both sides at small sizes against a checkout of the official code: PyTorch (the `compare`
    extra) and CBSA_OFFICIAL_REPO (a checkout of github.com/QishuaiWen/CBSA) are needed."""
    pytest.importorskip("torch", reason="the official benchmark needs the 'compare' extra")
    repo = os.environ.get("CBSA_OFFICIAL_REPO")
    if not repo or not os.path.isdir(repo):
        pytest.skip("set CBSA_OFFICIAL_REPO to a checkout of github.com/QishuaiWen/CBSA")
    from benchmarks import official

    out = tmp_path / "official.json"
    official.main(["--repo", repo, "--json", str(out), "--sizes", "65", "--presets",
                   "cbt_tiny", "--train-batches", "2", "--infer-batches", "1", "--image-size",
                   "128", "--num-classes", "10", "--rounds", "1", "--target-s", "0.001",
                   "--parts", "layer,train,infer,block", "--blocks", "cbt_tiny:2:65"])
    data = _load(out)
    assert data["machine"]["torch_threads"] == training.usable_cores() >= 1
    assert [(r["case"], r.get("part"), r["status"]) for r in data["rows"]] == [
        ("layer", None, "ok"), ("train", None, "ok"), ("infer", None, "ok"),
        *(("block", part, "ok") for part in official.BLOCK_PARTS)]
    # the train step is split over the devices as python -m train splits it: here conftest's 8
    # CPU devices (configure_host_devices leaves a count set in XLA_FLAGS alone), 2 of which
    # divide the batch of 2
    assert data["machine"]["host_devices"]["applied"] is False
    assert data["rows"][1]["devices"] == 2
    # the inference case ran in a process of its own, with glibc's malloc
    assert data["machine"]["infer_process"] == "own"
    assert data["machine"]["infer_allocator"]["applied"] is False
    assert [r.get("process") for r in data["rows"]][2] == "own"
    for row in data["rows"]:
        assert row["max_rel_diff"] < 1e-4  # the converted model computes the official function
        assert row["official_ms"] > 0 and row["ours_ms"] > 0 and row["ratio"] > 0
    layer = data["rows"][0]  # with its projections alone, timed on both sides
    assert layer["products_official_ms"] > 0 and layer["products_ours_ms"] > 0
    assert layer["floor_ratio"] == pytest.approx(layer["products_ours_ms"] / layer["official_ms"])
    assert "ours / official" in capsys.readouterr().out


def test_official_benchmark_releases_the_heap_between_cases(tmp_path, monkeypatch):
    """Each case's row is written to the JSON before the next case runs, and the heap's free
    memory is handed back after every case (the training program's malloc never returns it by
    itself, and a full run grew until it was killed for memory)."""
    from benchmarks import official

    events = []
    monkeypatch.setattr(official.training, "release_host_memory",
                        lambda: events.append(("release", len(_load(out)["rows"]))))
    out = tmp_path / "rows.json"
    payload = {"benchmark": "official", "rows": []}

    def job(i):
        def run():
            events.append(("case", i))
            return official._skipped("train", f"case {i}", "fake", 0.0)
        return run

    official.run_cases([job(0), job(1), job(2)], payload, out)
    assert events == [("case", 0), ("release", 1), ("case", 1), ("release", 2), ("case", 2),
                      ("release", 3)]
    assert [r["what"] for r in payload["rows"]] == ["case 0", "case 1", "case 2"]


def test_official_benchmark_runs_inference_in_a_process_of_its_own(tmp_path):
    """The child that times the inference cases gets the same cases and timing, glibc's malloc,
    and runs them in its own process only (no recursion)."""
    from benchmarks import official

    args = official.parse_args(["--repo", str(tmp_path), "--presets", "cbt_tiny",
                                "--infer-batches", "1,4", "--rounds", "3", "--target-s", "0.1",
                                "--image-size", "64", "--num-classes", "10", "--threads", "1",
                                "--ours-options", "xla-default"])
    assert args.infer_process == "own" and args.allocator == "train"
    child = official.parse_args(official.infer_argv(args, str(tmp_path / "infer.json")))
    assert child.parts == ["infer"] and child.allocator == "default"
    assert child.infer_process == "same" and child.json == str(tmp_path / "infer.json")
    for key in ("repo", "presets", "infer_batches", "image_size", "num_classes", "rounds",
                "schedule", "target_s", "tolerance", "dtype", "ours_options", "threads",
                "hugepages"):
        assert getattr(child, key) == getattr(args, key), key
    hugepages = official.parse_args(["--repo", str(tmp_path), "--hugepages"])
    assert official.parse_args(official.infer_argv(hugepages, "x.json")).hugepages
    with pytest.raises(SystemExit):
        official.parse_args(["--repo", str(tmp_path), "--infer-process", "other"])
