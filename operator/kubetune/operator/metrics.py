"""The operator's Prometheus metrics: reconciles, recoveries, retries, errors, status
writes, watch triggers, and API requests by verb.

prometheus_client keeps the counters and serves them on $KUBETUNE_METRICS_PORT (its own
HTTP server, in a daemon thread). They live in a registry of their own rather than the
library's global one, so nothing else in the process (Kopf, a test) adds series to the
operator's endpoint. The API request counts are `Kube`'s own, read at scrape time by a
collector, so the figure a benchmark reads from the audit log and the one Prometheus
scrapes come from the same place.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily

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
    """Named counters plus `api_requests`, a callable giving request counts per verb."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            name: Counter(f"{PREFIX}_{name.removesuffix('_total')}", text, registry=self.registry)
            for name, text in HELP.items()}
        self.api_requests: Callable[[], dict[str, int]] = lambda: {}
        self.registry.register(_ApiRequests(self))

    def inc(self, name: str, amount: int = 1) -> None:
        self._counters[name].inc(amount)

    def render(self) -> str:
        """The text exposition a scrape gets."""
        return generate_latest(self.registry).decode()


class _ApiRequests:
    """A collector: the API request counts per verb as they are at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        family = CounterMetricFamily(f"{PREFIX}_api_requests", "Kubernetes API requests by verb.",
                                     labels=["verb"])
        for verb, count in sorted(self.metrics.api_requests().items()):
            family.add_metric([verb], count)
        yield family


METRICS = Metrics()


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0"):
    """Serve the metrics (any path, as prometheus_client does) in a daemon thread;
    returns the server (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
