"""`api_errors` and `child_fields` over the API server's own answers: the Status bodies
in api_answers.json were recorded from kube-apiserver v1.37.2 (the live test
`tests/operator_integration/test_api_answers.py` keeps them true). For each: what kind
of answer it is, whether it is permanent, and which spec field of a FineTuneJob (whose
head pod it was) or a ModelServe (whose Deployment it was) it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.operator import api_errors
from kubetune.operator.api_errors import classify, classify_error, classify_message, retry_delay
from kubetune.operator.child_fields import FINETUNEJOB, MODELSERVE, describe, spec_field
from kubetune.operator.kube import KubeError

ANSWERS = json.loads((Path(__file__).parent / "api_answers.json").read_text())

# case -> (kind, cause, permanent, the spec field named, the owner, the child's kind)
EXPECTED = {
    "pod-nodeselector-key": ("refused", "Invalid", True, "spec.resources.nodeSelector",
                             FINETUNEJOB, "Pod"),
    "pod-nodeselector-value-64": ("refused", "Invalid", True, "spec.resources.nodeSelector",
                                  FINETUNEJOB, "Pod"),
    "pod-toleration-exists-with-value": ("refused", "Invalid", True,
                                         "spec.resources.tolerations", FINETUNEJOB, "Pod"),
    "pod-affinity-operator": ("refused", "Invalid", True, "spec.resources.affinity",
                              FINETUNEJOB, "Pod"),
    "pod-secret-key": ("refused", "Invalid", True, "spec.output.credentials.secretRef",
                       FINETUNEJOB, "Pod"),
    "pod-gpu-resource-name": ("refused", "Invalid", True, "spec.resources.gpuResourceName",
                              FINETUNEJOB, "Pod"),
    "pod-service-account-missing": ("refused", "ServiceAccountMissing", True,
                                    "spec.output.credentials.serviceAccountName",
                                    FINETUNEJOB, "Pod"),
    "pod-priority-class-missing": ("refused", "PriorityClassMissing", True,
                                   "spec.resources.priorityClassName", FINETUNEJOB, "Pod"),
    "pod-security-escalation": ("refused", "PodSecurity", True, None, FINETUNEJOB, "Pod"),
    "pod-quota-cpu": ("refused", "QuotaExceeded", False, "spec.resources.cpu",
                      FINETUNEJOB, "Pod"),
    "configmap-quota-count": ("refused", "QuotaExceeded", False, None, FINETUNEJOB,
                              "ConfigMap"),
    "pod-limitrange-cpu": ("refused", "LimitRange", True, "spec.resources.cpu",
                           FINETUNEJOB, "Pod"),
    "pod-unknown-field-strict": ("refused", "BadRequest", True, None, FINETUNEJOB, "Pod"),
    "pod-namespace-missing": ("refused", "NamespaceMissing", True, None, FINETUNEJOB, "Pod"),
    "configmap-exists": ("exists", "AlreadyExists", False, None, FINETUNEJOB, "ConfigMap"),
    "configmap-conflict": ("transient", "Conflict", False, None, FINETUNEJOB, "ConfigMap"),
    "deployment-template-nodeselector": ("refused", "Invalid", True,
                                         "spec.resources.nodeSelector", MODELSERVE,
                                         "Deployment"),
}


def test_every_recorded_answer_has_an_expectation():
    assert sorted(ANSWERS) == sorted(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_recorded_answers_are_classified_and_name_the_spec_field(case):
    kind, cause, permanent, field, owner, child_kind = EXPECTED[case]
    answer = ANSWERS[case]
    status = answer["status"]
    verdict = classify(answer["code"], status["message"], status["reason"], status.get("details"))
    assert (verdict.kind, verdict.cause, verdict.permanent) == (kind, cause, permanent)
    assert spec_field(owner, child_kind, verdict) == field
    # Through KubeError, as the operator's client raises it from the raw body.
    error = KubeError(answer["code"], status["message"], status["reason"], status.get("details"))
    assert classify_error(error) == verdict


def test_the_same_answers_as_a_pods_of_a_modelserve_name_its_own_fields():
    def field(case):
        status = ANSWERS[case]["status"]
        verdict = classify(ANSWERS[case]["code"], status["message"], status["reason"],
                           status.get("details"))
        return spec_field(MODELSERVE, "Pod", verdict)

    assert field("pod-service-account-missing") == "spec.storage.credentials.serviceAccountName"
    assert field("pod-secret-key") == "spec.storage.credentials.secretRef"
    assert field("pod-quota-cpu") == "spec.resources.cpu"
    assert field("pod-nodeselector-key") == "spec.resources.nodeSelector"


@pytest.mark.parametrize("status, reason, kind", [
    (429, "TooManyRequests", "transient"), (500, "InternalError", "transient"),
    (503, "ServiceUnavailable", "transient"), (504, "Timeout", "transient"),
    (401, "Unauthorized", "transient"), (408, "Timeout", "transient"),
    (403, "Forbidden", "refused"), (410, "Gone", "refused"), (405, "MethodNotAllowed", "refused"),
])
def test_status_codes(status, reason, kind):
    assert classify(status, "some message", reason).kind == kind


def test_connection_errors_and_timeouts_are_transient():
    import urllib3

    for exc in (urllib3.exceptions.MaxRetryError(None, "/", "refused"),
                urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"),
                ConnectionResetError(), TimeoutError()):
        assert classify_error(exc).kind == "transient", exc


def test_rbac_forbidden_is_permanent_without_a_spec_field():
    verdict = classify(403, 'pods is forbidden: User "system:serviceaccount:k:op" cannot '
                            'create resource "pods" in API group "" in the namespace "ml"')
    assert (verdict.cause, verdict.permanent, verdict.fields) == ("Forbidden", True, ())
    assert classify(403, 'unable to create new content in namespace ml because it is being '
                         'terminated').cause == "NamespaceTerminating"


def test_a_quota_whose_status_is_not_counted_yet_waits_too():
    verdict = classify(403, 'pods "j-head" is forbidden: status unknown for quota: small, '
                            'resource: requests.cpu')
    assert verdict.waits


def test_quota_messages_name_the_resources_and_their_spec_fields():
    missing = classify(403, 'pods "j-head" is forbidden: failed quota: q: must specify '
                            'limits.ephemeral-storage,requests.ephemeral-storage')
    assert missing.waits and missing.resources == ("limits.ephemeral-storage",
                                                   "requests.ephemeral-storage")
    for requested, owner, field in (
            ("requests.memory=48Gi", FINETUNEJOB, "spec.resources.memory"),
            ("pods=1", FINETUNEJOB, "spec.resources.workers"),
            ("count/pods=1", MODELSERVE, "spec.replicas"),
            ("requests.nvidia.com/gpu=1", FINETUNEJOB, "spec.resources.gpusPerWorker")):
        verdict = classify(403, f'pods "x" is forbidden: exceeded quota: q, requested: '
                                f'{requested}, used: {requested}, limited: {requested}')
        assert spec_field(owner, "Pod", verdict) == field, requested


def test_a_deployments_replica_failure_message_is_classified_by_its_text():
    sa = classify_message('pods "s-serve-7d9" is forbidden: error looking up service account '
                          'ml/model-serve-irsa: serviceaccount "model-serve-irsa" not found')
    assert sa.cause == "ServiceAccountMissing" and sa.permanent
    assert spec_field(MODELSERVE, "Pod", sa) == "spec.storage.credentials.serviceAccountName"
    invalid = classify_message('Pod "s-serve-7d9" is invalid: spec.nodeSelector: Invalid '
                               'value: "bad key!": name part must consist of ...')
    assert invalid.cause == "Invalid" and invalid.fields == ("spec.nodeSelector",)
    assert classify_message(ANSWERS["pod-quota-cpu"]["status"]["message"]).waits


def test_the_message_names_the_field_and_quotes_the_api_server():
    status = ANSWERS["pod-service-account-missing"]["status"]
    verdict = classify(403, status["message"], status["reason"])
    pod = {"kind": "Pod", "metadata": {"name": "j-head"}}
    field, message = describe(FINETUNEJOB, pod, verdict)
    assert message.startswith("spec.output.credentials.serviceAccountName: Pod j-head refused "
                              "(ServiceAccountMissing, HTTP 403): pods \"answers-head\" is")
    status = ANSWERS["pod-security-escalation"]["status"]
    field, message = describe(FINETUNEJOB, pod, classify(403, status["message"]))
    assert field is None and message.startswith("Pod j-head refused (PodSecurity, HTTP 403): ")


def test_retry_delays_double_up_to_each_classes_cap():
    missing = classify(403, "error looking up service account ns/sa")
    assert [retry_delay(missing, n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    invalid = classify(422, "is invalid", "Invalid")
    assert [retry_delay(invalid, n) for n in (1, 2, 6, 7, 20)] == [5, 10, 160, 300, 300]
    transient = classify(503, "unavailable")
    assert [retry_delay(transient, n) for n in (1, 2, 7, 8)] == [1, 2, 60, 60]
    assert retry_delay(classify(403, "exceeded quota: q"), 10) == 30
    assert api_errors.retry_delay(classify(403, "violates PodSecurity"), 10) == 120
