"""Adapter lifecycle: Pending -> Loading -> Loaded | Failed, LRU residency, hot reload.

Cold loads (download from the object store + verify + inject) run on one background
thread so a config change never blocks requests, and one at a time so a burst of new
adapters does not starve generation of CPU. Verified adapters stay in a local disk
cache; evicting one (maxAdaptersInMemory, least recently used first) only removes it
from the model, and the next request for it re-injects it from disk.

Locks, always taken in this order: `_residency` (serialises inject/evict decisions so a
request can pin an adapter without it being evicted under it) -> `_lock` (the entry
table, held only for short reads/writes) -> the host's model lock (inside host calls).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.workers import objectstore

from .config import AdapterConfig, StorageConfig
from .errors import ApiError, model_not_found
from .verify import AdapterRejected, verify_adapter

log = logging.getLogger("kubetune.serve.adapters")


@dataclass
class AdapterEntry:
    config: AdapterConfig
    state: str = "Pending"
    message: str | None = None
    local_dir: Path | None = None
    sha256: str | None = None
    size_bytes: int = 0
    peft_name: str | None = None  # set while resident in the model
    last_used: float = 0.0
    in_use: int = 0
    retired: bool = False  # removed from the config; unloaded when its last request ends
    load_seconds: float | None = None
    loaded_at: float | None = None
    version: int = 0

    def view(self) -> dict:
        return {
            "name": self.config.name,
            "uri": self.config.uri,
            "state": self.state,
            "message": self.message,
            "sha256": self.sha256,
            "sizeBytes": self.size_bytes,
            "inMemory": self.peft_name is not None,
            "loadSeconds": self.load_seconds,
            "loadedAt": self.loaded_at,
        }


@dataclass
class RegistryEvents:
    """Hooks for metrics, kept as plain callables so the registry has no metrics import."""

    load_finished: Callable[[str, float], None] = lambda result, seconds: None
    evicted: Callable[[], None] = lambda: None


@dataclass
class Fetcher:
    """Downloads an adapter prefix into the disk cache, verified, or raises AdapterRejected."""

    storage: StorageConfig
    cache_dir: Path
    served_uri: str
    base_linears: dict[str, tuple[int, int]]
    _client: object = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            self._client = objectstore.make_client(self.storage.endpoint, self.storage.region)
        return self._client

    def fetch(self, config: AdapterConfig) -> tuple[Path, str, int]:
        root = self.cache_dir / "adapters"
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".dl-", dir=root))
        try:
            try:
                uri = objectstore.S3Uri.parse(config.uri)
                files = objectstore.download_prefix(self.client(), uri, staging, attempts=3)
            except (ValueError, objectstore.ObjectStoreError) as exc:
                raise AdapterRejected(f"download failed: {exc}") from exc
            if not files:
                raise AdapterRejected(f"no objects under {config.uri}")
            _, identity = verify_adapter(staging, config.sha256, self.served_uri, self.base_linears)
            size = sum(p.stat().st_size for p in files)
            key = hashlib.sha256(f"{config.name}\n{config.uri}".encode()).hexdigest()[:12]
            target = root / f"{key}-{identity[:16]}"
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            return target, identity, size
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class AdapterRegistry:
    def __init__(
        self,
        host,
        fetcher: Fetcher,
        base_name: str,
        max_in_memory: int,
        events: RegistryEvents | None = None,
    ):
        self.host = host
        self.fetcher = fetcher
        self.base_name = base_name
        self.max_in_memory = max_in_memory
        self.events = events or RegistryEvents()
        self._entries: dict[str, AdapterEntry] = {}
        self._retiring: list[AdapterEntry] = []
        self._lock = threading.Lock()
        self._residency = threading.RLock()
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # --- configuration ------------------------------------------------------------
    def apply(self, adapters: tuple[AdapterConfig, ...], max_in_memory: int) -> None:
        """Bring the table to the desired list: new ones queued, removed ones unloaded."""
        desired = {a.name: a for a in adapters}
        to_retire = []
        with self._lock:
            self.max_in_memory = max_in_memory
            for name, entry in list(self._entries.items()):
                if desired.get(name) != entry.config:
                    to_retire.append(self._entries.pop(name))
            for name, config in desired.items():
                if name not in self._entries:
                    entry = AdapterEntry(config, version=time.monotonic_ns())
                    self._entries[name] = entry
                    self._queue.put((name, entry.version))
        for entry in to_retire:
            self._retire(entry)
        with self._residency:
            self._evict_over_limit()

    def _retire(self, entry: AdapterEntry) -> None:
        with self._residency:
            with self._lock:
                entry.retired = True
                busy = entry.in_use > 0
                if busy:
                    self._retiring.append(entry)
            if not busy:
                self._drop(entry)

    def _drop(self, entry: AdapterEntry) -> None:
        if entry.peft_name is not None:
            self.host.remove_adapter(entry.peft_name)
            entry.peft_name = None
        if entry.local_dir is not None:
            shutil.rmtree(entry.local_dir, ignore_errors=True)
        log.info("adapter %s unloaded", entry.config.name)

    # --- background loading -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adapter-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _current(self, name: str, version: int) -> AdapterEntry | None:
        with self._lock:
            entry = self._entries.get(name)
            return entry if entry is not None and entry.version == version else None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            entry = self._current(*item)
            if entry is not None:
                self._load(entry)

    def _load(self, entry: AdapterEntry) -> None:
        started = time.monotonic()
        with self._lock:
            entry.state, entry.message = "Loading", None
        try:
            local_dir, identity, size = self.fetcher.fetch(entry.config)
            with self._lock:
                entry.local_dir, entry.sha256, entry.size_bytes = local_dir, identity, size
            with self._residency:
                if entry.retired:
                    self._drop(entry)
                    return
                self._make_resident(entry)
        except AdapterRejected as exc:
            self._fail(entry, str(exc), started)
            return
        except Exception as exc:  # peft/torch errors: this adapter fails, the server lives
            log.exception("adapter %s failed to load", entry.config.name)
            self._fail(entry, f"{type(exc).__name__}: {exc}", started)
            return
        seconds = time.monotonic() - started
        with self._lock:
            entry.state, entry.message = "Loaded", None
            entry.load_seconds, entry.loaded_at = seconds, time.time()
        self.events.load_finished("loaded", seconds)
        log.info("adapter %s loaded in %.2fs (%s)", entry.config.name, seconds, entry.sha256)

    def _fail(self, entry: AdapterEntry, message: str, started: float) -> None:
        with self._lock:
            entry.state, entry.message = "Failed", message
        self.events.load_finished("failed", time.monotonic() - started)
        log.warning("adapter %s failed: %s", entry.config.name, message)
        if entry.local_dir is not None:
            shutil.rmtree(entry.local_dir, ignore_errors=True)

    # --- residency (LRU) ----------------------------------------------------------
    def _make_resident(self, entry: AdapterEntry) -> None:
        """Caller holds `_residency`."""
        if entry.peft_name is None:
            entry.peft_name = self.host.add_adapter(entry.local_dir)
        entry.last_used = time.monotonic()
        self._evict_over_limit(keep=entry)

    def _evict_over_limit(self, keep: AdapterEntry | None = None) -> None:
        """Caller holds `_residency`. Adapters serving a request are never evicted, so the
        bound may be exceeded briefly when more adapters than the bound are busy at once."""
        with self._lock:
            resident = [e for e in self._entries.values() if e.peft_name is not None]
            excess = len(resident) - self.max_in_memory
            victims = sorted(
                (e for e in resident if e.in_use == 0 and e is not keep), key=lambda e: e.last_used
            )[: max(excess, 0)]
        for victim in victims:
            self.host.remove_adapter(victim.peft_name)
            victim.peft_name = None
            self.events.evicted()
            log.info("adapter %s evicted (LRU)", victim.config.name)

    @contextmanager
    def use(self, name: str) -> Iterator[str | None]:
        """Pin the adapter a request names for the request's duration; yields its peft
        name (None for the bare base). Raises ApiError for names that cannot serve."""
        if name == self.base_name:
            yield None
            return
        with self._residency:
            with self._lock:
                entry = self._entries.get(name)
                state = entry.state if entry else None
            if entry is None:
                raise model_not_found(name)
            if state == "Failed":
                raise ApiError(
                    404,
                    f"adapter {name!r} failed to load: {entry.message}",
                    "model",
                    "model_not_available",
                )
            if state != "Loaded":
                raise ApiError(
                    503,
                    f"adapter {name!r} is {state.lower()}; retry shortly",
                    "model",
                    "model_loading",
                    type="server_error",
                )
            self._make_resident(entry)
            with self._lock:
                entry.in_use += 1
        try:
            yield entry.peft_name
        finally:
            with self._residency:
                with self._lock:
                    entry.in_use -= 1
                    entry.last_used = time.monotonic()
                    drop = entry.retired and entry.in_use == 0 and entry in self._retiring
                    if drop:
                        self._retiring.remove(entry)
                if drop:
                    self._drop(entry)
                else:
                    self._evict_over_limit()

    # --- views --------------------------------------------------------------------
    def views(self) -> list[dict]:
        with self._lock:
            return [e.view() for e in self._entries.values()]

    def servable(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._entries.items() if e.state == "Loaded"]

    def settled(self) -> bool:
        """Every listed adapter reached a final state (Loaded or Failed)."""
        with self._lock:
            return all(e.state in ("Loaded", "Failed") for e in self._entries.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts = {s: 0 for s in ("Pending", "Loading", "Loaded", "Failed")}
            for entry in self._entries.values():
                counts[entry.state] += 1
            counts["inMemory"] = sum(e.peft_name is not None for e in self._entries.values())
            return counts
