"""The agent's Prometheus metrics, in a registry of its own (tests run several agents in
one process; the default global registry would refuse the second)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .state import STATES

CONTENT_TYPE = CONTENT_TYPE_LATEST
# results of one load: loaded, rejected (failed verification), refused (by vLLM), error
# (storage or vLLM unreachable: retried)
RESULTS = ("loaded", "rejected", "refused", "error")


class AgentMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.adapters = Gauge(
            "kubetune_agent_adapters", "Configured adapters by state.", ["state"],
            registry=self.registry,
        )
        self.loads = Counter(
            "kubetune_agent_adapter_loads", "Adapter loads and reloads by result.", ["result"],
            registry=self.registry,
        )
        self.unloads = Counter(
            "kubetune_agent_adapter_unloads", "Adapters unloaded from vLLM.", registry=self.registry
        )
        self.load_seconds = Histogram(
            "kubetune_agent_adapter_load_seconds",
            "Download, verification and vLLM load of one adapter.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.vllm_up = Gauge(
            "kubetune_agent_vllm_up", "1 while vLLM answers /health.", registry=self.registry
        )
        self.config_errors = Counter(
            "kubetune_agent_config_errors", "Config file edits that failed to parse (ignored).",
            registry=self.registry,
        )
        for state in STATES:
            self.adapters.labels(state=state)
        for result in RESULTS:
            self.loads.labels(result=result)

    def refresh(self, counts: dict[str, int], vllm_up: bool) -> None:
        for state, count in counts.items():
            self.adapters.labels(state=state).set(count)
        self.vllm_up.set(1 if vllm_up else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
