"""The Ray driver in a child process of the trainer, and the trainer's end of its pipes.

The trainer (PID 1 of the head pod) must exit 75 with a summary whatever Ray is doing.
A process that holds a Ray core worker cannot promise that: Ray installs C++ signal
hooks in it, and the core worker aborts the process (exit -6) once the raylet it is
connected to is gone — and ending Ray's processes quickly is exactly what a preempted
trainer has to do. So `RayRun` (ray.init, the control actor, TorchTrainer.fit) runs in
`python -m kubetune.workers.train.driver`, a child that talks to the trainer over two
pipes, one JSON object a line:

    trainer -> driver   {"start": {...job...}}   {"stop": true}
    driver -> trainer   {"progress": {...}}   {"abandoned": true|false|null}
                        {"reported": {...}}   (the workers' outcome, as soon as known)
                        {"outcome": {...}} | {"error": "message"}   (last, after Ray's shutdown)

The trainer can then end the driver and everything Ray started at any moment (see
`procs`) and still exit with its own code; a trainer killed outright takes the driver
with it (PR_SET_PDEATHSIG), and the driver's own Ray processes with that.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading

from .control import JobControl
from .errors import TrainerError, error_message
from .runner import not_started

log = logging.getLogger("kubetune.train")
RELAY_SECONDS = 0.1
EXIT_WAIT_SECONDS = 30.0


class DriverProcess:
    """The trainer's side: an attempt (run / abandon) whose work is done by the child."""

    def __init__(self, job, started_at: float, board: JobControl, address: str | None,
                 sync_checkpoints: bool = False) -> None:
        self.board = board
        self.request = {"namespace": job.namespace, "name": job.name, "uid": job.uid,
                        "spec": job.spec_wire, "startedAt": started_at, "address": address,
                        "syncCheckpoints": sync_checkpoints}
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._answers: queue.Queue = queue.Queue()
        self._down = None

    def run(self) -> dict:
        with self._lock:
            if self._abandoned:
                return not_started(self.board.snapshot())
            up_read, up_write = os.pipe()
            down_read, down_write = os.pipe()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetune.workers.train.driver", str(up_write),
                 str(down_read)], pass_fds=(up_write, down_read), stdin=subprocess.DEVNULL)
            os.close(up_write)
            os.close(down_read)
            self._down = os.fdopen(down_write, "w", buffering=1)
            self._send({"start": self.request})
        last: dict = {}
        with os.fdopen(up_read) as up:
            for line in up:
                last = json.loads(line)
                if "progress" in last:
                    self.board.replace_progress(last["progress"])
                elif "abandoned" in last:
                    self._answers.put(last["abandoned"])
                elif "reported" in last:
                    self.board.finish(last["reported"])
                elif "outcome" in last:
                    self.board.finish(last["outcome"])
                    break
                elif "error" in last:
                    break
        try:
            code = self.proc.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None  # what is left is ended with the trainer's other processes
        if "outcome" in last:
            return last["outcome"]
        if "error" in last:
            raise TrainerError(last["error"])
        raise TrainerError(f"the Ray driver process exited {code} without an outcome")

    def abandon(self, timeout: float) -> bool | None:
        with self._lock:
            if self.proc is None:
                self._abandoned = True
                return True
        self._send({"stop": True})
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            return None

    def _send(self, message: dict) -> None:
        try:
            self._down.write(json.dumps(message) + "\n")
        except (OSError, ValueError):  # the driver is gone; its end of the story is read
            pass


class Relay:
    """The driver's side: copies its board to the trainer and obeys the trainer's stop."""

    def __init__(self, up, board: JobControl) -> None:
        self.up = up
        self.board = board
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._sent: dict | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def send(self, message: dict) -> None:
        with self._lock:
            self.up.write(json.dumps(message, default=str) + "\n")

    def progress(self) -> None:
        snapshot = self.board.snapshot()
        if snapshot != self._sent:
            self._sent = snapshot
            self.send({"progress": snapshot})
        reported = self.board.outcome()  # the workers' outcome, before Ray has shut down
        if reported is not None and not self._reported:
            self._reported = True
            self.send({"reported": reported})

    def _run(self) -> None:
        while not self._done.wait(RELAY_SECONDS):
            self.progress()

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.progress()


def listen(down, board: JobControl, run, relay: Relay) -> None:
    """The trainer's commands: a stop, answered with whether the attempt was abandoned."""
    for line in down:
        if json.loads(line).get("stop"):
            board.request_stop()
            relay.send({"abandoned": run.abandon(1.0)})


def main(argv: list[str]) -> int:
    from kubetune.api import FineTuneJobSpec, parse_spec

    from . import procs
    from .jobfile import Job
    from .runner import RayRun

    parent = os.getppid()
    if procs.die_with_parent() and os.getppid() != parent:
        return 1  # the trainer is already gone
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    up = os.fdopen(int(argv[0]), "w", buffering=1)
    down = os.fdopen(int(argv[1]))
    start = json.loads(down.readline())["start"]
    job = Job(start["namespace"], start["name"], start["uid"], start["spec"],
              parse_spec(FineTuneJobSpec, start["spec"]))
    board = JobControl()
    run = RayRun(job, start["startedAt"], board, start["address"], start["syncCheckpoints"])
    relay = Relay(up, board)
    threading.Thread(target=listen, args=(down, board, run, relay), name="listen",
                     daemon=True).start()
    try:
        outcome = run.run()
    except Exception as exc:
        relay.close()
        relay.send({"error": error_message(exc)})
        return 1
    relay.close()
    relay.send({"outcome": outcome})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
