"""The operator's least-privilege table, shared by the rendered-RBAC tests and the
install tests that ask the real API server (`kubectl auth can-i`).

One table, so the chart's rules, the rendering tests and the real authorizer's answers
cannot drift apart: a verb added to the chart must be added here, with a reason.
"""

from __future__ import annotations

CRUD = {"get", "list", "watch", "create", "patch", "update", "delete"}
# (apiGroup, resource) -> verbs, for namespaced objects.
NAMESPACED_RULES = {
    ("kubetune.dev", "finetunejobs"): {"get", "list", "watch", "patch", "update"},
    ("kubetune.dev", "modelserves"): {"get", "list", "watch", "patch", "update"},
    ("kubetune.dev", "finetunejobs/status"): {"get", "patch", "update"},
    ("kubetune.dev", "modelserves/status"): {"get", "patch", "update"},
    ("kubetune.dev", "finetunejobs/finalizers"): {"update"},
    ("kubetune.dev", "modelserves/finalizers"): {"update"},
    ("", "pods"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): CRUD,
    ("", "configmaps"): CRUD,
    ("", "events"): {"create", "patch"},
    # Only create: each multi-worker job's Ray token; owner references delete it.
    ("", "secrets"): {"create"},
    ("apps", "deployments"): CRUD,
    ("policy", "poddisruptionbudgets"): CRUD,
}
# Cluster-scoped, read-only: spot-interruption taints and node loss.
NODE_RULES = {("", "nodes"): {"get", "list", "watch"}}
MUST_BE_REFUSED = [
    ("get", "", "secrets"), ("list", "", "secrets"), ("watch", "", "secrets"),
    ("update", "", "secrets"), ("patch", "", "secrets"), ("delete", "", "secrets"),
    ("deletecollection", "", "secrets"),
    ("create", "kubetune.dev", "finetunejobs"), ("delete", "kubetune.dev", "modelserves"),
    ("update", "", "nodes"), ("patch", "", "nodes"), ("delete", "", "nodes"),
    ("update", "", "pods"), ("create", "", "pods/exec"), ("get", "", "pods/log"),
    ("create", "rbac.authorization.k8s.io", "roles"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("create", "batch", "jobs"), ("get", "", "serviceaccounts"),
]
