"""A tiny Prometheus text endpoint: reconciles, recoveries, retries, errors, API requests.

Counters live in-process (they reset on restart, as Prometheus counters may); the
endpoint is a stdlib HTTP server on $KUBETUNE_METRICS_PORT in a daemon thread, so the
operator image needs no extra dependency.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "kubetune_operator"
HELP = {
    "reconciles_total": "FineTuneJob reconciles run.",
    "recoveries_total": "New attempts started after a preemption (incl. fallbacks).",
    "error_retries_total": "New attempts started after a trainer error.",
    "errors_total": "Reconciles that raised an unexpected error.",
    "status_writes_total": "FineTuneJob status writes.",
    "watch_triggers_total": "Pod or node changes that triggered a FineTuneJob reconcile.",
}


class Metrics:
    """Named counters plus a callable giving the API request counts per verb."""

    def __init__(self) -> None:
        self.counters: Counter = Counter()
        self._lock = threading.Lock()
        self.api_requests = lambda: {}

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def render(self) -> str:
        lines = []
        with self._lock:
            values = dict(self.counters)
        for name, text in HELP.items():
            lines += [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} counter",
                      f"{PREFIX}_{name} {values.get(name, 0)}"]
        lines += [f"# HELP {PREFIX}_api_requests_total Kubernetes API requests by verb.",
                  f"# TYPE {PREFIX}_api_requests_total counter"]
        for verb, count in sorted(self.api_requests().items()):
            lines.append(f'{PREFIX}_api_requests_total{{verb="{verb}"}} {count}')
        return "\n".join(lines) + "\n"


METRICS = Metrics()


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve GET /metrics in a daemon thread; returns the server (port 0 picks one)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") != "/metrics":
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
