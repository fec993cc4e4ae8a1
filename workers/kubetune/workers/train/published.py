"""An adapter this very job already published: then there is nothing left to train.

A trainer can finish while its pod is being taken away (a spot notice in its last
seconds), or be killed right after its manifest landed, and the operator, seeing only
that the pod is gone, starts another attempt. That attempt must not train the job again
(from its last checkpoint, or from the start if they were deleted on success): the
adapter's manifest is the completion marker, so when the manifest at the job's adapter
path was written by this job and every file it lists is there, the trainer reports that
adapter and exits 0. "This job" is its uid when both the job and the manifest have one
(another job of the same name has another uid); a job run without one (a spec file
written by hand) is recognised by its namespace, name and the sha256 of its spec.
"""

from __future__ import annotations

import logging

from ..manifest import MANIFEST_NAME, Manifest, ManifestError, sha256_bytes
from ..objectstore import exists, get_bytes, make_client
from .jobfile import spec_fingerprint
from .storage import JobLocation

log = logging.getLogger("kubetune.train")


def finished_adapter(job) -> dict | None:
    """The completed outcome recorded by the adapter manifest of `job`, or None."""
    location = JobLocation(job.spec.output.uri, job.namespace, job.name)
    client = make_client(job.spec.output.endpoint, job.spec.output.region)
    marker = location.adapter.join(MANIFEST_NAME)
    if not exists(client, marker):
        return None
    raw = get_bytes(client, marker)
    try:
        manifest = Manifest.from_json(raw)
    except ManifestError as exc:
        log.warning("ignoring %s: %s", marker, exc)
        return None
    if manifest.kind != "adapter" or not written_by(manifest.job, job):
        return None  # another job's (an earlier one of the same name) or not an adapter
    if not all(exists(client, location.adapter.join(name)) for name in manifest.files):
        return None
    log.info("adapter %s already published by this job: nothing to train", location.adapter)
    return {"status": "completed", "steps": manifest.step, "totalSteps": manifest.step,
            **manifest.metrics, "alreadyPublished": True,
            "adapter": {"uri": str(location.adapter), "sha256": sha256_bytes(raw),
                        "sizeBytes": sum(m["size"] for m in manifest.files.values())}}


def written_by(recorded: dict, job) -> bool:
    """Whether the manifest's job record names `job` (see the module docstring)."""
    if recorded.get("uid") and job.uid:
        return recorded["uid"] == job.uid
    return (recorded.get("namespace") == job.namespace and recorded.get("name") == job.name
            and recorded.get("specSha256") == spec_fingerprint(job.spec_wire))
