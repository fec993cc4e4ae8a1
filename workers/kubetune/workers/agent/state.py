"""Every adapter's state, and what to do next: pure logic, no I/O.

The reconciler performs one action at a time (`next_action`) and reports its outcome
back (`loaded`, `failed`, `reloaded`, `unloaded`); config edits (`apply`) and what vLLM
lists (`observe`) arrive in between. Keeping all of it here, apart from HTTP, S3 and
threads, lets the tests drive every transition directly, including the races (a config
edit while a load is in flight, a model list fetched before a load finished).

`served` is what vLLM holds under an adapter's name, which may be an older version than
the spec (a replacement that failed verification keeps the previous version serving, so
a bad update never turns a working adapter into a 404).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from .config import AdapterConfig

PENDING, LOADING, LOADED, FAILED = "Pending", "Loading", "Loaded", "Failed"
STATES = (PENDING, LOADING, LOADED, FAILED)
RETRY_FIRST, RETRY_MAX = 5.0, 300.0


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[AdapterConfig, ...] = ()
    changed: tuple[AdapterConfig, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff_config(current: Mapping[str, AdapterConfig], desired: Iterable[AdapterConfig]) -> ConfigDiff:
    """Adapters to add, to replace (URI or pin changed) and to remove, by name."""
    desired = list(desired)
    names = {a.name for a in desired}
    return ConfigDiff(
        added=tuple(a for a in desired if a.name not in current),
        changed=tuple(a for a in desired if a.name in current and current[a.name] != a),
        removed=tuple(n for n in current if n not in names),
    )


@dataclass(frozen=True)
class Served:
    """A verified version on disk that vLLM was given. `seq` orders it against model
    lists: a list requested before this load finished cannot be expected to show it."""

    uri: str
    identity: str
    path: str
    seq: int = 0


@dataclass(frozen=True)
class Load:
    """Fetch and verify `spec`, then give it to vLLM; `staged` is a verified copy fetched
    while vLLM was still starting, which only needs the last step."""

    name: str
    spec: AdapterConfig
    staged: Served | None = None


@dataclass(frozen=True)
class Reload:
    """vLLM no longer lists a version it had (it restarted): give it the same files."""

    name: str
    served: Served


@dataclass(frozen=True)
class Unload:
    name: str
    served: Served


@dataclass
class Record:
    spec: AdapterConfig
    state: str = PENDING
    message: str | None = "waiting to be fetched"
    identity: str | None = None  # sha256 of the spec's verified manifest
    served: Served | None = None  # what vLLM holds
    restore: Served | None = None  # what vLLM lost and should get back
    staged: Served | None = None  # verified while vLLM was down, not given to it yet
    load_seconds: float | None = None
    loaded_at: float | None = None  # wall-clock seconds
    settled: bool = False  # reached Loaded or Failed at least once
    retry_at: float | None = None  # monotonic time of the next try after a transient failure
    failures: int = 0  # consecutive transient failures, for the backoff


def backoff(failures: int) -> float:
    return min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, failures - 1))


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )


@dataclass
class AdapterTable:
    records: dict[str, Record] = field(default_factory=dict)
    unloads: dict[str, Served] = field(default_factory=dict)
    seq: int = 0
    settled_once: bool = False  # readiness latch: the first config's adapters all settled
    max_loaded: int | None = None  # the most adapters vLLM may hold at once (None: any)

    # --- inputs -----------------------------------------------------------------------

    def apply(self, adapters: Iterable[AdapterConfig]) -> ConfigDiff:
        """A new config: new names start Pending, changed ones are fetched again (the old
        version keeps serving until the new one is in), removed ones are unloaded."""
        adapters = list(adapters)
        diff = diff_config({n: r.spec for n, r in self.records.items()}, adapters)
        for name in diff.removed:
            record = self.records.pop(name)
            if record.served is not None:
                self.unloads[name] = record.served
        for spec in diff.added:
            record = Record(spec)
            record.served = self.unloads.pop(spec.name, None)  # removed, then back
            self.records[spec.name] = record
        for spec in diff.changed:
            record = self.records[spec.name]
            record.spec, record.identity, record.staged = spec, None, None
            record.state, record.message = PENDING, "changed: fetching the new version"
            record.retry_at, record.failures = None, 0
        self.records = {a.name: self.records[a.name] for a in adapters}
        self._latch()
        return diff

    def observe(self, listed: Mapping[str, str], seq_before: int, adapter_dir: str) -> list[str]:
        """vLLM's current adapters (name -> path), from a list requested when `seq` was
        `seq_before`. Versions it lost are queued for reload, adapters of ours it holds
        but nobody configured are queued for unload. Returns the lost names."""
        lost = []
        for name, record in self.records.items():
            served = record.served
            if served is None or served.seq > seq_before or name in listed:
                continue
            record.served, record.restore = None, served
            lost.append(name)
            if record.state == LOADED:
                record.state = PENDING
                record.message = "vLLM no longer lists it (restarted?): loading it again"
        prefix = adapter_dir.rstrip("/") + "/"
        for name, path in listed.items():
            if name not in self.records and name not in self.unloads and path.startswith(prefix):
                self.unloads[name] = Served(uri="", identity="", path=path, seq=self.seq)
        return lost

    # --- what next ----------------------------------------------------------------------

    def next_action(self, now: float, vllm_up: bool = True) -> Load | Reload | Unload | None:
        """Unloads first (they free vLLM's slots), then restoring what vLLM lost, then new
        and changed adapters in config order, then retries that are due. While vLLM is
        down, only fetching goes on: adapters are verified and staged for when it is up."""
        if vllm_up:
            for name, served in self.unloads.items():
                return Unload(name, served)
        due = [(n, r) for n, r in self.records.items() if r.retry_at is None or r.retry_at <= now]
        if vllm_up:
            for name, record in due:
                if record.restore is not None:
                    return Reload(name, record.restore)
            for name, record in due:
                if record.staged is not None and self._has_room(record):
                    return Load(name, record.spec, record.staged)
        for name, record in due:
            if record.state == PENDING and self._has_room(record):
                return Load(name, record.spec)
        for name, record in due:
            if record.state == FAILED and record.retry_at is not None and (
                vllm_up or record.restore is None
            ) and self._has_room(record):
                return Load(name, record.spec)
        return None

    def _has_room(self, record: Record) -> bool:
        """May `record` be loaded now? A version of it already in vLLM is replaced in
        place (same slot); a new adapter waits while vLLM holds `max_loaded` of them,
        counting versions to restore and unloads still to do."""
        if self.max_loaded is None or record.served is not None or record.restore is not None:
            return True
        held = len(self.unloads) + sum(
            1 for r in self.records.values() if r.served is not None or r.restore is not None)
        if held < self.max_loaded:
            return True
        record.message = (f"waiting for a free adapter slot: this server holds at most "
                          f"{self.max_loaded} adapters (maxAdaptersInMemory)")
        record.settled = True  # its peers serve: it must not hold the pod's readiness back
        self._latch()
        return False

    def next_retry(self) -> float | None:
        times = [r.retry_at for r in self.records.values() if r.retry_at is not None]
        return min(times) if times else None

    def wants(self, name: str, spec: AdapterConfig) -> bool:
        """Is a load of `spec` still what the config asks for (it may have changed since)?"""
        record = self.records.get(name)
        return record is not None and record.spec == spec

    # --- outcomes -----------------------------------------------------------------------

    def start(self, action: Load | Reload, message: str) -> None:
        record = self.records.get(action.name)
        if record is None:
            return
        if isinstance(action, Load) and record.spec != action.spec:
            return
        if isinstance(action, Reload) and record.identity != action.served.identity:
            return  # an older version coming back: the spec's own state is unchanged
        record.state, record.message = LOADING, message

    def stage(self, name: str, spec: AdapterConfig, version: Served) -> None:
        """`version` of `spec` is verified on disk, but vLLM does not answer yet."""
        if self.wants(name, spec):
            record = self.records[name]
            record.staged, record.identity = version, version.identity
            record.message = "verified; waiting for vLLM to answer /health"

    def loaded(self, name: str, spec: AdapterConfig, served: Served, seconds: float,
               wall: float) -> Served | None:
        """vLLM accepted `served` for `spec`. Returns the version it replaced, whose files
        can go (None when there was none, or it was the same folder)."""
        self.seq += 1
        served = replace(served, seq=self.seq)
        record = self.records.get(name)
        if record is None:  # removed while it loaded: it is in vLLM now, so unload it
            self.unloads[name] = served
            return None
        previous = record.served or record.restore
        record.served, record.restore, record.staged = served, None, None
        if record.spec == spec:
            record.identity = served.identity
            record.state, record.message = LOADED, None
            record.load_seconds, record.loaded_at = seconds, wall
            record.retry_at, record.failures, record.settled = None, 0, True
            self._latch()
        return previous if previous is not None and previous.path != served.path else None

    def reloaded(self, name: str, served: Served, seconds: float, wall: float) -> None:
        self.seq += 1
        served = replace(served, seq=self.seq)
        record = self.records.get(name)
        if record is None:
            self.unloads[name] = served
            return
        record.served, record.restore = served, None
        record.retry_at, record.failures = None, 0
        if record.identity == served.identity and record.state in (PENDING, LOADING):
            record.state, record.message = LOADED, None
            record.load_seconds, record.loaded_at = seconds, wall

    def failed(self, name: str, spec: AdapterConfig, message: str, transient: bool,
               now: float) -> None:
        """Loading `spec` failed. Permanent failures (the adapter is bad, vLLM refuses it)
        wait for a config change; transient ones (storage or vLLM unreachable) retry with
        backoff."""
        record = self.records.get(name)
        if record is None or record.spec != spec:
            return  # the config moved on; the next action handles the new spec
        self._fail(record, message, transient, now)

    def reload_failed(self, name: str, served: Served, message: str, transient: bool,
                      now: float) -> None:
        """Restoring a lost version failed. Transient: try again later. Permanent (vLLM
        refuses files it accepted before): give up on that version."""
        record = self.records.get(name)
        if record is None or record.restore != served:
            return
        if not transient:
            record.restore = None
        if record.identity == served.identity and record.state in (PENDING, LOADING):
            self._fail(record, message, transient, now)
        else:
            record.failures = record.failures + 1 if transient else 0
            record.retry_at = now + backoff(record.failures) if transient else None

    def _fail(self, record: Record, message: str, transient: bool, now: float) -> None:
        record.staged = None
        record.failures = record.failures + 1 if transient else 0
        record.retry_at = now + backoff(record.failures) if transient else None
        if transient:
            message += f"; retrying in {backoff(record.failures):.0f}s"
        if record.served is not None and record.served.identity != record.identity:
            message += f"; still serving the previous version {record.served.identity[:16]}"
        record.state, record.message, record.settled = FAILED, message, True
        self._latch()

    def unloaded(self, name: str, served: Served) -> None:
        self.seq += 1
        if self.unloads.get(name) == served:
            del self.unloads[name]
        record = self.records.get(name)
        if record is not None and record.served == served:
            record.served = None  # re-added while it was unloaded: vLLM no longer has it

    # --- views --------------------------------------------------------------------------

    def _latch(self) -> None:
        if not self.settled_once and all(r.settled for r in self.records.values()):
            self.settled_once = True

    def readiness(self, vllm_up: bool) -> tuple[bool, str]:
        """Ready once vLLM answers and the first config's adapters have each been Loaded
        or Failed once: a Failed adapter does not hold the pod back (its peers serve), and
        adapters hot-loaded later do not take a serving pod out of its Service."""
        if not vllm_up:
            return False, "vLLM does not answer /health yet"
        if not self.settled_once:
            waiting = [n for n, r in self.records.items() if not r.settled]
            return False, "waiting for adapters to load: " + ", ".join(waiting)
        return True, "ready"

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for record in self.records.values():
            counts[record.state] += 1
        return counts

    def served_paths(self) -> set[str]:
        paths = {s.path for s in self.unloads.values()}
        for record in self.records.values():
            versions = (record.served, record.restore, record.staged)
            paths.update(s.path for s in versions if s is not None)
        return paths

    def snapshot(self) -> list[dict]:
        """The shape the operator reads from GET /v1/adapters."""
        return [
            {
                "name": name,
                "uri": r.spec.uri,
                "sha256": r.identity or r.spec.sha256,
                "state": r.state,
                "message": r.message,
                "loadSeconds": None if r.load_seconds is None else round(r.load_seconds, 3),
                "loadedAt": _iso(r.loaded_at),
            }
            for name, r in self.records.items()
        ]
