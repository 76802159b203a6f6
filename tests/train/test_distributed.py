"""Faults of a multi-process job (`train/distributed.py`): the watchdog's verdicts, the timeouts in
the config, and, end to end, two processes of 4 CPU devices each: one killed with SIGKILL, the
job resumed on 1 process x 8 devices, on 1 device, and back on 2 x 4, stopped there by SIGTERM
on one process, finished on 1 x 8."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time

import pytest

from tests import _runs
from tests._configs import tiny_config, tiny_flags
from tests._util import free_port
from train import __main__ as train_main
from train import config as config_lib
from train import distributed, loop
from train.checkpoint import Checkpointer

# The module fixtures are costly: one xdist worker runs the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("distributed")


def test_the_module_is_one_xdist_work_unit(request):
    """Under `--dist loadgroup` the group reaches the node id (pytest 9.2 broke that silently:
    pytest-dev/pytest-xdist#1386), so that the pod story below is built once."""
    if getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("@distributed"), request.node.nodeid

# -- the watchdog, with a key-value store and a clock of our own -----------------------------


class FakeStore:
    """The coordination service's key-value store, or one that is gone (`down`)."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Connection reset by peer\nmore detail")
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Connection reset by peer")
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _watchdog(store, clock, process=0, processes=3, **kw):
    exits = []
    dog = distributed.Watchdog(store, process=process, processes=processes,
                               heartbeat_timeout=10, exit=exits.append, clock=clock, **kw)
    return dog, exits


def _beat(store, process, counter, state="running"):
    store.key_value_set(f"cbsa_jax/heartbeat/{process}", f"{counter} {state}")


def test_a_peer_silent_for_the_heartbeat_timeout_is_lost():
    store, clock = FakeStore(), Clock()
    dog, _ = _watchdog(store, clock)
    _beat(store, 1, 1)
    _beat(store, 2, 1)
    assert dog.check() is None
    for t in range(1, 12):  # process 1 keeps beating, process 2 has stopped
        clock.now += 1
        _beat(store, 1, 1 + t)
        verdict = dog.check()
        if t <= 10:
            assert verdict is None, t
    assert verdict.startswith("process 2 of 3 stopped responding (no heartbeat for 10 s")
    assert "config.distributed.heartbeat_timeout" in verdict
    assert store.values["cbsa_jax/heartbeat/0"].endswith(" running")  # ours went out


def test_a_finished_peer_is_not_lost_and_a_failed_one_is_reported_at_once():
    store, clock = FakeStore(), Clock()
    dog, _ = _watchdog(store, clock)
    _beat(store, 1, 5, "done")
    _beat(store, 2, 5)
    assert dog.check() is None
    clock.now += 60
    _beat(store, 2, 6)
    assert dog.check() is None  # a done process never beats again, and is no loss
    _beat(store, 2, 7, "failed: ValueError: bad shard")
    assert dog.check() == "process 2 of 3 failed: ValueError: bad shard"


def test_an_unreachable_store_means_the_coordinator_is_lost():
    store, clock = FakeStore(), Clock()
    dog, _ = _watchdog(store, clock, process=1)
    store.down = True
    verdict = dog.check()
    assert verdict.startswith("the coordinator, process 0 of 3, stopped responding")
    assert "\n" not in verdict and "Connection reset by peer" in verdict


def test_no_progress_for_the_collective_timeout_is_a_hang():
    store, clock = FakeStore(), Clock()
    dog, _ = _watchdog(store, clock, processes=2, collective_timeout=30)
    for _ in range(5):  # the peer is alive and beating, but no step finishes here
        _beat(store, 1, int(clock.now))
        clock.now += 7
        dog.progress() if clock.now < 115 else None
        assert dog.check() is None
    clock.now += 20
    _beat(store, 1, int(clock.now))
    verdict = dog.check()
    assert verdict.startswith("no training step, evaluation batch or checkpoint finished for 30 s")
    assert "config.distributed.collective_timeout" in verdict


def test_leaving_prints_one_line_tells_the_others_and_exits(capsys):
    store, clock = FakeStore(), Clock()
    dog, exits = _watchdog(store, clock, processes=2)
    dog.exit(distributed.PEER_EXIT, "process 1 of 2 stopped responding (...)")
    dog.exit(distributed.PEER_EXIT, "again")  # a second verdict (another thread) says nothing
    err = capsys.readouterr().err.splitlines()
    assert exits == [distributed.PEER_EXIT]
    assert err == ["error: process 1 of 2 stopped responding (...); rerun all 2 processes to "
                   "resume from the last checkpoint they all finished"]
    assert "failed: stopped because process 1 of 2" in store.values["cbsa_jax/heartbeat/0"]


def test_finish_publishes_done_or_the_error():
    store, clock = FakeStore(), Clock()
    dog, exits = _watchdog(store, clock, process=1, processes=2)
    dog.finish(0)
    assert exits == [] and store.values["cbsa_jax/heartbeat/1"].endswith(" done")
    dog, exits = _watchdog(store, clock, process=1, processes=2)
    dog.finish(2, ValueError("config.batch_size must be\nsplit"))
    assert exits == [2]
    assert store.values["cbsa_jax/heartbeat/1"].endswith(
        " failed: ValueError: config.batch_size must be")


@pytest.mark.parametrize("field,value", [("heartbeat_timeout", 0), ("heartbeat_timeout", -5),
                                         ("initialization_timeout", float("nan")),
                                         ("collective_timeout", float("inf")),
                                         ("collective_timeout", -1)])
def test_bad_timeouts_are_config_errors(field, value):
    with pytest.raises(config_lib.ConfigError, match=f"config.distributed.{field} must be"):
        tiny_config(**{f"distributed.{field}": value})
    tiny_config(**{"distributed.collective_timeout": 0})  # 0 = no hang detection


def test_an_inconsistent_process_flag_exits_2(tmp_path, capsys):
    code = train_main.main(["--workdir", str(tmp_path), "--coordinator_address",
                            f"127.0.0.1:{free_port()}", "--num_processes", "2",
                            "--process_id", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --process_id must be in [0, --num_processes = 2), got 2"]


def test_a_process_alone_gives_up_after_the_initialization_timeout(data_dir, tmp_path):
    """Process 1 of 2 with no coordinator: one line naming the timeout, exit PEER_EXIT."""
    address = f"127.0.0.1:{free_port()}"
    command = _runs.train_command(tmp_path / "run", tiny_flags(**{
        "data_dir": data_dir, "distributed.initialization_timeout": 2}),
        "--coordinator_address", address, "--num_processes", "2", "--process_id", "1")
    proc = _runs.start(command, tmp_path / "log", _runs.env(devices=1))
    proc.wait(timeout=120)
    out = (tmp_path / "log").read_text()
    assert proc.returncode == distributed.PEER_EXIT, out
    assert _runs.error_lines(out) == [
        f"error: process 1: not every process joined the job at {address} within 2 s "
        f"(config.distributed.initialization_timeout)"]


# -- end to end: a dead worker, topologies, a coordinated SIGTERM ----------------------------

#: Digits, 14 steps of 256 images in two data shards (5 steps an epoch, whatever the number of
#: processes), a checkpoint every 2 steps; a lost process is declared after 10 s.
POD = {"batch_size": 256, "num_train_steps": 14, "eval_every_steps": 7,
       "checkpoint_every_steps": 2, "data_shards": 2, "mesh.data": -1,
       "distributed.heartbeat_timeout": 10}

#: The per-step losses of a run resumed on another mesh match the uninterrupted run's to this.
#: Only the order of float32 reductions changes with the mesh (the batch sums, the gradients'
#: all-reduce over 8 devices, in one process or two, or none on one device), which moves a loss
#: near 2.3 by a few units in the last place (2.4e-7 each); 1e-5 leaves room for that to grow
#: over 14 Adam steps. A batch seen twice or skipped changes that step's loss by the spread of
#: batch means (about 0.5 / sqrt(256), thousands of times more).
LOSS_TOL = 1e-5
#: A reduction-order difference may flip a prediction whose top two logits tie within rounding;
#: accuracies may differ by at most one such example of a batch of 256 (none were seen).
ACCURACY_TOL = 1 / 256 + 1e-9


def _pair(workdir, logs, port, flags):
    """Processes 0 and 1 of a 2 x 4 job."""
    return [_runs.start(_runs.train_command(
        workdir, flags, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
        "--process_id", str(i)), logs / f"p{i}.log", _runs.env(devices=4)) for i in range(2)]


def _in_process(config, workdir, stop_at=None) -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = loop.run(config, str(workdir), stop_at=stop_at)
    return summary, out.getvalue()


@pytest.fixture(scope="module")
def pod(data_dir, tmp_path_factory):
    """The whole story, recorded phase by phase; the tests below assert on it."""
    base = tmp_path_factory.mktemp("pod")
    workdir, logs = base / "run", base
    flags = tiny_flags(data_dir=data_dir, **POD)
    config = tiny_config(data_dir=data_dir, **POD)
    record: dict = {"reference": None, "phases": []}

    def phase(name, **facts):
        facts.update(name=name, first_line=record.get("lines", 0))
        record["lines"] = _runs.line_count(workdir)
        record["phases"].append(facts)
        return facts

    # A: 2 x 4; process 1 killed with SIGKILL while a checkpoint is being written, after one
    # checkpoint both processes finished
    (logs / "a").mkdir()
    procs = _pair(workdir, logs / "a", free_port(), flags)
    caught = _runs.wait_for(lambda: _runs.committed_steps(workdir) and
                            _runs.tmp_checkpoints(workdir), procs)
    committed_at_kill, writing_at_kill = (_runs.committed_steps(workdir),
                                          _runs.tmp_checkpoints(workdir))
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    procs[0].wait(timeout=240)
    survivor_seconds = time.monotonic() - killed
    procs[1].wait()
    phase("A", caught=caught, committed_at_kill=committed_at_kill,
          writing_at_kill=writing_at_kill, survivor_code=procs[0].returncode,
          survivor_seconds=survivor_seconds, survivor_log=(logs / "a" / "p0.log").read_text(),
          committed_after=_runs.committed_steps(workdir))

    # C: 1 x 8 in this process, two more steps; D: 1 device, two more
    for name, mesh in (("C", -1), ("D", 1)):
        start = _runs.committed_steps(workdir)[-1] if _runs.committed_steps(workdir) else 0
        summary, out = _in_process(tiny_config(data_dir=data_dir, **{**POD, "mesh.data": mesh}),
                                   workdir, stop_at=start + 2)
        phase(name, start=start, summary=summary, out=out,
              tmp_left=_runs.tmp_checkpoints(workdir), committed=_runs.committed_steps(workdir))

    # E: 2 x 4 again; SIGTERM to process 1 alone once a step has been trained
    start = _runs.committed_steps(workdir)[-1]
    (logs / "e").mkdir()
    procs = _pair(workdir, logs / "e", free_port(), flags)
    _runs.wait_for(lambda: _runs.steps_done(workdir) > start, procs)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=240) for p in procs]
    phase("E", start=start, codes=codes, committed=_runs.committed_steps(workdir),
          outs=[(logs / "e" / f"p{i}.log").read_text() for i in range(2)])

    # F: 1 x 8, to the end
    start = _runs.committed_steps(workdir)[-1]
    summary, out = _in_process(config, workdir)
    phase("F", start=start, summary=summary, out=out)

    reference, _ = _in_process(config, base / "reference")
    record.update(workdir=workdir, reference=base / "reference", steps_per_epoch=5)
    return record


def _phase(pod, name):
    return next(p for p in pod["phases"] if p["name"] == name)


@pytest.mark.slow
def test_the_survivor_of_a_dead_worker_exits_fast_with_one_line(pod):
    a = _phase(pod, "A")
    assert a["caught"], "no checkpoint was being written while the job ran"
    log = a["survivor_log"]
    assert a["survivor_code"] == distributed.PEER_EXIT, log
    assert a["survivor_seconds"] < 60
    assert _runs.error_lines(log) == [
        "error: process 1 of 2 stopped responding (no heartbeat for 10 s, "
        "config.distributed.heartbeat_timeout); rerun all 2 processes to resume from the last "
        "checkpoint they all finished"], log


@pytest.mark.slow
def test_the_rerun_resumes_from_the_last_checkpoint_every_process_finished(pod):
    a, c = _phase(pod, "A"), _phase(pod, "C")
    # what the processes were writing when one was killed never became a checkpoint, unless
    # every process had finished its part (Orbax commits after a barrier of all of them)
    assert set(a["committed_after"]) >= set(a["committed_at_kill"])
    assert c["start"] == max(a["committed_after"])
    assert f"resumed from {pod['workdir']}/checkpoints/{c['start']} " in c["out"]
    assert c["tmp_left"] == []  # the half-written one is cleaned up, never restored
    assert _runs.train_steps(pod["workdir"], c["first_line"])[0] == c["start"] + 1


@pytest.mark.slow
def test_a_sigterm_on_one_process_stops_both_after_the_same_step(pod):
    e = _phase(pod, "E")
    assert e["codes"] == [0, 0], e["outs"]
    stopped = {out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0]
               for out in e["outs"]}
    assert len(stopped) == 1, e["outs"]
    step = int(stopped.pop())
    assert e["start"] < step < POD["num_train_steps"]
    assert step == e["committed"][-1]
    assert _phase(pod, "F")["start"] == step


@pytest.mark.slow
def test_every_topology_continues_the_data_where_it_stopped(pod):
    """2 x 4 -> 1 x 8 -> 1 -> 2 x 4 -> 1 x 8: each phase starts right after the checkpoint it
    resumed from, whose metadata holds that step's input position; every step's loss is the
    uninterrupted run's (LOSS_TOL), so no batch was seen twice or skipped."""
    workdir = pod["workdir"]
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, read_only=True)
    meta = ckpt.read_meta(ckpt.latest_step())
    ckpt.close()
    assert (meta["epoch"], meta["position"]) == divmod(meta["step"], pod["steps_per_epoch"])
    assert meta["steps_per_epoch"] == pod["steps_per_epoch"] and meta["data_shards"] == 2
    phases = [p for p in pod["phases"] if p["name"] != "A"]
    for phase in phases:
        steps = _runs.train_steps(workdir, phase["first_line"])
        assert steps == list(range(phase["start"] + 1, steps[-1] + 1)), phase["name"]
        epoch, position = divmod(phase["start"], pod["steps_per_epoch"])
        out = phase["out"] if "out" in phase else phase["outs"][0]  # process 0 says it
        assert f"/{phase['start']} (epoch {epoch}, batch {position})" in out, phase["name"]
    assert [p["start"] for p in phases] == sorted({p["start"] for p in phases})
    ours, reference = _runs.final_metrics(workdir), _runs.final_metrics(pod["reference"])
    assert set(ours) == set(reference)
    for key, (loss, accuracy) in reference.items():
        assert abs(ours[key][0] - loss) <= LOSS_TOL, key
        assert abs(ours[key][1] - accuracy) <= ACCURACY_TOL, key


def test_resuming_with_another_data_shard_count_warns(data_dir, tmp_path, caplog):
    """The data order is a function of the shard count: a resume that reads another count (the
    default, one shard per process, on another number of hosts) says so."""
    _in_process(tiny_config(data_dir=data_dir, num_train_steps=2), tmp_path, stop_at=1)
    with caplog.at_level("WARNING"):
        _in_process(tiny_config(data_dir=data_dir, num_train_steps=2, data_shards=2), tmp_path)
    assert any("written reading 1 data shards, this run reads 2" in r.getMessage()
               for r in caplog.records)
