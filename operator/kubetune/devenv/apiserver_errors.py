"""API errors rendered as `meta/v1 Status` bodies, the one error shape every Kubernetes
client decodes: kubectl maps `reason` to its messages ("NotFound", "AlreadyExists"),
kopf and the `kubernetes` client read `code`, and `details` must be a valid
StatusDetails (kubectl refuses extra keys such as a traceback)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the emulated API server answers with, as a real one would."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        group: str | None = None,
        kind: str | None = None,
        causes: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = {}
        if name is not None:
            self.details["name"] = name
        if group is not None:
            self.details["group"] = group
        if kind is not None:
            self.details["kind"] = kind
        if causes:
            self.details["causes"] = causes
        if retry_after is not None:
            self.details["retryAfterSeconds"] = retry_after

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def qualified_kind(kind: str, group: str) -> str:
    """`FineTuneJob.kubetune.dev`, or `Pod` for the core group, as the server prints it."""
    return f"{kind}.{group}" if group else kind


def plural_ref(plural: str, group: str) -> str:
    """`finetunejobs.kubetune.dev` or `pods`: how NotFound/AlreadyExists name the resource."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{plural_ref(plural, group)} "{name}" not found',
                    name=name, group=group, kind=plural)


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{plural_ref(plural, group)} "{name}" already exists',
                    name=name, group=group, kind=plural)


def conflict(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {plural_ref(plural, group)} "{name}": the object has'
        " been modified; please apply your changes to the latest version and try again",
        name=name, group=group, kind=plural,
    )


def invalid(kind: str, group: str, name: str, causes: list[dict[str, Any]],
            summary: str | None = None) -> ApiError:
    """422 Invalid, with the message shape `Kind.group "name" is invalid: field: why`."""
    if summary is None:
        texts = [f"{c.get('field', '<root>')}: {c.get('message', 'invalid')}" for c in causes]
        summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    prefix = f'{qualified_kind(kind, group)} "{name}" is invalid: '
    message = summary if summary.startswith(prefix) else prefix + summary
    return ApiError(422, "Invalid", message, name=name, group=group, kind=kind, causes=causes)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unknown_path(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
