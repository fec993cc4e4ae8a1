"""Installing the chart for real: `helm install` into the session's control plane, the
operator pod run by the node agent, and `kubectl auth can-i` answers from the API server.

Helpers only; the tests are in test_chart_install*.py. Every tool runs with the admin
kubeconfig passed in its environment, never through this process's own environment,
so no other test sees it.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chart_render import CHART

from kubetune.devenv.kubeapi import ApiError
from kubetune.devenv.tools import tool_path

RELEASE = "kubetune"  # the README's release name: fullname and ServiceAccount are `kubetune`
FTJ_API = "/apis/kubetune.dev/v1alpha1"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tool(name: str, *args: str, kubeconfig: Path, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real helm or kubectl against the cluster of `kubeconfig`."""
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(kubeconfig.parent)}
    result = subprocess.run([str(tool_path(name)), *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Release:
    """One installed release: where, under which ServiceAccount, and its operator pod."""

    cluster: object  # the kube_cluster fixture
    namespace: str
    install_seconds: float = 0.0

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{RELEASE}"

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return tool("kubectl", *args, kubeconfig=self.cluster.kubeconfig, check=check)

    def operator_pod(self) -> dict | None:
        pods = self.cluster.api.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"app.kubernetes.io/instance={RELEASE},"
                                    "app.kubernetes.io/component=operator"})["items"]
        return pods[0] if len(pods) == 1 else None

    def operator_log(self) -> str:
        return self.kubectl("-n", self.namespace, "logs", f"deployment/{RELEASE}").stdout

    def can_i(self, verb: str, resource: str, namespace: str | None, *extra: str) -> bool:
        """The API server's answer for the operator's ServiceAccount (exit 0 yes, 1 no)."""
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        result = self.kubectl("auth", "can-i", verb, resource, *scope, *extra,
                              f"--as={self.service_account}", check=False)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0


def install(cluster, namespace: str, values: dict, tmp_path: Path, wait: bool) -> Release:
    """`helm install --skip-crds` (the session cluster already has the CRDs, created by
    the fixture from crds/; see docs/crd-upgrades.md for what Helm 4 does otherwise)."""
    values_file = tmp_path / f"values-{namespace}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    args = ["install", RELEASE, str(CHART), "--namespace", namespace, "--skip-crds",
            "-f", str(values_file)]
    if wait:
        args += ["--wait", "--timeout", "120s"]
    result = tool("helm", *args, kubeconfig=cluster.kubeconfig, timeout=150)
    assert "STATUS: deployed" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr  # no admission warnings
    return Release(cluster, namespace, time.monotonic() - started)


def uninstall(release: Release, job_namespaces: list[str]) -> None:
    """Release the jobs first (as an admin: the operator may already be gone or refused),
    so that their namespaces are not held by the operator's finalizer."""
    api = release.cluster.api
    for ns in job_namespaces:
        for job in api.request("GET", f"{FTJ_API}/namespaces/{ns}/finetunejobs")["items"]:
            path = f"{FTJ_API}/namespaces/{ns}/finetunejobs/{job['metadata']['name']}"
            with contextlib.suppress(ApiError):
                api.request("PATCH", path, {"metadata": {"finalizers": None}},
                            content_type="application/merge-patch+json")
                api.delete_path(path)
    tool("helm", "uninstall", RELEASE, "--namespace", release.namespace,
         kubeconfig=release.cluster.kubeconfig, check=False)


_COLUMNS = ("Resources", "Non-Resource URLs", "Resource Names", "Verbs")


def can_i_list(release: Release, namespace: str, subject: str | None = None) -> set[tuple]:
    """`kubectl auth can-i --list` as (resource, non-resource URL, names, verb) rows."""
    out = release.kubectl("auth", "can-i", "--list", "-n", namespace,
                          f"--as={subject or release.service_account}").stdout
    header, *lines = [line for line in out.splitlines() if line.strip()]
    starts = [header.index(name) for name in _COLUMNS]
    rows = set()
    for line in lines:
        cells = [line[a:b].strip().removeprefix("[").removesuffix("]")
                 for a, b in zip(starts, [*starts[1:], None])]
        for verb in re.findall(r"[^\[\]\s]+", cells[3]):
            rows.add((cells[0], cells[1], cells[2], verb))
    return rows


def kubectl_resource(group: str, resource: str) -> str:
    """How can-i --list names a resource: `pods`, `deployments.apps`, `x.g/status`."""
    name, _, sub = resource.partition("/")
    qualified = f"{name}.{group}" if group else name
    return f"{qualified}/{sub}" if sub else qualified
