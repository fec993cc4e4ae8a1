"""GET /progress: the trainer's progress as JSON, for the operator to poll; and, in a
multi-pod job, POST /stop: a worker pod's spot notice, passed on to the trainer.

An HTTP endpoint on the pod needs no Kubernetes API or S3 permission at all (least
privilege): the operator reads http://<pod>:<port>/progress and copies it into status.
A worker pod that gets SIGTERM posts /stop with the job's Ray auth token, so the whole
job stops after the same step and checkpoints, as when the head itself gets SIGTERM;
without a token (single-pod jobs) there is no /stop.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("kubetune.train")


def serve_progress(snapshot, port: int, host: str | None = None,
                   stop: Callable[[], None] | None = None,
                   token: str | None = None) -> ThreadingHTTPServer:
    """Start a daemon-thread server answering GET /progress with `snapshot()` and, when
    `stop` and `token` are given, POST /stop (bearer `token`) with `stop()`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") != "/stop" or stop is None or not token:
                self.send_error(404, "no /stop on this trainer")
                return
            offered = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(offered.encode(), token.encode()):
                self.send_error(403, "the job's Ray auth token is required")
                return
            log.info("stop requested by a worker pod (its spot notice)")
            stop()
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") != "/progress":
                self.send_error(404, "only /progress is served")
                return
            try:
                body = json.dumps(snapshot()).encode()
            except Exception as exc:  # the board may be gone while shutting down
                self.send_error(503, f"progress unavailable: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    bind = host or os.environ.get("POD_IP") or "0.0.0.0"
    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                     name="progress-http", daemon=True).start()
    log.info("progress served on http://%s:%d/progress", bind, server.server_address[1])
    return server
