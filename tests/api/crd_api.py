"""Helpers for tests that hand kubetune objects to the real kube-apiserver.

Requests carry `fieldValidation=Strict`, as `kubectl apply` sends by default, so an unknown
field is refused (HTTP 400) instead of silently pruned. A refusal must name the field in
the Status's causes and in its message, because that message is all a user sees.
"""

from __future__ import annotations

import pytest
from example_bodies import DELETE, FTJ, MS, example, mutate  # noqa: F401 (re-exported)

from kubetune.api import FINETUNEJOB, MODELSERVE, FineTuneJobSpec, ModelServeSpec
from kubetune.devenv.kubeapi import ApiError, KubeHttp

KINDS = {FTJ: FINETUNEJOB, MS: MODELSERVE}
MODEL = {FTJ: FineTuneJobSpec, MS: ModelServeSpec}
STRICT = {"fieldValidation": "Strict"}
DRY_RUN = {**STRICT, "dryRun": "All"}


def collection(kind: str, namespace: str) -> str:
    return f"/apis/{KINDS[kind].api_version}/namespaces/{namespace}/{KINDS[kind].plural}"


def create(api: KubeHttp, namespace: str, body: dict, dry_run: bool = False) -> dict:
    """POST the object; what the API server stored (or would store, for a dry run)."""
    return api.request("POST", collection(body["kind"], namespace), body,
                       query=DRY_RUN if dry_run else STRICT)


def refusal(api: KubeHttp, namespace: str, body: dict, dry_run: bool) -> ApiError:
    """The API server's refusal of a create; fails the test if it was accepted."""
    try:
        create(api, namespace, body, dry_run)
    except ApiError as exc:
        return exc
    pytest.fail(f"the API server accepted {body['kind']} {body['metadata'].get('name')!r}"
                f"{' (dry run)' if dry_run else ''}")


def message(error: ApiError) -> str:
    return error.body.get("message", "") if isinstance(error.body, dict) else str(error.body)


def cause_fields(error: ApiError) -> list[str]:
    details = (error.body.get("details") if isinstance(error.body, dict) else None) or {}
    return [c.get("field", "") for c in details.get("causes") or []]


def names_field(error: ApiError, field: str) -> bool:
    """Whether a refusal blames `field` (or a field under it) in its causes and message."""
    blamed = any(f == field or f.startswith((field + ".", field + "["))
                 for f in cause_fields(error))
    return blamed and field in message(error)


def assert_refused_naming(error: ApiError, field: str) -> None:
    """A 422 Invalid whose causes and message name the field."""
    assert error.status == 422, (error.status, message(error))
    assert names_field(error, field), (cause_fields(error), message(error))


def assert_unknown_field(error: ApiError, field: str) -> None:
    """A 400 strict decoding error: answered before validation, so it has no causes and
    names the field only in its message."""
    assert error.status == 400, (error.status, message(error))
    assert f'unknown field "{field}"' in message(error), message(error)


def stored_names(api: KubeHttp, namespace: str, kind: str) -> list[str]:
    """Names of the kind's objects in the namespace: a list avoids putting a name the API
    server refused (upper case, non-ASCII, 254 characters) into a URL."""
    items = api.request("GET", collection(kind, namespace)).get("items", [])
    return [item["metadata"]["name"] for item in items]
