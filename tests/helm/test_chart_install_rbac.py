"""Least privilege as the real API server sees it: `kubectl auth can-i --as=<the chart's
ServiceAccount>` after a real `helm install`, in both modes.

The rendering tests check the rules the chart writes; only the real authorizer shows what
those rules add up to once bound (aggregation, cluster-wide bindings, defaults every
ServiceAccount gets). `can-i --list` for the chart's ServiceAccount, minus the list for a
ServiceAccount with no grants of its own, is exactly what the chart grants: it must equal
the least-privilege table, with no wildcard, and no read of Secrets. Releases are
installed paused (`replicaCount: 0`): RBAC needs no running operator.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from chart_install import RELEASE, Release, can_i_list, install, kubectl_resource, uninstall
from rbac_expectations import MUST_BE_REFUSED, NAMESPACED_RULES, NODE_RULES

pytestmark = pytest.mark.integration

PAUSED = {"replicaCount": 0}
SECRET_READS = [("get", "", "secrets"), ("list", "", "secrets"), ("watch", "", "secrets")]
# What a first reconcile of a FineTuneJob asks for (see test_chart_install): asked one by
# one where the exhaustive comparison of `can-i --list` would be slow to repeat per team.
RECONCILE = [("watch", "kubetune.dev", "finetunejobs"), ("patch", "kubetune.dev", "finetunejobs"),
             ("patch", "kubetune.dev", "finetunejobs/status"), ("create", "", "configmaps"),
             ("create", "", "pods"), ("watch", "", "pods"), ("create", "", "events"),
             ("create", "", "secrets")]


def expected_rows(table: dict) -> set[tuple]:
    return {(kubectl_resource(group, resource), "", "", verb)
            for (group, resource), verbs in table.items() for verb in verbs}


def granted(release: Release, namespace: str) -> set[tuple]:
    """What the chart adds, as can-i --list rows, beside what any ServiceAccount has."""
    baseline = can_i_list(release, namespace, f"system:serviceaccount:{release.namespace}:default")
    return can_i_list(release, namespace) - baseline


def answers(release: Release, checks: list[tuple[str, str, str]],
            namespace: str | None) -> dict[tuple[str, str, str], bool]:
    """can-i for each (verb, group, resource); `resource` may name a subresource."""
    def ask(check: tuple[str, str, str]) -> bool:
        verb, group, resource = check
        name, _, sub = resource.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        return release.can_i(verb, kubectl_resource(group, name), namespace, *extra)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(checks, pool.map(ask, checks)))


def needed(table: dict) -> list[tuple[str, str, str]]:
    return sorted((verb, group, resource) for (group, resource), verbs in table.items()
                  for verb in verbs)


def assert_no_wildcards(release: Release, namespace: str) -> None:
    rows = can_i_list(release, namespace)
    assert rows, "can-i --list answered nothing"
    chart_rows = granted(release, namespace)
    assert not [r for r in chart_rows if r[1]], "the chart grants no non-resource URLs"
    # The baseline's discovery URLs (/api/*) are the cluster's defaults, not the chart's;
    # no resource, resource name or verb of the whole list is a wildcard.
    assert not [r for r in rows if "*" in r[0] + r[2] + r[3]], sorted(rows)


def test_cluster_mode_grants_exactly_the_table(kube_cluster, kube_namespace, tmp_path) -> None:
    jobs = kube_cluster.namespace(f"{kube_namespace}-jobs")
    release = install(kube_cluster, kube_namespace, PAUSED, tmp_path, wait=False)
    try:
        for namespace in (jobs, kube_namespace):
            assert granted(release, namespace) == expected_rows(NAMESPACED_RULES | NODE_RULES)
        assert_no_wildcards(release, jobs)
        everywhere = needed(NAMESPACED_RULES) + needed(NODE_RULES)
        assert all(answers(release, everywhere, jobs).values())
        # Cluster mode watches every namespace: list and watch cluster-wide are granted.
        watches = [c for c in everywhere if c[0] in ("list", "watch")]
        assert all(answers(release, watches, None).values())
        for scope in (jobs, None):
            refused = answers(release, MUST_BE_REFUSED, scope)
            assert not [c for c, yes in refused.items() if yes], scope
    finally:
        uninstall(release, [jobs])
        kube_cluster.delete_namespace(jobs)


def test_namespaced_mode_grants_nothing_outside_its_namespaces(
        kube_cluster, kube_namespace, tmp_path) -> None:
    """Two teams, each with its own release named `kubetune` watching its own namespace:
    both install (cluster-scoped names carry the release namespace) and neither
    ServiceAccount can touch the other team's namespace, or any namespace cluster-wide."""
    second = kube_cluster.namespace(f"{kube_namespace}-op2")
    team_a, team_b = (kube_cluster.namespace(f"{kube_namespace}-{t}") for t in ("a", "b"))
    releases: list[Release] = []
    try:
        for ns, team in ((kube_namespace, team_a), (second, team_b)):
            values = {**PAUSED, "config": {"watchNamespaces": [team]}}
            releases.append(install(kube_cluster, ns, values, tmp_path, wait=False))
        for release, own, foreign in ((releases[0], team_a, team_b),
                                      (releases[1], team_b, team_a)):
            assert release.service_account.endswith(f":{RELEASE}")
            assert granted(release, own) == expected_rows(NAMESPACED_RULES | NODE_RULES)
            for namespace in (foreign, release.namespace):
                assert granted(release, namespace) == expected_rows(NODE_RULES), namespace
            assert_no_wildcards(release, own)
            assert all(answers(release, RECONCILE, own).values())
            assert not any(answers(release, RECONCILE, foreign).values())
            watches = [c for c in needed(NAMESPACED_RULES) if c[0] in ("list", "watch")]
            assert not any(answers(release, watches + SECRET_READS, None).values())
            # Nodes are cluster-scoped, read-only, in both modes.
            assert all(answers(release, needed(NODE_RULES), None).values())
    finally:
        for release in releases:
            uninstall(release, [team_a, team_b])
        for namespace in (team_a, team_b, second):
            kube_cluster.delete_namespace(namespace)
