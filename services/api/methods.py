"""The API's methods, read once from api.proto's descriptors.

gRPC registration, REST routing, the OpenAPI document and the handlers all iterate this
one table, so a method added to api.proto is served everywhere (or fails loudly at
startup when it has no handler) instead of drifting between transports. Each entry
carries the method's request and response classes, its least role and its HTTP rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, options_pb2
from services.api.domain import decider


@dataclass(frozen=True, slots=True)
class HttpRoute:
    method: str
    path: str
    body: str

    @property
    def path_fields(self) -> tuple[str, ...]:
        """Request fields named by `{field}` segments, in order."""
        out: list[str] = []
        rest = self.path
        while "{" in rest:
            start = rest.index("{")
            end = rest.index("}", start)
            out.append(rest[start + 1 : end])
            rest = rest[end + 1 :]
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Method:
    service: str
    """Full service name, e.g. "convoy.v1.ApplicationService"."""
    name: str
    """Bare method name, e.g. "ApplyApplication"."""
    input: type[Message]
    output: type[Message]
    min_role: int
    http: HttpRoute | None
    server_streaming: bool

    @property
    def path(self) -> str:
        """The gRPC path, e.g. "/convoy.v1.ApplicationService/ApplyApplication"."""
        return f"/{self.service}/{self.name}"

    @property
    def is_command(self) -> bool:
        """Commands go through `decide` and the log; everything else reads."""
        return self.input in decider.HANDLERS


def _method(service_name: str, descriptor: MethodDescriptor) -> Method:
    options = descriptor.GetOptions()
    rule = options.Extensions[options_pb2.http] if options.HasExtension(options_pb2.http) else None
    role = options.Extensions[options_pb2.min_role]
    return Method(
        service=service_name,
        name=descriptor.name,
        input=message_factory.GetMessageClass(descriptor.input_type),
        output=message_factory.GetMessageClass(descriptor.output_type),
        # A method that forgot its option is admin-only: fail closed.
        min_role=role if role != options_pb2.ROLE_UNSPECIFIED else options_pb2.ROLE_ADMIN,
        http=HttpRoute(rule.method.upper(), rule.path, rule.body) if rule is not None and rule.path else None,
        server_streaming=descriptor.server_streaming,
    )


def _all() -> tuple[Method, ...]:
    return tuple(
        _method(service.full_name, method)
        for service in api_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    )


METHODS: Final[tuple[Method, ...]] = _all()
BY_PATH: Final[dict[str, Method]] = {m.path: m for m in METHODS}
BY_NAME: Final[dict[str, Method]] = {m.name: m for m in METHODS}
BY_INPUT: Final[dict[type[Message], Method]] = {m.input: m for m in METHODS}
SERVICES: Final[tuple[str, ...]] = tuple(dict.fromkeys(m.service for m in METHODS))

ROLE_LABELS: Final = {
    options_pb2.ROLE_VIEWER: "viewer",
    options_pb2.ROLE_DEPLOYER: "deployer",
    options_pb2.ROLE_APPROVER: "approver",
    options_pb2.ROLE_ADMIN: "admin",
}
