"""The job identity every child is built from, and the metadata children share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.api import FINETUNEJOB, SpecError


@dataclass(frozen=True)
class JobMeta:
    """Name, namespace and uid of the FineTuneJob: enough to name and own its children."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_meta(cls, meta: Mapping) -> JobMeta:
        """From a body's `metadata` (Kopf's `meta`); refuses one missing a needed key."""
        missing = [f"metadata.{key}" for key in ("name", "namespace", "uid") if not meta.get(key)]
        if missing:
            raise SpecError([f"{field}: required to build the job's children" for field in missing])
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def owner_reference(job: JobMeta) -> dict:
    """Controller reference: children are garbage-collected with the job, and the job's
    deletion waits for them (blockOwnerDeletion), so the finalizer sees pods stop."""
    return {
        "apiVersion": FINETUNEJOB.api_version,
        "kind": FINETUNEJOB.kind,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(job: JobMeta, name: str, labels: dict[str, str]) -> dict:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(job)],
    }
