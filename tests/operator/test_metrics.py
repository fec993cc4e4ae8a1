"""The operator's metrics endpoint (prometheus_client): counters by name, the API request
counts per verb read at scrape time, served over HTTP on a port of its own."""

from __future__ import annotations

import re
import urllib.request

from kubetune.operator.metrics import Metrics, serve


def sample(text: str, series: str) -> float | None:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_counters_and_api_requests_are_scraped_as_prometheus_counters():
    metrics = Metrics()
    requests = {"GET": 3}
    metrics.api_requests = lambda: dict(requests)
    metrics.inc("reconciles_total")
    metrics.inc("reconciles_total", 2)
    metrics.inc("recoveries_total")
    server = serve(metrics, 0, host="127.0.0.1")
    try:
        port = server.server_address[1]
        requests["PATCH"] = 1  # read when scraped, not when registered
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert "# TYPE kubetune_operator_reconciles_total counter" in text
    assert sample(text, "kubetune_operator_reconciles_total") == 3
    assert sample(text, "kubetune_operator_recoveries_total") == 1
    assert sample(text, "kubetune_operator_errors_total") == 0
    assert sample(text, 'kubetune_operator_api_requests_total{verb="GET"}') == 3
    assert sample(text, 'kubetune_operator_api_requests_total{verb="PATCH"}') == 1


def test_two_metrics_objects_do_not_share_series():
    first, second = Metrics(), Metrics()
    first.inc("errors_total")
    assert sample(second.render(), "kubetune_operator_errors_total") == 0
