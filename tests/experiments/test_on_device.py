"""`python -m experiments.on_device`: its jobs, their budget, and the records it brings back."""

import json
import os
import signal
import sys
import time

import pytest

from experiments import _runs, on_device
from train import cli

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "results")


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_jobs_run_in_order_and_the_budget_stops_the_rest(tmp_path):
    ended, ticks = [], []
    commands = {
        "quick": _python("print('done')"),
        "broken": _python("raise SystemExit(3)"),
        "slow": _python("import signal, sys, time\n"
                        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
                        "print('started', flush=True)\ntime.sleep(60)"),
        "never": _python("print('never')"),
    }
    began = time.monotonic()
    report = on_device.run_jobs(commands, budget_s=2.0, parallel=1, logs=str(tmp_path),
                                on_exit=ended.append, on_tick=lambda: ticks.append(1),
                                tick_s=0.5, poll_s=0.05)
    assert time.monotonic() - began < 30  # the sleeper was stopped at the budget
    assert {k: v["status"] for k, v in report.items()} == {
        "quick": "finished", "broken": "failed", "slow": "stopped", "never": "skipped"}
    assert report["broken"]["returncode"] == 3 and report["never"]["returncode"] is None
    assert ended == ["quick", "broken", "slow"] and ticks  # one at a time, in order
    assert (tmp_path / "quick.log").read_text() == "done\n"
    assert (tmp_path / "slow.log").read_text() == "started\n"
    assert not (tmp_path / "never.log").exists()


def test_an_error_in_a_callback_leaves_no_job_running(tmp_path):
    pid_file = tmp_path / "pid"
    commands = {"quick": _python("pass"),
                "slow": _python(f"import os, time\nopen({str(pid_file)!r}, 'w').write("
                                "str(os.getpid()))\ntime.sleep(60)")}

    def fail(name):
        while not pid_file.exists():
            time.sleep(0.05)
        raise RuntimeError(f"{name} ended")

    with pytest.raises(RuntimeError, match="quick ended"):
        on_device.run_jobs(commands, budget_s=60, parallel=2, logs=str(tmp_path / "logs"),
                           on_exit=fail, poll_s=0.05, grace_s=5)
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)


def _partial(workdir, job, recipe, runs):
    folder = os.path.join(workdir, job.name, job.comparison)
    os.makedirs(folder)
    with open(os.path.join(folder, f"{job.comparison}.partial.json"), "w") as f:
        json.dump({"recipe": recipe, "config": job.config, "runs": runs,
                   "machine": {"processor": "the job's", "device": "NVIDIA H100"}}, f)


def test_a_comparisons_jobs_merge_into_one_record_that_runs_from_reads(tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    os.makedirs(out)
    cbt, vit, seg = (next(j for j in on_device.JOBS if j.name == name)
                     for name in ("shapes64_cbt_nano", "shapes64_vit_nano", "shapes64_seg_cbt"))
    recipe = {"lr": 1.0, "model": {"name": "cbt_nano"}}
    _partial(work, cbt, recipe, [{"workdir": f"{work}/a/shapes64/cbt_nano/seed{s}", "acc": s}
                                 for s in range(2)])
    _partial(work, vit, recipe, [{"workdir": f"{work}/b/shapes64/vit_nano/seed0", "acc": 9}])
    assert on_device.merge(work, out, [cbt, vit, seg], "cmd") == {"shapes64": 3}
    assert sorted(os.listdir(out)) == ["shapes64.json"]  # seg finished nothing
    kept = _runs.earlier_results([os.path.join(out, "shapes64.json")], recipe)
    assert sorted(kept) == ["cbt_nano/seed0", "cbt_nano/seed1", "vit_nano/seed0"]
    run, path = kept["vit_nano/seed0"]
    assert run["acc"] == 9 and path.endswith("shapes64.json")
    assert run["machine"] == {"processor": "the job's", "device": "NVIDIA H100"}
    # Every job keeps the --runs-from runs: the merged record holds each run once, a copy
    # trained here before a restored one.
    kept_run = {"workdir": f"{work}/x/shapes64/tost_nano/seed0", "acc": 5, "restored_from": "f"}
    trained = {"workdir": f"{work}/y/shapes64/tost_nano/seed0", "acc": 6}
    for job, extra in ((cbt, [kept_run]), (vit, [trained, kept_run])):
        with open(os.path.join(work, job.name, "shapes64", "shapes64.partial.json")) as f:
            record = json.load(f)
        record["runs"] += extra
        with open(os.path.join(work, job.name, "shapes64", "shapes64.partial.json"), "w") as f:
            json.dump(record, f)
    assert on_device.merge(work, out, [cbt, vit], "cmd") == {"shapes64": 4}
    with open(os.path.join(out, "shapes64.json")) as f:
        merged = {_runs.run_name(r): r for r in json.load(f)["runs"]}
    assert merged["tost_nano/seed0"] == trained
    os.rename(os.path.join(work, vit.name), os.path.join(work, "gone"))
    _partial(work, vit, {**recipe, "lr": 2.0}, [])
    with pytest.raises(ValueError, match="shapes64: its jobs ran different recipes"):
        on_device.merge(work, out, [cbt, vit], "cmd")


def test_runs_from_goes_to_the_jobs_of_its_comparison(tmp_path):
    record = tmp_path / "shapes64.json"
    record.write_text('{"name": "shapes64", "runs": []}')
    args = on_device.parse_args(["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"),
                                 "--only", "shapes64_vit_nano,mnist_cells2",
                                 "--runs-from", str(record)])
    assert args.kept == {"shapes64": [str(record)]}
    vit, mnist = args.selected
    assert on_device._command(vit, "w", [], args.kept["shapes64"])[-2:] == [
        "--runs-from", str(record)]
    assert "--runs-from" not in on_device._command(mnist, "w", [])


def test_the_mnist_sweep_jobs_run_the_committed_mnist_recipe():
    """Their runs must join docs/results/mnist.json's (`--runs-from` checks the recipe)."""
    with open(os.path.join(RESULTS, "mnist.json")) as f:
        committed = json.load(f)["runs"]
    for job in (j for j in on_device.JOBS if j.comparison == "mnist"):
        overrides = dict(a.removeprefix("--config.").split("=", 1) for a in job.flags
                         if a.startswith("--config."))
        config = cli.load_config(os.path.join(on_device.REPO, job.config), overrides)
        kept = _runs.earlier_results([os.path.join(RESULTS, "mnist.json")],
                                     json.loads(config.to_json()), "1.0.0", 0.6)
        assert len(kept) == len(committed), job.name  # every run: none differs in recipe


def test_the_pico100_jobs_join_the_committed_follow_up():
    """The shapes64 picos trained longer: compare's `--name` is the record's, and the recipe is
    that of docs/results' shapes64_pico100 runs (whole or still partial), so they join it."""
    name = "shapes64_pico100"
    path = next(p for p in (os.path.join(RESULTS, f"{name}.json"),
                            os.path.join(RESULTS, "partial", f"{name}.json")) if os.path.exists(p))
    with open(path) as f:
        committed = json.load(f)["runs"]
    jobs = [j for j in on_device.JOBS if j.comparison == name]
    assert [j.flags[1] for j in jobs] == list(on_device.PICO)
    for job in jobs:
        command = on_device._command(job, "w", [])
        assert command[command.index("--name") + 1] == name
        overrides = dict(a.removeprefix("--config.").split("=", 1) for a in job.flags
                         if a.startswith("--config."))
        config = cli.load_config(os.path.join(on_device.REPO, job.config), overrides)
        kept = _runs.earlier_results([path], json.loads(config.to_json()), "3.0.0", 0.6)
        assert len(kept) == len(committed), job.name


def test_the_nanos_train_first_at_the_picos_longer_recipe():
    """The open question of the frontier: the shapes64 nanos at the picos' 100 epochs, first in
    the queue, each family's job the pico one's with the model swapped, in their own record."""
    nano = [j for j in on_device.JOBS if j.comparison == "shapes64_nano100"]
    pico = {j.flags[1]: j for j in on_device.JOBS if j.comparison == "shapes64_pico100"}
    assert list(on_device.JOBS[:len(nano)]) == nano
    assert [j.flags[1] for j in nano] == list(on_device.NANO)
    for job in nano:
        twin = pico[job.flags[1].replace("_nano", "_pico")]
        assert (job.config, job.flags[2:]) == (twin.config, twin.flags[2:]), job.name
        command = on_device._command(job, "w", [])
        assert command[command.index("--name") + 1] == "shapes64_nano100"


@pytest.mark.parametrize("args,message", [
    (["--only", "nope"], "--only: expected some of"),
    (["--only", ""], "--only: expected some of"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--budget-s", "0"], "--budget-s must be > 0"),
    (["--workdir", "{used}"], "--workdir: {used} is not empty"),
    (["--runs-from", "{used}/none.json"], "--runs-from: {used}/none.json is not a comparison's"),
    (["--only", "mnist_cells2", "--runs-from", "{used}/shapes64.json"],
     "--runs-from: {used}/shapes64.json is a record of 'shapes64', which no selected job runs"),
])
def test_bad_arguments_name_the_argument(args, message, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "earlier").mkdir()
    (tmp_path / "used" / "shapes64.json").write_text('{"name": "shapes64", "runs": []}')
    args = [a.format(used=tmp_path / "used") for a in args]
    message = message.format(used=tmp_path / "used")
    with pytest.raises(SystemExit) as e:
        on_device.parse_args(["--out", str(tmp_path), "--workdir", str(tmp_path / "new"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_main_reports_each_job_and_never_touches_the_devices(tmp_path, monkeypatch):
    """on_device's own process never asks JAX for its devices (on a GPU that would preallocate
    memory the jobs need): here any such call fails the test. A job that fails (a stand-in that
    exits as compare does on a config error) is reported with the end of its log."""
    import jax

    def touched(*args, **kwargs):
        raise AssertionError("on_device touched JAX's devices")

    for name in ("devices", "local_devices", "default_backend", "device_count"):
        monkeypatch.setattr(jax, name, touched)
    monkeypatch.setattr(on_device, "_command", lambda *a, **k: _python(
        "import sys; print('error: config.batch_size must be an integer >= 1'); sys.exit(2)"))
    out, work = tmp_path / "out", tmp_path / "work"
    before = signal.getsignal(signal.SIGTERM)
    assert on_device.main(["--out", str(out), "--workdir", str(work),
                           "--only", "mnist_cells2"]) == 1
    assert signal.getsignal(signal.SIGTERM) is before
    report = json.loads((out / "on_device.json").read_text())
    job = report["jobs"]["mnist_cells2"]
    assert job["status"] == "failed" and job["returncode"] == 2
    assert "config.batch_size must be" in job["log_tail"]
    assert report["runs"] == {} and report["machine"] is None
    assert sorted(os.listdir(out)) == ["on_device.json"]
