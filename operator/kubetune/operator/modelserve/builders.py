"""Pure builders of a ModelServe's children: adapter-list ConfigMap, Deployment, Service, PDB.

The split between the ConfigMap and the pod template is what makes adapter changes
cheap: the adapter list lives only in the ConfigMap (the adapter agent watches the
mounted file and loads through vLLM's runtime API), while everything that needs a new
vLLM process (the base model, the object store it comes from, vLLM's flags, images,
resources, credentials) is in the pod template or hashed into a pod-template
annotation, so changing it rolls the Deployment. The pod itself is in `podspec`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from kubetune.api import MODELSERVE, Kind, ModelServeSpec
from kubetune.api.modelserve import AGENT_PORT

from ..builders.meta import OwnerMeta
from ..builders.placement import place
from ..builders.storage_env import service_account_name, storage_endpoint
from ..config import OperatorConfig
from . import naming
from .lora_slots import lora_slots
from .podspec import AGENT_PORT_NAME, CONFIG_KEY, PORT_NAME, containers, volumes
from .resolve import Resolution

RUN_AS_UID = 65532
RESTART_HASH_ANNOTATION = "kubetune.dev/restart-hash"
__all__ = ["CONFIG_KEY", "RESTART_HASH_ANNOTATION", "ServeMeta", "build_children"]


@dataclass(frozen=True)
class ServeMeta(OwnerMeta):
    """The ModelServe that owns a child."""

    KIND: ClassVar[Kind] = MODELSERVE

    def object_meta(self, name: str, component: str) -> dict:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": naming.labels(self.name, component),
            "ownerReferences": [self.owner_reference()],
        }


def storage_settings(spec: ModelServeSpec, config: OperatorConfig) -> dict:
    settings = {"endpoint": storage_endpoint(spec.storage, config), "region": spec.storage.region}
    return {key: value for key, value in settings.items() if value is not None}


def agent_config(spec: ModelServeSpec, config: OperatorConfig, adapters: list[Resolution]) -> dict:
    """The adapter agent's config.json: only resolved adapters, in spec order."""
    served = []
    for adapter in adapters:
        if adapter.resolved:
            entry = {"name": adapter.name, "uri": adapter.uri}
            if adapter.sha256:
                entry["sha256"] = adapter.sha256
            served.append(entry)
    document = {
        "baseModel": spec.base_model.to_wire(),
        "adapters": served,
        "maxLoraRank": spec.vllm.max_lora_rank,
        "storage": storage_settings(spec, config),
    }
    max_loaded = lora_slots(spec).max_loaded
    if max_loaded is not None:
        document["maxLoadedAdapters"] = max_loaded
    return document


def restart_hash(spec: ModelServeSpec, config: OperatorConfig) -> str:
    """Hash of the config.json parts a running vLLM cannot take in place."""
    document = {"baseModel": spec.base_model.to_wire(), "storage": storage_settings(spec, config)}
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_configmap(
    meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig, adapters: list[Resolution]
) -> dict:
    """Sorted, indented JSON so equal inputs give byte-equal data (no needless patches,
    no needless reload in the agent, which compares the file's bytes)."""
    document = json.dumps(agent_config(spec, config, adapters), sort_keys=True, indent=2)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.object_meta(naming.config_name(meta.name), naming.COMPONENT_SERVE_CONFIG),
        "data": {CONFIG_KEY: document + "\n"},
    }


def pod_template(meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig) -> dict:
    profile = config.spot_profile()
    capacity = "spot" if spec.resources.spot else "on-demand"
    init_containers, main_containers = containers(spec, config)
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # vLLM finishes the requests it is decoding before it exits.
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init_containers,
        "containers": main_containers,
        "volumes": volumes(spec, naming.config_name(meta.name)),
    }
    account = service_account_name(spec.storage)
    if account:
        pod_spec["serviceAccountName"] = account
    place(pod_spec, spec, profile, capacity, capacity_field="spec.resources.spot")
    pod_labels = {**naming.labels(meta.name, naming.COMPONENT_SERVER)}
    pod_labels["kubetune.dev/capacity-type"] = capacity
    annotations = {
        RESTART_HASH_ANNOTATION: restart_hash(spec, config),
        # `kubectl logs` without -c shows vLLM; Prometheus scrapes vLLM's /metrics.
        "kubectl.kubernetes.io/default-container": main_containers[0]["name"],
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.port),
        "prometheus.io/path": "/metrics",
    }
    return {
        "metadata": {"labels": pod_labels, "annotations": annotations},
        "spec": pod_spec,
    }


def build_deployment(meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig) -> dict:
    """maxUnavailable 0 / maxSurge 1: a replacement loads its model before an old replica
    goes, so a base-model roll never drops serving capacity."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.object_meta(naming.server_name(meta.name), naming.COMPONENT_SERVER),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            # Loading a large base from object storage can take many minutes.
            "progressDeadlineSeconds": 1800,
            "selector": {"matchLabels": naming.selector(meta.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": pod_template(meta, spec, config),
        },
    }


def build_service(meta: ServeMeta, spec: ModelServeSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(naming.server_name(meta.name), naming.COMPONENT_SERVER),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector(meta.name),
            # vLLM's API and metrics; the agent's adapter states and metrics.
            "ports": [
                {"name": PORT_NAME, "port": spec.port, "targetPort": PORT_NAME, "protocol": "TCP"},
                {"name": AGENT_PORT_NAME, "port": AGENT_PORT, "targetPort": AGENT_PORT_NAME,
                 "protocol": "TCP"},
            ],
        },
    }


def build_pdb(meta: ServeMeta, spec: ModelServeSpec) -> dict | None:
    """One replica at a time may be drained; with a single replica a PDB would block node
    drains forever, so there is none."""
    if spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.object_meta(naming.server_name(meta.name), naming.COMPONENT_SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": naming.selector(meta.name)}},
    }


def endpoint(meta: ServeMeta, spec: ModelServeSpec) -> str:
    return f"http://{naming.server_name(meta.name)}.{meta.namespace}.svc:{spec.port}/v1"


def build_children(
    meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig, adapters: list[Resolution]
) -> list[dict]:
    """In apply order: the ConfigMap before the pods that mount it."""
    children = [
        build_configmap(meta, spec, config, adapters),
        build_service(meta, spec),
        build_deployment(meta, spec, config),
    ]
    pdb = build_pdb(meta, spec)
    if pdb is not None:
        children.append(pdb)
    return children
