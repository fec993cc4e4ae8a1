"""ModelServe: one base model and many LoRA adapters behind an OpenAI-compatible API.

Adapters are named; a request's `model` field picks one. Changing only the adapter
list is hot-loaded by the running pods; changing the base model or resources rolls
the Deployment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, StringConstraints, model_validator

from .common import (
    S3_URI_PATTERN,
    SHA256_PATTERN,
    ApiModel,
    Condition,
    DNS_SUBDOMAIN_PATTERN,
    ImagePullPolicy,
    ObjectStore,
    Placement,
)
from .finetunejob import ModelSource
from .names import FINETUNEJOB_NAME_MAX

SERVED_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
ServedName = Annotated[str, StringConstraints(pattern=SERVED_NAME_PATTERN, max_length=63)]


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace whose status.adapter is served.

    Bounded like a FineTuneJob's own name (see names.py): a longer one names no job."""

    name: Annotated[
        str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=FINETUNEJOB_NAME_MAX)
    ] = Field(description=f"Name of the FineTuneJob (at most {FINETUNEJOB_NAME_MAX} characters).")


class AdapterSource(ApiModel):
    """One adapter: from a FineTuneJob, or from an object-store prefix."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.fineTuneJobRef) != has(self.uri)",
                    "message": "set exactly one of fineTuneJobRef or uri",
                },
                {
                    "rule": "!has(self.sha256) || has(self.uri)",
                    "message": "sha256 applies to uri adapters; a fineTuneJobRef brings its own",
                },
            ]
        }
    )

    name: ServedName = Field(description="Name clients pass as `model`.")
    fine_tune_job_ref: FineTuneJobRef | None = Field(
        default=None, description="Serve the adapter this FineTuneJob produced."
    )
    uri: Annotated[str, StringConstraints(pattern=S3_URI_PATTERN, max_length=1024)] | None = (
        Field(default=None, description="s3:// prefix holding adapter files and manifest.json.")
    )
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] | None = Field(
        default=None, description="Expected sha256 of the adapter's manifest.json."
    )

    @model_validator(mode="after")
    def _one_source(self) -> AdapterSource:
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of fineTuneJobRef or uri")
        if self.sha256 is not None and self.uri is None:
            raise ValueError("sha256 applies to uri adapters; a fineTuneJobRef brings its own")
        return self


class ServedBaseModel(ModelSource):
    """The base model every adapter applies to."""

    load_in_4bit: StrictBool = Field(
        default=False, alias="loadIn4bit", description="Load the base with bitsandbytes NF4."
    )
    served_name: ServedName = Field(default="base", description="`model` name of the bare base.")


class ServeResources(Placement):
    """Server pods' size and placement."""

    spot: StrictBool = Field(default=False, description="Allow server pods on spot capacity.")


class ServeLimits(ApiModel):
    """Input bounds enforced by the server (HTTP 400 beyond them)."""

    max_prompt_tokens: int = Field(default=4096, ge=1, le=1_048_576, description="Prompt tokens.")
    max_tokens: int = Field(default=1024, ge=1, le=1_048_576, description="Generated tokens.")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=67_108_864, description="Request body size."
    )


class ModelServeSpec(ApiModel):
    """Desired serving deployment."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.adapters) || !has(self.baseModel.servedName) || "
                    "self.adapters.all(a, a.name != self.baseModel.servedName)",
                    "message": "an adapter name must differ from baseModel.servedName",
                }
            ]
        }
    )

    base_model: ServedBaseModel = Field(description="Base model loaded once per replica.")
    adapters: list[AdapterSource] = Field(
        default_factory=list,
        max_length=256,
        description="Adapters to serve; names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(default=1, ge=0, le=64, description="Server pods.")
    max_adapters_in_memory: int = Field(
        default=8, ge=1, le=1024, description="Adapters held per replica; LRU beyond."
    )
    resources: ServeResources = Field(
        default_factory=ServeResources, description="Pod size and placement."
    )
    storage: ObjectStore = Field(
        default_factory=ObjectStore, description="Object store of s3:// models and adapters."
    )
    limits: ServeLimits = Field(default_factory=ServeLimits, description="Request limits.")
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="Server image override."
    )
    image_pull_policy: ImagePullPolicy | None = Field(default=None, description="Pull policy.")
    port: int = Field(default=8000, ge=1024, le=65535, description="HTTP port of the API.")

    @model_validator(mode="after")
    def _unique_names(self) -> ModelServeSpec:
        seen: set[str] = set()
        for i, adapter in enumerate(self.adapters):
            if adapter.name == self.base_model.served_name:
                raise ValueError(
                    f"adapters[{i}].name {adapter.name!r} must differ from baseModel.servedName"
                )
            if adapter.name in seen:
                raise ValueError(f"adapters[{i}].name {adapter.name!r} is used twice")
            seen.add(adapter.name)
        return self


AdapterState = Literal["Pending", "Loading", "Loaded", "Failed"]


class AdapterStatus(ApiModel):
    """How one adapter is doing across replicas."""

    name: str = Field(description="Adapter name.")
    state: AdapterState = Field(description="Pending, Loading, Loaded or Failed.")
    message: str | None = Field(default=None, description="Why, for Pending and Failed.")
    uri: str | None = Field(default=None, description="Resolved object-store prefix.")
    sha256: str | None = Field(default=None, description="Resolved manifest sha256.")
    replicas_loaded: int = Field(default=0, ge=0, description="Replicas that loaded it.")


class ModelServeStatus(ApiModel):
    """Observed state, written only by the operator."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] | None = Field(
        default=None, description="Lifecycle phase."
    )
    message: str | None = Field(default=None, description="Why the serve is in this phase.")
    conditions: list[Condition] = Field(default_factory=list, description="kstatus conditions.")
    observed_generation: int | None = Field(default=None, description="Last reconciled generation.")
    replicas: int = Field(default=0, ge=0, description="Server pods that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Server pods that are ready.")
    ready_display: str | None = Field(default=None, description="ready/desired for kubectl get.")
    endpoint: str | None = Field(default=None, description="http://<service>.<ns>.svc:<port>/v1")
    adapters: list[AdapterStatus] = Field(default_factory=list, description="Per-adapter state.")
    adapters_display: str | None = Field(default=None, description="loaded/total for kubectl get.")
