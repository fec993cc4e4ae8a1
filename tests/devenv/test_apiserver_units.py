"""Pure parts of the emulated API server: selectors, patches, pruning, tables, routes,
and the store's write rules without HTTP."""

from __future__ import annotations

import datetime

import pytest

from kubetune.devenv.apiserver_errors import ApiError
from kubetune.devenv.apiserver_patch import (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH,
                                             apply_patch, merge_patch, strategic_merge)
from kubetune.devenv.apiserver_registry import ResourceType, resource_types_from_crd
from kubetune.devenv.apiserver_routes import Route, parse_resource_path
from kubetune.devenv.apiserver_schema import prune
from kubetune.devenv.apiserver_selectors import build_predicate, parse_label_selector
from kubetune.devenv.apiserver_store import ObjectStore
from kubetune.devenv.apiserver_tables import eval_json_path, human_age, render_table


def _obj(labels=None, **fields):
    return {"metadata": {"name": "x", "namespace": "ns", "labels": labels or {}}, **fields}


@pytest.mark.parametrize("selector, labels, expected", [
    ("app=a", {"app": "a"}, True),
    ("app==a", {"app": "b"}, False),
    ("app!=a", {}, True),
    ("app!=a", {"app": "a"}, False),
    ("env in (prod, dev)", {"env": "dev"}, True),
    ("env in (prod,dev)", {"env": "qa"}, False),
    ("env notin (prod)", {"env": "qa"}, True),
    ("env notin (prod)", {"env": "prod"}, False),
    ("spot", {"spot": ""}, True),
    ("!spot", {"spot": "1"}, False),
    ("!spot", {}, True),
    ("app=a,env in (x,y),!gpu", {"app": "a", "env": "y"}, True),
    ("app=a,env in (x,y),!gpu", {"app": "a", "env": "y", "gpu": "1"}, False),
    ("app.kubernetes.io/instance=j1", {"app.kubernetes.io/instance": "j1"}, True),
])
def test_label_selectors(selector, labels, expected):
    assert build_predicate(selector, None)(_obj(labels)) is expected


def test_label_selector_syntax_error_is_bad_request():
    with pytest.raises(ApiError) as info:
        parse_label_selector("app in a,b")
    assert info.value.code == 400 and "labelSelector" in info.value.message


@pytest.mark.parametrize("selector, expected", [
    ("metadata.name=x", True), ("metadata.name!=x", False), ("metadata.namespace==ns", True),
    ("status.phase=Running", True), ("status.phase=Pending", False),
    ("spec.nodeName=", True), ("spec.nodeName!=", False),
    ("metadata.name=x,status.phase=Running", True),
])
def test_field_selectors(selector, expected):
    assert build_predicate(None, selector)(_obj(status={"phase": "Running"})) is expected


def test_merge_patch_deletes_nulls_and_replaces_lists():
    old = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(old, {"a": {"b": None, "d": 3}, "l": [3]}) == {"a": {"c": 2, "d": 3},
                                                                     "l": [3]}
    assert old == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # the input is not mutated


def test_json_patch_test_failure_is_422():
    old = {"metadata": {"resourceVersion": "5", "finalizers": ["a"]}}
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"},
           {"op": "remove", "path": "/metadata/finalizers/0"}]
    with pytest.raises(ApiError) as info:
        apply_patch(JSON_PATCH, old, ops)
    assert info.value.code == 422
    ops[0]["value"] = "5"
    assert apply_patch(JSON_PATCH, old, ops)["metadata"]["finalizers"] == []


def test_json_patch_body_must_be_a_list():
    with pytest.raises(ApiError) as info:
        apply_patch(JSON_PATCH, {}, {"a": 1})
    assert info.value.code == 400


def test_strategic_merge_merges_keyed_lists_and_honours_directives():
    old = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}],
                    "args": ["x"]}}
    patch = {"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "3"},
                                     {"name": "a", "$patch": "delete"}], "args": ["y"]}}
    new = strategic_merge(old, patch)
    assert new["spec"]["containers"] == [{"name": "b", "image": "2"}, {"name": "c", "image": "3"}]
    assert new["spec"]["args"] == ["y"]
    assert apply_patch(STRATEGIC_PATCH, {"m": {"k": 1}}, {"m": {"$patch": "replace", "j": 2}}) \
        == {"m": {"j": 2}}


def test_unknown_patch_type_is_415():
    with pytest.raises(ApiError) as info:
        apply_patch("text/plain", {}, {})
    assert info.value.code == 415


def test_prune_finds_unknown_fields_but_keeps_preserved_ones():
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "a": {"type": "integer"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "items": {"type": "array", "items": {"type": "object",
                                                 "properties": {"n": {"type": "string"}}}}}}}}
    obj = {"apiVersion": "v", "kind": "K", "metadata": {"name": "x"},
           "spec": {"a": 1, "zzz": 2, "free": {"any": 1}, "map": {"k": "v"},
                    "items": [{"n": "1", "bad": 2}]}, "extra": 1}
    pruned, unknown = prune(obj, schema)
    assert sorted(unknown) == ["extra", "spec.items[0].bad", "spec.zzz"]
    assert pruned["spec"] == {"a": 1, "free": {"any": 1}, "map": {"k": "v"},
                              "items": [{"n": "1"}]}
    assert pruned["metadata"] == {"name": "x"}


@pytest.mark.parametrize("path, route", [
    ("/api/v1/namespaces", Route("", "v1", "namespaces")),
    ("/api/v1/namespaces/default", Route("", "v1", "namespaces", None, "default")),
    ("/api/v1/namespaces/default/status",
     Route("", "v1", "namespaces", None, "default", "status")),
    ("/api/v1/namespaces/default/pods", Route("", "v1", "pods", "default")),
    ("/api/v1/namespaces/default/pods/p/status", Route("", "v1", "pods", "default", "p", "status")),
    ("/apis/kubetune.dev/v1alpha1/namespaces/ns/finetunejobs/j",
     Route("kubetune.dev", "v1alpha1", "finetunejobs", "ns", "j")),
    ("/apis/kubetune.dev/v1alpha1", Route("kubetune.dev", "v1alpha1")),
    ("/api/v1/nodes/n1", Route("", "v1", "nodes", None, "n1")),
    ("/version", None),
])
def test_routes(path, route):
    assert parse_resource_path(path) == route


def test_json_path_and_age():
    obj = {"status": {"progress": {"display": "5/10"}, "conditions": [{"type": "Ready"}]}}
    assert eval_json_path(obj, ".status.progress.display") == "5/10"
    assert eval_json_path(obj, "{.status.conditions[0].type}") == "Ready"
    assert eval_json_path(obj, ".status.missing.x") is None
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    assert human_age("2026-01-01T11:59:15Z", now) == "45s"
    assert human_age("2026-01-01T11:55:00Z", now) == "5m"
    assert human_age("2026-01-01T09:00:00Z", now) == "3h"
    assert human_age("2025-12-29T12:00:00Z", now) == "3d"


def test_table_uses_printer_columns(project_crds):
    rtype = next(t for crd in project_crds for t in resource_types_from_crd(crd)
                 if t.kind == "FineTuneJob")
    obj = {"metadata": {"name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "status": {"phase": "Running", "progress": {"display": "3/9", "loss": 1.5},
                      "recoveries": 2}}
    table = render_table(rtype, [obj], "7")
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Phase", "Progress", "Loss", "Recoveries", "Age"]
    assert table["rows"][0]["cells"][:5] == ["j", "Running", "3/9", 1.5, 2]
    assert table["rows"][0]["cells"][5].endswith("d")


def _store_and_type():
    rtype = ResourceType(group="kubetune.dev", version="v1alpha1", plural="things",
                         kind="Thing", namespaced=True, subresources=["status"], custom=True)
    return ObjectStore(), rtype


def test_store_generation_tracks_spec_only():
    store, rtype = _store_and_type()
    obj = store.create(rtype, "ns", {"metadata": {"name": "a"}, "spec": {"x": 1}})
    assert obj["metadata"]["generation"] == 1
    obj = store.patch(rtype, "ns", "a", MERGE_PATCH, {"metadata": {"labels": {"l": "1"}}})
    assert obj["metadata"]["generation"] == 1
    obj = store.patch(rtype, "ns", "a", MERGE_PATCH, {"status": {"s": 1}}, "status")
    assert obj["metadata"]["generation"] == 1 and obj["status"] == {"s": 1}
    obj = store.patch(rtype, "ns", "a", MERGE_PATCH, {"spec": {"x": 2}})
    assert obj["metadata"]["generation"] == 2


def test_store_noop_write_does_not_bump_resource_version():
    store, rtype = _store_and_type()
    obj = store.create(rtype, "ns", {"metadata": {"name": "a"}, "spec": {"x": 1}})
    again = store.patch(rtype, "ns", "a", MERGE_PATCH, {"spec": {"x": 1}})
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_store_garbage_collects_dependents_of_a_deleted_owner():
    store, rtype = _store_and_type()
    owner = store.create(rtype, "ns", {"metadata": {"name": "owner"}})
    other = store.create(rtype, "ns", {"metadata": {"name": "other"}})
    ref = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "Thing", "name": "owner",
           "uid": owner["metadata"]["uid"]}
    other_ref = {**ref, "name": "other", "uid": other["metadata"]["uid"]}
    store.create(rtype, "ns", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    store.create(rtype, "ns", {"metadata": {"name": "shared",
                                            "ownerReferences": [ref, other_ref]}})
    store.delete(rtype, "ns", "owner")
    assert store.collect_garbage() == 1
    names = [o["metadata"]["name"] for o in store.list(rtype, "ns", lambda o: True)]
    assert names == ["other", "shared"]
    shared = store.get(rtype, "ns", "shared")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other"]
