"""The Ray worker pod's command: `ray start --address=<head> --block`, plus the spot
notice passed on to the head.

A worker pod that gets SIGTERM (its node is being reclaimed) must not just take its Ray
node away: the training ranks on it would die mid-step and the job would fall back to
its last periodic checkpoint. Instead it posts /stop to the head's status port (with the
job's Ray auth token), so every rank stops after the same step and the head saves a
checkpoint, and keeps its Ray node up until the head has gone (or the grace period is
nearly spent). It then exits 75, like the head: "preempted, checkpoint saved".

    python -m kubetune.workers.train.rayworker --address HEAD:6379 --stop-url URL
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from .cli import EXIT_PREEMPTED
from .rayhead import ray_command

log = logging.getLogger("kubetune.train.worker")
STOP_ATTEMPTS = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the head's GCS address, host:port")
    parser.add_argument("--stop-url", required=True, help="the head's POST /stop endpoint")
    parser.add_argument("--wait-seconds", type=float, default=120.0,
                        help="how long to keep this Ray node up for the head's checkpoint "
                        "after SIGTERM (the job's checkpoint budget)")
    return parser.parse_args(argv)


def ask_head_to_stop(url: str, token: str) -> bool:
    """POST /stop until the head takes it (it may be busy); False if it never did."""
    request = urllib.request.Request(url, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    for attempt in range(STOP_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status == 202
        except OSError as exc:
            log.warning("stop request %d to %s failed: %s", attempt + 1, url, exc)
            time.sleep(0.5)
    return False


def head_is_up(progress_url: str) -> bool:
    """False once nothing listens there any more (or its name is gone with its pod). A
    slow answer or an error page still means up: a checkpointing head is busy."""
    try:
        with urllib.request.urlopen(progress_url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError as exc:
        return not isinstance(exc.reason, (ConnectionRefusedError, socket.gaierror))
    except ConnectionRefusedError:
        return False
    except OSError:  # a timeout
        return True


def wait_for_head_to_go(node: subprocess.Popen, progress_url: str, seconds: float) -> None:
    """Until the head stops answering (it saved its checkpoint and exited) or `seconds`
    pass; a Ray node alone notices a lost head only after a long reconnect timeout."""
    deadline = time.monotonic() + seconds
    misses = 0
    while node.poll() is None and time.monotonic() < deadline and misses < 2:
        misses = 0 if head_is_up(progress_url) else misses + 1
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = subprocess.Popen([*ray_command(), "start", f"--address={args.address}", "--block",
                             "--disable-usage-stats"])
    noticed = threading.Event()

    def on_sigterm(signum, frame) -> None:
        noticed.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    while node.poll() is None and not noticed.wait(0.5):
        pass
    if not noticed.is_set():
        return node.returncode  # the head ended the Ray cluster: the job is over
    log.info("SIGTERM: asking the head to checkpoint and stop the job")
    if ask_head_to_stop(args.stop_url, os.environ.get("RAY_AUTH_TOKEN", "")):
        wait_for_head_to_go(node, args.stop_url.rsplit("/", 1)[0] + "/progress", args.wait_seconds)
        # The head's own exit ends the Ray cluster; a moment for this node to see it.
    if node.poll() is None:  # what is left of the grace period is short: do not drain
        node.terminate()
        try:
            node.wait(timeout=3)
        except subprocess.TimeoutExpired:
            node.kill()
    return EXIT_PREEMPTED


if __name__ == "__main__":
    from . import procs

    procs.become_subreaper()  # Ray's workers and agents on this node end with the pod's command
    code = main()
    procs.end_descendants(grace=1.0)
    sys.exit(code)
