"""The "restricted" checker itself: a compliant pod passes, each kind of violation is named."""

from __future__ import annotations

import copy

import pytest

from kubetune.devenv.pod_security import check_restricted, pod_spec_of

GOOD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{
        "name": "main",
        "image": "busybox",
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }],
    "volumes": [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "tmp", "emptyDir": {}}],
}


def mutate(path: str, value: object) -> dict:
    """GOOD with the dotted `path` set to `value` (`containers.0.x` indexes lists)."""
    spec = copy.deepcopy(GOOD)
    node: dict | list = spec
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


VIOLATIONS = [
    ("privileged", "containers.0.securityContext.privileged", True, "privileged"),
    ("run as root user", "containers.0.securityContext.runAsUser", 0, "runAsUser"),
    ("pod runs as root", "securityContext.runAsUser", 0, "runAsUser"),
    ("runAsNonRoot false", "containers.0.securityContext.runAsNonRoot", False, "runAsNonRoot"),
    ("runAsNonRoot missing", "securityContext.runAsNonRoot", None, "runAsNonRoot"),
    ("missing seccomp", "securityContext.seccompProfile", None, "seccompProfile"),
    ("unconfined seccomp", "securityContext.seccompProfile", {"type": "Unconfined"},
     "seccompProfile"),
    ("hostPath", "volumes.1", {"name": "h", "hostPath": {"path": "/"}}, "hostPath"),
    ("added capability", "containers.0.securityContext.capabilities",
     {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "SYS_ADMIN"),
    ("capabilities not dropped", "containers.0.securityContext.capabilities", {},
     "drop must include ALL"),
    ("privilege escalation", "containers.0.securityContext.allowPrivilegeEscalation", True,
     "allowPrivilegeEscalation"),
    ("privilege escalation unset", "containers.0.securityContext.allowPrivilegeEscalation",
     None, "allowPrivilegeEscalation"),
    ("hostNetwork", "hostNetwork", True, "hostNetwork"),
    ("hostPID", "hostPID", True, "hostPID"),
    ("hostPort", "containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort"),
    ("unsafe sysctl", "securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}],
     "kernel.msgmax"),
    ("selinux user", "containers.0.securityContext.seLinuxOptions", {"user": "root"},
     "seLinuxOptions.user"),
    ("procMount", "containers.0.securityContext.procMount", "Unmasked", "procMount"),
    ("unconfined apparmor", "containers.0.securityContext.appArmorProfile",
     {"type": "Unconfined"}, "appArmorProfile"),
]


def test_compliant_pod_passes() -> None:
    assert check_restricted(GOOD) == []


def test_container_level_settings_are_enough() -> None:
    spec = mutate("securityContext", None)
    spec["containers"][0]["securityContext"].update(
        runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})
    assert check_restricted(spec) == []


@pytest.mark.parametrize(("path", "value", "named"), [v[1:] for v in VIOLATIONS],
                         ids=[v[0] for v in VIOLATIONS])
def test_each_violation_is_named(path: str, value: object, named: str) -> None:
    """Only the mutated setting is reported (once per level it is wrong at)."""
    violations = check_restricted(mutate(path, value))
    assert violations
    assert all(named in v for v in violations), violations


def test_init_and_ephemeral_containers_are_checked() -> None:
    spec = copy.deepcopy(GOOD)
    spec["initContainers"] = [{"name": "init", "securityContext": {"privileged": True}}]
    spec["ephemeralContainers"] = [{"name": "debug"}]
    violations = check_restricted(spec)
    assert any(v.startswith("initContainers[init]") and "privileged" in v for v in violations)
    assert any(v.startswith("ephemeralContainers[debug]") for v in violations)


def test_net_bind_service_is_the_one_allowed_capability() -> None:
    caps = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert check_restricted(mutate("containers.0.securityContext.capabilities", caps)) == []


def test_windows_pods_skip_linux_only_rules() -> None:
    spec = mutate("securityContext", None)
    spec["os"] = {"name": "windows"}
    spec["containers"][0]["securityContext"] = {}
    assert check_restricted(spec) == []


def test_pod_spec_of_reaches_into_workloads() -> None:
    deployment = {"kind": "Deployment", "spec": {"template": {"spec": GOOD}}}
    cronjob = {"kind": "CronJob",
               "spec": {"jobTemplate": {"spec": {"template": {"spec": GOOD}}}}}
    assert pod_spec_of(deployment) is GOOD
    assert pod_spec_of(cronjob) is GOOD
    with pytest.raises(ValueError):
        pod_spec_of({"kind": "ConfigMap"})
