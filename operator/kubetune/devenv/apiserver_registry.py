"""What the emulated API server serves: resource types (built-in and from CRDs) and the
discovery documents kubectl and kopf read to map `ftj` -> finetunejobs.kubetune.dev/v1alpha1.

Built-in kinds come from kmock's bundled catalogue (taken from a real cluster), so verbs,
short names and scopes match a real server without us maintaining a table.
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import kmock

from kubetune.devenv.apiserver_errors import bad_request


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=list)
    subresources: list[str] = field(default_factory=list)
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    custom: bool = False  # served from a CRD: admission applies

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are stored per group+plural, shared by all served versions."""
        return (self.group, self.plural)


ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@functools.cache
def _bundled_catalogue() -> tuple[dict[str, Any], ...]:
    """kmock's bundled discovery dump, read once per process (it is a gzipped JSON)."""
    catalogue = kmock.ResourcesArray()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock uses read_binary()
        catalogue.load_bundled()
    entries = []
    for ref in catalogue:
        info = catalogue[ref]
        entries.append(dict(
            group=ref.group or "", version=ref.version, plural=ref.plural,
            kind=info.kind or ref.plural.capitalize(), namespaced=bool(info.namespaced),
            singular=info.singular or (info.kind or "").lower(),
            short_names=sorted(info.shortnames), categories=sorted(info.categories),
            verbs=sorted(info.verbs), subresources=sorted(info.subresources),
        ))
    return tuple(entries)


def bundled_resource_types() -> list[ResourceType]:
    """The built-in kinds of a recent real cluster, from kmock's bundled discovery dump."""
    return [ResourceType(**copy.deepcopy(entry)) for entry in _bundled_catalogue()]


def _require(mapping: dict[str, Any], path: str) -> Any:
    current: Any = mapping
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            raise bad_request(f"CustomResourceDefinition: {path}: Required value")
        current = current[part]
    return current


def resource_types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of an apiextensions.k8s.io/v1 CRD."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise bad_request(f"expected kind CustomResourceDefinition, got {crd.get('kind')!r}")
    spec = _require(crd, "spec")
    names = _require(crd, "spec.names")
    group = _require(crd, "spec.group")
    plural = _require(crd, "spec.names.plural")
    kind = _require(crd, "spec.names.kind")
    expected_name = f"{plural}.{group}"
    if crd.get("metadata", {}).get("name") != expected_name:
        raise bad_request(f"CustomResourceDefinition: metadata.name: Invalid value: must be"
                          f" spec.names.plural+\".\"+spec.group ({expected_name})")
    types = []
    for version in _require(crd, "spec.versions"):
        if not version.get("served", True):
            continue
        types.append(ResourceType(
            group=group, version=version["name"], plural=plural, kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", kind.lower()),
            short_names=list(names.get("shortNames", [])),
            categories=list(names.get("categories", [])),
            verbs=list(ALL_VERBS),
            subresources=sorted((version.get("subresources") or {}).keys()),
            printer_columns=list(version.get("additionalPrinterColumns", [])),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            custom=True,
        ))
    return types


class ResourceRegistry:
    """Lookup of served resource types by (group, version, plural) and the discovery docs."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}

    def add(self, rtype: ResourceType) -> None:
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def find_kind(self, group: str, kind: str) -> ResourceType | None:
        return next((t for t in self._types.values() if t.group == group and t.kind == kind), None)

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions, the preferred (first registered, v1 first) leading."""
        result: dict[str, list[str]] = {}
        for group, version, _ in self._types:
            versions = result.setdefault(group, [])
            if version not in versions:
                versions.append(version)
        for versions in result.values():
            versions.sort(key=lambda v: (v != "v1", not v.startswith("v1"), v))
        return result

    # --- discovery documents -------------------------------------------------------------

    def core_versions_doc(self, server_address: str) -> dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": server_address}]}

    def _group_doc(self, group: str, versions: list[str]) -> dict[str, Any]:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def group_list_doc(self) -> dict[str, Any]:
        groups = [self._group_doc(g, vs) for g, vs in sorted(self.group_versions().items()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def group_doc(self, group: str) -> dict[str, Any] | None:
        versions = self.group_versions().get(group)
        if not versions or not group:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    def resource_list_doc(self, group: str, version: str) -> dict[str, Any] | None:
        types = [t for t in self._types.values() if t.group == group and t.version == version]
        if not types:
            return None
        resources = []
        for rtype in sorted(types, key=lambda t: t.plural):
            resources.append({
                "name": rtype.plural, "singularName": rtype.singular,
                "namespaced": rtype.namespaced, "kind": rtype.kind, "verbs": rtype.verbs,
                **({"shortNames": rtype.short_names} if rtype.short_names else {}),
                **({"categories": rtype.categories} if rtype.categories else {}),
            })
            for sub in rtype.subresources:
                resources.append({
                    "name": f"{rtype.plural}/{sub}", "singularName": "",
                    "namespaced": rtype.namespaced, "kind": rtype.kind,
                    "verbs": ["get", "patch", "update"] if sub == "status" else ["get"],
                })
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": types[0].group_version, "resources": resources}
