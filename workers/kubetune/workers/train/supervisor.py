"""The main thread's job: turn SIGTERM into a stop and end the attempt within the budget.

The attempt (model loading, Ray, the loop) runs on a thread of its own, so the main
thread is always free to notice a SIGTERM, whenever it comes:
  * before training has begun (start-up, Ray starting, the model loading, waiting for
    worker pods) the attempt is abandoned at once: nothing was trained, nothing is lost;
  * once training has begun, the loop finishes its step, checkpoints and reports; the
    attempt is given until `checkpointBudgetSeconds` after the signal (less a reserve for
    exiting), and past that the trainer exits 75 anyway, naming the newest checkpoint
    that is in storage, rather than be killed by the kubelet with no summary at all.
The signal handler only records the time: it may interrupt the main thread anywhere,
even inside a lock it holds, so it takes none.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from .runner import not_started

log = logging.getLogger("kubetune.train")
TICK_SECONDS = 0.05
ABANDON_TIMEOUT_SECONDS = 1.0
TEARDOWN_SECONDS = 60.0  # how long a completed attempt may take to shut Ray down


def exit_reserve(budget: float) -> float:
    """Seconds of the budget kept for writing the summary and ending child processes."""
    return min(2.0, budget * 0.2)


class StopNotice:
    """SIGTERM times, recorded by a handler that does nothing else."""

    def __init__(self, times: list[float] | None = None) -> None:
        self.times = times if times is not None else []  # __main__ may have recorded one

    @property
    def at(self) -> float | None:
        return self.times[0] if self.times else None

    def install(self):
        """Install the handler (main thread only); returns the previous one."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self.times.append(time.time())


class AttemptThread:
    """Runs `target` on a daemon thread and keeps its result or error."""

    def __init__(self, target) -> None:
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, name="trainer-attempt", daemon=True)

    def start(self) -> AttemptThread:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive()

    def outcome(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.result


def budget_spent(progress: dict, budget: float) -> dict:
    """The outcome when the checkpoint did not finish in time: preempted, from the newest
    checkpoint in storage (the steps after it are lost, and said so)."""
    saved = progress.get("lastCheckpoint")
    where = saved["uri"] if saved else "the start"
    return {"status": "preempted", "steps": progress.get("step"), "checkpoint": saved,
            "wroteCheckpoint": False, "budgetExceeded": True,
            "message": f"the checkpoint did not finish within checkpointBudgetSeconds "
                       f"({budget:g}s); the next attempt resumes from {where}"}


def supervise(attempt, runner: AttemptThread, board, notice: StopNotice, budget: float) -> dict:
    """Wait for the attempt's outcome, honouring a stop (SIGTERM or POST /stop) as the
    module docstring says; raises the attempt's error."""
    abandoned: bool | None = None
    outcome_seen: float | None = None
    while True:
        if notice.at is not None and not board.stop_requested():
            log.info("SIGTERM: stopping after the current step")
            board.request_stop()
        if not runner.alive():
            return runner.outcome()
        stop_at = min(t for t in (notice.at, board.stop_requested_at(), float("inf"))
                      if t is not None)
        outcome = board.outcome()
        if outcome is not None and outcome_seen is None:
            outcome_seen = time.time()
        if stop_at != float("inf"):
            if abandoned is None:
                abandoned = attempt.abandon(ABANDON_TIMEOUT_SECONDS)
                if abandoned:
                    log.info("stopped before training began: nothing to checkpoint")
                    return not_started(board.snapshot())
            if outcome is not None:
                runner.thread.join(timeout=0.5)  # lets an in-process loop clean its workdir
                return outcome
            if time.time() >= stop_at + budget - exit_reserve(budget):
                log.warning("checkpoint budget of %gs spent: exiting anyway", budget)
                return budget_spent(board.snapshot(), budget)
        elif outcome_seen is not None and time.time() - outcome_seen > TEARDOWN_SECONDS:
            log.warning("the attempt reported its outcome but did not end: exiting anyway")
            return outcome
        time.sleep(TICK_SECONDS)
