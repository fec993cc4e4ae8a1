"""Waiting for a state instead of sleeping and hoping: one poller for every test folder
(importable as `polling`; pytest puts tests/ on sys.path for tests/conftest.py)."""

from __future__ import annotations

import time


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2, on_timeout=None):
    """Poll until `predicate()` is truthy and return it; the failure names what was
    awaited, with `on_timeout()` (a log tail, a status) when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
