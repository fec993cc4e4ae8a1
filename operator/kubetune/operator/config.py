"""The operator's own configuration: which cloud's spot labels to use, default images, S3.

Read once at start-up from the YAML file named by $KUBETUNE_CONFIG (the Helm chart mounts
it at /etc/kubetune/config.yaml). Spot placement differs per cloud, so it is a setting
chosen by the cluster admin, never hard-coded in the builders: each provider is a
`SpotProfile` (the node labels that select spot or on-demand capacity, the tolerations spot
pools require, the taints that announce an imminent interruption).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from kubetune.api.common import ApiModel, ImagePullPolicy, Toleration
from kubetune.api.validation import SpecError, parse_spec

CONFIG_ENV = "KUBETUNE_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/kubetune/config.yaml"

SpotProvider = Literal["karpenter", "eks", "gke", "aks", "custom"]
CapacityType = Literal["spot", "on-demand"]


class ConfigError(SpecError):
    """The operator's configuration file is unreadable or invalid; names the key."""


class TaintMatcher(ApiModel):
    """A node taint that means "this node is about to go away" (key, optionally effect)."""

    key: str = Field(min_length=1, max_length=316, description="Taint key.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches any effect."
    )

    def matches(self, taint: dict) -> bool:
        """True when a node's taint (as in node.spec.taints) has this key (and effect)."""
        if taint.get("key") != self.key:
            return False
        return self.effect is None or taint.get("effect") == self.effect


class SpotProfile(ApiModel):
    """How one cloud marks spot capacity and announces spot interruptions."""

    spot_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels of spot capacity."
    )
    on_demand_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels of on-demand capacity; empty when on-demand nodes are "
        "simply the untainted ones.",
    )
    spot_tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations spot nodes require."
    )
    interruption_taints: list[TaintMatcher] = Field(
        default_factory=list,
        description="Taints put on a node shortly before it is reclaimed.",
    )
    deleted_node_pods: Literal["Stopped", "AfterGracePeriod"] = Field(
        default="Stopped",
        description="When a pod whose Node object was deleted counts as stopped: Stopped "
        "(at once: clouds, Karpenter and cluster-autoscaler delete a Node once its machine "
        "is gone) or AfterGracePeriod (the pod's terminationGracePeriodSeconds later, for "
        "clusters where Nodes are deleted while their machines still run).",
    )

    def node_selector(self, capacity_type: CapacityType) -> dict[str, str]:
        """Labels that pin a pod to the given capacity type."""
        if capacity_type == "spot":
            return dict(self.spot_node_selector)
        return dict(self.on_demand_node_selector)

    def is_interrupting(self, node: dict | None) -> str | None:
        """The key of an interruption taint the node carries, or None."""
        for taint in ((node or {}).get("spec") or {}).get("taints") or []:
            for matcher in self.interruption_taints:
                if matcher.matches(taint):
                    return matcher.key
        return None


def _noschedule(key: str, value: str) -> Toleration:
    return Toleration(key=key, operator="Equal", value=value, effect="NoSchedule")


BUILTIN_SPOT_PROFILES: dict[str, SpotProfile] = {
    # Karpenter labels every node with its capacity type; it taints nodes it is about to
    # disrupt (spot interruption, consolidation, drift) with karpenter.sh/disrupted (v1)
    # or karpenter.sh/disruption (v1beta1 and older).
    "karpenter": SpotProfile(
        spot_node_selector={"karpenter.sh/capacity-type": "spot"},
        on_demand_node_selector={"karpenter.sh/capacity-type": "on-demand"},
        interruption_taints=[
            TaintMatcher(key="karpenter.sh/disrupted", effect="NoSchedule"),
            TaintMatcher(key="karpenter.sh/disruption", effect="NoSchedule"),
        ],
    ),
    # EKS managed node groups label nodes SPOT / ON_DEMAND; the AWS Node Termination
    # Handler taints a node that received a spot interruption notice.
    "eks": SpotProfile(
        spot_node_selector={"eks.amazonaws.com/capacityType": "SPOT"},
        on_demand_node_selector={"eks.amazonaws.com/capacityType": "ON_DEMAND"},
        interruption_taints=[TaintMatcher(key="aws-node-termination-handler/spot-itn")],
    ),
    # GKE Spot VMs carry cloud.google.com/gke-spot=true and, when the pool is tainted as
    # GKE recommends, the matching NoSchedule taint. On-demand nodes have no label.
    "gke": SpotProfile(
        spot_node_selector={"cloud.google.com/gke-spot": "true"},
        spot_tolerations=[_noschedule("cloud.google.com/gke-spot", "true")],
        interruption_taints=[TaintMatcher(key="cloud.google.com/impending-node-termination")],
    ),
    # AKS spot pools are labelled and tainted scalesetpriority=spot. AKS adds no
    # interruption taint of its own: eviction shows as DisruptionTarget / node shutdown.
    "aks": SpotProfile(
        spot_node_selector={"kubernetes.azure.com/scalesetpriority": "spot"},
        spot_tolerations=[_noschedule("kubernetes.azure.com/scalesetpriority", "spot")],
    ),
}


class ImagesConfig(ApiModel):
    """Default images of the pods the operator creates."""

    trainer: str = Field(default="ghcr.io/kubetune/trainer:0.1.0", min_length=1)
    agent: str = Field(
        default="ghcr.io/kubetune/agent:0.1.0", min_length=1,
        description="kubetune's adapter agent (and the base-model fetch before vLLM starts).",
    )
    vllm: str = Field(
        default="vllm/vllm-openai:v0.32.0", min_length=1,
        description="vLLM's CUDA image, for ModelServes on GPU pools.",
    )
    vllm_cpu: str = Field(
        default="public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0", min_length=1,
        alias="vllmCPU",
        description="vLLM's CPU image, for ModelServes with resources.gpusPerWorker 0.",
    )
    pull_policy: ImagePullPolicy = Field(default="IfNotPresent")


class StorageConfig(ApiModel):
    """Object-store defaults for jobs that do not name an endpoint."""

    default_endpoint: str = Field(default="", description="S3 endpoint URL; empty = AWS S3.")


class GpuPrice(ApiModel):
    """The price of one GPU-hour on a capacity type (and instance type, if given)."""

    capacity_type: CapacityType = Field(description="spot or on-demand.")
    instance_type: str | None = Field(
        default=None, min_length=1, max_length=253,
        description="node.kubernetes.io/instance-type; empty: any instance type.",
    )
    per_gpu_hour: float = Field(ge=0, le=100_000, description="Price of one GPU for an hour.")


class PricingConfig(ApiModel):
    """An optional price table: FineTuneJob status then shows cost and the spot saving."""

    currency: str = Field(default="USD", min_length=1, max_length=8)
    gpu_hour: list[GpuPrice] = Field(
        default_factory=list, description="Prices per capacity type and instance type."
    )

    def price(self, capacity_type: str, instance_type: str | None) -> float | None:
        """Per GPU-hour: an entry for the instance type first, else one for any type."""
        exact = [p for p in self.gpu_hour if p.capacity_type == capacity_type
                 and p.instance_type is not None and p.instance_type == instance_type]
        wildcard = [p for p in self.gpu_hour
                    if p.capacity_type == capacity_type and p.instance_type is None]
        chosen = exact or wildcard
        return chosen[0].per_gpu_hour if chosen else None


class OperatorConfig(ApiModel):
    """Everything the operator reads from its configuration file (the Helm `config:` keys)."""

    spot_provider: SpotProvider = Field(default="karpenter")
    spot_profiles: dict[SpotProvider, SpotProfile] = Field(default_factory=dict)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    watch_namespaces: list[str] = Field(default_factory=list)
    trainer_status_port: int = Field(default=8080, ge=1, le=65535)
    pricing: PricingConfig = Field(default_factory=PricingConfig)

    def price_table(self) -> PricingConfig | None:
        """The price table, or None when it lists no price (cost is then not shown)."""
        return self.pricing if self.pricing.gpu_hour else None

    def spot_profile(self) -> SpotProfile:
        """The configured provider's profile: built-in fields, replaced by any override."""
        builtin = BUILTIN_SPOT_PROFILES.get(self.spot_provider)
        override = self.spot_profiles.get(self.spot_provider)
        if builtin is None and override is None:
            raise ConfigError(
                [
                    f"config.spotProfiles.{self.spot_provider}: required when "
                    f"spotProvider is {self.spot_provider!r} (no built-in profile)"
                ]
            )
        if override is None:
            return builtin
        if builtin is None:
            return override
        return builtin.model_copy(
            update={field: getattr(override, field) for field in override.model_fields_set}
        )


def parse_config(data: dict | None) -> OperatorConfig:
    """Validate a config mapping; ConfigError names each bad key as `config.a.b`."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"config: expected a mapping, got {type(data).__name__}"])
    try:
        config = parse_spec(OperatorConfig, data, prefix="config")
    except SpecError as exc:
        raise ConfigError(exc.problems) from None
    config.spot_profile()  # a custom provider without a profile is refused at load time
    return config


def load_config(path: str | os.PathLike | None = None, environ=os.environ) -> OperatorConfig:
    """Read the config file ($KUBETUNE_CONFIG or /etc/kubetune/config.yaml).

    A missing file means defaults, so the operator runs out of the box outside Helm.
    """
    path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return OperatorConfig()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"config: {path} is not valid YAML: {exc}"]) from None
    return parse_config(data)


WATCH_CHILDREN_ENV = "KUBETUNE_WATCH_CHILDREN"


def children_watched(environ=os.environ) -> bool:
    """Whether FineTuneJobs watch their pods and nodes, and ModelServes their Deployment
    and Service ($KUBETUNE_WATCH_CHILDREN, on unless 0/false/off). Off, only the timers
    notice changes: the benchmarks' side-by-side, and a way back should a cluster's pod
    churn make the watches too costly. One switch for both kinds."""
    return environ.get(WATCH_CHILDREN_ENV, "1").lower() not in ("0", "false", "off")
