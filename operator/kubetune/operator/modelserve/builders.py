"""Pure builders of a ModelServe's children: server ConfigMap, Deployment, Service, PDB.

The split between the ConfigMap and the pod template is what makes adapter changes
cheap: the adapter list lives only in the ConfigMap (the server polls the mounted file
and hot-loads), while everything the server cannot change in place — the base model and
the object store it loads it from — is hashed into a pod-template annotation, so that
changing it (or the image, resources, credentials, which are in the template anyway)
rolls the Deployment. Limits and maxAdaptersInMemory are hot-applied by the server and
so are deliberately left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from kubetune.api import MODELSERVE, Kind, ModelServeSpec

from ..builders.meta import OwnerMeta
from ..builders.placement import place
from ..builders.pods import container_resources, container_security
from ..builders.storage_env import service_account_name, storage_endpoint, storage_env
from ..config import OperatorConfig
from . import naming
from .resolve import Resolution

CONFIG_DIR = "/etc/kubetune/serve"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CACHE_DIR = "/tmp/kubetune-serve"
SERVER_CONTAINER = "server"
PORT_NAME = "http"
RUN_AS_UID = 65532
RESTART_HASH_ANNOTATION = "kubetune.dev/restart-hash"


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


def server_config(spec: ModelServeSpec, config: OperatorConfig, adapters: list[Resolution]) -> dict:
    """The server's config.json: only resolved adapters, in spec order."""
    served = []
    for adapter in adapters:
        if adapter.resolved:
            entry = {"name": adapter.name, "uri": adapter.uri}
            if adapter.sha256:
                entry["sha256"] = adapter.sha256
            served.append(entry)
    return {
        "baseModel": spec.base_model.to_wire(),
        "adapters": served,
        "maxAdaptersInMemory": spec.max_adapters_in_memory,
        "limits": spec.limits.to_wire(),
        "storage": storage_settings(spec, config),
    }


def restart_hash(spec: ModelServeSpec, config: OperatorConfig) -> str:
    """Hash of the config.json parts the running server cannot apply in place."""
    document = {"baseModel": spec.base_model.to_wire(), "storage": storage_settings(spec, config)}
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_configmap(
    meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig, adapters: list[Resolution]
) -> dict:
    """Sorted, indented JSON so equal inputs give byte-equal data (no needless patches,
    no needless reload in the server, which compares the file's bytes)."""
    document = json.dumps(server_config(spec, config, adapters), sort_keys=True, indent=2)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.object_meta(naming.config_name(meta.name), naming.COMPONENT_SERVE_CONFIG),
        "data": {CONFIG_KEY: document + "\n"},
    }


def server_command(spec: ModelServeSpec) -> list[str]:
    return [
        "python",
        "-m",
        "kubetune.workers.serve",
        "--config",
        CONFIG_PATH,
        "--host",
        "0.0.0.0",
        "--port",
        str(spec.port),
        "--cache-dir",
        CACHE_DIR,
    ]


def _container(spec: ModelServeSpec, config: OperatorConfig) -> dict:
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *storage_env(spec.storage, config),
    ]
    return {
        "name": SERVER_CONTAINER,
        "image": spec.image or config.images.server,
        "imagePullPolicy": spec.image_pull_policy or config.images.pull_policy,
        "command": server_command(spec),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        # Ready once the base and every listed adapter reached Loaded or Failed (see the
        # server's app.py); /healthz answers from the first second, even while loading.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT_NAME},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": container_resources(spec),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def pod_template(meta: ServeMeta, spec: ModelServeSpec, config: OperatorConfig) -> dict:
    profile = config.spot_profile()
    capacity = "spot" if spec.resources.spot else "on-demand"
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, config)],
        "volumes": [
            {
                "name": "config",
                "configMap": {
                    "name": naming.config_name(meta.name),
                    "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
                },
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    account = service_account_name(spec.storage)
    if account:
        pod_spec["serviceAccountName"] = account
    place(pod_spec, spec, profile, capacity, capacity_field="spec.resources.spot")
    pod_labels = {**naming.labels(meta.name, naming.COMPONENT_SERVER)}
    pod_labels["kubetune.dev/capacity-type"] = capacity
    return {
        "metadata": {
            "labels": pod_labels,
            "annotations": {RESTART_HASH_ANNOTATION: restart_hash(spec, config)},
        },
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
            "ports": [
                {"name": PORT_NAME, "port": spec.port, "targetPort": PORT_NAME, "protocol": "TCP"}
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
