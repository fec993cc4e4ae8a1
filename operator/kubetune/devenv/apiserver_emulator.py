"""The HTTP face of the emulated API server: a `kmock.KubernetesEmulator` subclass.

kmock provides the loopback HTTP server, the request log (`emulator.requests`, used by the
benchmarks to count API calls) and its reaction DSL, which tests can still use to inject
faults (`emulator['get /api/v1/pods'] << 500` wins over the default behaviour). Everything
a real API server decides (storage rules, selectors, patch flavours, discovery, Tables,
Status errors) is ours: kmock 0.8 as shipped does not bump resourceVersion, filter, or
answer in shapes kubectl can decode, so all requests fall through to `_dispatch` here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import apps, references, rendering

from kubetune.devenv import apiserver_errors as errors
from kubetune.devenv import apiserver_openapi as openapi
from kubetune.devenv.apiserver_errors import ApiError
from kubetune.devenv.apiserver_patch import PATCH_TYPES, parse_patch_body
from kubetune.devenv.apiserver_registry import (ResourceRegistry, ResourceType,
                                                bundled_resource_types, resource_types_from_crd)
from kubetune.devenv.apiserver_routes import Route, parse_resource_path
from kubetune.devenv.apiserver_selectors import build_predicate
from kubetune.devenv.apiserver_store import ObjectStore, WatchEvent
from kubetune.devenv.apiserver_tables import render_table, wants_table

CRD_GROUP, CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"
SERVER_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0-kubetune-emulated",
                  "gitCommit": "0" * 40, "gitTreeState": "clean",
                  "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
                  "compiler": "gc", "platform": "linux/amd64"}
WATCH_LIVENESS_SECONDS = 2.0
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def _json_response(body: Any, status: int = 200) -> rendering.Response:
    return rendering.Response(status=status, headers={"Content-Type": "application/json"},
                              payload=json.dumps(body).encode())


def admission_adapter(admission: Any):
    """Wrap a duck-typed admission object (`admit(group, plural, obj, old) -> obj`).

    Any exception carrying `.message` or `.causes` is a refusal, answered as 422 Invalid
    with the causes, so kubectl prints `FineTuneJob.kubetune.dev "x" is invalid: ...`.
    """
    def admit(rtype: ResourceType, new: dict, old: dict | None) -> dict:
        try:
            result = admission.admit(rtype.group, rtype.plural, new, old)
        except Exception as exc:
            if not (hasattr(exc, "message") or hasattr(exc, "causes")):
                raise
            causes = list(getattr(exc, "causes", None) or [])
            message = getattr(exc, "message", None) or str(exc)
            name = (new.get("metadata") or {}).get("name", "")
            raise errors.invalid(rtype.kind, rtype.group, name, causes, message) from None
        return result if result is not None else new
    return admit


@attrs.define(kw_only=True)
class KubetuneEmulator(kmock.KubernetesEmulator):
    """A faithful-enough Kubernetes API server for kubectl, kopf and the kubernetes client."""

    admission: Any = None
    registry: ResourceRegistry = attrs.field(factory=ResourceRegistry)
    store: ObjectStore = attrs.field(init=False)
    _watch_queues: set[asyncio.Queue] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        # Deliberately not calling the kmock parents' hooks: they register fallbacks that
        # mutate their own object store. Ours is the only fallback; user reactions win.
        self.store = ObjectStore(admit=admission_adapter(self.admission)
                                 if self.admission is not None else None)
        for rtype in bundled_resource_types():
            self.registry.add(rtype)
        self.fallback << self._dispatch
        namespaces = self._rtype("", "v1", "namespaces")
        for name in DEFAULT_NAMESPACES:
            self.store.create(namespaces, None, {"metadata": {"name": name}})

    @property
    def request_log(self) -> list[rendering.Request]:
        """Every request served so far (the benchmarks count API calls with it)."""
        return self._requests

    # --- CRDs ---------------------------------------------------------------------------

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Store the CRD object and serve its resources (what POSTing it does too)."""
        rtype = self._rtype(CRD_GROUP, "v1", CRD_PLURAL)
        name = (crd.get("metadata") or {}).get("name", "")
        try:
            self.store.create(rtype, None, crd)
        except ApiError as exc:
            if exc.reason != "AlreadyExists":
                raise
            self.store.replace(rtype, None, name, crd)
        self._serve_crd(self.store.get(rtype, None, name))

    def _serve_crd(self, crd: dict[str, Any]) -> None:
        for rtype in resource_types_from_crd(crd):
            self.registry.add(rtype)
        status = {"acceptedNames": crd["spec"]["names"], "storedVersions": [
            v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m,
                 "lastTransitionTime": crd["metadata"]["creationTimestamp"]}
                for t, r, m in [("NamesAccepted", "NoConflicts", "no conflicts found"),
                                ("Established", "InitialNamesAccepted",
                                 "the initial names have been accepted")]]}
        crd_type = self._rtype(CRD_GROUP, "v1", CRD_PLURAL)
        self.store.patch(crd_type, None, crd["metadata"]["name"],
                         "application/merge-patch+json", {"status": status}, "status")

    # --- request plumbing -----------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Parse with our own path parser (kmock's cannot parse `/api/v1/namespaces`)."""
        body = await raw_request.read()
        route = parse_resource_path(raw_request.path)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url,
            method=raw_request.method, params=dict(raw_request.query),
            headers=dict(raw_request.headers), body=body,
            resource=None if route is None or route.plural is None else references.resource(
                group=route.group, version=route.version, plural=route.plural),
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as exc:
            raw_response = exc.args[0]
            await self._stream_error(exc.__cause__ or exc, raw_response)
            return raw_response
        except Exception as exc:  # noqa: BLE001 - every failure must reach the client as Status
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Test-injected reactions first (kmock's DSL), else straight to `_dispatch`."""
        if len(self._payloads) > 1:  # more than our own fallback
            return await apps.RawHandler._handle(self, request)
        return await self._respond(request, await self._dispatch(request))

    @staticmethod
    async def _respond(request: rendering.Request,
                       response: rendering.Response) -> aiohttp.web.StreamResponse:
        """Render our own responses directly: cheaper than the DSL's generic rendering."""
        headers = {k: v for k, v in (response.headers or {}).items() if v is not None}
        if isinstance(response.payload, bytes):
            return aiohttp.web.Response(body=response.payload, status=response.status or 200,
                                        headers=headers)
        stream = aiohttp.web.StreamResponse(status=response.status or 200, headers=headers)
        try:
            await stream.prepare(request._raw_request)
            async for chunk in response.payload:
                if chunk:
                    await stream.write(chunk)
            await stream.write_eof()
        except ConnectionError:
            pass  # the watcher went away
        finally:
            await response.payload.aclose()  # unsubscribe now, not at garbage collection
        return stream

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, ApiError):
            exc = ApiError(500, "InternalError", f"Internal error occurred: {exc!r}")
        return aiohttp.web.json_response(exc.status_body(), status=exc.code)

    async def _stream_error(self, exc: Exception, raw_response: aiohttp.web.StreamResponse) -> None:
        if not isinstance(exc, ApiError):
            exc = ApiError(500, "InternalError", f"Internal error occurred: {exc!r}")
        try:
            await raw_response.write(json.dumps({"type": "ERROR", "object": exc.status_body()})
                                     .encode() + b"\n")
            await raw_response.write_eof()
        except ConnectionError:
            pass

    # --- routing --------------------------------------------------------------------------

    async def _dispatch(self, request: rendering.Request) -> rendering.Response:
        raw = request._raw_request
        path = raw.path.rstrip("/") or "/"
        if raw.method == "GET":
            doc = self._non_resource_doc(path, raw)
            if doc is not None:
                return _json_response(doc)
        route = parse_resource_path(path)
        if route is None or route.plural is None:
            raise errors.unknown_path(path)
        rtype = self._rtype(route.group, route.version, route.plural)
        self.store.field_validation = _field_validation(request.params)
        self.store.warnings = []
        result = self._serve_resource(request, route, rtype)
        if self.store.warnings:
            warning = ", ".join(self.store.warnings).replace('"', "'")
            result = attrs.evolve(result, headers={**(result.headers or {}),
                                                   "Warning": f'299 - "{warning}"'})
        if self.store.has_garbage:
            asyncio.get_running_loop().call_soon(self.store.collect_garbage)
        return result

    def _non_resource_doc(self, path: str, raw: aiohttp.web.BaseRequest) -> Any | None:
        if path in ("/healthz", "/readyz", "/livez"):
            return "ok"
        if path == "/version":
            return SERVER_VERSION
        if path == "/api":
            return self.registry.core_versions_doc(f"{raw.host}")
        if path == "/apis":
            return self.registry.group_list_doc()
        if path == "/":
            return {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version"] + sorted(
                f"/apis/{t.group}/{t.version}" for t in self.registry.all() if t.group)}
        if path == "/openapi/v3":
            return openapi.index_doc(self.registry)
        if path.startswith("/openapi/v3/"):
            return self._openapi_gv_doc(path)
        route = parse_resource_path(path)
        if route is not None and route.plural is None:
            doc = self.registry.resource_list_doc(route.group, route.version)
            if doc is None:
                raise errors.unknown_path(path)
            return doc
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "apis":
            doc = self.registry.group_doc(parts[1])
            if doc is None:
                raise errors.unknown_path(path)
            return doc
        return None

    def _openapi_gv_doc(self, path: str) -> dict[str, Any]:
        parts = path[len("/openapi/v3/"):].split("/")
        if len(parts) == 2 and parts[0] == "api":
            doc = openapi.group_version_doc(self.registry, "", parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = openapi.group_version_doc(self.registry, parts[1], parts[2])
        else:
            doc = None
        if doc is None:
            raise errors.unknown_path(path)
        return doc

    def _rtype(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.registry.find(group, version, plural)
        if rtype is None:
            raise errors.unknown_path(f"/{'apis/' + group if group else 'api'}/{version}/{plural}")
        return rtype

    def _serve_resource(self, request: rendering.Request, route: Route,
                        rtype: ResourceType) -> rendering.Response:
        method, params = request._raw_request.method, request.params
        ns = route.namespace if rtype.namespaced else None
        if method in ("POST", "PUT", "PATCH", "DELETE") and "dryRun" in params:
            raise errors.bad_request("dryRun: the emulated API server does not support dry runs")
        if method == "GET" and params.get("watch") in ("true", "1"):
            return self._serve_watch(request, route, rtype)
        if method == "GET" and route.name is None:
            return self._serve_list(request, route, rtype)
        if method == "GET":
            obj = self.store.get(rtype, ns, route.name)
            if wants_table(request.headers.get("Accept")):  # `kubectl get ftj NAME`
                return _json_response(render_table(rtype, [obj], str(self.store.resource_version)))
            return _json_response(obj)
        if method == "POST" and route.name is None:
            obj = self.store.create(rtype, ns, self._json_body(request))
            if rtype.group == CRD_GROUP and rtype.plural == CRD_PLURAL:
                self._serve_crd(obj)
                obj = self.store.get(rtype, None, obj["metadata"]["name"])
            return _json_response(obj, 201)
        if method == "DELETE" and route.name is None:
            return self._delete_collection(request, route, rtype)
        if route.name is None:
            raise errors.method_not_allowed(f"{method} is not supported on collections")
        if method == "PUT":
            obj = self.store.replace(rtype, ns, route.name, self._json_body(request),
                                     route.subresource)
            return _json_response(obj)
        if method == "PATCH":
            content_type = request._raw_request.content_type
            if content_type not in PATCH_TYPES:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted"
                               f" media types include: {', '.join(PATCH_TYPES)}")
            body = parse_patch_body(content_type, request.body)
            existed = self.store.exists(rtype, ns, route.name)
            obj = self.store.patch(rtype, ns, route.name, content_type, body, route.subresource)
            return _json_response(obj, 200 if existed else 201)  # apply-patch may create
        if method == "DELETE":
            options = self._json_body(request) if request.body.strip() else {}
            if "propagationPolicy" in params:
                options = {**options, "propagationPolicy": params["propagationPolicy"]}
            return _json_response(self.store.delete(rtype, ns, route.name, options))
        raise errors.method_not_allowed(f"method {method} is not supported")

    def _delete_collection(self, request: rendering.Request, route: Route,
                           rtype: ResourceType) -> rendering.Response:
        """`deletecollection`: delete every object the selectors match, each as a DELETE."""
        predicate = build_predicate(request.params.get("labelSelector"),
                                    request.params.get("fieldSelector"))
        namespace = route.namespace if rtype.namespaced else None
        deleted = [self.store.delete(rtype, obj["metadata"].get("namespace"),
                                     obj["metadata"]["name"])
                   for obj in self.store.list(rtype, namespace, predicate)]
        return _json_response({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                               "metadata": {"resourceVersion": str(self.store.resource_version)},
                               "items": deleted})

    @staticmethod
    def _json_body(request: rendering.Request) -> Any:
        try:
            return json.loads(request.body.decode("utf-8"))
        except ValueError as exc:
            raise errors.bad_request(f"error decoding the request body as JSON: {exc}") from None

    def _serve_list(self, request: rendering.Request, route: Route,
                    rtype: ResourceType) -> rendering.Response:
        predicate = build_predicate(request.params.get("labelSelector"),
                                    request.params.get("fieldSelector"))
        items = self.store.list(rtype, route.namespace, predicate)
        rv = str(self.store.resource_version)
        if wants_table(request.headers.get("Accept")):
            return _json_response(render_table(rtype, items, rv))
        return _json_response({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                               "metadata": {"resourceVersion": rv}, "items": items})

    # --- watching -------------------------------------------------------------------------

    def _serve_watch(self, request: rendering.Request, route: Route,
                     rtype: ResourceType) -> rendering.Response:
        params = request.params
        field_selector = params.get("fieldSelector")
        if route.name is not None:
            name_sel = f"metadata.name={route.name}"
            field_selector = f"{field_selector},{name_sel}" if field_selector else name_sel
        predicate = build_predicate(params.get("labelSelector"), field_selector)
        namespace = route.namespace if rtype.namespaced else None

        def visible(obj: dict | None) -> bool:
            return obj is not None and predicate(obj) and (
                not namespace or obj["metadata"].get("namespace") == namespace)

        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def on_event(event: WatchEvent) -> None:
            if event.storage_key != rtype.storage_key:
                return
            kind = _visible_event_type(event, visible)
            if kind is not None:
                obj = dict(event.obj, apiVersion=rtype.api_version, kind=rtype.kind)
                queue.put_nowait(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        since = params.get("resourceVersion")
        initial_events = params.get("sendInitialEvents") == "true"
        if since not in (None, "", "0") and not initial_events:
            try:
                backlog = self.store.events_since(rtype, int(since))
            except ValueError:
                raise errors.bad_request(f"invalid resourceVersion: {since!r}") from None
            for event in backlog:
                on_event(event)
        else:
            for obj in self.store.list(rtype, namespace, predicate):
                queue.put_nowait(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            if initial_events:  # WatchList (kubectl wait): mark the end of the initial state
                queue.put_nowait(json.dumps(_initial_events_end(rtype, self.store)).encode()
                                 + b"\n")
        self.store.subscribe(on_event)
        self._watch_queues.add(queue)
        timeout = float(params.get("timeoutSeconds") or 0) or None
        stream = self._watch_stream(request, queue, on_event, timeout)
        return rendering.Response(status=200, headers={"Content-Type": "application/json"},
                                  payload=stream)

    async def _watch_stream(self, request: rendering.Request, queue: asyncio.Queue,
                            on_event, timeout: float | None) -> AsyncIterator[bytes]:
        """Stream events until the timeout, the client leaving, or the server stopping."""
        deadline = None if timeout is None else time.monotonic() + timeout
        transport_owner = request._raw_request
        try:
            yield b""  # send the headers now: clients wait for them before reading events
            while True:
                wait = WATCH_LIVENESS_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return
                try:
                    chunk = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    transport = transport_owner.transport
                    if transport is None or transport.is_closing():
                        return
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            self.store.unsubscribe(on_event)
            self._watch_queues.discard(queue)

    def close_watches(self) -> None:
        """End every open watch (on server stop), so the HTTP server can shut down at once."""
        for queue in list(self._watch_queues):
            queue.put_nowait(None)


def _initial_events_end(rtype: ResourceType, store: ObjectStore) -> dict[str, Any]:
    """The BOOKMARK that ends `sendInitialEvents=true` streams, as clients wait for it."""
    return {"type": "BOOKMARK", "object": {
        "kind": rtype.kind, "apiVersion": rtype.api_version,
        "metadata": {"resourceVersion": str(store.resource_version),
                     "annotations": {"k8s.io/initial-events-end": "true"}}}}


def _field_validation(params: dict[str, str]) -> str:
    mode = params.get("fieldValidation", "Warn")
    if mode not in ("Ignore", "Warn", "Strict"):
        raise errors.bad_request(f"fieldValidation: Unsupported value: {mode!r}: supported"
                                 " values: \"Ignore\", \"Strict\", \"Warn\"")
    return mode


def _visible_event_type(event: WatchEvent, visible) -> str | None:
    """Selector-aware event type: objects entering a selection are ADDED, leaving DELETED."""
    if event.type == "DELETED":
        return "DELETED" if visible(event.obj) else None
    now_in, was_in = visible(event.obj), visible(event.old)
    if now_in and was_in:
        return event.type
    if now_in:
        return "ADDED"
    if was_in:
        return "DELETED"
    return None
