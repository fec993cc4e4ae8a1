"""Command line of the trainer pod, exit codes and the termination message.

Exit 0: adapter written. Exit 75 (EX_TEMPFAIL): preempted, checkpoint saved — the
operator counts it as a recovery, not an error. Anything else: an error, with a JSON
summary naming the cause in --termination-log (Kubernetes shows it as the container's
termination message).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .control import JobControl
from .errors import TrainerError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PREEMPTED = 75
TERMINATION_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message

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
    return parser.parse_args(argv)


def summary(outcome: dict) -> tuple[int, dict]:
    """Exit code and termination message for a loop outcome."""
    if outcome["status"] == "completed":
        return EXIT_OK, {"result": "Succeeded", **outcome}
    if outcome["status"] == "preempted":
        return EXIT_PREEMPTED, {"result": "Preempted", **outcome}
    return EXIT_ERROR, {"result": "Failed", "message": outcome.get("message", "unknown error")}


def write_termination(path: Path, body: dict) -> None:
    text = json.dumps(body, sort_keys=True, default=str)
    if len(text) > TERMINATION_LIMIT:
        short = {"result": body.get("result"), "message": str(body.get("message"))[:3000]}
        text = json.dumps(short)
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write termination log %s: %s", path, exc)


def install_sigterm(clock: dict) -> None:
    """SIGTERM (the spot notice) becomes a stop request; the loop finishes its step,
    checkpoints and exits 75. Installed first thing so a notice during start-up is kept;
    the handler only records it and hands it to a thread (no remote calls in a handler)."""
    import threading

    def handler(signum, frame) -> None:
        if "sigterm" not in clock:
            clock["sigterm"] = time.time()
            control = clock.get("control")
            if isinstance(control, JobControl):
                control.request_stop()  # an Event.set: safe here, and seen at once
            elif control is not None:
                threading.Thread(target=control.request_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)


def attach_control(clock: dict, control) -> None:
    """From now on SIGTERM reaches `control`; a notice that came earlier is passed on."""
    clock["control"] = control
    install_sigterm(clock)  # again: ray.init may have replaced the handler
    if "sigterm" in clock:
        control.request_stop()


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clock: dict = {}
    install_sigterm(clock)
    run = None
    try:
        from .jobfile import load_job
        from .runner import InProcessRun, RayRun

        from .published import finished_adapter

        job = load_job(args.spec, args.namespace, args.job)
        done = finished_adapter(job)
        if done is not None:
            code, body = summary(done)
        else:
            run = InProcessRun(job, started) if args.no_ray else RayRun(job, started, args.ray_address)
            attach_control(clock, run.control)
            if args.status_port >= 0:
                from .progress import serve_progress

                serve_progress(run.control.snapshot, args.status_port,
                               stop=run.control.request_stop,
                               token=os.environ.get("RAY_AUTH_TOKEN"))
            code, body = summary(run.run())
    except TrainerError as exc:
        code, body = EXIT_ERROR, {"result": "Failed", "message": str(exc)}
    except Exception as exc:  # the message is the user's only clue: keep the cause
        from .loop import error_message

        log.exception("trainer failed")
        code, body = EXIT_ERROR, {"result": "Failed", "message": error_message(exc)}
    finally:
        if run is not None:
            run.close()
    if "sigterm" in clock:
        body["secondsAfterSigterm"] = round(time.time() - clock["sigterm"], 3)
    write_termination(args.termination_log, body)
    log.info("exit %d: %s", code, json.dumps(body, default=str)[:500])
    return code
