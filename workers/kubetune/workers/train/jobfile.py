"""Reading the FineTuneJob the operator mounts (JSON or YAML) into a validated job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import TrainerError


@dataclass(frozen=True)
class Job:
    """A FineTuneJob's identity and its spec in wire form (camelCase), validated."""

    namespace: str
    name: str
    uid: str | None
    spec_wire: dict
    spec: object  # FineTuneJobSpec


def load_job(path: Path, namespace: str | None = None, name: str | None = None) -> Job:
    """Parse and validate the spec file; --namespace/--job override metadata."""
    from kubetune.api import FineTuneJobSpec, SpecError, parse_spec

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TrainerError(f"spec file {path}: {exc.strerror}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            body = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TrainerError(f"spec file {path}: neither JSON nor YAML ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise TrainerError(f"spec file {path}: expected a FineTuneJob object with a spec")
    metadata = body.get("metadata") or {}
    namespace = namespace or metadata.get("namespace") or "default"
    name = name or metadata.get("name")
    if not name:
        raise TrainerError(f"spec file {path}: metadata.name is missing (or pass --job)")
    try:
        spec = parse_spec(FineTuneJobSpec, body["spec"])
    except SpecError as exc:
        raise TrainerError(f"spec file {path}: {exc}") from None
    return Job(namespace, name, metadata.get("uid"), body["spec"], spec)


def spec_fingerprint(spec_wire: dict) -> str:
    """sha256 of the spec as given: names a job's inputs when it has no uid."""
    return hashlib.sha256(json.dumps(spec_wire, sort_keys=True).encode()).hexdigest()
