"""Several processes as one job: `jax.distributed` with the config's timeouts, and a watchdog
that turns a lost or stuck process into one line on stderr and a non-zero exit, instead of a hang
or a C++ stack dump.

`initialize(...)` joins the job (`config.distributed.initialization_timeout`) and starts a
`Watchdog` thread in every process. Every `heartbeat_timeout / 10` seconds the watchdog writes a
counter under `cbsa_jax/heartbeat/<process>` in the coordination service's key-value store and
reads every process's entry:

- a process whose counter has not moved for `config.distributed.heartbeat_timeout` seconds
  (killed, its host gone, or frozen) is lost: `error: process 1 of 2 stopped responding (...)`,
  exit code `PEER_EXIT`;
- a process that stopped on an error of its own publishes it, and the others exit at once with
  `error: process 1 of 2 failed: ...` (an XLA runtime error, which a collective raises when its
  peer is gone, first waits one `heartbeat_timeout` for the verdict on the peers);
- no training step, evaluation batch or checkpoint finished for
  `config.distributed.collective_timeout` seconds (every process alive, one of them hangs, and the
  others wait in a collective or barrier): `error: ... no progress for ...`, `PEER_EXIT`.

A process that leaves through the watchdog ends with `os._exit`: the normal interpreter exit would
run `jax.distributed.shutdown`, whose barrier waits for the lost process and then aborts with a
C++ stack dump. Checkpoints need no care here: Orbax commits a checkpoint only after every process
finished writing it, so one that a lost process left half-written is never restored.

What the watchdog cannot intercept: the coordination service lives in process 0, and when
process 0 dies the runtime of every other process aborts at once (a `Terminating process because
the JAX distributed service detected fatal errors` line and a C++ stack trace). The job still
fails fast and non-zero, and the checkpoints are as safe. JAX's own heartbeat (which aborts the
same way) is set to twice `heartbeat_timeout`, so the watchdog speaks first.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import jax
import ml_collections
from jax._src import distributed as _jax_distributed  # the client, as orbax reaches it too

__all__ = ["PEER_EXIT", "Watchdog", "initialize", "progress", "watchdog"]

#: The exit code of a process that stops because another process of the job was lost or stuck.
PEER_EXIT = 4

_KEY = "cbsa_jax/heartbeat"
_watchdog: Watchdog | None = None


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    return f"{name}: {line}" if name and line else (line or name)


class Watchdog:
    """Heartbeats through the coordination service, and the verdict when a process is lost.

    `client`: an object with `key_value_set(key, value, allow_overwrite=...)` and
    `key_value_dir_get(prefix) -> [(key, value)]` (JAX's distributed client). `exit` is called
    with the exit code after the one line has been printed (`os._exit`; tests pass their own).
    """

    def __init__(self, client, *, process: int, processes: int, heartbeat_timeout: float,
                 collective_timeout: float = 0.0, exit=None, clock=time.monotonic):
        self.client, self.process, self.processes = client, process, processes
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.collective_timeout = float(collective_timeout)
        self.interval = min(max(self.heartbeat_timeout / 10, 0.2), 10.0)
        self._exit = exit if exit is not None else os._exit
        self._clock = clock
        self._counter = 0
        self._state = "running"
        self._seen: dict[int, tuple[str, float]] = {}  # process -> (counter, when it moved)
        self._last_progress = clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._exiting = False
        self._thread: threading.Thread | None = None

    # -- the thread --------------------------------------------------------------------------
    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._run, name="cbsa_jax-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            verdict = self.check()
            if verdict is not None:
                self.exit(PEER_EXIT, verdict)
                return

    def progress(self) -> None:
        """A step, evaluation batch or checkpoint finished (resets the collective timeout)."""
        self._last_progress = self._clock()

    def check(self) -> str | None:
        """One heartbeat: publish ours, read everyone's; the line to exit with, or None."""
        self._counter += 1
        now = self._clock()
        try:
            self.client.key_value_set(f"{_KEY}/{self.process}", f"{self._counter} {self._state}",
                                      allow_overwrite=True)
            entries = dict(self.client.key_value_dir_get(f"{_KEY}/"))
        except Exception as e:  # the store lives in process 0
            return (f"the coordinator, process 0 of {self.processes}, stopped responding "
                    f"({_first_line(e)})")
        for peer in range(self.processes):
            if peer == self.process:
                continue
            counter, _, state = entries.get(f"{_KEY}/{peer}", "").partition(" ")
            if state == "done":
                continue
            if state.startswith("failed"):
                return f"process {peer} of {self.processes} {state}"
            if peer not in self._seen or self._seen[peer][0] != counter:
                self._seen[peer] = (counter, now)
            elif now - self._seen[peer][1] > self.heartbeat_timeout:
                return (f"process {peer} of {self.processes} stopped responding (no heartbeat "
                        f"for {self.heartbeat_timeout:g} s, config.distributed.heartbeat_timeout)")
        if self.collective_timeout and now - self._last_progress > self.collective_timeout:
            return (f"no training step, evaluation batch or checkpoint finished for "
                    f"{self.collective_timeout:g} s (config.distributed.collective_timeout): "
                    f"every process is alive, so one of them hangs and the others wait for it "
                    f"in a collective")
        return None

    # -- leaving -----------------------------------------------------------------------------
    def exit(self, code: int, message: str) -> None:
        """Print `error: message` and how to resume (one line), flush, end the process."""
        with self._lock:
            if self._exiting:
                return
            self._exiting = True
        self._stop.set()
        self._publish(f"failed: stopped because {message}")
        sys.stdout.flush()
        print(f"error: {message}; rerun all {self.processes} processes to resume from the last "
              f"checkpoint they all finished", file=sys.stderr, flush=True)
        if self.process == 0 and self.processes > 2:  # the coordination service lives here:
            time.sleep(min(2 * self.interval, 5.0))  # let the others say their line first
        self._exit(code)

    def await_peers(self) -> None:
        """After a runtime error in this process: give the watchdog one heartbeat timeout to find
        a lost peer (then it ends the process); returns if every peer is still alive."""
        deadline = self._clock() + self.heartbeat_timeout + 3 * self.interval
        while self._clock() < deadline and not self._stop.is_set():
            time.sleep(min(self.interval, 0.5))

    def finish(self, code: int, error: BaseException | None = None) -> None:
        """The end of this process's run (its error, if any, already printed): `done` for code 0,
        and JAX shuts down normally at exit; otherwise tell the other processes, which exit at
        once, and end this one with `code` (JAX's shutdown barrier would wait for them)."""
        self._stop.set()
        if code == 0:
            self._publish("done")
            return
        self._publish(f"failed: {_first_line(error) if error is not None else f'exit {code}'}")
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(code)

    def _publish(self, state: str) -> None:
        self._state = state
        try:
            self.client.key_value_set(f"{_KEY}/{self.process}",
                                      f"{self._counter + 1} {state}", allow_overwrite=True)
        except Exception:  # the coordinator is gone: nobody is left to tell
            pass


def initialize(config: ml_collections.ConfigDict, *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               auto: bool = False) -> Watchdog | None:
    """Join the job (explicit address, JAX_COORDINATOR_ADDRESS, or cluster detection with `auto`)
    with `config.distributed`'s timeouts and start the watchdog; None when there is no job to
    join. Raises ValueError for an inconsistent command line."""
    global _watchdog
    if not (coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or auto):
        return None
    timeouts = config.distributed
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; no-op else
    kwargs = {}
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id must be in [0, --num_processes = {num_processes}), "
                             f"got {process_id}")
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    where = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or "auto-detected"
    waited = threading.Timer(timeouts.initialization_timeout, _not_joined,
                             args=(timeouts.initialization_timeout, where, process_id))
    waited.daemon = True
    waited.start()
    try:  # JAX's own deadlines come later than ours, so ours explains what happened
        jax.distributed.initialize(
            **kwargs, initialization_timeout=int(timeouts.initialization_timeout) + 30,
            heartbeat_timeout_seconds=int(2 * timeouts.heartbeat_timeout) + 1)
    finally:
        waited.cancel()
    client = _jax_distributed.global_state.client
    _watchdog = Watchdog(client, process=jax.process_index(), processes=jax.process_count(),
                         heartbeat_timeout=timeouts.heartbeat_timeout,
                         collective_timeout=timeouts.collective_timeout).start()
    return _watchdog


def _not_joined(timeout: float, where: str, process_id) -> None:
    who = "" if process_id is None else f"process {process_id}: "
    print(f"error: {who}not every process joined the job at {where} within {timeout:g} s "
          f"(config.distributed.initialization_timeout)", file=sys.stderr, flush=True)
    os._exit(PEER_EXIT)


def watchdog() -> Watchdog | None:
    """This process's watchdog (None outside a multi-process job)."""
    return _watchdog


def progress() -> None:
    """Mark that a step, evaluation batch or checkpoint finished (no-op in one process)."""
    if _watchdog is not None:
        _watchdog.progress()

