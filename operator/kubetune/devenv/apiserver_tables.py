"""Server-side printing: the `meta.k8s.io/v1 Table` that `kubectl get` asks for.

kubectl prints whatever cells the server returns, so the columns of `kubectl get ftj`
(Phase, Progress, Loss, Recoveries, Age) come from the CRD's additionalPrinterColumns,
evaluated here. Only simple jsonPaths (`.a.b.c`, `.a.b[0].c`) are supported, which is what
printer columns use in practice. Date columns are rendered as ages ("5m"), as the real
server does. Pure functions.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from kubetune.devenv.apiserver_registry import ResourceType

TABLE_MEDIA = "as=Table"
_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def wants_table(accept: str | None) -> bool:
    return bool(accept) and TABLE_MEDIA in accept.replace(" ", "")


def eval_json_path(obj: Any, path: str) -> Any:
    """Evaluate `.status.progress.display` or `{.status.phase}`; None when absent."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    current = obj
    for name, index in _SEGMENT_RE.findall(path):
        if name:
            if not isinstance(current, dict) or name not in current:
                return None
            current = current[name]
        else:
            if not isinstance(current, list) or int(index) >= len(current):
                return None
            current = current[int(index)]
    return current


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """`kubectl`-style short durations: 45s, 3m, 2m30s... simplified to the largest unit(s)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<invalid>"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return None
    if column_type == "date":
        return human_age(value if isinstance(value, str) else None)
    if column_type in ("integer", "number", "boolean"):
        return value
    return value if isinstance(value, str) else str(value)


def _column(name: str, col_type: str = "string", description: str = "", fmt: str = "",
            priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": col_type, "format": fmt, "description": description,
            "priority": priority}


def _event_row(obj: dict[str, Any]) -> list[Any]:
    involved = obj.get("involvedObject") or {}
    last = obj.get("lastTimestamp") or obj.get("eventTime") or \
        (obj.get("metadata") or {}).get("creationTimestamp")
    return [human_age(last[:19] + "Z" if last and len(last) > 19 else last),
            obj.get("type"), obj.get("reason"),
            f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}",
            obj.get("message")]


_EVENT_COLUMNS = [_column("Last Seen", "string"), _column("Type"), _column("Reason"),
                  _column("Object"), _column("Message")]


def columns_for(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.kind == "Event" and not rtype.custom:
        return _EVENT_COLUMNS
    name = _column("Name", "string", "Name must be unique within a namespace.", "name")
    if not rtype.printer_columns:
        return [name, _column("Age", "date", "CreationTimestamp of the object.")]
    return [name] + [
        _column(c["name"], c.get("type", "string"), c.get("description", ""),
                c.get("format", ""), c.get("priority", 0))
        for c in rtype.printer_columns
    ]


def row_for(rtype: ResourceType, obj: dict[str, Any]) -> list[Any]:
    meta = obj.get("metadata") or {}
    if rtype.kind == "Event" and not rtype.custom:
        return _event_row(obj)
    if not rtype.printer_columns:
        return [meta.get("name"), human_age(meta.get("creationTimestamp"))]
    return [meta.get("name")] + [
        _cell(eval_json_path(obj, c["jsonPath"]), c.get("type", "string"))
        for c in rtype.printer_columns
    ]


def render_table(rtype: ResourceType, objects: list[dict[str, Any]],
                 resource_version: str) -> dict[str, Any]:
    """The Table body; each row carries the object's metadata for `-A`/`--show-labels`."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns_for(rtype),
        "rows": [
            {"cells": row_for(rtype, obj),
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata") or {}}}
            for obj in objects
        ],
    }
