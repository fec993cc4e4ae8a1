"""A checker for the Pod Security Standard "restricted" profile (Kubernetes docs,
pod-security-standards), used to test every pod the builders produce."""

from __future__ import annotations

ALLOWED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict) -> list[str]:
    """Every rule of the restricted profile the pod breaks (empty when it complies)."""
    spec = pod.get("spec") or {}
    pod_security = spec.get("securityContext") or {}
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"spec.{flag}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        name = container["name"]
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        seccomp = (security.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ALLOWED_SECCOMP:
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems
