"""Plain helpers of the ModelServe tests, importable by a name of their own (`conftest`
is a different module in each test folder)."""

from __future__ import annotations

import time


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2, on_timeout=None):
    """Poll until `predicate()` is truthy; the failure names what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
