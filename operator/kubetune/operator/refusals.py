"""A child the API server refuses: when to try again, and what the owner's status says.

Pure, no I/O; `attempt_start` makes the requests, the services decide with these.

Backoff lives in memory (`Backoff`), not in the status: a retry that is refused again
with the same message must cost no status write, and each write of a retry time would
be one. What a restart loses is one early retry (one POST, refused again, no write since
the status already says it). A spec edit (a new generation) ends the wait at once; a
ServiceAccount or PriorityClass created later, or a quota that frees, is seen by the
next retry, which `api_errors.retry_delay` keeps within 30 s for those classes (the
operator may not read or watch ServiceAccounts: the chart grants it no verb on them).

FineTuneJob status on a refusal (`refused_status`): the phase stays where the job was
(Pending before its first attempt, Recovering between attempts), so `kubectl get ftj`
still reads in order, and the conditions say the rest: a permanent refusal is
Stalled=True (Reconciling False) with reason ChildRefused and a message naming the spec
field; an exceeded quota is Reconciling=True with reason QuotaExceeded and the quota's
message. `attempt` and `nextAttemptAfter` are left as they were: the attempt has not
started, and the service's rule "started once nextAttemptAfter is cleared" must keep
saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kubetune.api import FineTuneJobStatus

from .api_errors import Verdict, retry_delay
from .conditions import job_conditions

FAILED_CREATE = "FailedCreate"
CHILD_REFUSED = "ChildRefused"
QUOTA_EXCEEDED = "QuotaExceeded"
FORGET_AFTER = timedelta(hours=1)  # an entry whose owner never came back (deleted)


@dataclass(frozen=True)
class Refused:
    """A child refused: the verdict, the child (kind and name), the spec field it maps
    to (None when none does) and the message for the condition and the Event."""

    verdict: Verdict
    child: dict
    field: str | None
    message: str

    @property
    def reason(self) -> str:
        return QUOTA_EXCEEDED if self.verdict.waits else CHILD_REFUSED


@dataclass
class _Entry:
    generation: int | None
    tries: int
    next_try: datetime


class Backoff:
    """Per owner (any hashable key): refused tries of the current generation, and when
    the next one may go. Touched by one reconcile of that owner at a time."""

    def __init__(self) -> None:
        self._entries: dict = {}

    def wait(self, key, generation: int | None, now: datetime) -> float | None:
        """Seconds until the next try may go, or None when it may go now (nothing was
        refused, the spec changed since, or the delay is over)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.generation != generation:
            del self._entries[key]
            return None
        left = (entry.next_try - now).total_seconds()
        return left if left > 0 else None

    def holds(self, key) -> bool:
        """Whether this owner's last try was refused (and not yet retried with success)."""
        return key in self._entries

    def record(self, key, generation: int | None, verdict: Verdict, now: datetime) -> float:
        """One more refused try; returns the seconds until the next."""
        entry = self._entries.get(key)
        tries = entry.tries + 1 if entry is not None and entry.generation == generation else 1
        delay = retry_delay(verdict, tries)
        self._entries[key] = _Entry(generation, tries, now + timedelta(seconds=delay))
        for other, old in list(self._entries.items()):
            if old.next_try < now - FORGET_AFTER:
                self._entries.pop(other, None)
        return delay

    def clear(self, key) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def refused_status(body: dict, status: FineTuneJobStatus, refused: Refused,
                   now: datetime) -> FineTuneJobStatus:
    """The job's status while its next attempt's children are refused (see the module
    docstring); equal to the stored one when the same refusal repeats."""
    generation = body["metadata"].get("generation")
    phase = status.phase if status.phase in ("Pending", "Recovering") else "Pending"
    return status.model_copy(update={
        "phase": phase, "message": refused.message, "observed_generation": generation,
        "conditions": job_conditions(phase, refused.reason, refused.message, generation,
                                     status.conditions, now,
                                     stalled=refused.verdict.permanent),
    })
