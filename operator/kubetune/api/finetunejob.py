"""FineTuneJob: a declarative QLoRA/LoRA fine-tune, spot-aware, writing an adapter to S3.

The pydantic models here are the single source of truth: the CRD in crds/ is generated
from them (`python -m kubetune.api.crdgen`), the operator parses bodies with them, and the
trainer reads its resolved spec with them. Cross-field rules appear twice on purpose —
as CEL in the CRD so the API server refuses a bad object, and as validators here so
`kubetune` code that is handed a body directly refuses it the same way.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, StringConstraints, model_validator

from .common import (
    S3_URI_PATTERN,
    ApiModel,
    ImagePullPolicy,
    ObjectStore,
    Placement,
)
from .evaluation import EvaluationSpec
from .names import WORKERS_MAX
from .policies import BackoffSpec as BackoffSpec  # re-exported: importers name it here
from .policies import RetryPolicy, SpotPolicy

MODEL_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?"
    r"|hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?"
    r"|file:///.+)$"
)
DATA_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+"
    r"|file:///.+)$"
)
EVAL_NEEDS_ROWS = (
    "needs rows: set evaluation.dataset, or dataset.evalFraction above 0 to hold rows out"
)
EVAL_NEEDS_ANSWERS = (
    "exactMatch and contains compare with a reference answer, which text rows lack: "
    "use format alpaca or chat, or only the loss metric"
)
IMMUTABLE = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable"}]}


class ModelSource(ApiModel):
    """The base model: an S3 prefix, a Hugging Face hub id, a path on a PVC or in the image."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.revision) || self.uri.startsWith('hf://')",
                    "message": "revision applies only to hf:// models",
                }
            ]
        }
    )

    uri: Annotated[str, StringConstraints(pattern=MODEL_URI_PATTERN, max_length=1024)] = Field(
        description="s3://bucket/prefix, hf://org/name, pvc://claim/path or file:///path "
        "(a path inside the image)."
    )
    revision: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{1,128}$")] | None = (
        Field(default=None, description="Hub revision (commit sha, tag or branch) for hf:// models.")
    )
    trust_remote_code: StrictBool = Field(
        default=False, description="Run the model repository's own Python code. Off by default."
    )

    @model_validator(mode="after")
    def _revision_only_for_hub(self) -> ModelSource:
        if self.revision is not None and not self.uri.startswith("hf://"):
            raise ValueError("revision applies only to hf:// models")
        return self


class DatasetSpec(ApiModel):
    """Training data: one JSONL file (or a prefix of JSONL files) in a known format."""

    uri: Annotated[str, StringConstraints(pattern=DATA_URI_PATTERN, max_length=1024)] = Field(
        description="s3://bucket/key.jsonl, pvc://claim/path or file:///path of the JSONL data."
    )
    format: Literal["alpaca", "chat", "text"] = Field(
        default="alpaca",
        description="alpaca: instruction/input/output rows; chat: rows with a messages list; "
        "text: rows with a text field.",
    )
    eval_fraction: float = Field(
        default=0.05, ge=0.0, le=0.5, description="Share of rows held out for eval loss."
    )


class LoraSettings(ApiModel):
    """LoRA adapter shape."""

    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(default=32.0, gt=0, le=4096, description="LoRA scaling alpha.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] = (
        Field(
            default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
            min_length=1,
            max_length=64,
            description="Module names to adapt, or the single entry all-linear.",
        )
    )


class QuantizationSettings(ApiModel):
    """bitsandbytes quantization of the frozen base model (QLoRA)."""

    bits: Literal[4, 8] = Field(default=4, description="4 (QLoRA) or 8 bits.")
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type; ignored for 8 bits."
    )
    double_quant: StrictBool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="dtype of the matmuls on dequantized weights."
    )


class MethodSpec(ApiModel):
    """Fine-tuning method: qlora (quantized frozen base) or lora (full-precision base)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'qlora' || !has(self.quantization)",
                    "message": "quantization applies only to method qlora",
                }
            ]
        }
    )

    type: Literal["qlora", "lora"] = Field(default="qlora", description="qlora or lora.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter shape.")
    quantization: QuantizationSettings | None = Field(
        default=None, description="Quantization for qlora; defaults to 4-bit NF4, double quant."
    )

    @model_validator(mode="after")
    def _quantization_only_for_qlora(self) -> MethodSpec:
        if self.type == "lora" and self.quantization is not None:
            raise ValueError("quantization applies only to method qlora")
        return self

    def effective_quantization(self) -> QuantizationSettings | None:
        """The quantization to load with: the spec's, the QLoRA default, or none for lora."""
        if self.type == "lora":
            return None
        return self.quantization or QuantizationSettings()


class TrainingSpec(ApiModel):
    """Optimisation hyper-parameters."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.epochs) && has(self.maxSteps))",
                    "message": "set at most one of epochs or maxSteps",
                }
            ]
        }
    )

    epochs: int | None = Field(
        default=None, ge=1, le=1000, description="Passes over the data (1 when maxSteps is unset)."
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps; overrides epochs."
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule."
    )
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000, description="Linear warmup steps.")
    batch_size: int = Field(default=4, ge=1, le=1024, description="Sequences per worker per step.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024, description="Micro-batches summed per optimizer step."
    )
    max_seq_length: int = Field(
        default=1024, ge=16, le=131072, description="Tokens per sequence; longer ones are cut."
    )
    packing: StrictBool = Field(
        default=False,
        description=(
            "Pack whole examples (each cut to maxSeqLength) into sequences of up to "
            "maxSeqLength tokens, first-fit decreasing, for less padding. No example is "
            "split; each attends only to itself, with positions restarting at 0, so its "
            "loss is the same as unpacked."
        ),
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, le=1000, description="Gradient clipping norm.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for data order and init.")

    @model_validator(mode="after")
    def _one_length(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set at most one of epochs or maxSteps")
        return self


class TrainResources(Placement):
    """Ray workers and their placement on a GPU node pool."""

    workers: int = Field(default=1, ge=1, le=WORKERS_MAX, description="Ray Train workers (pods).")


class OutputSpec(ObjectStore):
    """Where checkpoints and the adapter go; the same store serves s3:// inputs."""

    uri: Annotated[str, StringConstraints(pattern=S3_URI_PATTERN, max_length=1024)] = Field(
        description="s3://bucket/prefix; the job writes under <prefix>/<namespace>/<name>/."
    )


class ImageSpec(ApiModel):
    """Container image overrides; empty uses the operator's defaults."""

    trainer: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="Trainer image (CUDA, bitsandbytes, Ray)."
    )
    pull_policy: ImagePullPolicy | None = Field(default=None, description="Image pull policy.")


class RetentionSpec(ApiModel):
    """What happens to checkpoints; the adapter is never deleted by kubetune."""

    checkpoints: Literal["Retain", "DeleteOnSuccess", "DeleteWithJob"] = Field(
        default="DeleteWithJob",
        description="Retain forever, delete once the adapter is written, or delete with the job.",
    )


class FineTuneJobSpec(ApiModel):
    """Desired fine-tune. What the job trains on and writes to cannot change once created."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.evaluation) || has(self.evaluation.dataset) || "
                    "!has(self.dataset.evalFraction) || self.dataset.evalFraction > 0.0",
                    "message": EVAL_NEEDS_ROWS,
                    "fieldPath": ".evaluation",
                },
                {
                    "rule": "!has(self.evaluation) || !((!has(self.evaluation.metrics) || "
                    "self.evaluation.metrics.exists(m, m != 'loss')) && "
                    "((has(self.evaluation.dataset) && has(self.evaluation.dataset.format)) ? "
                    "self.evaluation.dataset.format : "
                    "(has(self.dataset.format) ? self.dataset.format : 'alpaca')) == 'text')",
                    "message": EVAL_NEEDS_ANSWERS,
                    "fieldPath": ".evaluation.metrics",
                },
            ]
        }
    )

    base_model: ModelSource = Field(
        description="Model to fine-tune.", json_schema_extra=IMMUTABLE
    )
    dataset: DatasetSpec = Field(description="Training data.", json_schema_extra=IMMUTABLE)
    method: MethodSpec = Field(
        default_factory=MethodSpec, description="qlora or lora.", json_schema_extra=IMMUTABLE
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Hyper-parameters.",
        json_schema_extra=IMMUTABLE,
    )
    resources: TrainResources = Field(
        default_factory=TrainResources, description="Workers, GPUs and placement."
    )
    spot: SpotPolicy = Field(default_factory=SpotPolicy, description="Spot and recovery policy.")
    retries: RetryPolicy = Field(default_factory=RetryPolicy, description="Error retries.")
    output: OutputSpec = Field(
        description="Object storage for checkpoints and the adapter.",
        json_schema_extra=IMMUTABLE,
    )
    images: ImageSpec = Field(default_factory=ImageSpec, description="Image overrides.")
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec, description="Checkpoint retention."
    )
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Evaluation on held-out rows (baseline, during, final) and a promotion "
        "gate; without it only the eval loss of the held-out split is measured.",
        json_schema_extra=IMMUTABLE,
    )

    @model_validator(mode="after")
    def _evaluation_has_rows(self) -> FineTuneJobSpec:
        evaluation = self.evaluation
        if evaluation is None:
            return self
        if evaluation.dataset is None and self.dataset.eval_fraction <= 0:
            raise ValueError(f"evaluation: {EVAL_NEEDS_ROWS}")
        if evaluation.generates() and self.evaluation_format() == "text":
            raise ValueError(f"evaluation.metrics: {EVAL_NEEDS_ANSWERS}")
        return self

    def evaluation_format(self) -> str:
        """The row format of the evaluation rows: their own, else the training data's."""
        own = self.evaluation.dataset if self.evaluation else None
        return (own.format if own is not None and own.format else None) or self.dataset.format
