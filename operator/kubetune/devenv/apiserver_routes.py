"""Parse Kubernetes API paths into what they address. Pure.

Written here rather than taken from kmock because kmock 0.8 cannot parse the paths of the
`namespaces` resource itself (`/api/v1/namespaces` raises inside its parser), which
`kubectl get ns` and any namespace bookkeeping need.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class Route:
    group: str
    version: str
    plural: str | None = None  # None: the group-version discovery document itself
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def _split_group_version(parts: list[str]) -> tuple[str, str, list[str]] | None:
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def parse_resource_path(path: str) -> Route | None:
    """`/apis/kubetune.dev/v1alpha1/namespaces/ns/finetunejobs/x/status` -> Route.

    Returns None for paths that are not under /api/VERSION or /apis/GROUP/VERSION.
    """
    parts = [p for p in path.split("/") if p]
    split = _split_group_version(parts)
    if split is None:
        return None
    group, version, rest = split
    if rest and rest[0] == "watch":  # legacy /watch/ prefix
        rest = rest[1:]
    if not rest:
        return Route(group, version)
    is_namespaced_path = (
        rest[0] == "namespaces" and len(rest) >= 3
        and not (group == "" and rest[2] in NAMESPACE_SUBRESOURCES and len(rest) == 3)
    )
    if is_namespaced_path:
        namespace, rest = rest[1], rest[2:]
    else:
        namespace = None
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return Route(group, version, plural, namespace, name, subresource)
