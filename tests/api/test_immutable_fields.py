"""What a FineTuneJob trains on and writes to cannot change once it exists.

Changing the data, model, method, hyper-parameters or output of a running job would make
its checkpoints and adapter describe something else, so the CRD carries CEL transition
rules (`self == oldSelf`); only the API server sees the old object, so the models have no
twin of these. Operational settings (workers, spot budget) stay editable.
"""

from __future__ import annotations

import pytest
from crd_api import FTJ, STRICT, assert_refused_naming, collection, create, example, mutate

from kubetune.devenv.kubeapi import ApiError

IMMUTABLE = [
    ("spec.dataset.uri", "s3://ml-team-data/support/other.jsonl", "spec.dataset"),
    ("spec.method.lora.rank", 64, "spec.method"),
    ("spec.baseModel.uri", "s3://ml-team-models/base/another-model", "spec.baseModel"),
    ("spec.output.uri", "s3://elsewhere/adapters", "spec.output"),
    ("spec.training.learningRate", 0.001, "spec.training"),
]


def _put(api, namespace: str, body: dict, dry_run: bool = False) -> dict:
    path = f"{collection(FTJ, namespace)}/{body['metadata']['name']}"
    query = {**STRICT, "dryRun": "All"} if dry_run else STRICT
    return api.request("PUT", path, body, query=query)


def _get(api, namespace: str, name: str) -> dict:
    return api.request("GET", f"{collection(FTJ, namespace)}/{name}")


@pytest.mark.parametrize("path,value,field", IMMUTABLE, ids=[p for p, _, _ in IMMUTABLE])
def test_changing_what_a_job_trains_on_is_refused_on_update(
    kube_cluster, api_namespace, path, value, field
):
    api = kube_cluster.api
    name = "immutable-" + path.replace(".", "-").lower()
    old = create(api, api_namespace, example(FTJ, name))
    for dry_run in (True, False):
        with pytest.raises(ApiError) as refused:
            _put(api, api_namespace, mutate(old, path, value), dry_run)
        assert_refused_naming(refused.value, field)
        causes = refused.value.body["details"]["causes"]
        assert [c["field"] for c in causes] == [field], causes
        assert "is immutable" in refused.value.body["message"]
    current = _get(api, api_namespace, name)
    assert current["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]
    assert current["spec"] == old["spec"]


def test_operational_fields_may_change_on_update(kube_cluster, api_namespace):
    api = kube_cluster.api
    old = create(api, api_namespace, example(FTJ, "operational"))
    new = mutate(mutate(old, "spec.spot.maxRecoveries", 3), "spec.resources.workers", 4)
    updated = _put(api, api_namespace, new)
    assert updated["spec"]["spot"]["maxRecoveries"] == 3
    assert updated["spec"]["resources"]["workers"] == 4
    assert updated["metadata"]["generation"] == old["metadata"]["generation"] + 1
    assert _get(api, api_namespace, "operational")["spec"] == updated["spec"]
