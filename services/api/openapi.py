"""An OpenAPI 3 document for the REST API, generated from the same descriptors it serves.

Hand-written API docs drift; this one cannot, because routes, parameters and schemas
come from api.proto's messages and `(convoy.v1.http)` rules, the table the REST layer
routes by. Schemas follow the proto3 JSON mapping the server speaks: lowerCamelCase
names, 64-bit integers as decimal strings (numbers are accepted too), enums by name,
maps as objects, Timestamp/Duration as strings, and no additional properties (the
server refuses unknown fields). It is exact enough for schemathesis to fuzz against.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.api.methods import METHODS, ROLE_LABELS, Method
from services.api.rest import SCALAR_MESSAGES, is_map, is_repeated

_INT32: Final = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32: Final = {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}


def _int64(signed: bool) -> dict[str, Any]:
    low, high = (-(2**63), 2**63 - 1) if signed else (0, 2**64 - 1)
    return {
        "oneOf": [
            {"type": "integer", "format": "int64", "minimum": low, "maximum": high},
            {"type": "string", "pattern": "^-?[0-9]{1,19}$" if signed else "^[0-9]{1,20}$"},
        ]
    }


_SCALARS: Final[dict[int, dict[str, Any]]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _int64(True),
    FieldDescriptor.TYPE_SINT64: _int64(True),
    FieldDescriptor.TYPE_SFIXED64: _int64(True),
    FieldDescriptor.TYPE_UINT64: _int64(False),
    FieldDescriptor.TYPE_FIXED64: _int64(False),
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
}
_WELL_KNOWN: Final[dict[str, dict[str, Any]]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$"},
}
_ERROR: Final = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "status": {"type": "string"},
                "message": {"type": "string"},
                "correlationId": {"type": "string"},
                "violations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                    },
                },
            },
            "required": ["code", "status", "message"],
        }
    },
    "required": ["error"],
}


class _Builder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion-safe
            self.components[name] = self.message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: Descriptor, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        properties = {f.json_name: self.field(f) for f in descriptor.fields if f.name not in skip}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if is_repeated(field):
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _query_parameters(builder: _Builder, descriptor: Descriptor, skip: tuple[str, ...], prefix: str = "") -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for field in descriptor.fields:
        if field.name in skip or is_map(field):
            continue
        name = f"{prefix}{field.json_name}"
        message = field.message_type
        if message is not None and message.full_name not in SCALAR_MESSAGES:
            if not is_repeated(field):
                params.extend(_query_parameters(builder, message, (), f"{name}."))
            continue
        schema = builder.field(field)
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if is_repeated(field):
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _path_schema(builder: _Builder, field: FieldDescriptor) -> dict[str, Any]:
    schema = builder.field(field)
    if schema.get("type") == "string":
        schema["minLength"] = 1
    return schema


def _operation(builder: _Builder, method: Method) -> dict[str, Any]:
    assert method.http is not None
    descriptor = method.input.DESCRIPTOR
    path_fields = method.http.path_fields
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(builder, descriptor.fields_by_name[name])}
        for name in path_fields
    ]
    operation: dict[str, Any] = {
        "operationId": method.name,
        "tags": [method.service.rsplit(".", 1)[-1]],
        "summary": f"{method.name} (least role: {ROLE_LABELS.get(method.min_role, 'admin')})",
    }
    if method.http.body == "*":
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": builder.message(descriptor, skip=path_fields)}},
        }
    else:
        parameters.extend(_query_parameters(builder, descriptor, path_fields))
    if method.is_command:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Retries with the same key and request get the first answer, within the idempotency TTL "
                    "(CONVOY_IDEMPOTENCY_TTL, 24 h by default); after it the same key is a new command."
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
            }
        )
    operation["parameters"] = parameters
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation["responses"] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": builder.ref(method.output.DESCRIPTOR)}}},
        **{code: {**error} for code in ("400", "401", "403", "404", "405", "409", "413", "503")},
        # A per-principal limit (services.api.limits): wait Retry-After seconds.
        "429": {
            **error,
            "description": "a per-principal limit was reached",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
        "default": error,
    }
    return operation


def document(*, title: str = "Convoy API", version: str = "v1") -> dict[str, Any]:
    """The OpenAPI 3.0 document for every method that has an HTTP rule."""
    builder = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        if method.http is None:
            continue
        paths.setdefault(method.http.path, {})[method.http.method.lower()] = _operation(builder, method)
    components = {"Error": _ERROR, **builder.components}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": "Convoy's command/query API (the same messages as gRPC, in proto3 JSON).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
