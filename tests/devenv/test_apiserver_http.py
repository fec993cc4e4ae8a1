"""The emulated API server over real HTTP on 127.0.0.1: storage rules, discovery, errors,
selectors, watches, patches, finalizers, garbage collection and admission."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import FTJ_PATH, Http, small_ftj

from kubetune.devenv.apiserver import EmulatedApiServer, serving

pytestmark = pytest.mark.integration

MERGE = "application/merge-patch+json"
CM_PATH = "/api/v1/namespaces/default/configmaps"
POD_PATH = "/api/v1/namespaces/default/pods"


def watch_events(url: str, path: str, params: dict[str, str], count: int,
                 timeout: float = 5.0) -> list[dict]:
    """Read up to `count` events from a watch stream (server closes it at timeoutSeconds)."""
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout + 5)
    query = urllib.parse.urlencode({"watch": "true", "timeoutSeconds": str(int(timeout)),
                                    **params})
    conn.request("GET", f"{path}?{query}")
    response = conn.getresponse()
    assert response.status == 200
    events = []
    while len(events) < count:
        line = response.readline()
        if not line:
            break
        if line.strip():
            events.append(json.loads(line))
    conn.close()
    return events


def test_lifecycle_context_manager_and_stop(project_crds):
    server = EmulatedApiServer(crds=project_crds).start()
    url = server.url
    assert url.startswith("http://127.0.0.1:")
    assert Http(url)("GET", "/version").body["gitVersion"].startswith("v1.37")
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/version", timeout=2)


def test_usable_inside_an_asyncio_loop(project_crds):
    async def scenario() -> dict:
        async with serving(crds=project_crds) as (emulator, url):
            reply = await asyncio.to_thread(Http(url), "POST", FTJ_PATH, small_ftj("in-loop"))
            assert reply.code == 201
            return emulator.store.get(emulator._rtype("kubetune.dev", "v1alpha1",
                                                       "finetunejobs"), "default", "in-loop")
    obj = asyncio.run(scenario())
    assert obj["metadata"]["name"] == "in-loop"


def test_discovery_lists_custom_and_core_resources(http):
    groups = http("GET", "/apis").body
    assert groups["kind"] == "APIGroupList"
    ours = next(g for g in groups["groups"] if g["name"] == "kubetune.dev")
    assert ours["preferredVersion"]["groupVersion"] == "kubetune.dev/v1alpha1"
    assert http("GET", "/apis/kubetune.dev").body["kind"] == "APIGroup"
    resources = {r["name"]: r for r in
                 http("GET", "/apis/kubetune.dev/v1alpha1").body["resources"]}
    ftj = resources["finetunejobs"]
    assert ftj["shortNames"] == ["ftj"] and ftj["categories"] == ["kubetune"]
    assert ftj["namespaced"] is True and ftj["kind"] == "FineTuneJob"
    assert {"create", "get", "list", "watch", "patch", "update", "delete"} <= set(ftj["verbs"])
    assert resources["finetunejobs/status"]["verbs"] == ["get", "patch", "update"]
    assert resources["modelserves"]["shortNames"] == ["ms"]
    core = {r["name"] for r in http("GET", "/api/v1").body["resources"]}
    assert {"pods", "services", "configmaps", "secrets", "events", "nodes",
            "serviceaccounts", "pods/status"} <= core
    for path in ("/apis/apps/v1", "/apis/policy/v1", "/apis/rbac.authorization.k8s.io/v1",
                 "/apis/coordination.k8s.io/v1"):
        assert http("GET", path).code == 200
    assert http("GET", "/apis/nope.dev/v1").code == 404


def test_posting_a_crd_serves_its_resources(http, project_crds):
    crd = copy.deepcopy(next(c for c in project_crds if c["spec"]["names"]["kind"] == "ModelServe"))
    crd["spec"]["group"] = "example.dev"
    crd["spec"]["names"].update(plural="widgets", singular="widget", kind="Widget",
                                listKind="WidgetList", shortNames=["wd"])
    crd["metadata"]["name"] = "widgets.example.dev"
    reply = http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert reply.code == 201
    assert {c["type"] for c in reply.body["status"]["conditions"]} == {"Established",
                                                                      "NamesAccepted"}
    names = [r["name"] for r in http("GET", "/apis/example.dev/v1alpha1").body["resources"]]
    assert "widgets" in names
    widget = {"apiVersion": "example.dev/v1alpha1", "kind": "Widget",
              "metadata": {"name": "w"}, "spec": {}}
    created = http("POST", "/apis/example.dev/v1alpha1/namespaces/default/widgets", widget)
    assert created.code == 201 and created.body["kind"] == "Widget"


def test_create_sets_identity_and_drops_status(http):
    body = small_ftj("a")
    body["status"] = {"phase": "Succeeded"}
    created = http("POST", FTJ_PATH, body).body
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert "status" not in created


def test_status_subresource_isolates_status_from_spec(http):
    http("POST", FTJ_PATH, small_ftj("s"))
    path = f"{FTJ_PATH}/s"
    patched = http("PATCH", f"{path}/status",
                   {"status": {"phase": "Running"}, "spec": {"dataset": {"uri": "s3://x/y"}},
                    "metadata": {"labels": {"sneaky": "1"}}}, MERGE).body
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"]["dataset"]["uri"] == "s3://bucket/data.jsonl"
    assert "sneaky" not in patched["metadata"]["labels"]
    main = http("PATCH", path, {"status": {"phase": "Failed"}, "metadata": {"labels": {"k": "v"}}},
                MERGE).body
    assert main["status"] == {"phase": "Running"} and main["metadata"]["labels"]["k"] == "v"
    current = http("GET", f"{path}/status").body
    current["status"] = {"phase": "Succeeded"}
    put = http("PUT", f"{path}/status", current)
    assert put.code == 200 and put.body["status"]["phase"] == "Succeeded"
    assert put.body["metadata"]["generation"] == 1


def test_resource_version_bumps_on_every_write_and_stale_writes_conflict(http):
    versions = [int(http("POST", FTJ_PATH, small_ftj("rv")).body["metadata"]["resourceVersion"])]
    path = f"{FTJ_PATH}/rv"
    stale = http("GET", path).body
    versions.append(int(http("PATCH", path, {"metadata": {"labels": {"a": "1"}}}, MERGE)
                        .body["metadata"]["resourceVersion"]))
    versions.append(int(http("PATCH", f"{path}/status", {"status": {"phase": "Running"}}, MERGE)
                        .body["metadata"]["resourceVersion"]))
    fresh = http("GET", path).body
    fresh["spec"]["training"] = {"epochs": 3}
    replaced = http("PUT", path, fresh).body
    versions.append(int(replaced["metadata"]["resourceVersion"]))
    assert replaced["metadata"]["generation"] == 2
    versions.append(int(http("DELETE", path).body["metadata"]["resourceVersion"]))
    assert versions == sorted(set(versions)), versions

    http("POST", FTJ_PATH, small_ftj("rv2"))
    old = http("GET", f"{FTJ_PATH}/rv2").body
    http("PATCH", f"{FTJ_PATH}/rv2", {"metadata": {"labels": {"b": "1"}}}, MERGE)
    conflict = http("PUT", f"{FTJ_PATH}/rv2", old)
    assert conflict.code == 409 and conflict.body["reason"] == "Conflict"
    assert conflict.body["kind"] == "Status" and conflict.body["status"] == "Failure"
    stale_patch = http("PATCH", f"{FTJ_PATH}/rv2", {"metadata": {
        "resourceVersion": old["metadata"]["resourceVersion"], "labels": {"c": "1"}}}, MERGE)
    assert stale_patch.code == 409
    assert http("PUT", path, stale).code == 404  # deleted meanwhile


def test_errors_are_decodable_status_bodies(http):
    missing = http("GET", f"{FTJ_PATH}/nope")
    assert missing.code == 404
    assert missing.body == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": 'finetunejobs.kubetune.dev "nope" not found',
                            "details": {"name": "nope", "group": "kubetune.dev",
                                        "kind": "finetunejobs"}}
    http("POST", FTJ_PATH, small_ftj("dup"))
    dup = http("POST", FTJ_PATH, small_ftj("dup"))
    assert dup.code == 409 and dup.body["reason"] == "AlreadyExists"
    bad = http("POST", FTJ_PATH, b"{not json")
    assert bad.code == 400 and bad.body["reason"] == "BadRequest"
    unknown = http("GET", "/apis/kubetune.dev/v1alpha1/namespaces/default/nothings")
    assert unknown.code == 404 and "traceback" not in json.dumps(unknown.body)
    for reply in (missing, dup, bad, unknown):
        assert set(reply.body.get("details", {})) <= {"name", "group", "kind", "causes", "uid",
                                                      "retryAfterSeconds"}


def test_admission_refusal_is_422_with_causes(http, stub_admission):
    body = small_ftj("lr")
    body["spec"]["training"] = {"learningRate": -1}
    reply = http("POST", FTJ_PATH, body)
    assert reply.code == 422 and reply.body["reason"] == "Invalid"
    assert reply.body["message"].startswith(
        'FineTuneJob.kubetune.dev "lr" is invalid: spec.training.learningRate:')
    assert reply.body["details"]["causes"][0]["field"] == "spec.training.learningRate"
    assert reply.body["details"]["kind"] == "FineTuneJob"

    created = http("POST", FTJ_PATH, small_ftj("ok")).body
    assert created["spec"]["training"]["epochs"] == 1  # the admission's default was stored
    bad_patch = http("PATCH", f"{FTJ_PATH}/ok", {"spec": {"training": {"learningRate": 0}}}, MERGE)
    assert bad_patch.code == 422
    http("PATCH", f"{FTJ_PATH}/ok/status", {"status": {"phase": "Running"}}, MERGE)
    assert [c[3] for c in stub_admission.calls if c[2] == "ok"] == [False, True, True]
    http("POST", CM_PATH, {"metadata": {"name": "cm"}, "data": {}})
    assert all(call[1] != "configmaps" for call in stub_admission.calls)


def test_lists_carry_kind_api_version_and_resource_version(http):
    http("POST", FTJ_PATH, small_ftj("l1"))
    listed = http("GET", FTJ_PATH).body
    assert listed["kind"] == "FineTuneJobList" and listed["apiVersion"] == "kubetune.dev/v1alpha1"
    assert int(listed["metadata"]["resourceVersion"]) >= int(
        listed["items"][0]["metadata"]["resourceVersion"])
    assert http("GET", "/api/v1/pods").body["kind"] == "PodList"


def test_label_and_field_selectors_on_lists(http):
    for name, labels in [("a", {"team": "x", "tier": "1"}), ("b", {"team": "y"}), ("c", {})]:
        http("POST", FTJ_PATH, small_ftj(name, **labels))

    def names(**params) -> list[str]:
        query = urllib.parse.urlencode(params)
        return [o["metadata"]["name"] for o in http("GET", f"{FTJ_PATH}?{query}").body["items"]]

    assert names(labelSelector="team=x") == ["a"]
    assert names(labelSelector="team in (x,y)") == ["a", "b"]
    assert names(labelSelector="team notin (x)") == ["b", "c"]
    assert names(labelSelector="!team") == ["c"]
    assert names(labelSelector="team,tier") == ["a"]
    assert names(fieldSelector="metadata.name=b") == ["b"]
    assert names(fieldSelector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    http("POST", POD_PATH, {"metadata": {"name": "p1"}, "spec": {"nodeName": "n1",
                                                                  "containers": []}})
    http("PATCH", f"{POD_PATH}/p1/status", {"status": {"phase": "Running"}}, MERGE)
    pods = http("GET", f"{POD_PATH}?fieldSelector=spec.nodeName%3Dn1,status.phase%3DRunning")
    assert [p["metadata"]["name"] for p in pods.body["items"]] == ["p1"]
    assert http("GET", f"{FTJ_PATH}?labelSelector=team%20in%20x").code == 400


def test_watch_from_resource_version_replays_and_streams(apiserver, http):
    http("POST", FTJ_PATH, small_ftj("w1"))
    listed_rv = http("GET", FTJ_PATH).body["metadata"]["resourceVersion"]
    http("PATCH", f"{FTJ_PATH}/w1/status", {"status": {"phase": "Running"}}, MERGE)
    http("POST", FTJ_PATH, small_ftj("w2"))
    events = watch_events(apiserver.url, FTJ_PATH, {"resourceVersion": listed_rv}, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "w1"), ("ADDED", "w2")]
    assert events[0]["object"]["status"]["phase"] == "Running"
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) > int(listed_rv)
    initial = watch_events(apiserver.url, FTJ_PATH, {}, 2)
    assert sorted(e["object"]["metadata"]["name"] for e in initial) == ["w1", "w2"]
    assert {e["type"] for e in initial} == {"ADDED"}


def test_watch_filters_by_selector_and_sees_objects_leave(apiserver, http):
    http("POST", FTJ_PATH, small_ftj("sel", team="x"))
    rv = http("GET", FTJ_PATH).body["metadata"]["resourceVersion"]
    http("POST", FTJ_PATH, small_ftj("other", team="y"))
    http("PATCH", f"{FTJ_PATH}/sel", {"metadata": {"labels": {"team": "z"}}}, MERGE)
    http("PATCH", f"{FTJ_PATH}/other", {"metadata": {"labels": {"team": "x"}}}, MERGE)
    events = watch_events(apiserver.url, FTJ_PATH,
                          {"resourceVersion": rv, "labelSelector": "team=x"}, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "sel"), ("ADDED", "other")]


def test_live_watch_receives_events_written_after_it_started(apiserver, http):
    import threading
    rv = http("GET", FTJ_PATH).body["metadata"]["resourceVersion"]
    result: list[dict] = []
    reader = threading.Thread(target=lambda: result.extend(watch_events(
        apiserver.url, FTJ_PATH, {"resourceVersion": rv,
                                  "fieldSelector": "metadata.name=live"}, 2)))
    reader.start()
    time.sleep(0.3)
    http("POST", FTJ_PATH, small_ftj("noise"))
    http("POST", FTJ_PATH, small_ftj("live"))
    http("DELETE", f"{FTJ_PATH}/live")
    reader.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in result] == [
        ("ADDED", "live"), ("DELETED", "live")]


def test_patch_flavours(http):
    http("POST", POD_PATH, {"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {
        "containers": [{"name": "main", "image": "img:1"}, {"name": "side", "image": "s:1"}]}})
    smp = http("PATCH", f"{POD_PATH}/p", {"spec": {"containers": [{"name": "main",
                                                                   "image": "img:2"}]}},
               "application/strategic-merge-patch+json").body
    assert [(c["name"], c["image"]) for c in smp["spec"]["containers"]] == [
        ("main", "img:2"), ("side", "s:1")]
    jp = http("PATCH", f"{POD_PATH}/p", [{"op": "add", "path": "/metadata/labels/b",
                                          "value": "2"}], "application/json-patch+json").body
    assert jp["metadata"]["labels"] == {"a": "1", "b": "2"}
    merge = http("PATCH", f"{POD_PATH}/p", {"metadata": {"labels": {"a": None}}}, MERGE).body
    assert merge["metadata"]["labels"] == {"b": "2"}
    apply_yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  k: v\n"
    created = http("PATCH", f"{CM_PATH}/applied?fieldManager=test", apply_yaml,
                   "application/apply-patch+yaml")
    assert created.code == 201 and created.body["data"] == {"k": "v"}
    merged = http("PATCH", f"{CM_PATH}/applied?fieldManager=test",
                  b"metadata:\n  name: applied\ndata:\n  k2: v2\n", "application/apply-patch+yaml")
    assert merged.body["data"] == {"k": "v", "k2": "v2"}
    assert http("PATCH", f"{POD_PATH}/p", {"a": 1}, "text/plain").code == 415
    assert http("PATCH", f"{POD_PATH}/nope", {"a": 1}, MERGE).code == 404


def test_kopf_style_json_patch_with_stale_test_is_422(http):
    http("POST", FTJ_PATH, small_ftj("jp"))
    obj = http("PATCH", f"{FTJ_PATH}/jp", {"metadata": {"finalizers": ["kubetune.dev/f"]}},
               MERGE).body
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "remove", "path": "/metadata/finalizers/0"}]
    assert http("PATCH", f"{FTJ_PATH}/jp", ops, "application/json-patch+json").code == 422
    ops[0]["value"] = obj["metadata"]["resourceVersion"]
    assert http("PATCH", f"{FTJ_PATH}/jp", ops, "application/json-patch+json").code == 200


def test_delete_honours_finalizers(http):
    body = small_ftj("fin")
    body["metadata"]["finalizers"] = ["kubetune.dev/cleanup"]
    http("POST", FTJ_PATH, body)
    deleting = http("DELETE", f"{FTJ_PATH}/fin").body
    assert deleting["metadata"]["deletionTimestamp"]
    assert http("GET", f"{FTJ_PATH}/fin").code == 200
    refused = http("PATCH", f"{FTJ_PATH}/fin", {"metadata": {"finalizers": [
        "kubetune.dev/cleanup", "other/new"]}}, MERGE)
    assert refused.code == 422
    http("PATCH", f"{FTJ_PATH}/fin", {"metadata": {"finalizers": None}}, MERGE)
    assert http("GET", f"{FTJ_PATH}/fin").code == 404


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_deleting_an_owner_garbage_collects_dependents(http):
    owner = http("POST", FTJ_PATH, small_ftj("owner")).body
    ref = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "owner",
           "uid": owner["metadata"]["uid"], "controller": True}
    http("POST", CM_PATH, {"metadata": {"name": "child-cm", "ownerReferences": [ref]}})
    http("POST", POD_PATH, {"metadata": {"name": "child-pod", "ownerReferences": [ref],
                                         "finalizers": ["test/hold"]}, "spec": {}})
    http("POST", CM_PATH, {"metadata": {"name": "unrelated"}})
    http("DELETE", f"{FTJ_PATH}/owner")
    assert _wait_for(lambda: http("GET", f"{CM_PATH}/child-cm").code == 404)
    pod = http("GET", f"{POD_PATH}/child-pod").body
    assert pod["metadata"]["deletionTimestamp"]  # held by its own finalizer
    http("PATCH", f"{POD_PATH}/child-pod", {"metadata": {"finalizers": []}}, MERGE)
    assert http("GET", f"{POD_PATH}/child-pod").code == 404
    assert http("GET", f"{CM_PATH}/unrelated").code == 200


def test_orphan_propagation_keeps_dependents(http):
    owner = http("POST", FTJ_PATH, small_ftj("orph")).body
    ref = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "orph",
           "uid": owner["metadata"]["uid"]}
    http("POST", CM_PATH, {"metadata": {"name": "kept", "ownerReferences": [ref]}})
    http("DELETE", f"{FTJ_PATH}/orph?propagationPolicy=Orphan")
    time.sleep(0.2)
    assert http("GET", f"{CM_PATH}/kept").code == 200


def test_table_format_for_core_kinds_and_events(http):
    table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    http("POST", CM_PATH, {"metadata": {"name": "t"}})
    table = http("GET", CM_PATH, accept=table_accept).body
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"][0] == "t"
    http("POST", "/api/v1/namespaces/default/events", {
        "metadata": {"name": "e1"}, "type": "Normal", "reason": "Started",
        "message": "hello", "involvedObject": {"kind": "FineTuneJob", "name": "j"}})
    events = http("GET", "/api/v1/namespaces/default/events", accept=table_accept).body
    assert events["rows"][0]["cells"][1:] == ["Normal", "Started", "finetunejob/j", "hello"]


def test_unknown_fields_are_pruned_or_refused_when_strict(http):
    body = small_ftj("prune")
    body["spec"]["bogus"] = 1
    strict = http("POST", f"{FTJ_PATH}?fieldValidation=Strict", body)
    assert strict.code == 400 and 'unknown field "spec.bogus"' in strict.body["message"]
    warned = http("POST", FTJ_PATH, body)
    assert warned.code == 201 and "bogus" not in warned.body["spec"]
    assert "spec.bogus" in warned.headers.get("Warning", "")


def test_kubernetes_client_through_kubeconfig(apiserver, kubeconfig):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map("default", {"metadata": {"name": "kc"}, "data": {"a": "1"}})
    with pytest.raises(ApiException) as info:
        core.create_namespaced_config_map("default", {"metadata": {"name": "kc"}})
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "AlreadyExists"
    listed = core.list_namespaced_config_map("default", label_selector="")
    assert [cm.metadata.name for cm in listed.items] == ["kc"]
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object("kubetune.dev", "v1alpha1", "default", "finetunejobs",
                                           small_ftj("via-client"))
    custom.patch_namespaced_custom_object_status(
        "kubetune.dev", "v1alpha1", "default", "finetunejobs", "via-client",
        {"status": {"phase": "Pending"}})
    got = custom.get_namespaced_custom_object("kubetune.dev", "v1alpha1", "default",
                                              "finetunejobs", "via-client")
    assert got["status"]["phase"] == "Pending"


def test_kmock_reactions_still_inject_faults(apiserver, http):
    apiserver.call(lambda emu: emu["get /api/v1/namespaces/default/secrets"] << 503)
    assert http("GET", "/api/v1/namespaces/default/secrets").code == 503
    assert http("GET", CM_PATH).code == 200  # everything else still served normally


def test_delete_collection_by_label_and_dry_run_refused(http):
    for name, team in [("d1", "x"), ("d2", "x"), ("d3", "y")]:
        http("POST", FTJ_PATH, small_ftj(name, team=team))
    gone = http("DELETE", f"{FTJ_PATH}?labelSelector=team%3Dx").body
    assert [o["metadata"]["name"] for o in gone["items"]] == ["d1", "d2"]
    assert [o["metadata"]["name"] for o in http("GET", FTJ_PATH).body["items"]] == ["d3"]
    dry = http("POST", f"{FTJ_PATH}?dryRun=All", small_ftj("dry"))
    assert dry.code == 400 and "dryRun" in dry.body["message"]
    assert http("GET", f"{FTJ_PATH}/dry").code == 404


def test_stop_ends_open_watches_promptly(project_crds):
    import threading
    server = EmulatedApiServer(crds=project_crds).start()
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(
        watch_events(server.url, FTJ_PATH, {}, 1, timeout=30)))
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    reader.join(10)
    assert not reader.is_alive() and events == []
    assert time.monotonic() - started < 5
