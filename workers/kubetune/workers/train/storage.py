"""Publishing a directory to object storage so that it is either complete or invisible.

Object stores cannot rename a directory atomically, so a prefix counts as complete only
when its manifest.json exists; this module uploads every file, checks each one landed
with the right size, and only then writes the manifest. Any stale manifest is deleted
first, so a manifest never points at files from another attempt.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..manifest import MANIFEST_NAME, Manifest, ManifestError, describe_files, sha256_bytes
from ..manifest import verify_directory
from ..objectstore import ObjectStoreError, S3Uri, get_bytes, list_keys, put_bytes, upload_file
from ..objectstore import delete_prefix, with_retries
from .retention import checkpoints_to_delete

log = logging.getLogger("kubetune.train")
STEP_DIR = re.compile(r"^step-(\d{9})$")


@dataclass(frozen=True)
class JobLocation:
    """<output>/<namespace>/<job>/{checkpoints/step-000000123, adapter}."""

    output: str
    namespace: str
    job: str

    @property
    def root(self) -> S3Uri:
        return S3Uri.parse(self.output).join(self.namespace, self.job)

    @property
    def checkpoints(self) -> S3Uri:
        return self.root.join("checkpoints")

    def checkpoint(self, step: int) -> S3Uri:
        return self.checkpoints.join(f"step-{step:09d}")

    @property
    def adapter(self) -> S3Uri:
        return self.root.join("adapter")


@dataclass(frozen=True)
class Published:
    uri: str
    manifest_sha256: str
    size_bytes: int


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def publish_directory(client, local: Path, dest: S3Uri, manifest: Manifest, attempts: int = 5):
    """Upload `local` to `dest`, verify sizes, then write manifest.json last."""
    manifest.files = describe_files(local)
    manifest.created_at = manifest.created_at or now_iso()
    marker = dest.join(MANIFEST_NAME)
    with_retries(
        lambda: client.delete_object(Bucket=marker.bucket, Key=marker.key),
        f"remove stale {marker}",
        attempts=attempts,
    )
    for name in manifest.files:
        upload_file(client, local / name, dest.join(name), attempts=attempts)
    for name, meta in manifest.files.items():
        target = dest.join(name)
        head = with_retries(
            lambda t=target: client.head_object(Bucket=t.bucket, Key=t.key),
            f"check {target}",
            attempts=attempts,
        )
        if head["ContentLength"] != meta["size"]:
            raise ObjectStoreError(
                f"{target}: stored size {head['ContentLength']} differs from {meta['size']}"
            )
    body = manifest.to_json()
    put_bytes(client, body, marker, attempts=attempts)
    return Published(str(dest), sha256_bytes(body), sum(m["size"] for m in manifest.files.values()))


def checkpoint_steps(client, location: JobLocation) -> list[int]:
    """Steps that have a checkpoint manifest, newest first."""
    steps = set()
    base = location.checkpoints.key + "/"
    for key in list_keys(client, location.checkpoints):
        parts = key[len(base) :].split("/")
        match = STEP_DIR.match(parts[0])
        if match and parts[1:] == [MANIFEST_NAME]:
            steps.add(int(match.group(1)))
    return sorted(steps, reverse=True)


def fetch_verified(client, prefix: S3Uri, dest: Path, attempts: int = 5) -> Manifest:
    """Download the files a manifest lists and verify every sha256; raise if any differs."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    manifest = Manifest.from_json(get_bytes(client, prefix.join(MANIFEST_NAME), attempts=attempts))
    for name in manifest.files:
        if ".." in Path(name).parts:
            raise ManifestError(f"{name}: path escapes the checkpoint")
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(get_bytes(client, prefix.join(name), attempts=attempts))
    verify_directory(dest, manifest)
    return manifest


def latest_checkpoint(client, location: JobLocation, dest: Path) -> tuple[int, S3Uri] | None:
    """The newest checkpoint whose manifest verifies, downloaded to `dest`; older ones are
    tried when a newer one is corrupt, so one bad upload never loses the whole run."""
    for step in checkpoint_steps(client, location):
        prefix = location.checkpoint(step)
        try:
            fetch_verified(client, prefix, dest)
            return step, prefix
        except (ManifestError, ObjectStoreError) as exc:
            log.warning("skipping checkpoint %s: %s", prefix, exc)
    return None


def delete_checkpoint(client, location: JobLocation, step: int) -> None:
    """Manifest first, so a half-deleted checkpoint is invisible rather than corrupt."""
    prefix = location.checkpoint(step)
    marker = prefix.join(MANIFEST_NAME)
    with_retries(lambda: client.delete_object(Bucket=marker.bucket, Key=marker.key),
                 f"delete {marker}")
    delete_prefix(client, prefix)


def prune_checkpoints(client, location: JobLocation, keep: int,
                      known_good: list[int]) -> list[int]:
    """Delete the checkpoints older than the newest `keep` known-good ones (see
    `retention`); returns the steps deleted."""
    doomed = checkpoints_to_delete(checkpoint_steps(client, location), known_good, keep)
    for step in doomed:
        delete_checkpoint(client, location, step)
    return doomed
