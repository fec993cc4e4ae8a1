"""Wires config, model host, adapter registry, metrics and the config watcher together.

Readiness: the pod is ready once the base model is loaded and every listed adapter has
reached a final state, Loaded *or Failed*. Waiting for Failed adapters to load would
keep a pod unready forever over one bad adapter, taking every good adapter (and the
base) out of the Service and stalling rollouts; the operator reads GET /v1/adapters and
reports the failure per adapter instead. Adapters added later to a running, ready pod
do not flip it back to unready: they answer 503 until loaded, the rest keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .basemodel import resolve_base
from .config import ServeConfig
from .engine import ModelHost
from .metrics import ServeMetrics
from .registry import AdapterRegistry, Fetcher, RegistryEvents
from .responses import model_list
from .service import CompletionService

log = logging.getLogger("kubetune.serve")


class ServeApp:
    def __init__(self, config: ServeConfig, cache_dir: Path):
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.started = int(time.time())
        self.host: ModelHost | None = None
        self.registry: AdapterRegistry | None = None
        self.service: CompletionService | None = None
        self.base_error: str | None = None
        self._ever_ready = False
        self._lock = threading.Lock()
        self.metrics = ServeMetrics(self._adapter_counts)
        self.config_error = lambda: None

    def _adapter_counts(self) -> dict[str, int]:
        if self.registry is None:
            return {}
        counts = self.registry.counts()
        counts["InMemory"] = counts.pop("inMemory")
        return counts

    def limits(self):
        return self.config.limits

    def load(self) -> None:
        """Load the base model, then queue every adapter for background loading."""
        base = self.config.base_model
        location = resolve_base(base, self.config.storage, self.cache_dir)
        self.host = ModelHost.load(base, location)
        fetcher = Fetcher(self.config.storage, self.cache_dir, base.uri, self.host.base_linears)
        events = RegistryEvents(
            load_finished=self.metrics.adapter_load_finished, evicted=self.metrics.evictions.inc
        )
        self.registry = AdapterRegistry(
            self.host, fetcher, base.served_name, self.config.max_adapters_in_memory, events
        )
        self.service = CompletionService(self.host, self.registry, self.metrics, self.limits)
        self.registry.start()
        self.registry.apply(self.config.adapters, self.config.max_adapters_in_memory)
        log.info("base model %s loaded as %r", base.uri, base.served_name)

    def apply_config(self, config: ServeConfig) -> None:
        """Hot path for a changed config: adapters and limits apply live; a changed base
        model needs a new pod (the operator rolls the Deployment for that)."""
        if config.base_model != self.config.base_model or config.storage != self.config.storage:
            log.warning("baseModel/storage changed: ignored until the pod restarts")
            config = ServeConfig(
                self.config.base_model,
                config.adapters,
                config.max_adapters_in_memory,
                config.limits,
                self.config.storage,
            )
        self.config = config
        if self.registry is not None:
            self.registry.apply(config.adapters, config.max_adapters_in_memory)

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()

    # --- views --------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict]:
        if self.registry is None:
            return False, {"ready": False, "reason": "base model loading"}
        with self._lock:
            self._ever_ready = self._ever_ready or self.registry.settled()
            ready = self._ever_ready
        counts = self.registry.counts()
        reason = "ok" if ready else "adapters still loading"
        return ready, {"ready": ready, "reason": reason, "adapters": counts}

    def model_list(self) -> dict:
        names = [self.config.base_model.served_name]
        if self.registry is not None:
            names += self.registry.servable()
        return model_list(names, self.started)

    def adapter_report(self) -> dict:
        return {
            "base": {
                "name": self.config.base_model.served_name,
                "uri": self.config.base_model.uri,
                "state": "Loaded" if self.host is not None else "Loading",
                "loadIn4bit": self.config.base_model.load_in_4bit,
            },
            "adapters": self.registry.views() if self.registry is not None else [],
            "maxAdaptersInMemory": self.config.max_adapters_in_memory,
            "configError": self.config_error(),
        }

    def metric_model_label(self, name: str) -> str:
        """Only known names become label values, so random `model` strings cannot blow up
        the metric's cardinality."""
        known = {self.config.base_model.served_name, *self.config.adapter_map()}
        return name if name in known else "_unknown"
