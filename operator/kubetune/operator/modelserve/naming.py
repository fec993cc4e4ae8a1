"""Deterministic names and labels of a ModelServe's children.

Reuses `naming.child_name` (DNS-1035 names, hashed when a name must be shortened) so a
ModelServe and a FineTuneJob of the same name never produce clashing rules, only
different suffixes. The Deployment, Service and PodDisruptionBudget share one name
because they describe one thing: the serving replicas.
"""

from __future__ import annotations

from ..naming import (
    APP_NAME,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    child_name,
    label_value,
)

COMPONENT_SERVER = "server"
COMPONENT_SERVE_CONFIG = "serve-config"
LABEL_MODELSERVE = "kubetune.dev/modelserve"


def server_name(serve: str) -> str:
    """Name of the Deployment, its Service and its PodDisruptionBudget."""
    return child_name(serve, "serve")


def config_name(serve: str) -> str:
    return child_name(serve, "serve-config")


def selector(serve: str) -> dict[str, str]:
    """Selects the server pods of one ModelServe (Deployment, Service and PDB selector).

    Kept to two labels that never change, because a Deployment's selector is immutable."""
    return {LABEL_MODELSERVE: label_value(serve), LABEL_COMPONENT: COMPONENT_SERVER}


def labels(serve: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(serve),
        LABEL_MANAGED_BY: APP_NAME,
        LABEL_MODELSERVE: label_value(serve),
        LABEL_COMPONENT: component,
    }


def owned_selector(serve: str) -> str:
    """Label selector string listing every child of one ModelServe."""
    return f"{LABEL_MODELSERVE}={label_value(serve)}"
