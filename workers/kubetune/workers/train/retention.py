"""Which checkpoints may be deleted: pure logic, so every case is a table row in a test.

A checkpoint with a manifest is not necessarily usable: resume skips one that fails
verification. Keeping "the newest N with a manifest" therefore kept corrupt ones and
deleted the good ones a new attempt had just written (after two corrupt checkpoints
were skipped, the next attempt started from zero). So retention counts only the
checkpoints this trainer knows are good — the one it resumed from (it verified every
byte) and those it uploaded itself — and deletes only what is older than the oldest of
the newest `keep` good ones. Checkpoints it knows nothing about are left alone: one
that failed to download may have failed for a passing reason, and a corrupt one is
harmless (resume skips it; a later checkpoint of the same step replaces it).
"""

from __future__ import annotations

from collections.abc import Iterable


def checkpoints_to_delete(existing: Iterable[int], known_good: Iterable[int],
                          keep: int) -> list[int]:
    """Steps of `existing` checkpoints that no resume can need, oldest first."""
    good = sorted(set(known_good), reverse=True)[:keep]
    if keep < 1 or len(good) < keep:
        return []
    floor = min(good)
    return sorted(step for step in set(existing) if step < floor)
