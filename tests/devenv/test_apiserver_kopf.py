"""A tiny kopf operator against the emulated API server, logged in through the kubeconfig."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import FTJ_PATH, small_ftj

pytestmark = pytest.mark.integration

FINALIZER = "kubetune.dev/test-finalizer"


def _build_registry(deleted: list[str]):
    import kopf

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_) -> None:
        settings.scanning.disabled = True
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="kubetune.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kubetune.dev", key="last-handled-configuration")
        settings.watching.server_timeout = 10

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # Reads $KUBECONFIG at call time (the kubernetes client caches it at import time).
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("kubetune.dev", "v1alpha1", "finetunejobs", registry=registry)
    def created(spec, patch, logger, **_) -> None:
        patch.status["phase"] = "Scheduling"
        patch.status["observedGeneration"] = 1
        logger.info("scheduling %s", spec["baseModel"]["uri"])

    @kopf.on.delete("kubetune.dev", "v1alpha1", "finetunejobs", registry=registry)
    def removed(name, **_) -> None:
        deleted.append(name)

    return registry


def _wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def test_kopf_operator_patches_status_and_round_trips_finalizers(apiserver, http, kubeconfig,
                                                                  monkeypatch):
    import kopf

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    deleted: list[str] = []
    registry = _build_registry(deleted)
    stop_flag, ready_flag = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=registry, namespaces=["default"], standalone=True,
        stop_flag=stop_flag, ready_flag=ready_flag)), daemon=True)
    thread.start()
    try:
        assert ready_flag.wait(20), "kopf did not start"
        created = http("POST", FTJ_PATH, small_ftj("kopf-job")).body
        first_rv = int(created["metadata"]["resourceVersion"])

        def handled():
            obj = http("GET", f"{FTJ_PATH}/kopf-job").body
            return obj if (obj.get("status") or {}).get("phase") == "Scheduling" else None

        obj = _wait(handled, 30)
        assert int(obj["metadata"]["resourceVersion"]) > first_rv
        assert obj["status"]["observedGeneration"] == 1
        assert FINALIZER in obj["metadata"]["finalizers"]
        annotations = obj["metadata"]["annotations"]
        assert "kubetune.dev/last-handled-configuration" in annotations

        deleting = http("DELETE", f"{FTJ_PATH}/kopf-job").body
        assert deleting["metadata"]["deletionTimestamp"]
        _wait(lambda: http("GET", f"{FTJ_PATH}/kopf-job").code == 404, 30)
        assert deleted == ["kopf-job"]
    finally:
        stop_flag.set()
        thread.join(30)
    assert not thread.is_alive()
