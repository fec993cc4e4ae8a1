"""Command line of the trainer pod, exit codes and the termination message.

Exit 0: adapter written. Exit 75 (EX_TEMPFAIL): preempted — a SIGTERM at any moment,
with the newest checkpoint in storage named — the operator counts it as a recovery, not
an error. Anything else: an error, with a JSON summary naming the cause in
--termination-log (Kubernetes shows it as the container's termination message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .control import JobControl
from .errors import TrainerError, error_message
from .supervisor import AttemptThread, StopNotice, supervise

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PREEMPTED = 75
TERMINATION_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message
REAP_GRACE_SECONDS = 0.5

log = logging.getLogger("kubetune.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.workers.train",
                                     description="Fine-tune a LoRA/QLoRA adapter from a "
                                     "FineTuneJob spec; resume from its newest checkpoint.")
    parser.add_argument("--spec", required=True, type=Path,
                        help="FineTuneJob object as JSON or YAML (the operator mounts it).")
    parser.add_argument("--namespace", help="Overrides metadata.namespace.")
    parser.add_argument("--job", help="Overrides metadata.name.")
    parser.add_argument("--ray-address", help="Join this Ray cluster; default starts a local one.")
    parser.add_argument("--status-port", type=int, default=8080,
                        help="Port of GET /progress (0 picks a free port; -1 disables).")
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                        help="Where the exit summary (JSON) is written.")
    parser.add_argument("--no-ray", action="store_true",
                        help="Run the loop in this process (one worker; local runs and tests).")
    parser.add_argument("--sync-checkpoints", action="store_true",
                        help="Wait for each checkpoint upload at the step boundary instead of "
                        "uploading in the background (to measure what that costs).")
    return parser.parse_args(argv)


def summary(outcome: dict) -> tuple[int, dict]:
    """Exit code and termination message for a loop outcome."""
    if outcome["status"] == "completed":
        return EXIT_OK, {"result": "Succeeded", **outcome}
    if outcome["status"] == "preempted":
        return EXIT_PREEMPTED, {"result": "Preempted", **outcome}
    return EXIT_ERROR, {"result": "Failed", "message": outcome.get("message", "unknown error")}


# What the operator acts on, kept when the whole summary would not fit the limit.
ESSENTIAL_KEYS = ("result", "status", "adapter", "steps", "totalSteps", "checkpoint",
                  "wroteCheckpoint", "evaluation", "trainLoss", "evalLoss")


def write_termination(path: Path, body: dict) -> None:
    text = json.dumps(body, sort_keys=True, default=str)
    if len(text) > TERMINATION_LIMIT:
        short = {k: body[k] for k in ESSENTIAL_KEYS if k in body}
        if "message" in body:
            short["message"] = str(body["message"])[:3000]
        text = json.dumps(short, sort_keys=True, default=str)
    if len(text) > TERMINATION_LIMIT:
        text = json.dumps({"result": body.get("result"),
                           "message": str(body.get("message"))[:3000]})
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write termination log %s: %s", path, exc)


def make_attempt(args: argparse.Namespace, job, started: float, board: JobControl):
    """In this process (--no-ray), or Ray's driver in a child process (see `driver`)."""
    if args.no_ray:
        from .runner import InProcessRun

        return InProcessRun(job, started, board, args.sync_checkpoints)
    from .driver import DriverProcess

    return DriverProcess(job, started, board, args.ray_address, args.sync_checkpoints)


def run_attempt(job, attempt) -> dict:
    """An adapter this job already published ends the attempt before anything starts."""
    from .published import finished_adapter

    done = finished_adapter(job)
    return done if done is not None else attempt.run()


def main(argv: list[str] | None = None, notice: StopNotice | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    notice = notice or StopNotice()
    previous = notice.install()
    board = JobControl()
    server = None
    try:
        if args.status_port >= 0:  # first, so that /progress answers "Starting" at once
            from .progress import serve_progress

            server = serve_progress(board.snapshot, args.status_port, stop=board.request_stop,
                                    token=os.environ.get("RAY_AUTH_TOKEN"))
        from .jobfile import load_job

        job = load_job(args.spec, args.namespace, args.job)
        attempt = make_attempt(args, job, started, board)
        runner = AttemptThread(lambda: run_attempt(job, attempt)).start()
        outcome = supervise(attempt, runner, board, notice, job.spec.spot.checkpoint_budget_seconds)
        code, body = summary(outcome)
    except TrainerError as exc:
        code, body = EXIT_ERROR, {"result": "Failed", "message": str(exc)}
    except Exception as exc:  # the message is the user's only clue: keep the cause
        log.exception("trainer failed")
        code, body = EXIT_ERROR, {"result": "Failed", "message": error_message(exc)}
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    if notice.at is not None:
        body["secondsAfterSigterm"] = round(time.time() - notice.at, 3)
    write_termination(args.termination_log, body)
    log.info("exit %d: %s", code, json.dumps(body, default=str)[:500])
    if server is not None:
        server.shutdown()
        server.server_close()
    return code


def run_as_process(sigterms: list[float]) -> None:
    """`python -m kubetune.workers.train`: main(), then every process it started ended and
    its scratch folder removed, then exit at once (an attempt thread still inside Ray or
    a model load is not waited for: the summary is written and the budget is what
    matters)."""
    import shutil
    import tempfile

    from . import procs
    from .loop import SCRATCH_ENV

    procs.become_subreaper()
    scratch = tempfile.mkdtemp(prefix=f"kubetune-trainer-{os.getpid()}-")
    os.environ[SCRATCH_ENV] = scratch  # the loop's workdir goes in it, here and in Ray's workers
    code = main(notice=StopNotice(sigterms))
    ended = procs.end_descendants(grace=REAP_GRACE_SECONDS)
    if ended:
        log.info("ended %d leftover processes: %s", len(ended), ended[:20])
    shutil.rmtree(scratch, ignore_errors=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
