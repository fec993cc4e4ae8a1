"""Where the base model's files come from: file:// (image or PVC), s3:// (downloaded
once into the local cache), hf:// (the hub, only where it is reachable)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubetune.workers import objectstore
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, refuse_pickle, verify_directory

from .config import BaseModelConfig, StorageConfig


@dataclass(frozen=True)
class ModelLocation:
    """What `from_pretrained` gets: a local directory, or a hub id with a revision."""

    path_or_id: str
    revision: str | None = None


def resolve_base(base: BaseModelConfig, storage: StorageConfig, cache_dir: Path) -> ModelLocation:
    uri = base.uri
    if uri.startswith("file://"):
        return ModelLocation(uri[len("file://") :])
    if uri.startswith("pvc://"):
        raise ValueError("pvc:// models are mounted by the operator; pass the file:// path")
    if uri.startswith("hf://"):
        return ModelLocation(uri[len("hf://") :], base.revision)
    if uri.startswith("s3://"):
        return ModelLocation(str(download_base(uri, storage, cache_dir)))
    raise ValueError(f"unsupported base model URI {uri!r}")


def download_base(uri: str, storage: StorageConfig, cache_dir: Path) -> Path:
    """Download an s3:// model prefix once; verify it when it carries a manifest.json."""
    target = cache_dir / "base" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dl-", dir=target.parent))
    try:
        client = objectstore.make_client(storage.endpoint, storage.region)
        files = objectstore.download_prefix(client, objectstore.S3Uri.parse(uri), staging)
        refuse_pickle([f.name for f in files])
        if not files:
            raise ValueError(f"no objects under {uri}")
        if (staging / MANIFEST_NAME).is_file():
            verify_directory(staging, Manifest.from_json((staging / MANIFEST_NAME).read_bytes()))
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
