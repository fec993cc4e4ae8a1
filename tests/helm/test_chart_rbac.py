"""RBAC as rendered: exact verbs and resources, no wildcards, both modes; on Secrets only
`create` (each multi-worker job's Ray token), never a read, a change or a delete.

Besides comparing the rules with the documented least-privilege table, a small RBAC
evaluator answers "can the operator do X?" the way the API server's authorizer would for
non-wildcard rules, so the tests also state which requests must be refused.
"""

from __future__ import annotations

import pytest
import yaml
from chart_render import CHART, NAMESPACE, SCENARIOS, helm, only, render
from rbac_expectations import MUST_BE_REFUSED, NAMESPACED_RULES, NODE_RULES

from kubetune.devenv.pod_security import pod_spec_of

pytestmark = pytest.mark.integration

RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
CLUSTER_SCOPED = f"kt-kubetune-{NAMESPACE}"  # release kt in kubetune-system


def rule_table(role: dict) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def allowed(roles: list[dict], verb: str, group: str, resource: str) -> bool:
    """Whether any rule grants the request (no wildcards exist, asserted elsewhere)."""
    return any(verb in rule["verbs"] and group in rule["apiGroups"]
               and resource in rule["resources"] for role in roles for rule in role["rules"])


def walk_strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [k, *walk_strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return [node] if isinstance(node, str) else []


def bindings_subject(binding: dict) -> tuple[str, str]:
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    return subject["name"], subject["namespace"]


@pytest.mark.parametrize("scenario_name", SCENARIOS)
def test_no_wildcards_and_only_create_on_secrets(scenario_name: str) -> None:
    rbac = [d for d in render(scenario_name) if d["kind"] in RBAC_KINDS]
    assert rbac, "the chart renders RBAC by default"
    for doc in rbac:
        strings = walk_strings(doc.get("rules", []))
        assert not [s for s in strings if "*" in s], doc["metadata"]["name"]
        for rule in doc.get("rules", []):
            if "secrets" in rule["resources"]:
                assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"]
                assert rule["verbs"] == ["create"], doc["metadata"]["name"]
    roles = [d for d in rbac if d["kind"] in ("Role", "ClusterRole")]
    assert allowed(roles, "create", "", "secrets")
    for verb, group, resource in MUST_BE_REFUSED:
        assert not allowed(roles, verb, group, resource), (verb, group, resource)


def test_cluster_wide_mode() -> None:
    docs = render("default")
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    operator_role = only(docs, "ClusterRole", CLUSTER_SCOPED)
    nodes_role = only(docs, "ClusterRole", f"{CLUSTER_SCOPED}-nodes")
    assert rule_table(operator_role) == NAMESPACED_RULES
    assert rule_table(nodes_role) == NODE_RULES
    sa = only(docs, "ServiceAccount")["metadata"]["name"]
    for name in (CLUSTER_SCOPED, f"{CLUSTER_SCOPED}-nodes"):
        binding = only(docs, "ClusterRoleBinding", name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "ClusterRole", "name": name}
        assert bindings_subject(binding) == (sa, NAMESPACE)
    args = pod_spec_of(only(docs, "Deployment"))["containers"][0]["args"]
    assert "--all-namespaces" in args
    assert not [a for a in args if a.startswith("--namespace")]


def test_namespaced_mode_has_a_role_per_watched_namespace() -> None:
    docs = render("namespaced")
    sa = only(docs, "ServiceAccount")["metadata"]["name"]
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        assert rule_table(role) == NAMESPACED_RULES
        assert bindings[ns]["roleRef"]["kind"] == "Role"
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings_subject(bindings[ns]) == (sa, NAMESPACE)
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [rule_table(r) for r in cluster_roles] == [NODE_RULES]
    assert len([d for d in docs if d["kind"] == "ClusterRoleBinding"]) == 1
    args = pod_spec_of(only(docs, "Deployment"))["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args


def test_custom_service_account_name_is_bound() -> None:
    docs = render("custom-provider")
    sa = only(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "kubetune"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam")
    for binding in (d for d in docs if d["kind"].endswith("Binding")):
        assert bindings_subject(binding) == ("kubetune", NAMESPACE)
    assert pod_spec_of(only(docs, "Deployment"))["serviceAccountName"] == "kubetune"


def test_cluster_scoped_names_carry_the_release_namespace() -> None:
    """One release per team, all named `kubetune`: their ClusterRoles must not collide
    (Helm refuses to adopt another release's object), while namespaced names stay short."""
    def cluster_scoped(namespace: str) -> set[str]:
        out = helm("template", "kubetune", str(CHART), "--namespace", namespace,
                   "--set", "config.watchNamespaces={team-a}").stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        assert only(docs, "Role")["metadata"]["name"] == "kubetune"
        return {d["metadata"]["name"] for d in docs if d["kind"].startswith("Cluster")}

    first, second = cluster_scoped("ops-a"), cluster_scoped("ops-b")
    assert first == {"kubetune-ops-a-nodes"}
    assert second == {"kubetune-ops-b-nodes"}
