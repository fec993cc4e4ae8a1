"""Types shared by FineTuneJob and ModelServe.

Every field carries a description because the CRD generator copies it into the
schema, which is what `kubectl explain` shows to users.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .labels import LABEL_MAP_MAX, check_labels, label_map_schema

API_GROUP = "kubetune.dev"
API_VERSION = "v1alpha1"

# Kubernetes' quantity grammar (resource.Quantity's doc comment: <signedNumber><suffix>,
# binary Ki..Ei, decimal n u m k M G T P E, or an integer exponent) narrowed to positive
# values, since a pod's CPU or memory of zero or less is a mistake. Kubernetes' own parser
# (and CEL's isQuantity) also takes ".", "+" and "-" as zero: this pattern does not.
# Exponents stop at 18 digits, where Go's ParseInt(…, 64) would overflow.
QUANTITY_PATTERN = (
    r"^[+]?([0-9]*[1-9][0-9]*([.][0-9]*)?|[0-9]*[.][0-9]*[1-9][0-9]*)"
    r"([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,18})?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
HTTP_URL_PATTERN = r"^https?://[^\s/]+(/.*)?$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]


class ApiModel(BaseModel):
    """Base for all API types: camelCase on the wire, unknown fields refused.

    Refusing unknown fields matches `kubectl apply`'s strict field validation,
    so a typo like `learningrate` is an error instead of a silently ignored key.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict:
        """Serialise as the API server stores it: camelCase, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """Where S3 credentials live in a Secret of the resource's namespace."""

    name: DnsSubdomain = Field(description="Name of the Secret in the same namespace.")
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID",
        min_length=1,
        description="Key in the Secret holding the access key id.",
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        min_length=1,
        description="Key in the Secret holding the secret access key.",
    )


class StorageCredentials(ApiModel):
    """How pods authenticate to object storage: a Secret, or a ServiceAccount for IRSA /
    workload identity. With neither, the pod's default credential chain is used."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.secretRef) && has(self.serviceAccountName))",
                    "message": "set at most one of secretRef or serviceAccountName",
                }
            ]
        }
    )

    secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret with an access key id and secret access key."
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None,
        description="ServiceAccount annotated for IRSA or workload identity; pods run as it.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> StorageCredentials:
        if self.secret_ref is not None and self.service_account_name is not None:
            raise ValueError("set at most one of secretRef or serviceAccountName")
        return self


class ObjectStore(ApiModel):
    """Connection settings for an S3-compatible object store."""

    endpoint: Annotated[str, StringConstraints(pattern=HTTP_URL_PATTERN, max_length=512)] | None = (
        Field(
            default=None,
            description="Endpoint URL for S3-compatible stores (MinIO, Ceph, GCS interop); "
            "empty means AWS S3.",
        )
    )
    region: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")] | None = Field(
        default=None, description="Region of the bucket, e.g. us-east-1."
    )
    credentials: StorageCredentials | None = Field(
        default=None, description="Credentials for the object store."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, as in a Pod spec."""

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint."
    )


class Placement(ApiModel):
    """Where and how large the pods are: GPU node pools, CPU, memory, scheduling hints."""

    gpus_per_worker: int = Field(
        default=1, ge=0, le=16, description="GPUs requested per pod (0 runs on CPU)."
    )
    gpu_resource_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$")] = (
        Field(default="nvidia.com/gpu", description="Extended resource name of the GPU.")
    )
    cpu: Quantity = Field(
        default="4", description="CPU request and limit per pod: a positive quantity (500m, 8)."
    )
    memory: Quantity = Field(
        default="16Gi",
        description="Memory request and limit per pod: a positive quantity (48Gi, 512Mi).",
    )
    node_selector: Annotated[dict[str, str], AfterValidator(check_labels)] = Field(
        default_factory=dict,
        max_length=LABEL_MAP_MAX,
        description="Node labels the pods must match (the GPU node pool): keys and values "
        "in Kubernetes' label syntax.",
        json_schema_extra=label_map_schema(),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations added to every pod."
    )
    affinity: dict | None = Field(
        default=None,
        description="Pod affinity, as in a Pod spec; passed through unchanged.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: DnsSubdomain | None = Field(
        default=None, description="PriorityClass of the pods."
    )


class Condition(ApiModel):
    """A kstatus-style condition, as read by kubectl wait, Argo CD and Flux."""

    type: str = Field(description="Ready, Reconciling, Stalled, Succeeded or Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from."
    )


ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]
