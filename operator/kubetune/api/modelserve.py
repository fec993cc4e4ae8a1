"""ModelServe: one base model and many LoRA adapters behind vLLM's OpenAI-compatible API.

Adapters are named; a request's `model` field picks one. Changing only the adapter
list is hot-loaded by the running pods (kubetune's adapter agent verifies each adapter
and loads it through vLLM's runtime LoRA API); changing the base model, the vLLM
settings, the image or resources rolls the Deployment.
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

AGENT_PORT = 8081
SERVED_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
ServedName = Annotated[str, StringConstraints(pattern=SERVED_NAME_PATTERN, max_length=63)]


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace whose status.adapter is served.

    Bounded like a FineTuneJob's own name (see names.py): a longer one names no job."""

    name: Annotated[
        str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=FINETUNEJOB_NAME_MAX)
    ] = Field(description=f"Name of the FineTuneJob (at most {FINETUNEJOB_NAME_MAX} characters).")
    allow_unpromoted: StrictBool = Field(
        default=False,
        description="Serve the job's adapter even if it missed the job's evaluation gate "
        "(phase NotPromoted). Off: such an adapter is not loaded.",
    )


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


HUB_REFUSED = (
    "a ModelServe base must be s3://, pvc:// or file://: the adapter agent checks every "
    "adapter against the base's own files, and fetching from the hub is not built yet "
    "(mirror the model to object storage)"
)


class ServedBaseModel(ModelSource):
    """The base model every adapter applies to.

    s3:// bases are downloaded and verified by an init container before vLLM starts (so
    vLLM never reads an unverified base, and the adapter agent can check every adapter
    against the base's own files); pvc:// and file:// bases are read in place."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                *ModelSource.model_config["json_schema_extra"]["x-kubernetes-validations"],
                {"rule": "!self.uri.startsWith('hf://')", "message": HUB_REFUSED},
            ]
        }
    )

    load_in_4bit: StrictBool = Field(
        default=False,
        alias="loadIn4bit",
        description="Quantise the base in flight with bitsandbytes (vLLM `--quantization "
        "bitsandbytes`; GPU pools only).",
    )
    served_name: ServedName = Field(default="base", description="`model` name of the bare base.")

    @model_validator(mode="after")
    def _not_from_hub(self) -> ServedBaseModel:
        if self.uri.startswith("hf://"):
            raise ValueError(HUB_REFUSED)
        return self


class ServeResources(Placement):
    """Server pods' size and placement."""

    spot: StrictBool = Field(default=False, description="Allow server pods on spot capacity.")


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_ADAPTERS_IN_MEMORY = 8
# vLLM's CPU build must keep one LoRA slot empty, so each adapter holds a slot of its own
# there (kubetune.operator.modelserve.lora_slots says why): no swapping beyond the slots.
CPU_ADAPTERS_MESSAGE = (
    "on a CPU pool (resources.gpusPerWorker 0) every adapter holds a LoRA slot of its own: "
    "list at most maxAdaptersInMemory adapters, or raise maxAdaptersInMemory"
)
# Flags kubetune sets from typed fields: passing them in extraArgs would contradict the spec.
VLLM_MANAGED_FLAGS = {
    "--model": "baseModel.uri", "--served-model-name": "baseModel.servedName",
    "--host": "(set by kubetune)", "--port": "port", "--enable-lora": "(always on)",
    "--max-loras": "vllm.maxLoras", "--max-lora-rank": "vllm.maxLoraRank",
    "--max-cpu-loras": "maxAdaptersInMemory", "--max-model-len": "vllm.maxModelLen",
    "--max-num-seqs": "vllm.maxNumSeqs", "--dtype": "vllm.dtype",
    "--gpu-memory-utilization": "vllm.gpuMemoryUtilization",
    "--quantization": "baseModel.loadIn4bit", "--trust-remote-code": "baseModel.trustRemoteCode",
    "--tensor-parallel-size": "resources.gpusPerWorker",
}


class VllmSettings(ApiModel):
    """vLLM's engine settings; each maps to the `vllm serve` flag it names."""

    max_loras: int = Field(
        default=4, ge=1, le=256,
        description="Adapters batched together in one step (--max-loras) on GPU pools; on "
        "CPU pools kubetune sets it from maxAdaptersInMemory (see there).",
    )
    max_lora_rank: Literal[VLLM_LORA_RANKS] = Field(  # type: ignore[valid-type]
        default=16,
        description="Largest LoRA rank accepted (--max-lora-rank; one of vLLM's sizes: "
        + ", ".join(map(str, VLLM_LORA_RANKS)) + "). Adapters above it are refused.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1_048_576,
        description="Prompt plus output tokens per request (--max-model-len; default: the model's).",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096, description="Requests batched at once (--max-num-seqs)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights and activations dtype (--dtype)."
    )
    gpu_memory_utilization: float | None = Field(
        default=None, ge=0.05, le=0.99,
        description="Share of GPU memory vLLM may use (--gpu-memory-utilization; GPU pools).",
    )
    cpu_kv_cache_gib: int | None = Field(
        default=None, ge=1, le=4096, alias="cpuKVCacheGiB",
        description="KV cache size on CPU pools (VLLM_CPU_KVCACHE_SPACE, GiB).",
    )
    extra_args: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64,
        description="Further `vllm serve` flags, passed as given; flags kubetune sets from "
        "other fields are refused.",
    )

    @model_validator(mode="after")
    def _no_managed_flags(self) -> VllmSettings:
        for i, arg in enumerate(self.extra_args):
            flag = arg.split("=", 1)[0]
            if flag in VLLM_MANAGED_FLAGS:
                raise ValueError(
                    f"extraArgs[{i}] {flag} is set by kubetune from {VLLM_MANAGED_FLAGS[flag]}"
                )
        return self


class ModelServeSpec(ApiModel):
    """Desired serving deployment."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.adapters) || !has(self.baseModel.servedName) || "
                    "self.adapters.all(a, a.name != self.baseModel.servedName)",
                    "message": "an adapter name must differ from baseModel.servedName",
                },
                {
                    "rule": f"!has(self.port) || self.port != {AGENT_PORT}",
                    "message": f"port {AGENT_PORT} is the adapter agent's; pick another",
                },
                {
                    "rule": "!has(self.maxAdaptersInMemory) || !has(self.vllm) || "
                    "!has(self.vllm.maxLoras) || self.maxAdaptersInMemory >= self.vllm.maxLoras",
                    "message": "maxAdaptersInMemory must be at least vllm.maxLoras",
                },
                {
                    "rule": "!has(self.adapters) || !has(self.resources) || "
                    "!has(self.resources.gpusPerWorker) || self.resources.gpusPerWorker > 0 || "
                    "size(self.adapters) <= (has(self.maxAdaptersInMemory) ? "
                    f"self.maxAdaptersInMemory : {DEFAULT_ADAPTERS_IN_MEMORY})",
                    "message": CPU_ADAPTERS_MESSAGE,
                },
                {
                    "rule": "!has(self.baseModel.loadIn4bit) || !self.baseModel.loadIn4bit || "
                    "!has(self.resources) || !has(self.resources.gpusPerWorker) || "
                    "self.resources.gpusPerWorker > 0",
                    "message": "baseModel.loadIn4bit needs a GPU pool (resources.gpusPerWorker > 0)",
                },
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
        default=DEFAULT_ADAPTERS_IN_MEMORY, ge=1, le=1024,
        description="Adapters held per replica in host memory (vLLM --max-cpu-loras); "
        "least recently used beyond. At least vllm.maxLoras. On CPU pools "
        "(resources.gpusPerWorker 0) each held adapter gets a LoRA slot of its own plus one "
        "kept empty (--max-loras maxAdaptersInMemory+1, vllm.maxLoras not used), because "
        "vLLM's CPU build gives base-model requests the last slot's adapter; the adapters "
        "listed must then fit.",
    )
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="vLLM engine settings.")
    resources: ServeResources = Field(
        default_factory=ServeResources, description="Pod size and placement."
    )
    storage: ObjectStore = Field(
        default_factory=ObjectStore, description="Object store of s3:// models and adapters."
    )
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None,
        description="vLLM image override (default: the operator's vLLM image for GPU pools, "
        "its vLLM CPU image when resources.gpusPerWorker is 0).",
    )
    image_pull_policy: ImagePullPolicy | None = Field(default=None, description="Pull policy.")
    port: int = Field(
        default=8000, ge=1024, le=65535,
        description=f"HTTP port of vLLM's API (not {AGENT_PORT}, the adapter agent's).",
    )

    @model_validator(mode="after")
    def _engine_fits(self) -> ModelServeSpec:
        if self.port == AGENT_PORT:
            raise ValueError(f"port {AGENT_PORT} is the adapter agent's; pick another")
        if self.max_adapters_in_memory < self.vllm.max_loras:
            raise ValueError(
                f"maxAdaptersInMemory ({self.max_adapters_in_memory}) must be at least "
                f"vllm.maxLoras ({self.vllm.max_loras})"
            )
        if self.resources.gpus_per_worker == 0 and len(self.adapters) > self.max_adapters_in_memory:
            raise ValueError(f"{CPU_ADAPTERS_MESSAGE} ({len(self.adapters)} adapters, "
                             f"maxAdaptersInMemory {self.max_adapters_in_memory})")
        if self.base_model.load_in_4bit and self.resources.gpus_per_worker == 0:
            raise ValueError(
                "baseModel.loadIn4bit needs a GPU pool (resources.gpusPerWorker > 0): vLLM's "
                "bitsandbytes quantisation runs on CUDA"
            )
        return self

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
