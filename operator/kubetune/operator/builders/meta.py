"""The job identity every child is built from, and the metadata children share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from kubetune.api import FINETUNEJOB, Kind, SpecError


@dataclass(frozen=True)
class OwnerMeta:
    """Name, namespace and uid of a kubetune resource: enough to name and own its children.
    Subclasses fix the owning kind."""

    name: str
    namespace: str
    uid: str
    KIND: ClassVar[Kind]

    @classmethod
    def from_meta(cls, meta: Mapping):
        """From a body's `metadata` (Kopf's `meta`); refuses one missing a needed key."""
        missing = [f"metadata.{key}" for key in ("name", "namespace", "uid") if not meta.get(key)]
        if missing:
            raise SpecError(
                [f"{field}: required to build the {cls.KIND.kind}'s children" for field in missing]
            )
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def owner_reference(self) -> dict:
        """Controller reference: children are garbage-collected with their owner, and the
        owner's deletion waits for them (blockOwnerDeletion), so a finalizer sees pods stop."""
        return {
            "apiVersion": self.KIND.api_version,
            "kind": self.KIND.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class JobMeta(OwnerMeta):
    """The FineTuneJob that owns a child."""

    KIND: ClassVar[Kind] = FINETUNEJOB


def owner_reference(job: OwnerMeta) -> dict:
    return job.owner_reference()


def object_meta(job: JobMeta, name: str, labels: dict[str, str]) -> dict:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(job)],
    }
