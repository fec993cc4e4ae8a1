"""Download one adapter and verify it, into a folder vLLM may read (blocking: the
reconciler runs it in a thread).

Files land in a staging folder first and move to `<adapter-dir>/<name>-<sha16>` only
once every check passed, so vLLM can never be pointed at a partial or unverified copy.
The folder is named by the manifest's sha256, so a replacement gets a new path (vLLM
does not reuse the old version's cached state) and a copy already on disk (the agent
restarted; the volume did not) is found again without downloading.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from kubetune.workers import objectstore

from .config import AdapterConfig
from .verify import AdapterRejected, verify_adapter

log = logging.getLogger("kubetune.agent.fetch")

STAGING_PREFIX = ".staging-"


class TransientError(RuntimeError):
    """Worth retrying as is: storage unreachable, the base's files not there yet."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    identity: str  # sha256 of manifest.json


def final_dir(adapter_dir: Path, name: str, identity: str) -> Path:
    return adapter_dir / f"{name}-{identity[:16]}"


@dataclass
class Checks:
    """What an adapter is verified against; replaced whole when the config changes."""

    served_uri: str
    max_rank: int
    linears: Callable[[], dict[str, tuple[int, int]]]


class AdapterFetcher:
    def __init__(self, adapter_dir: Path, client_factory: Callable[[], object], checks: Checks):
        self.adapter_dir = Path(adapter_dir).absolute()
        self.client_factory = client_factory
        self.checks = checks

    def _verify(self, directory: Path, pin: str | None) -> str:
        try:
            linears = self.checks.linears()
        except Exception as exc:  # missing folder, or safetensors' own error types
            raise TransientError(f"cannot read the base model's layers: {exc}") from exc
        _, identity = verify_adapter(
            directory, pin, self.checks.served_uri, linears, self.checks.max_rank,
            only_listed=True,
        )
        return identity

    def fetch(self, spec: AdapterConfig) -> Fetched:
        """Raises AdapterRejected (the adapter is bad: wait for a new spec) or
        TransientError (try again later)."""
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        if spec.sha256:
            cached = final_dir(self.adapter_dir, spec.name, spec.sha256)
            if cached.is_dir():
                try:
                    return Fetched(cached, self._verify(cached, spec.sha256))
                except AdapterRejected as exc:
                    log.warning("%s: cached copy in %s fails checks (%s); fetching again",
                                spec.name, cached, exc)
                    shutil.rmtree(cached, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{spec.name}-", dir=self.adapter_dir))
        try:
            src = objectstore.S3Uri.parse(spec.uri)
            try:
                client = self.client_factory()
                if not next(objectstore.list_keys(client, src), None):
                    raise AdapterRejected(f"no objects under {spec.uri}")
                objectstore.download_prefix(client, src, staging, attempts=3)
            except (objectstore.ObjectStoreError, BotoCoreError, ClientError, OSError) as exc:
                raise TransientError(f"download from {spec.uri} failed: {exc}") from exc
            identity = self._verify(staging, spec.sha256)
            final = final_dir(self.adapter_dir, spec.name, identity)
            if not final.is_dir():  # present: the same verified manifest, moved in before
                os.rename(staging, final)
            return Fetched(final, identity)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, path: str | Path) -> None:
        """Delete a version's folder, only ever one of ours."""
        path = Path(path)
        if path.parent == self.adapter_dir and not path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)

    def collect(self, keep: set[str]) -> list[Path]:
        """Delete folders that neither the table nor vLLM's last model list refers to
        (and stale staging). vLLM reads a folder again when it evicted the adapter from
        its cache, so a served folder must stay; call it only between fetches."""
        removed = []
        if not self.adapter_dir.is_dir():
            return removed
        for path in self.adapter_dir.iterdir():
            if path.is_dir() and str(path) not in keep:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
