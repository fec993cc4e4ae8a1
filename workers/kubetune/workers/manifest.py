"""manifest.json: the completion marker of an adapter (and of each checkpoint).

Object stores have no atomic directory rename, so "complete" is defined by one object
written last: manifest.json lists every file with its sha256 and size. A reader that
finds a manifest can verify every byte; a reader that finds no manifest ignores the
prefix. The sha256 of manifest.json itself is the adapter's identity (status.adapter.sha256),
so pinning that one hash pins every file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ManifestError(ValueError):
    """A manifest or the files it lists are missing, corrupt or unsafe."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refuse_pickle(names: list[str]) -> None:
    """Pickle files execute code on load; kubetune neither writes nor reads them."""
    bad = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if bad:
        raise ManifestError(f"pickle files are refused (use safetensors): {', '.join(sorted(bad))}")


@dataclass
class Manifest:
    """What was written, with which inputs, and what it measured."""

    kind: str  # "adapter" or "checkpoint"
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"sha256", "size"}
    base_model: dict = field(default_factory=dict)  # {"uri", "revision"}
    method: dict = field(default_factory=dict)  # {"type", "rank", "alpha", "targetModules", ...}
    training: dict = field(default_factory=dict)  # hyper-parameters
    metrics: dict = field(default_factory=dict)  # {"trainLoss", "evalLoss", "steps", "tokens"}
    step: int | None = None
    created_at: str | None = None
    job: dict = field(default_factory=dict)  # {"namespace", "name", "uid"} of the writer
    version: int = MANIFEST_VERSION

    def to_json(self) -> bytes:
        body = {
            "version": self.version,
            "kind": self.kind,
            "step": self.step,
            "createdAt": self.created_at,
            "job": self.job,
            "baseModel": self.base_model,
            "method": self.method,
            "training": self.training,
            "metrics": self.metrics,
            "files": dict(sorted(self.files.items())),
        }
        return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            files = body["files"]
            if not isinstance(files, dict) or not all(
                isinstance(v, dict) and "sha256" in v and "size" in v for v in files.values()
            ):
                raise ManifestError("manifest.json: files must map names to {sha256, size}")
            return cls(
                kind=body["kind"],
                files=files,
                base_model=body.get("baseModel", {}),
                method=body.get("method", {}),
                training=body.get("training", {}),
                metrics=body.get("metrics", {}),
                step=body.get("step"),
                created_at=body.get("createdAt"),
                job=body.get("job") or {},
                version=body.get("version", MANIFEST_VERSION),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ManifestError(f"manifest.json is not a valid manifest: {exc}") from exc


def describe_files(directory: Path) -> dict[str, dict]:
    """sha256 and size of every regular file under `directory` (relative names)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == MANIFEST_NAME:
            continue
        files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    refuse_pickle(list(files))
    return files


def verify_directory(directory: Path, manifest: Manifest) -> None:
    """Every listed file present with the listed size and sha256; nothing pickled."""
    refuse_pickle(list(manifest.files))
    for name, meta in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ManifestError(f"{name}: listed in manifest.json but missing")
        if path.stat().st_size != meta["size"]:
            raise ManifestError(
                f"{name}: size {path.stat().st_size} differs from manifest ({meta['size']})"
            )
        actual = sha256_file(path)
        if actual != meta["sha256"]:
            raise ManifestError(f"{name}: sha256 {actual} differs from manifest ({meta['sha256']})")
