"""The base model on local disk: fetched once from object storage, then read for its
layer shapes.

The init container (`fetch-base`) downloads the s3:// prefix into a staging folder beside
the destination, verifies it, and renames it into place: vLLM, which starts after it,
sees either no folder or a complete, verified one, and a second run (a restarted init
container) finds the folder complete and does nothing. The agent then reads the base's
Linear shapes from its safetensors headers, so every adapter is checked against the
layers vLLM will really apply it to, without loading a single weight.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kubetune.workers import objectstore
from kubetune.workers.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    refuse_pickle,
    sha256_bytes,
    verify_directory,
)

from .verify import header_shapes

log = logging.getLogger("kubetune.agent.base")

MARKER_NAME = ".kubetune-base.json"
STAGING_PREFIX = ".staging-"


class BaseFetchError(RuntimeError):
    """The base model could not be fetched or failed verification; the message says why."""


def is_complete(dest: Path, uri: str) -> bool:
    """A folder this code renamed into place for this URI (the marker is written before
    the rename, so its presence means every file was verified)."""
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("uri") == uri


def check_model_files(directory: Path, names: list[str]) -> None:
    """What vLLM needs to load a model: config.json and the weights as safetensors."""
    refuse_pickle(names)
    if "config.json" not in names:
        raise BaseFetchError(f"no config.json in {directory}: not a model folder")
    if not any(n.endswith(".safetensors") for n in names):
        raise BaseFetchError(f"no *.safetensors weights in {directory} (only safetensors are served)")


def verify_against_manifest(directory: Path, names: list[str]) -> str | None:
    """When the prefix carries a manifest.json, every byte must match it and no file may
    be missing from it. Returns the manifest's sha256 (None without a manifest)."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    raw = path.read_bytes()
    manifest = Manifest.from_json(raw)
    verify_directory(directory, manifest)
    unlisted = sorted(set(names) - set(manifest.files) - {MANIFEST_NAME})
    if unlisted:
        raise ManifestError(f"files not listed in manifest.json: {', '.join(unlisted)}")
    return sha256_bytes(raw)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def download_base(uri: str, dest: Path, client) -> Path:
    """Fetch the s3:// prefix `uri` into `dest` atomically and verify it; a no-op when
    `dest` already holds it. Raises BaseFetchError with the reason."""
    dest = Path(dest)
    if is_complete(dest, uri):
        log.info("%s already holds %s", dest, uri)
        return dest
    try:
        src = objectstore.S3Uri.parse(uri)
    except ValueError as exc:
        raise BaseFetchError(f"baseModel.uri: {exc} (only s3:// bases are fetched)") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f"{STAGING_PREFIX}{dest.name}-*"):
        _remove(stale)  # left by an earlier attempt that died
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{dest.name}-", dir=dest.parent))
    try:
        try:
            keys = list(objectstore.list_keys(client, src))
            if not keys:
                raise BaseFetchError(f"no objects under {uri}")
            refuse_pickle(keys)  # by name, before downloading a byte
            files = objectstore.download_prefix(client, src, staging)
            names = sorted(p.relative_to(staging).as_posix() for p in files)
            check_model_files(staging, names)
            manifest_sha = verify_against_manifest(staging, names)
        except (objectstore.ObjectStoreError, ManifestError) as exc:
            raise BaseFetchError(f"base model {uri}: {exc}") from exc
        marker = {"uri": uri, "manifestSha256": manifest_sha}
        (staging / MARKER_NAME).write_text(json.dumps(marker) + "\n")
        if dest.exists():
            _replace_aside(dest)
        os.rename(staging, dest)
    finally:
        _remove(staging)
    log.info("fetched %s into %s (%d files)", uri, dest, len(names))
    return dest


def _replace_aside(dest: Path) -> None:
    """An incomplete or different model is in the way: move it aside, then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{dest.name}-old-", dir=dest.parent))
    try:
        os.rename(dest, aside / "model")
    except OSError as exc:
        raise BaseFetchError(
            f"cannot replace {dest}: {exc} (mount the volume at its parent, not at it)"
        ) from exc
    finally:
        _remove(aside)


def base_linears(base_dir: Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every 2-D weight in the base's safetensors files,
    by module name ("model.layers.0.self_attn.q_proj"); a Linear's weight is (out, in).
    Embeddings are 2-D too; LoRA on them uses other tensor names, so listing them is
    harmless."""
    files = sorted(Path(base_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {base_dir}: is the base model there?")
    linears = {}
    for path in files:
        for key, shape in header_shapes(path).items():
            if key.endswith(".weight") and len(shape) == 2:
                linears[key[: -len(".weight")]] = (shape[1], shape[0])
    return linears
