"""A checker for the Kubernetes Pod Security Standard "restricted" (policy version latest).

The real PodSecurity admission of the embedded kube-apiserver judges the pods kubetune
creates in the integration tests (namespaces there enforce `restricted`). The pure unit
tests of the builders and the chart run without an API server, so they use this module:
it re-states the rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(baseline + restricted) as pure checks on a pod spec. It returns the violations rather
than raising, so a test can show all of them at once.

Not covered: rules read from pod annotations (legacy AppArmor/seccomp annotations); pods
with `spec.os.name: windows` are exempt from the Linux-only rules, as the standard says.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Volume types "restricted" allows (everything else, hostPath above all, is refused).
ALLOWED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
    "persistentVolumeClaim", "projected", "secret",
})
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_APPARMOR = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                                   "container_engine_t"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_POD_TEMPLATE_PATHS = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The PodSpec inside a Pod or any workload object that carries a pod template."""
    path = _POD_TEMPLATE_PATHS.get(obj.get("kind", ""))
    if path is None:
        raise ValueError(f"{obj.get('kind')!r} carries no pod template")
    node: Any = obj
    for key in path:
        node = node[key]
    return node


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in _CONTAINER_LISTS:
        for container in spec.get(field) or []:
            yield f"{field}[{container.get('name', '?')}]", container


def _effective(pod_sc: Mapping[str, Any], ctr_sc: Mapping[str, Any], key: str) -> Any:
    """A container setting wins over the pod-level one, as the kubelet applies them."""
    return ctr_sc[key] if key in ctr_sc else pod_sc.get(key)


def _check_pod_level(spec: Mapping[str, Any], linux: bool) -> list[str]:
    out: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"spec.{flag} must not be true")
    for vol in spec.get("volumes") or []:
        kinds = [k for k in vol if k != "name"]
        bad = [k for k in kinds if k not in ALLOWED_VOLUME_TYPES]
        if bad:
            out.append(f"volume {vol.get('name')!r} uses forbidden type {', '.join(bad)}")
    pod_sc = spec.get("securityContext") or {}
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess must not be true")
    if linux:
        if pod_sc.get("runAsUser") == 0:
            out.append("spec.securityContext.runAsUser must not be 0")
        if pod_sc.get("runAsNonRoot") is False:
            out.append("spec.securityContext.runAsNonRoot must not be false")
        out += _check_profiles("spec.securityContext", pod_sc)
    return out


def _check_profiles(where: str, sc: Mapping[str, Any]) -> list[str]:
    """seccomp / AppArmor / SELinux values that are refused wherever they are set."""
    out: list[str] = []
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in ALLOWED_SECCOMP:
        out.append(f"{where}.seccompProfile.type {seccomp!r} is not RuntimeDefault or Localhost")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in ALLOWED_APPARMOR:
        out.append(f"{where}.appArmorProfile.type {apparmor!r} is not allowed")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type {selinux['type']!r} is not allowed")
    for key in ("user", "role"):
        if selinux.get(key):
            out.append(f"{where}.seLinuxOptions.{key} must not be set")
    return out


def _check_container(name: str, ctr: Mapping[str, Any], pod_sc: Mapping[str, Any],
                     linux: bool) -> list[str]:
    out: list[str] = []
    sc = ctr.get("securityContext") or {}
    where = f"{name}.securityContext"
    if sc.get("privileged"):
        out.append(f"{where}.privileged must not be true")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{where}.windowsOptions.hostProcess must not be true")
    if sc.get("procMount", "Default") != "Default":
        out.append(f"{where}.procMount must be Default")
    for port in ctr.get("ports") or []:
        if port.get("hostPort"):
            out.append(f"{name} uses hostPort {port['hostPort']}")
    if not linux:
        return out
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}.allowPrivilegeEscalation must be false")
    if _effective(pod_sc, sc, "runAsNonRoot") is not True:
        out.append(f"{where}.runAsNonRoot must be true (here or at pod level)")
    if sc.get("runAsUser") == 0:
        out.append(f"{where}.runAsUser must not be 0")
    seccomp = _effective(pod_sc, sc, "seccompProfile") or {}
    if seccomp.get("type") not in ALLOWED_SECCOMP:
        out.append(f"{where}.seccompProfile must be RuntimeDefault or Localhost "
                   "(here or at pod level)")
    out += _check_profiles(where, sc)
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append(f"{where}.capabilities.drop must include ALL")
    added = set(caps.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
    if added:
        out.append(f"{where}.capabilities.add has forbidden {', '.join(sorted(added))}")
    return out


def check_restricted(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every way `pod_spec` (a PodSpec dict) breaks "restricted"; empty when it complies."""
    linux = (pod_spec.get("os") or {}).get("name", "linux") != "windows"
    pod_sc = pod_spec.get("securityContext") or {}
    violations = _check_pod_level(pod_spec, linux)
    containers = list(_containers(pod_spec))
    if not containers:
        violations.append("pod has no containers")
    for name, ctr in containers:
        violations += _check_container(name, ctr, pod_sc, linux)
    return violations
