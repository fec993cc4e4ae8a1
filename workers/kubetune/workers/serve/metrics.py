"""Prometheus text exposition, written by hand (the server image carries no
prometheus_client): counters and histograms keyed by label tuples, thread-safe."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escaped = (
        str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values
    )
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[tuple(values)] += amount

    def value(self, *values: str) -> float:
        with self._lock:
            return self._values.get(tuple(values), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.labels, key)} {value:g}")
        return lines


class Gauge:
    """A gauge read from a callable at scrape time, so it can never go stale."""

    def __init__(self, name: str, help_text: str, label: str, read):
        self.name, self.help, self.label, self.read = name, help_text, label, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for key, value in sorted(self.read().items()):
            lines.append(f"{self.name}{_labels((self.label,), (key,))} {value:g}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets, labels: tuple[str, ...] = ()):
        self.name, self.help, self.buckets, self.labels = name, help_text, tuple(buckets), labels
        self._series: dict[tuple[str, ...], dict] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *values: str) -> None:
        with self._lock:
            series = self._series.setdefault(
                tuple(values), {"buckets": [0] * len(self.buckets), "sum": 0.0, "count": 0}
            )
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series["buckets"][i] += 1
            series["sum"] += value
            series["count"] += 1

    def count(self, *values: str) -> int:
        with self._lock:
            return self._series.get(tuple(values), {"count": 0})["count"]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        names = (*self.labels, "le")
        with self._lock:
            for key, series in sorted(self._series.items()):
                for bound, c in zip(self.buckets, series["buckets"]):
                    lines.append(f"{self.name}_bucket{_labels(names, (*key, f'{bound:g}'))} {c}")
                lines.append(
                    f"{self.name}_bucket{_labels(names, (*key, '+Inf'))} {series['count']}"
                )
                lines.append(f"{self.name}_sum{_labels(self.labels, key)} {series['sum']:g}")
                lines.append(f"{self.name}_count{_labels(self.labels, key)} {series['count']}")
        return lines


class ServeMetrics:
    """Every metric the server exports, in one place."""

    def __init__(self, adapter_counts):
        self.requests = Counter(
            "kubetune_serve_requests_total", "HTTP API requests.", ("endpoint", "model", "status")
        )
        self.latency = Histogram(
            "kubetune_serve_request_duration_seconds",
            "Request latency (to the last byte).",
            LATENCY_BUCKETS,
            ("endpoint",),
        )
        self.tokens = Counter("kubetune_serve_tokens_total", "Tokens processed.", ("model", "kind"))
        self.adapter_loads = Counter(
            "kubetune_serve_adapter_loads_total", "Adapter cold loads by result.", ("result",)
        )
        self.adapter_load_seconds = Histogram(
            "kubetune_serve_adapter_load_duration_seconds",
            "Adapter cold load: download, verify, inject.",
            LOAD_BUCKETS,
        )
        self.evictions = Counter(
            "kubetune_serve_adapter_evictions_total", "Adapters evicted from memory (LRU)."
        )
        self.adapters = Gauge(
            "kubetune_serve_adapters", "Listed adapters by state.", "state", adapter_counts
        )

    def adapter_load_finished(self, result: str, seconds: float) -> None:
        self.adapter_loads.inc(result)
        self.adapter_load_seconds.observe(seconds)

    def render(self) -> str:
        lines = []
        for metric in (
            self.requests,
            self.latency,
            self.tokens,
            self.adapter_loads,
            self.adapter_load_seconds,
            self.evictions,
            self.adapters,
        ):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
