"""The router: one reconcile per job at a time, bursts coalesced into one more run,
delays and retries, on a fake `run` (no Kopf, no API)."""

from __future__ import annotations

import asyncio

from kubetune.operator.router import Retry, Router


class FakeRun:
    """Records each run; each takes `hold` seconds and may return a delay or raise."""

    def __init__(self, hold: float = 0.05):
        self.hold = hold
        self.calls: list[tuple] = []
        self.active: dict = {}
        self.max_active: dict = {}
        self.replies: dict = {}  # key -> list of return values / exceptions, in order

    async def __call__(self, key, sync: bool):
        self.calls.append((key, sync))
        self.active[key] = self.active.get(key, 0) + 1
        self.max_active[key] = max(self.max_active.get(key, 0), self.active[key])
        try:
            await asyncio.sleep(self.hold)
            replies = self.replies.get(key) or [None]
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
            if isinstance(reply, Exception):
                raise reply
            return reply
        finally:
            self.active[key] -= 1

    def runs(self, key) -> int:
        return sum(1 for k, _ in self.calls if k == key)


async def settle(router: Router, *keys, seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not any(router.busy(k) for k in keys):
            return


def test_a_burst_during_a_run_becomes_one_more_run_never_two_at_once():
    async def scenario():
        run = FakeRun(hold=0.1)
        router = Router(run)
        router.poke("a")
        await asyncio.sleep(0.02)  # the first run is in progress
        for _ in range(20):
            router.poke("a")
        await settle(router, "a")
        return run, router

    run, router = asyncio.run(scenario())
    assert run.runs("a") == 2
    assert run.max_active["a"] == 1
    assert router.stats["coalesced"] == 19


def test_jobs_run_side_by_side_and_sync_is_carried_to_the_next_run():
    async def scenario():
        run = FakeRun(hold=0.1)
        router = Router(run)
        router.poke("a")
        router.poke("b", sync=True)
        await asyncio.sleep(0.02)
        assert run.active == {"a": 1, "b": 1}
        router.poke("a", sync=True)  # queued while a runs: the next run of a syncs
        await settle(router, "a", "b")
        return run

    run = asyncio.run(scenario())
    assert run.calls == [("a", False), ("b", True), ("a", True)]


def test_a_run_asking_to_come_back_is_run_again_then_and_the_earliest_wake_wins():
    async def scenario():
        run = FakeRun(hold=0.0)
        run.replies["a"] = [0.8, None]
        router = Router(run)
        router.poke("a")
        router.poke("b", delay=5)
        router.poke("b", delay=0.05)  # earlier: replaces the 5 s wake-up
        await asyncio.sleep(0.4)
        first = (run.runs("a"), run.runs("b"))
        await asyncio.sleep(1.0)
        return first, (run.runs("a"), run.runs("b"))

    first, later = asyncio.run(scenario())
    assert first == (1, 1)
    assert later == (2, 1)


def test_failures_are_retried_keeping_sync_and_forget_stops_everything():
    async def scenario():
        run = FakeRun(hold=0.0)
        run.replies["a"] = [Retry("API error", 0.1), RuntimeError("bug"), None]
        router = Router(run, error_retry=0.1)
        router.poke("a", sync=True)
        await asyncio.sleep(0.35)
        calls = list(run.calls)
        router.poke("b", delay=0.1)
        router.forget("b")
        router.poke("c")
        router.forget("c")  # gone while running: no more runs of c
        router.poke("c", delay=0.05)
        await asyncio.sleep(0.3)
        return calls, run

    calls, run = asyncio.run(scenario())
    assert calls == [("a", True), ("a", True), ("a", True)]
    assert run.runs("b") == 0
    assert run.runs("c") == 2  # the one in progress, then a fresh slot's delayed poke
