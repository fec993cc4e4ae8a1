"""What an API server's answer means for the operator, decided once: pure, no I/O.

Every create or patch of a child ends in one of three ways, and each asks for its own
reaction (a ReplicaSet's FailedCreate is the model):
- `exists`: 409 AlreadyExists. Names are deterministic, so the object is ours already.
- `transient`: 429, 5xx, a 409 Conflict (a write raced another), timeouts and connection
  errors. Nothing is wrong with the spec: retry with a growing delay, report nothing.
- `refused`: every other 4xx. The user must learn it at once (an Event with the API
  server's message, a condition naming the spec field). Among refusals:
  - `permanent` ones cannot pass without a change to the spec or to the namespace
    (422 Invalid, 400 BadRequest, a missing ServiceAccount or PriorityClass, a Pod
    Security violation, a LimitRange bound, RBAC, a missing namespace): Stalled;
  - an exceeded ResourceQuota waits: it passes by itself as other pods end.
Retrying a refusal is cheap (one POST, refused again) and the only way to see a missing
object appear, because the operator may not read ServiceAccounts or PriorityClasses
(least privilege); `retry_delay` keeps those retries short while a wait or a missing
object may clear, and long where only a spec edit helps (which retries at once).

The API server's Status body is read whole: `details.causes[].field` names the refused
field of the child (a Pod's `spec.nodeSelector`), which `child_fields` maps back to the
spec field the user wrote. Admission plugins give no causes, only a message; the message
patterns below are Kubernetes' own wording (plugin/pkg/admission/*, v1.37).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

EXISTS, TRANSIENT, REFUSED = "exists", "transient", "refused"
Kind = Literal["exists", "transient", "refused"]

# Refusal causes (also the `reason` of a refusal in Events and conditions' messages).
INVALID = "Invalid"
BAD_REQUEST = "BadRequest"
SERVICE_ACCOUNT_MISSING = "ServiceAccountMissing"
PRIORITY_CLASS_MISSING = "PriorityClassMissing"
POD_SECURITY = "PodSecurity"
LIMIT_RANGE = "LimitRange"
QUOTA_EXCEEDED = "QuotaExceeded"
NAMESPACE_MISSING = "NamespaceMissing"
NAMESPACE_TERMINATING = "NamespaceTerminating"
FORBIDDEN = "Forbidden"
NOT_FOUND = "NotFound"
REFUSED_OTHER = "Refused"

# 403 messages of admission plugins, first match wins (quota before the rest: a quota
# message may quote anything).
_FORBIDDEN_PATTERNS = (
    (QUOTA_EXCEEDED, re.compile(r"exceeded quota:|failed quota:|status unknown for quota")),
    (SERVICE_ACCOUNT_MISSING, re.compile(r"error looking up service account")),
    (PRIORITY_CLASS_MISSING, re.compile(r"no PriorityClass with name")),
    (POD_SECURITY, re.compile(r"violates PodSecurity")),
    (LIMIT_RANGE, re.compile(r"(maximum|minimum) \S+ usage per (Container|Pod)|"
                             r"max limit to request ratio per")),
    (NAMESPACE_TERMINATING, re.compile(r"because it is being terminated")),
)
_NAMESPACE_NOT_FOUND = re.compile(r'namespaces "[^"]*" not found')

# (first delay, cap) in seconds per class of answer.
_BACKOFF = {
    TRANSIENT: (1.0, 60.0),
    # An object that may appear (the operator cannot watch it) or a quota that frees.
    QUOTA_EXCEEDED: (2.0, 30.0),
    SERVICE_ACCOUNT_MISSING: (2.0, 30.0),
    PRIORITY_CLASS_MISSING: (2.0, 30.0),
    NAMESPACE_MISSING: (2.0, 30.0),
    # Namespace policy or RBAC, which an administrator may change.
    POD_SECURITY: (5.0, 120.0),
    LIMIT_RANGE: (5.0, 120.0),
    FORBIDDEN: (5.0, 120.0),
}
_PERMANENT_BACKOFF = (5.0, 300.0)  # only a spec edit (retried at once) or an upgrade helps


@dataclass(frozen=True)
class Verdict:
    """One answer, classified. `fields`: the child's fields the API server blamed
    (`details.causes[].field`), in its order; `resources`: for a quota or LimitRange
    refusal, the resource names it quotes (requests.cpu, memory, pods)."""

    kind: Kind
    cause: str = ""
    permanent: bool = False
    status: int = 0
    message: str = ""
    fields: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return self.kind == REFUSED

    @property
    def waits(self) -> bool:
        """Refused for now, passes without a change (a quota frees)."""
        return self.kind == REFUSED and not self.permanent


def classify(status: int, message: str = "", reason: str = "",
             details: dict | None = None) -> Verdict:
    """An HTTP answer: its status code and the Status body's message, reason, details."""
    message = message or ""
    if status == 409:
        kind = TRANSIENT if reason == "Conflict" else EXISTS
        return Verdict(kind, reason or "AlreadyExists", status=status, message=message)
    if status in (408, 429) or status >= 500 or status < 400 or status == 401:
        # 401: the credentials were stale even after a fresh login; the operator's own
        # problem, never the spec's.
        return Verdict(TRANSIENT, reason or str(status), status=status, message=message)
    fields = _cause_fields(details)
    if status == 422:
        return Verdict(REFUSED, INVALID, True, status, message, fields)
    if status == 400:
        return Verdict(REFUSED, BAD_REQUEST, True, status, message, fields)
    if status == 403:
        cause = next((name for name, pattern in _FORBIDDEN_PATTERNS if pattern.search(message)),
                     FORBIDDEN)
        if cause == SERVICE_ACCOUNT_MISSING:
            fields = fields or ("spec.serviceAccountName",)
        elif cause == PRIORITY_CLASS_MISSING:
            fields = fields or ("spec.priorityClassName",)
        return Verdict(REFUSED, cause, cause != QUOTA_EXCEEDED, status, message, fields,
                       _resources(cause, message))
    if status == 404:
        cause = NAMESPACE_MISSING if _NAMESPACE_NOT_FOUND.search(message) else NOT_FOUND
        return Verdict(REFUSED, cause, True, status, message, fields)
    return Verdict(REFUSED, REFUSED_OTHER, True, status, message, fields)


def classify_message(message: str) -> Verdict:
    """A refusal known only by its text, as a controller reports it (a Deployment's
    ReplicaFailure condition quotes the error the ReplicaSet controller got)."""
    if " is invalid: " in message:
        field = message.split(" is invalid: ", 1)[1].split(":", 1)[0].strip()
        return classify(422, message, "Invalid", {"causes": [{"field": field}]})
    if " is forbidden: " in message or "exceeded quota" in message:
        return classify(403, message, "Forbidden")
    return Verdict(REFUSED, REFUSED_OTHER, True, 0, message)


def classify_error(exc: BaseException) -> Verdict:
    """Any exception a request raised: a `KubeError` by its answer; connection errors
    and timeouts (urllib3's, the OS's) are transient."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and hasattr(exc, "details"):
        return classify(status, getattr(exc, "message", str(exc)), getattr(exc, "reason", ""),
                        getattr(exc, "details", None))
    return Verdict(TRANSIENT, type(exc).__name__, message=str(exc))


def is_transient(exc: BaseException) -> bool:
    return classify_error(exc).kind == TRANSIENT


def retry_delay(verdict: Verdict, tries: int) -> float:
    """Seconds before try number `tries + 1` (tries >= 1 already failed): doubling from
    the class's first delay up to its cap."""
    if verdict.kind == TRANSIENT:
        first, cap = _BACKOFF[TRANSIENT]
    else:
        first, cap = _BACKOFF.get(verdict.cause, _PERMANENT_BACKOFF)
    return min(cap, first * 2 ** max(0, tries - 1))


def _cause_fields(details: dict | None) -> tuple[str, ...]:
    causes = (details or {}).get("causes") if isinstance(details, dict) else None
    fields = []
    for cause in causes or []:
        field = cause.get("field") if isinstance(cause, dict) else None
        if field and field not in fields:
            fields.append(field)
    return tuple(fields)


_QUOTA_REQUESTED = re.compile(r"requested: ([^ ]+?)(?:, used:|$)")
_QUOTA_MISSING = re.compile(r"must specify ([^ ,]+(?:,[^ ,]+)*)")
_LIMIT_RESOURCE = re.compile(r"(?:maximum|minimum) (\S+) usage per|(\S+) max limit to request")


def _resources(cause: str, message: str) -> tuple[str, ...]:
    """The resource names a quota or LimitRange refusal is about."""
    if cause == QUOTA_EXCEEDED:
        found = _QUOTA_REQUESTED.search(message) or _QUOTA_MISSING.search(message)
        if not found:
            return ()
        return tuple(part.split("=", 1)[0] for part in found.group(1).split(",") if part)
    if cause == LIMIT_RANGE:
        return tuple(a or b for a, b in _LIMIT_RESOURCE.findall(message))
    return ()
