"""Checkpoints off the training path: a snapshot on local disk at the step boundary, the
upload in the background, manifest.json last, at most one upload in flight.

Uploading to object storage took a third or more of the training time when the loop
waited for it. The loop now waits only for the snapshot (the state written to local
disk, a few milliseconds) and, if the previous upload is still running, for that one:
one upload at a time keeps the order of commits equal to the order of steps and bounds
local disk to two snapshots. A checkpoint counts as saved only once its manifest is
written (`committed`); that, not the snapshot, is what progress and the exit summary
report, so a preempted attempt never claims a checkpoint that is not in storage.

An upload that fails is raised in the loop at its next step boundary, and before the
adapter is published or the attempt reports itself preempted.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..manifest import Manifest
from . import storage

log = logging.getLogger("kubetune.train")


class CheckpointWriter:
    """Snapshots and background uploads of one attempt's checkpoints (rank 0 only)."""

    def __init__(self, client_factory: Callable[[], object], location: storage.JobLocation,
                 workdir: Path, keep: int, resumed: dict | None = None,
                 on_commit: Callable[[dict], None] | None = None,
                 synchronous: bool = False) -> None:
        self._client = client_factory()  # here: creating boto3 clients is not thread-safe
        self.location = location
        self.workdir = workdir
        self.keep = keep
        self.synchronous = synchronous
        self.on_commit = on_commit
        self.committed: dict | None = resumed  # {"step", "uri"} of the newest one in storage
        self.known_good: list[int] = [resumed["step"]] if resumed else []
        self.snapshot_step: int | None = resumed["step"] if resumed else None
        self.blocked_seconds = 0.0
        self.upload_seconds = 0.0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # the loop's side --------------------------------------------------------------

    def save(self, step: int, write_state: Callable[[Path], None], manifest: Manifest) -> None:
        """Snapshot `step` to local disk (blocking) and start its upload."""
        began = time.perf_counter()
        self.wait()
        self.raise_if_failed()
        local = self.workdir / f"checkpoint-{step}"
        if local.exists():
            shutil.rmtree(local)
        write_state(local)
        self.snapshot_step = step
        self._thread = threading.Thread(target=self._upload, args=(step, local, manifest),
                                        name=f"checkpoint-upload-{step}", daemon=True)
        self._thread.start()
        if self.synchronous:
            self.wait()
            self.raise_if_failed()
        self.blocked_seconds += time.perf_counter() - began

    def wait(self, timeout: float | None = None) -> bool:
        """Until the upload in flight (if any) has ended; False if `timeout` passed first."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    @property
    def uploading(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the uploader's side ----------------------------------------------------------

    def client(self):
        return self._client

    def _upload(self, step: int, local: Path, manifest: Manifest) -> None:
        began = time.perf_counter()
        try:
            published = storage.publish_directory(self.client(), local,
                                                  self.location.checkpoint(step), manifest)
            self.committed = {"step": step, "uri": published.uri}
            self.known_good.append(step)
            log.info("checkpoint step %d -> %s", step, published.uri)
            if self.on_commit is not None:
                self.on_commit(self.committed)
            self._prune()
        except BaseException as exc:  # handed to the loop, which raises it
            self._error = exc
        finally:
            shutil.rmtree(local, ignore_errors=True)
            self.upload_seconds += time.perf_counter() - began

    def _prune(self) -> None:
        """Retention after each commit; a failure here costs storage, never the run."""
        try:
            deleted = storage.prune_checkpoints(self.client(), self.location, self.keep,
                                                self.known_good)
        except Exception as exc:
            log.warning("could not prune old checkpoints: %s", exc)
            return
        if deleted:
            log.info("pruned checkpoints at steps %s", deleted)
