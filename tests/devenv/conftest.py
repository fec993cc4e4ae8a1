"""Fixtures for the emulated API server tests: a running server with the project's CRDs,
a kubeconfig for it, a real-kubectl runner, a tiny HTTP client and a stand-in admission
object that follows the `admit(group, plural, obj, old)` protocol."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.devenv.apiserver import EmulatedApiServer, load_crds
from kubetune.devenv.tools import tool_path

FTJ_PATH = "/apis/kubetune.dev/v1alpha1/namespaces/default/finetunejobs"


def small_ftj(name: str = "demo", **labels: str) -> dict[str, Any]:
    """A small valid FineTuneJob."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "default", "labels": dict(labels)},
        "spec": {"baseModel": {"uri": "hf://org/name"},
                 "dataset": {"uri": "s3://bucket/data.jsonl"},
                 "output": {"uri": "s3://bucket/out"}},
    }


class StubAdmissionError(Exception):
    def __init__(self, message: str, causes: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.message, self.causes = message, causes


class StubAdmission:
    """Refuses a non-positive spec.training.learningRate; defaults spec.training.epochs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, bool]] = []

    def admit(self, group: str, plural: str, obj: dict, old: dict | None) -> dict:
        self.calls.append((group, plural, obj["metadata"]["name"], old is not None))
        training = obj.setdefault("spec", {}).setdefault("training", {})
        rate = training.get("learningRate", 1e-4)
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise StubAdmissionError(
                f"spec.training.learningRate: Invalid value: {rate}: must be > 0",
                [{"field": "spec.training.learningRate", "reason": "FieldValueInvalid",
                  "message": f"Invalid value: {rate}: must be > 0"}])
        training.setdefault("epochs", 1)
        return obj


@dataclass
class Reply:
    code: int
    body: Any
    headers: dict[str, str]


class Http:
    """Minimal JSON client, so tests see exact status codes and bodies."""

    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self, method: str, path: str, body: Any = None,
                 content_type: str = "application/json", accept: str | None = None) -> Reply:
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as resp:
                return Reply(resp.status, json.loads(resp.read() or b"null"), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, json.loads(exc.read() or b"null"), dict(exc.headers))


@pytest.fixture(scope="session")
def project_crds() -> list[dict]:
    return load_crds()


@pytest.fixture
def stub_admission() -> StubAdmission:
    return StubAdmission()


@pytest.fixture
def apiserver(project_crds, stub_admission):
    with EmulatedApiServer(crds=project_crds, admission=stub_admission) as server:
        yield server


@pytest.fixture
def http(apiserver) -> Http:
    return Http(apiserver.url)


@pytest.fixture
def kubeconfig(apiserver, tmp_path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kubectl(kubeconfig, tmp_path):
    """Run the real kubectl 1.37 against the emulator; returns the CompletedProcess."""
    binary = tool_path("kubectl")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"kubectl not installed at {binary}: run python -m kubetune.devenv.tools install")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), HOME=str(tmp_path / "home"))

    def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result
    return run
