"""Which stream each fact belongs to.

A stream is the unit of optimistic concurrency and of reading one thing's history, so
each addressable thing gets its own: an application, a service, a runtime, a
protection, a resource, a token. Releases of one service share a stream
(`release/<app>/<service>`) with the approvals, rejections, bypasses and rollbacks that
concern them, so a service's release history reads in order from one stream. Resource
streams carry their scope so an infrastructure resource and an application resource of
the same name never share a history.

| stream                          | events                                               |
|---------------------------------|------------------------------------------------------|
| `app/<name>`                    | ApplicationCreated/Updated/Deleted                   |
| `service/<app>/<name>`          | ServiceConfigured/Deleted, ConvergencePaused/Resumed |
| `runtime/<name>`                | RuntimeRegistered/Updated/Labelled/Paused/Resumed/  |
|                                 | Deregistered, AgentCredentialIssued                  |
| `protection/<name>`             | ProtectionConfigured/Deleted                         |
| `resource/infra/<name>`         | ResourceLinked/Unlinked (infrastructure scope)       |
| `resource/app/<app>/<name>`     | ResourceLinked/Unlinked (application scope)          |
| `release/<app>/<service>`       | ReleaseCreated, ApprovalGranted/Rejected, BypassGranted, RollbackRequested |
| `token/<id>`                    | TokenCreated/Revoked                                 |
| `registry/<name>`               | RegistryConfigured/Deleted                           |
| `secret/<name>`                 | SecretSet/Deleted (Convoy-kept secrets, ciphertext)  |
| `keyring`                       | SecretKeyRotated                                     |

Every id is checked with `eventstore.types.validate_stream_id`; names that reach here
were validated as DNS labels, so a failure is a programming error.
"""

from __future__ import annotations

from eventstore.types import validate_stream_id
from schemas.convoy.v1 import resources_pb2


def application(name: str) -> str:
    return validate_stream_id(f"app/{name}")


def service(app: str, name: str) -> str:
    return validate_stream_id(f"service/{app}/{name}")


def runtime(name: str) -> str:
    return validate_stream_id(f"runtime/{name}")


def protection(name: str) -> str:
    return validate_stream_id(f"protection/{name}")


def resource(scope: int, app: str, name: str) -> str:
    if scope == resources_pb2.RESOURCE_SCOPE_APPLICATION:
        return validate_stream_id(f"resource/app/{app}/{name}")
    return validate_stream_id(f"resource/infra/{name}")


def releases(app: str, service_name: str) -> str:
    return validate_stream_id(f"release/{app}/{service_name}")


def token(token_id: str) -> str:
    return validate_stream_id(f"token/{token_id}")


def registry(name: str) -> str:
    return validate_stream_id(f"registry/{name}")


def secret(name: str) -> str:
    return validate_stream_id(f"secret/{name}")


def keyring() -> str:
    return validate_stream_id("keyring")
