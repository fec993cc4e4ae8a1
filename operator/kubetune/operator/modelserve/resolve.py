"""Adapter resolution: each spec adapter -> an s3 URI and sha256 the server can load, or a
reason it cannot be served yet (Pending) or ever (Failed).

Pure: the caller fetches the referenced FineTuneJobs and passes them in. A referenced job
that is missing or still running leaves only that adapter Pending, never the whole
ModelServe failed, because the usual workflow applies the ModelServe and the
FineTuneJob together and the job finishes hours later. A job whose adapter missed its
evaluation gate (NotPromoted) is not served unless the reference allows unpromoted
adapters: the gate exists so that a bad adapter never reaches users by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kubetune.api import ModelServeSpec

ResolutionState = Literal["Resolved", "Pending", "Failed"]


@dataclass(frozen=True)
class Resolution:
    """One adapter after resolution; uri/sha256 are set only when Resolved."""

    name: str
    state: ResolutionState
    uri: str | None = None
    sha256: str | None = None
    message: str | None = None
    job: str | None = None  # the referenced FineTuneJob, if any

    @property
    def resolved(self) -> bool:
        return self.state == "Resolved"


def referenced_jobs(spec: ModelServeSpec) -> list[str]:
    """FineTuneJob names the spec refers to, in spec order, without duplicates."""
    names = [a.fine_tune_job_ref.name for a in spec.adapters if a.fine_tune_job_ref is not None]
    return list(dict.fromkeys(names))


def _from_job(name: str, job_name: str, job: Mapping | None, allow_unpromoted: bool
              ) -> Resolution:
    if job is None:
        return Resolution(
            name, "Pending", message=f"waiting for FineTuneJob {job_name}: not found", job=job_name
        )
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    adapter = status.get("adapter") or {}
    if phase == "NotPromoted" and not allow_unpromoted:
        why = status.get("message") or "it missed its evaluation gate"
        return Resolution(
            name, "Failed", job=job_name,
            message=f"FineTuneJob {job_name} did not promote its adapter ({why}); set "
            "fineTuneJobRef.allowUnpromoted to serve it anyway",
        )
    if phase in ("Succeeded", "NotPromoted") and adapter.get("uri"):
        return Resolution(
            name, "Resolved", uri=adapter["uri"], sha256=adapter.get("sha256"), job=job_name
        )
    if phase in ("Succeeded", "NotPromoted"):
        return Resolution(
            name,
            "Failed",
            message=f"FineTuneJob {job_name} ended {phase} but reports no status.adapter.uri",
            job=job_name,
        )
    if phase == "Failed":
        reason = status.get("message") or "no message"
        return Resolution(
            name, "Failed", message=f"FineTuneJob {job_name} failed: {reason}", job=job_name
        )
    return Resolution(
        name, "Pending", message=f"waiting for FineTuneJob {job_name} ({phase})", job=job_name
    )


def resolve_adapters(spec: ModelServeSpec, jobs: Mapping[str, Mapping | None]) -> list[Resolution]:
    """One Resolution per spec adapter, in spec order. `jobs` maps each referenced job
    name to its body, or None when it does not exist."""
    result = []
    for adapter in spec.adapters:
        if adapter.uri is not None:
            result.append(
                Resolution(adapter.name, "Resolved", uri=adapter.uri, sha256=adapter.sha256)
            )
        else:
            ref = adapter.fine_tune_job_ref
            result.append(_from_job(adapter.name, ref.name, jobs.get(ref.name),
                                    ref.allow_unpromoted))
    return result
