"""`/openapi/v3` as kubectl 1.37 reads it, for field validation and `kubectl explain`. Pure.

kubectl fetches the index (`/openapi/v3`: one `serverRelativeURL` per group-version, with a
content hash) and then the document of the object's group-version:

* `kubectl apply` (`--validate=strict`, the default) asks whether the PATCH operation of
  the kind accepts the `fieldValidation` query parameter. If yes, it leaves validation to
  the server (`?fieldValidation=Strict`) and this emulator refuses unknown fields itself;
  if no document can be found at all, kubectl fails with "failed to download openapi". It
  also reads the PATCH request content types: custom kinds do not list strategic merge, so
  `kubectl apply` uses JSON merge patch on them, exactly as against a real server.
* `kubectl explain` takes the GVK from the `x-kubernetes-group-version-kind` of an
  operation on the resource's path, then looks for the component schema whose
  `x-kubernetes-group-version-kind` list holds that GVK and walks `properties`, `items`,
  `additionalProperties` and `allOf`/`$ref` along the field path.

So each served group-version gets a document with one PATCH operation per kind, and for
kinds served from a CRD the component schemas a real API server publishes: the version's
`openAPIV3Schema` under the REST-friendly name (`dev.kubetune.v1alpha1.FineTuneJob`), with
`apiVersion`/`kind` replaced by the standard TypeMeta fields and `metadata` by a reference
to ObjectMeta, its List kind, and the few meta/v1 definitions those refer to. Built-in kinds
get no schemas (kmock's catalogue has none), so `kubectl explain pods` still does not work.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubetune.devenv.apiserver_registry import ResourceRegistry, ResourceType

MERGE_TYPES = ["application/json-patch+json", "application/merge-patch+json",
               "application/apply-patch+yaml"]
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
DOCS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(group: str, version: str, kind: str) -> str:
    """kube-openapi's REST-friendly name: the group's DNS labels reversed, then version, kind.

    `kubetune.dev`, `v1alpha1`, `FineTuneJob` -> `dev.kubetune.v1alpha1.FineTuneJob`.
    """
    prefix = ".".join(reversed(group.split("."))) if group else ""
    return ".".join(part for part in (prefix, version, kind) if part)


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def _ref_field(name: str, description: str, **extra: Any) -> dict[str, Any]:
    """A field typed by another component; v3 wraps a `$ref` with siblings in `allOf`."""
    return {"allOf": [{"$ref": _ref(name)}], "description": description, **extra}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _string_map(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description,
            "additionalProperties": {"type": "string", "default": ""}}


# --- meta/v1 definitions that custom kinds refer to (descriptions abridged) ------------------

API_VERSION_FIELD = _string(
    "APIVersion defines the versioned schema of this representation of an object. Servers"
    " convert recognized schemas to the latest internal value and may reject unrecognized"
    f" values. More info: {DOCS}#resources")
KIND_FIELD = _string(
    "Kind is a string value representing the REST resource this object represents. Servers"
    " may infer this from the endpoint the client submits requests to. Cannot be updated."
    f" In CamelCase. More info: {DOCS}#types-kinds")

META_SCHEMAS: dict[str, dict[str, Any]] = {
    f"{META}.Time": {
        "type": "string", "format": "date-time",
        "description": "Time is a wrapper around time.Time, serialized as RFC 3339 in UTC.",
    },
    f"{META}.FieldsV1": {
        "type": "object",
        "description": "FieldsV1 stores a set of fields in a data structure like a Trie,"
                       " in JSON format.",
    },
    f"{META}.ManagedFieldsEntry": {
        "type": "object",
        "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version"
                       " of the resource that the fieldset applies to.",
        "properties": {
            "apiVersion": _string("APIVersion defines the version of this resource that this"
                                  " field set applies to."),
            "fieldsType": _string("FieldsType is the discriminator for the different fields"
                                  " format and version. The only valid value is FieldsV1."),
            "fieldsV1": _ref_field(f"{META}.FieldsV1", "FieldsV1 holds the first JSON version"
                                   " format as described in the FieldsV1 type."),
            "manager": _string("Manager is an identifier of the workflow managing these"
                               " fields."),
            "operation": _string("Operation is the type of operation which lead to this"
                                 " ManagedFieldsEntry being created: Apply or Update."),
            "subresource": _string("Subresource is the name of the subresource used to update"
                                   " that object, or empty for the main resource."),
            "time": _ref_field(f"{META}.Time", "Time is the timestamp of when the"
                               " ManagedFields entry was added."),
        },
    },
    f"{META}.OwnerReference": {
        "type": "object",
        "description": "OwnerReference contains enough information to let you identify an"
                       " owning object. An owning object must be in the same namespace as"
                       " the dependent, or be cluster-scoped, so there is no namespace field.",
        "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {
            "apiVersion": _string("API version of the referent.", default=""),
            "blockOwnerDeletion": {
                "type": "boolean",
                "description": "If true, and the owner has the foregroundDeletion finalizer,"
                               " the owner cannot be deleted from the key-value store until"
                               " this reference is removed."},
            "controller": {"type": "boolean",
                           "description": "If true, this reference points to the managing"
                                          " controller."},
            "kind": _string(f"Kind of the referent. More info: {DOCS}#types-kinds",
                            default=""),
            "name": _string("Name of the referent.", default=""),
            "uid": _string("UID of the referent.", default=""),
        },
        "x-kubernetes-map-type": "atomic",
    },
    f"{META}.ListMeta": {
        "type": "object",
        "description": "ListMeta describes metadata that synthetic resources must have,"
                       " including lists and various status objects.",
        "properties": {
            "continue": _string("continue may be set if the user set a limit on the number"
                                " of items returned; pass it back to get the next page."),
            "remainingItemCount": {
                "type": "integer", "format": "int64",
                "description": "The number of subsequent items in the list which are not"
                               " included in this list response, when known."},
            "resourceVersion": _string("String that identifies the server's internal version"
                                       " of this object; clients treat it as opaque."),
            "selfLink": _string("Deprecated: selfLink is a legacy read-only field that is"
                                " no longer populated by the system."),
        },
    },
    f"{META}.ObjectMeta": {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which"
                       " includes all objects users must create.",
        "properties": {
            "annotations": _string_map(
                "Annotations is an unstructured key value map stored with a resource that"
                " may be set by external tools to store and retrieve arbitrary metadata."
                " They are not queryable."),
            "creationTimestamp": _ref_field(
                f"{META}.Time", "CreationTimestamp is a timestamp representing the server"
                " time when this object was created. Set by the system. Read-only."),
            "deletionGracePeriodSeconds": {
                "type": "integer", "format": "int64",
                "description": "Number of seconds allowed for this object to gracefully"
                               " terminate before it will be removed from the system. Only"
                               " set when deletionTimestamp is also set. Read-only."},
            "deletionTimestamp": _ref_field(
                f"{META}.Time", "DeletionTimestamp is the RFC 3339 date and time at which"
                " this resource will be deleted. Set by the server when a graceful deletion"
                " is requested by the user. Read-only."),
            "finalizers": {
                "type": "array", "items": {"type": "string", "default": ""},
                "description": "Must be empty before the object is deleted from the"
                               " registry. Each entry is an identifier for the responsible"
                               " component that will remove the entry from the list.",
                "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
            "generateName": _string(
                "GenerateName is an optional prefix, used by the server, to generate a"
                " unique name ONLY IF the Name field has not been provided."),
            "generation": {
                "type": "integer", "format": "int64",
                "description": "A sequence number representing a specific generation of the"
                               " desired state. Populated by the system. Read-only."},
            "labels": _string_map(
                "Map of string keys and values that can be used to organize and categorize"
                " (scope and select) objects. May match selectors of replication"
                " controllers and services."),
            "managedFields": {
                "type": "array",
                "items": {"allOf": [{"$ref": _ref(f"{META}.ManagedFieldsEntry")}],
                          "default": {}},
                "description": "ManagedFields maps workflow-id and version to the set of"
                               " fields that are managed by that workflow. Mostly for"
                               " internal housekeeping; users typically shouldn't set or"
                               " understand this field."},
            "name": _string(
                "Name must be unique within a namespace. Is required when creating"
                " resources, although some resources may allow a client to request the"
                " generation of an appropriate name automatically. Cannot be updated."),
            "namespace": _string(
                "Namespace defines the space within which each name must be unique. An"
                " empty namespace is equivalent to the \"default\" namespace, but"
                " \"default\" is the canonical representation. Cannot be updated."),
            "ownerReferences": {
                "type": "array",
                "items": {"allOf": [{"$ref": _ref(f"{META}.OwnerReference")}],
                          "default": {}},
                "description": "List of objects depended by this object. If ALL objects in"
                               " the list have been deleted, this object will be garbage"
                               " collected.",
                "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map",
                "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "resourceVersion": _string(
                "An opaque value that represents the internal version of this object that"
                " can be used by clients to determine when objects have changed. Populated"
                " by the system. Read-only."),
            "selfLink": _string("Deprecated: selfLink is a legacy read-only field that is"
                                " no longer populated by the system."),
            "uid": _string(
                "UID is the unique in time and space value for this object. It is typically"
                " generated by the server on successful creation of a resource and is not"
                " allowed to change on PUT operations. Populated by the system. Read-only."),
        },
    },
}


def _gvk(rtype: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": rtype.group, "version": rtype.version, "kind": kind or rtype.kind}


def kind_schema(rtype: ResourceType) -> dict[str, Any]:
    """The component schema of a custom kind, as the apiextensions OpenAPI builder makes it."""
    if rtype.schema is None:
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = copy.deepcopy(rtype.schema)
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = dict(API_VERSION_FIELD)
        properties["kind"] = dict(KIND_FIELD)
        properties["metadata"] = _ref_field(f"{META}.ObjectMeta", "Standard object's metadata."
                                            f" More info: {DOCS}#metadata")
    schema["x-kubernetes-group-version-kind"] = [_gvk(rtype)]
    return schema


def list_schema(rtype: ResourceType) -> dict[str, Any]:
    list_kind = f"{rtype.kind}List"
    return {
        "type": "object",
        "description": f"{list_kind} is a list of {rtype.kind}",
        "required": ["items"],
        "properties": {
            "apiVersion": dict(API_VERSION_FIELD),
            "items": {"type": "array",
                      "items": {"$ref": _ref(schema_name(rtype.group, rtype.version,
                                                         rtype.kind))},
                      "description": f"List of {rtype.plural}. More info: {DOCS}"},
            "kind": dict(KIND_FIELD),
            "metadata": _ref_field(f"{META}.ListMeta", f"Standard list metadata. More info:"
                                   f" {DOCS}#metadata"),
        },
        "x-kubernetes-group-version-kind": [_gvk(rtype, list_kind)],
    }


def _item_path(rtype: ResourceType) -> str:
    base = "/" + gv_path(rtype.group, rtype.version)
    if rtype.namespaced:
        return f"{base}/namespaces/{{namespace}}/{rtype.plural}/{{name}}"
    return f"{base}/{rtype.plural}/{{name}}"


def _patch_operation(rtype: ResourceType) -> dict[str, Any]:
    content_types = MERGE_TYPES if rtype.custom else \
        MERGE_TYPES + ["application/strategic-merge-patch+json"]
    ok: dict[str, Any] = {"description": "OK"}
    if rtype.custom:
        ref = {"$ref": _ref(schema_name(rtype.group, rtype.version, rtype.kind))}
        ok["content"] = {"application/json": {"schema": ref}}
    return {
        "operationId": f"patch{'Namespaced' if rtype.namespaced else ''}{rtype.kind}",
        "parameters": [
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"},
             "description": "Ignore, Warn or Strict handling of unknown fields."},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        ],
        "requestBody": {"content": {ct: {"schema": {"type": "object"}} for ct in content_types}},
        "responses": {"200": ok},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": _gvk(rtype),
    }


def group_version_doc(registry: ResourceRegistry, group: str, version: str
                      ) -> dict[str, Any] | None:
    types = sorted((t for t in registry.all() if t.group == group and t.version == version
                    and "patch" in t.verbs), key=lambda t: t.plural)
    if not types:
        return None
    schemas: dict[str, Any] = {}
    for rtype in types:
        if rtype.custom:
            schemas[schema_name(group, version, rtype.kind)] = kind_schema(rtype)
            schemas[schema_name(group, version, f"{rtype.kind}List")] = list_schema(rtype)
    if schemas:
        schemas.update(copy.deepcopy(META_SCHEMAS))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubetune emulated)", "version": "v1.37.0"},
        "paths": {_item_path(t): {"patch": _patch_operation(t)} for t in types},
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def index_doc(registry: ResourceRegistry) -> dict[str, Any]:
    """`/openapi/v3`: one entry per group-version, with a content hash as a real server."""
    paths = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            doc = group_version_doc(registry, group, version)
            if doc is None:
                continue
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
            path = gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}
