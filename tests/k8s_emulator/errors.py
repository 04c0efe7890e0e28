"""The API server's error bodies: `kind: Status` objects with the real reasons and codes.

Clients decide what to do from `reason` and `code` (kubernetes_asyncio raises ApiException
with `status` = code and the body as text), so the emulator must send the same Status
shapes a kube-apiserver sends: NotFound/AlreadyExists/Conflict/Invalid/Expired/Forbidden,
with `details` naming the object and, for Invalid and apply conflicts, the `causes`.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


class ApiError(Exception):
    """Raised anywhere in the emulator; the server turns it into a Status response."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        }
        if self.reason:  # omitempty: a server error that is not a Status has none
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(plural: str, group: str) -> str:
    """`deployments.apps`, or `pods` for the core group (how messages name a resource)."""
    return f"{plural}.{group}" if group else plural


def _details(name: str, plural: str, group: str) -> JSON:
    details: JSON = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(plural, group)} "{name}" not found', _details(name, plural, group))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists', _details(name, plural, group)
    )


def stale_conflict(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(name, plural, group),
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422. `causes` are (field, cause reason, message) like ("spec.replicas", "FieldValueInvalid", …)."""
    kind_name = f"{kind}.{group}" if group else kind
    # field.ErrorList.ToAggregate: identical errors are said once; several go in brackets.
    lines = list(dict.fromkeys(f"{field}: {message}" for field, _, message in causes))
    summary = ", ".join(lines)
    if len(lines) > 1:
        summary = "[" + summary + "]"
    details: JSON = {"name": name} if name else {}  # StatusDetails' fields are omitempty
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [{"reason": reason, "message": message, "field": field} for field, reason, message in causes]
    return ApiError(422, "Invalid", f'{kind_name} "{name}" is invalid: {summary}', details)


def internal(message: str) -> ApiError:
    """500 for an error that is not a Status (the apiserver's responsewriters wrap it without a reason)."""
    return ApiError(500, "", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(message: str, plural: str, group: str, name: str) -> ApiError:
    return ApiError(403, "Forbidden", message, _details(name, plural, group))


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got "{content_type}"')


def apply_conflict(conflicts: list[tuple[str, str]]) -> ApiError:
    """409 for server-side apply: `conflicts` are (manager description, field path).

    The message and causes follow the apiserver's `NewConflictError`: one conflict reads
    `Apply failed with 1 conflict: conflict with "m" using apps/v1: .spec.replicas`;
    several are grouped per manager.
    """
    causes = [
        {"type": "FieldManagerConflict", "message": f"conflict with {manager}", "field": path}
        for manager, path in conflicts
    ]
    if len(conflicts) == 1:
        manager, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {manager}: {path}"
    else:
        lines: list[str] = []
        for manager in sorted({m for m, _ in conflicts}):
            lines.append(f"conflicts with {manager}:")
            lines.extend(f"- {path}" for m, path in conflicts if m == manager)
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})
