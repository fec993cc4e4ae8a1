"""The agent's configuration file: the ConfigMap the operator writes (camelCase JSON).

Validated with pydantic at the boundary so the rest of the agent only sees typed, frozen
values that compare by value: the diff between two configs is then a plain comparison.
Fields the agent does not use (vLLM's own settings, say) are ignored rather than refused,
so the operator can add fields without breaking running agents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


class ConfigError(ValueError):
    """The configuration file is missing, not JSON, or has a wrong field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class BaseModelConfig(_Model):
    uri: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    served_name: Name = Field(default="base", alias="servedName")


class AdapterConfig(_Model):
    name: Name
    uri: Annotated[str, StringConstraints(pattern=S3_URI_PATTERN, max_length=1024)]
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] | None = None


class StorageConfig(_Model):
    endpoint: str | None = None
    region: str | None = None


class AgentConfig(_Model):
    base_model: BaseModelConfig = Field(alias="baseModel")
    adapters: tuple[AdapterConfig, ...] = ()
    max_lora_rank: int = Field(default=16, ge=1, alias="maxLoraRank")
    # The most adapters vLLM may hold at once (None: no limit). The operator sets it
    # where vLLM must keep its last LoRA slot empty (see operator/modelserve/lora_slots).
    max_loaded_adapters: int | None = Field(default=None, ge=1, alias="maxLoadedAdapters")
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> AgentConfig:
        seen = {self.base_model.served_name}
        for i, adapter in enumerate(self.adapters):
            if adapter.name in seen:
                raise ValueError(
                    f"adapters[{i}].name {adapter.name!r} is used twice (or is the base's name)"
                )
            seen.add(adapter.name)
        return self


def _describe(error: ValidationError) -> str:
    """One line per wrong field, named by its JSON path (adapters[1].sha256)."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path or 'config'}: {item['msg']}")
    return "; ".join(lines)


def parse_config(body: object) -> AgentConfig:
    try:
        return AgentConfig.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: Path) -> tuple[AgentConfig, bytes]:
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
