"""Object-store settings as container env: endpoint, region, and credentials by reference.

Credentials only ever travel as `secretKeyRef`s (or as the pod's ServiceAccount for IRSA /
workload identity), so their values never appear in a manifest, a log line or an Event.
Every function takes the ObjectStore itself (a FineTuneJob's `spec.output`, a ModelServe's
`spec.storage`), so both kinds share them.
"""

from __future__ import annotations

from kubetune.api.common import ObjectStore

from ..config import OperatorConfig


def storage_endpoint(store: ObjectStore, config: OperatorConfig) -> str | None:
    return store.endpoint or config.storage.default_endpoint or None


def storage_env(store: ObjectStore, config: OperatorConfig) -> list[dict]:
    env = []
    endpoint = storage_endpoint(store, config)
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if store.region:
        env.append({"name": "AWS_REGION", "value": store.region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": store.region})
    credentials = store.credentials
    if credentials is not None and credentials.secret_ref is not None:
        ref = credentials.secret_ref
        for variable, key in (
            ("AWS_ACCESS_KEY_ID", ref.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", ref.secret_access_key_key),
        ):
            env.append(
                {"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}}
            )
    return env


def service_account_name(store: ObjectStore) -> str | None:
    """The ServiceAccount to run as for IRSA / workload identity, if the store names one."""
    credentials = store.credentials
    return credentials.service_account_name if credentials is not None else None
