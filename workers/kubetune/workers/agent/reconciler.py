"""The agent's loops: config watch, vLLM watch, and the one reconcile loop that acts.

All three run on one asyncio loop beside the HTTP server, so the state table needs no
locks; the blocking parts (S3 download, sha256 of every byte) run in a daemon thread,
so the HTTP API keeps answering during a long download and SIGTERM never waits for one.
Actions run one at a time: vLLM serialises adapter loads anyway, and one slow or bad
adapter can then only delay, never corrupt, the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import aiohttp

from kubetune.workers import objectstore

from .basemodel import base_linears
from .config import AgentConfig, load_config
from .fetch import AdapterFetcher, Checks, TransientError
from .metrics import AgentMetrics
from .state import AdapterTable, Load, Reload, Served, Unload
from .verify import AdapterRejected
from .vllm import VllmClient, VllmRefused, VllmUnavailable
from .watcher import ConfigWatcher

log = logging.getLogger("kubetune.agent")
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Like asyncio.to_thread, but on a daemon thread: the executor's threads are joined
    at exit, which would hold SIGTERM until a multi-GB download finished."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(setter, value) -> None:
        if not future.done():
            setter(value)

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            callback = partial(settle, future.set_exception, exc)
        else:
            callback = partial(settle, future.set_result, result)
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop closed: the agent is exiting

    threading.Thread(target=work, name="agent-fetch", daemon=True).start()
    return await future


class Agent:
    def __init__(self, config: AgentConfig, raw: bytes, config_path: Path, base_dir: Path,
                 adapter_dir: Path, vllm_url: str, poll_seconds: float = 1.0,
                 check_seconds: float = 3.0):
        self.config = config
        self.base_dir = Path(base_dir)
        self.vllm_url = vllm_url
        self.poll_seconds = poll_seconds
        self.check_seconds = check_seconds
        self.metrics = AgentMetrics()
        self.table = AdapterTable(max_loaded=config.max_loaded_adapters)
        self.table.apply(config.adapters)
        self.vllm_up = False
        self.config_error: str | None = None
        self.watcher = ConfigWatcher(config_path, raw, self._apply_config, load_config,
                                     poll_seconds, on_error=self._config_failed)
        self._linears: dict[str, tuple[int, int]] | None = None
        self.fetcher = AdapterFetcher(adapter_dir, self._client, self._checks(config))
        self._listed: dict[str, str] | None = None  # vLLM's last model list
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    # --- config -------------------------------------------------------------------------

    def _checks(self, config: AgentConfig) -> Checks:
        return Checks(config.base_model.uri, config.max_lora_rank, self._base_linears)

    def _client(self):
        storage = self.config.storage
        return objectstore.make_client(storage.endpoint, storage.region)

    def _base_linears(self) -> dict[str, tuple[int, int]]:
        """Read once, on first use: the base's files are on disk before the agent starts
        in a pod, but a test or a slow volume may bring them a little later."""
        if self._linears is None:
            self._linears = base_linears(self.base_dir)
        return self._linears

    def _apply_config(self, config: AgentConfig) -> None:
        if config.base_model != self.config.base_model:
            log.warning("baseModel changed to %s: the operator rolls the pods for that; "
                        "adapters are checked against the new URI from now on",
                        config.base_model.uri)
        self.config, self.config_error = config, None
        self.fetcher.checks = self._checks(config)
        self.table.max_loaded = config.max_loaded_adapters
        diff = self.table.apply(config.adapters)
        log.info("config applied: added %s, changed %s, removed %s",
                 [a.name for a in diff.added], [a.name for a in diff.changed], list(diff.removed))
        self._wake.set()

    def _config_failed(self, message: str) -> None:
        self.config_error = message
        self.metrics.config_errors.inc()

    # --- loops --------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.vllm = VllmClient(self.vllm_url, self._session)
        for loop in (self._watch, self._monitor, self._reconcile):
            self._tasks.append(asyncio.create_task(self._forever(loop), name=loop.__name__))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _forever(self, step) -> None:
        """Run a loop body again after any bug, so one bad moment cannot stop the agent."""
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; continuing", step.__name__)
                await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            self.watcher.poll_once()

    async def _monitor(self) -> None:
        """vLLM up or down, and what it lists: a version it no longer lists was lost in
        a vLLM restart and is loaded again."""
        while True:
            seq = self.table.seq
            up = await self.vllm.healthy()
            listed = None
            if up:
                try:
                    listed = await self.vllm.adapters()
                except VllmUnavailable as exc:
                    log.info("%s", exc)
            self._set_up(up)
            if listed is not None:
                self._listed = listed
                lost = self.table.observe(listed, seq, str(self.fetcher.adapter_dir))
                if lost:
                    log.warning("vLLM no longer lists %s: loading again", ", ".join(lost))
                self._wake.set()
            await asyncio.sleep(self.check_seconds if up else min(1.0, self.check_seconds))

    def _set_up(self, up: bool) -> None:
        if up != self.vllm_up:
            log.info("vLLM is %s", "up" if up else "down")
        self.vllm_up = up

    async def _reconcile(self) -> None:
        while True:
            action = self.table.next_action(time.monotonic(), self.vllm_up)
            if action is None:
                if self._listed is not None and self.vllm_up:
                    self.fetcher.collect(self.table.served_paths() | set(self._listed.values()))
                await self._sleep_until_needed()
                continue
            if isinstance(action, Unload):
                await self._unload(action)
            elif isinstance(action, Reload):
                await self._reload(action)
            else:
                await self._load(action)

    async def _sleep_until_needed(self) -> None:
        self._wake.clear()
        retry = self.table.next_retry()
        timeout = None if retry is None else max(0.0, retry - time.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        except TimeoutError:
            pass

    # --- actions ------------------------------------------------------------------------

    async def _load(self, action: Load) -> None:
        name, spec = action.name, action.spec
        started = time.monotonic()
        served = action.staged
        if served is None:
            self.table.start(action, "downloading and verifying")
            try:
                fetched = await in_daemon_thread(partial(self.fetcher.fetch, spec))
            except AdapterRejected as exc:
                return self._failed(name, spec, str(exc), "rejected", transient=False)
            except TransientError as exc:
                return self._failed(name, spec, str(exc), "error", transient=True)
            served = Served(spec.uri, fetched.identity, str(fetched.path))
            if not self.table.wants(name, spec):
                log.info("%s changed while it was fetched; dropping that version", name)
                return
            if not self.vllm_up:  # vLLM still starting: fetch the others meanwhile
                self.table.stage(name, spec, served)
                return
        self.table.start(action, "loading into vLLM")
        try:
            await self.vllm.load(name, served.path)
        except VllmUnavailable as exc:
            return self._failed(name, spec, str(exc), "error", transient=True)
        except VllmRefused as exc:
            return self._failed(name, spec, f"vLLM refused the adapter: {exc}", "refused",
                                transient=False)
        seconds = time.monotonic() - started
        previous = self.table.loaded(name, spec, served, seconds, time.time())
        self.metrics.loads.labels(result="loaded").inc()
        self.metrics.load_seconds.observe(seconds)
        log.info("%s loaded from %s (%s) in %.2fs", name, spec.uri, served.identity[:16], seconds)
        if previous is not None:
            self.fetcher.remove(previous.path)

    def _failed(self, name, spec, message: str, result: str, transient: bool) -> None:
        log.warning("%s: %s", name, message)
        self.metrics.loads.labels(result=result).inc()
        self.table.failed(name, spec, message, transient, time.monotonic())

    async def _reload(self, action: Reload) -> None:
        self.table.start(action, "loading it again into vLLM")
        started = time.monotonic()
        try:
            await self.vllm.load(action.name, action.served.path)
        except (VllmUnavailable, VllmRefused) as exc:
            transient = isinstance(exc, VllmUnavailable)
            result = "error" if transient else "refused"
            message = str(exc) if transient else f"vLLM refused the adapter: {exc}"
            log.warning("%s: reload failed: %s", action.name, message)
            self.metrics.loads.labels(result=result).inc()
            self.table.reload_failed(action.name, action.served, message, transient,
                                     time.monotonic())
            return
        seconds = time.monotonic() - started
        self.table.reloaded(action.name, action.served, seconds, time.time())
        self.metrics.loads.labels(result="loaded").inc()
        log.info("%s loaded again from %s", action.name, action.served.path)

    async def _unload(self, action: Unload) -> None:
        try:
            held = await self.vllm.unload(action.name)
        except (VllmUnavailable, VllmRefused) as exc:
            log.warning("%s: unload failed (%s); trying again", action.name, exc)
            await asyncio.sleep(min(5.0, self.check_seconds))
            return
        self.table.unloaded(action.name, action.served)
        self.fetcher.remove(action.served.path)
        if held:
            self.metrics.unloads.inc()
        log.info("%s unloaded", action.name)

    # --- views --------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        return self.table.readiness(self.vllm_up)

    def metrics_text(self) -> bytes:
        self.metrics.refresh(self.table.counts(), self.vllm_up)
        return self.metrics.exposition()
