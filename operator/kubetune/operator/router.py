"""One reconcile per job at a time, whatever asks for it, with bursts coalesced.

A job is reconciled because its spec changed, its pods or their nodes changed, the timer
ticked, or an earlier reconcile asked to come back later (a backoff, a conflict). All of
them `poke` the router; a job is never reconciled twice at once, and pokes that arrive
while it runs collapse into ONE more run after it (which reads the newest state, so it
covers all of them). Delayed pokes keep only the earliest wake-up.

Runs in the operator's event loop (Kopf's): `poke` is cheap and never blocks, so watch
handlers call it inline; the reconcile itself (blocking HTTP) runs in a thread via `run`.
Pure asyncio, no Kopf: tested with a fake `run`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger("kubetune.operator.router")
ERROR_RETRY_SECONDS = 10.0

Run = Callable[[Hashable, bool], Awaitable[float | None]]


class Retry(Exception):
    """Raised by `run` for an expected failure (an API error): logged as a warning, not
    a traceback, and retried after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Slot:
    running: bool = False
    queued: bool = False  # poked while running: one more run after this one
    sync: bool = False  # the next run also syncs the ConfigMap and Service
    closed: bool = False  # the job is gone: no more runs
    wake: asyncio.TimerHandle | None = None
    wake_at: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Router:
    """`run(key, sync)` reconciles one job and returns seconds until it wants to run
    again (or None). Exceptions from it are logged and retried after a while."""

    def __init__(self, run: Run, error_retry: float = ERROR_RETRY_SECONDS):
        self._run, self._error_retry = run, error_retry
        self._slots: dict[Hashable, _Slot] = {}
        self.stats = {"pokes": 0, "runs": 0, "coalesced": 0}

    def poke(self, key: Hashable, sync: bool = False, delay: float = 0.0) -> None:
        """Ask for a reconcile of `key`, now or in `delay` seconds. Call from the loop."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            slot.idle.set()
        if slot.closed:
            return
        self.stats["pokes"] += 1
        slot.sync = slot.sync or sync
        if delay > 0:
            self._wake_later(key, slot, delay)
        elif slot.running:
            if slot.queued:
                self.stats["coalesced"] += 1
            slot.queued = True
        else:
            slot.running = True
            slot.idle.clear()
            asyncio.get_running_loop().create_task(self._drive(key, slot))

    def busy(self, key: Hashable) -> bool:
        slot = self._slots.get(key)
        return bool(slot and slot.running)

    async def idle(self, key: Hashable) -> None:
        """Returns once no run of `key` is in progress (for tests and shutdown)."""
        slot = self._slots.get(key)
        if slot is not None:
            await slot.idle.wait()

    def forget(self, key: Hashable) -> None:
        """The job is gone: drop what is kept for it."""
        slot = self._slots.pop(key, None)
        if slot is not None:
            slot.closed = True
            self._cancel_wake(slot)

    def __len__(self) -> int:
        return len(self._slots)

    async def _drive(self, key: Hashable, slot: _Slot) -> None:
        try:
            while True:
                slot.queued = False
                sync, slot.sync = slot.sync, False
                self.stats["runs"] += 1
                try:
                    delay = await self._run(key, sync)
                except Retry as exc:
                    log.warning("reconcile of %s: %s; retrying in %ss", key, exc,
                                exc.retry_after)
                    slot.sync = slot.sync or sync
                    delay = exc.retry_after
                except Exception:
                    log.exception("reconcile of %s failed; retrying in %ss", key,
                                  self._error_retry)
                    slot.sync = slot.sync or sync
                    delay = self._error_retry
                if slot.closed or not slot.queued:
                    if delay is not None and not slot.closed:
                        self._wake_later(key, slot, delay)
                    break
        finally:
            slot.running = False
            slot.idle.set()

    def _wake_later(self, key: Hashable, slot: _Slot, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, delay)
        if slot.wake is not None and slot.wake_at <= at:
            return  # an earlier wake-up is already due
        self._cancel_wake(slot)
        slot.wake_at = at
        slot.wake = loop.call_at(at, self._woken, key, slot)

    def _woken(self, key: Hashable, slot: _Slot) -> None:
        slot.wake = None
        if self._slots.get(key) is slot:
            self.poke(key)

    @staticmethod
    def _cancel_wake(slot: _Slot) -> None:
        if slot.wake is not None:
            slot.wake.cancel()
            slot.wake = None
