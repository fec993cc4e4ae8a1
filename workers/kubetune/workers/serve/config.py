"""The server's configuration file (camelCase JSON, the shape of ModelServeSpec).

Parsed into frozen dataclasses so the rest of the server never touches raw dicts, and
so two configs compare by value: the watcher reloads only what actually changed.
Kept free of pydantic models from the operator side because the server image installs
only the `serve` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """The configuration file is missing, not JSON, or has a wrong field."""


@dataclass(frozen=True)
class BaseModelConfig:
    uri: str
    revision: str | None = None
    load_in_4bit: bool = False
    served_name: str = "base"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class AdapterConfig:
    name: str
    uri: str
    sha256: str | None = None


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True)
class StorageConfig:
    endpoint: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    base_model: BaseModelConfig
    adapters: tuple[AdapterConfig, ...] = ()
    max_adapters_in_memory: int = 8
    limits: Limits = field(default_factory=Limits)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def adapter_map(self) -> dict[str, AdapterConfig]:
        return {a.name: a for a in self.adapters}


def _typed(body: dict, key: str, kind: type | tuple[type, ...], where: str, default=None):
    value = body.get(key, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}{key} must be {getattr(kind, '__name__', kind)}")
    return value


def _positive(value: int, where: str) -> int:
    if value < 1:
        raise ConfigError(f"{where} must be >= 1")
    return value


def parse_config(body: object) -> ServeConfig:
    """Validate a decoded config document; every error names the offending field."""
    if not isinstance(body, dict):
        raise ConfigError("config must be a JSON object")
    base = body.get("baseModel")
    if not isinstance(base, dict) or not isinstance(base.get("uri"), str):
        raise ConfigError("baseModel.uri is required")
    base_model = BaseModelConfig(
        uri=base["uri"],
        revision=_typed(base, "revision", str, "baseModel."),
        load_in_4bit=_typed(base, "loadIn4bit", bool, "baseModel.", False),
        served_name=_typed(base, "servedName", str, "baseModel.", "base"),
        trust_remote_code=_typed(base, "trustRemoteCode", bool, "baseModel.", False),
    )
    adapters = []
    seen = {base_model.served_name}
    for i, item in enumerate(_typed(body, "adapters", list, "", [])):
        where = f"adapters[{i}]."
        if not isinstance(item, dict):
            raise ConfigError(f"adapters[{i}] must be an object")
        name = _typed(item, "name", str, where)
        uri = _typed(item, "uri", str, where)
        if not name or not uri:
            raise ConfigError(f"{where}name and {where}uri are required")
        if name in seen:
            raise ConfigError(f"{where}name {name!r} is used twice (or is the base's name)")
        seen.add(name)
        adapters.append(AdapterConfig(name, uri, _typed(item, "sha256", str, where)))
    limits = _typed(body, "limits", dict, "", {})
    storage = _typed(body, "storage", dict, "", {})
    return ServeConfig(
        base_model=base_model,
        adapters=tuple(adapters),
        max_adapters_in_memory=_positive(
            _typed(body, "maxAdaptersInMemory", int, "", 8), "maxAdaptersInMemory"
        ),
        limits=Limits(
            max_prompt_tokens=_positive(
                _typed(limits, "maxPromptTokens", int, "limits.", 4096), "limits.maxPromptTokens"
            ),
            max_tokens=_positive(
                _typed(limits, "maxTokens", int, "limits.", 1024), "limits.maxTokens"
            ),
            max_body_bytes=_positive(
                _typed(limits, "maxBodyBytes", int, "limits.", 1_048_576), "limits.maxBodyBytes"
            ),
        ),
        storage=StorageConfig(
            endpoint=_typed(storage, "endpoint", str, "storage."),
            region=_typed(storage, "region", str, "storage."),
        ),
    )


def load_config(path: Path) -> tuple[ServeConfig, bytes]:
    """Read and parse the file; also return its bytes so the watcher can compare content."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    return parse_config(body), raw
