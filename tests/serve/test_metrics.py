"""Prometheus exposition text, parsed back the way a scraper reads it."""

from kubetune.workers.serve.metrics import ServeMetrics


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_counters_histograms_and_gauges_render_as_prometheus_text():
    metrics = ServeMetrics(lambda: {"Loaded": 2, "Failed": 1})
    metrics.requests.inc("/v1/completions", "a", "200")
    metrics.requests.inc("/v1/completions", "a", "200")
    metrics.requests.inc("/v1/completions", 'we"ird', "404")
    metrics.latency.observe(0.2, "/v1/completions")
    metrics.latency.observe(3.0, "/v1/completions")
    metrics.adapter_load_finished("failed", 0.3)
    text = metrics.render()
    got = samples(text)
    assert (
        got['kubetune_serve_requests_total{endpoint="/v1/completions",model="a",status="200"}'] == 2
    )
    assert 'model="we\\"ird"' in text
    bucket = 'kubetune_serve_request_duration_seconds_bucket{endpoint="/v1/completions",le="%s"}'
    assert got[bucket % "0.1"] == 0 and got[bucket % "0.25"] == 1 and got[bucket % "5"] == 2
    assert got[bucket % "+Inf"] == 2
    assert got['kubetune_serve_request_duration_seconds_sum{endpoint="/v1/completions"}'] == 3.2
    assert got['kubetune_serve_adapter_loads_total{result="failed"}'] == 1
    assert got['kubetune_serve_adapters{state="Failed"}'] == 1
    assert "# TYPE kubetune_serve_request_duration_seconds histogram" in text
