"""What a scoped credential may act on: the applications and channels it names.

A token (or an SSO group mapping) may carry a scope: a list of applications, of channels,
or both; an empty list does not restrict. The rule a platform team can state in one
breath: *a scoped caller may only name what its scope holds, and may not touch what
belongs to no application*.

- A call naming an application (a request's `application` field, an application's or a
  service's or an application resource's declaration, GetApplication/DeleteApplication's
  `name`, each declaration of ApplyDeclarations) needs that application in scope when
  the scope lists applications. A call that could name one but leaves it empty (ListEvents,
  Watch, ListReleases … without `application`) is refused: a scoped caller reads one
  application at a time rather than getting a silently filtered view.
- A call naming channels (Approve, Reject, Bypass, Pause/ResumeConvergence, Rollback, Why
  with a channel) needs each in scope when the scope lists channels; a command leaving
  them empty (which means every channel) is refused, and so are declarations (an
  application's, a service's, a resource's), which change every channel. Deploy and PlanDeploy
  name no channel: a release enters the application's pipeline, whose later channels are
  guarded by their own approvals.
- Commands that belong to no application (runtimes, protections, registries, global
  resources, tokens, secrets) are refused for any scoped caller, so a scoped admin token
  cannot mint itself an unscoped one. Reads of shared infrastructure (runtimes,
  protections, registries) stay allowed: they are visible to all applications by design.
  ListTokens and ListSecrets are refused.
- ListApplications is the one list filtered to the scope (it names no application to check).

Pure: the handler layer calls `check` before dispatching and `filtered` on the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, resources_pb2
from services.api.domain import PermissionDenied, decider

_APP_SCOPE: Final = resources_pb2.RESOURCE_SCOPE_APPLICATION

_GLOBAL_READS_REFUSED: Final = frozenset({"ListTokens", "ListSecrets"})
_DECLARATIONS: Final = frozenset(
    {"ApplyApplication", "DeleteApplication", "ApplyService", "DeleteService", "LinkResource", "UnlinkResource",
     "ApplyDeclarations"}
)
"""Commands that change an application's declaration: every channel at once."""
_SHARED_READS: Final = frozenset(
    {"GetRuntime", "ListRuntimes", "ListProtections", "ListRegistries", "ListApplications"}
)


@dataclass(frozen=True, slots=True)
class Scope:
    applications: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()

    @classmethod
    def of(cls, applications: Iterable[str] = (), channels: Iterable[str] = ()) -> Scope:
        return cls(frozenset(applications), frozenset(channels))

    @property
    def restricted(self) -> bool:
        return bool(self.applications or self.channels)

    def describe(self) -> str:
        parts = []
        if self.applications:
            parts.append("applications " + ", ".join(sorted(self.applications)))
        if self.channels:
            parts.append("channels " + ", ".join(sorted(self.channels)))
        return "; ".join(parts) or "unrestricted"


UNSCOPED: Final = Scope()


@dataclass(frozen=True, slots=True)
class Targets:
    """What a request names. `global_` marks a command that belongs to no application."""

    applications: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    names_application: bool = False
    """The request has a place for an application (even if left empty)."""
    names_channel: bool = False
    """The request has a place for channels (empty: every channel, for a command)."""
    global_: bool = False


def targets(method: str, request: Message, *, is_command: bool) -> Targets:
    """The applications and channels `request` names."""
    if isinstance(request, api_pb2.ApplyDeclarationsRequest):
        apps: list[str] = []
        global_ = False
        for declaration in request.declarations:
            kind = declaration.WhichOneof("kind")
            if kind is None:
                continue
            single = decider.declared_request(declaration)
            if single is None:
                continue
            one = targets(kind, single, is_command=True)
            apps.extend(one.applications)
            global_ = global_ or one.global_
        return Targets(applications=tuple(apps), names_application=True, global_=global_)
    if isinstance(request, api_pb2.ApplyApplicationRequest):
        return Targets(applications=(request.application.name,), names_application=True)
    if isinstance(request, api_pb2.ApplyServiceRequest):
        return Targets(applications=(request.service.application,), names_application=True)
    if isinstance(request, api_pb2.LinkResourceRequest):
        if request.resource.scope == _APP_SCOPE:
            return Targets(applications=(request.resource.application,), names_application=True)
        return Targets(global_=True)
    if isinstance(request, api_pb2.UnlinkResourceRequest):
        if request.scope == _APP_SCOPE:
            return Targets(applications=(request.application,), names_application=True)
        return Targets(global_=True)
    if isinstance(request, api_pb2.GetApplicationRequest | api_pb2.DeleteApplicationRequest):
        return Targets(applications=(request.name,), names_application=True)
    fields = request.DESCRIPTOR.fields_by_name
    channels: tuple[str, ...] = ()
    names_channel = "channel" in fields or "channels" in fields
    if "channel" in fields and getattr(request, "channel"):
        channels = (str(getattr(request, "channel")),)
    elif "channels" in fields:
        channels = tuple(getattr(request, "channels"))
    if "application" in fields and isinstance(getattr(request, "application"), str):
        app = str(getattr(request, "application"))
        return Targets(
            applications=(app,) if app else (), channels=channels, names_application=True, names_channel=names_channel
        )
    return Targets(channels=channels, names_channel=names_channel, global_=is_command)


def check(scope: Scope, method: str, request: Message, *, is_command: bool, who: str) -> None:
    """Refuse (PERMISSION_DENIED) a call outside `scope`, naming what and the scope."""
    if not scope.restricted:
        return
    named = targets(method, request, is_command=is_command)
    if method in _GLOBAL_READS_REFUSED or named.global_:
        raise PermissionDenied(
            f"{method} acts on no single application; {who} is scoped to {scope.describe()} "
            "and may only act inside that scope"
        )
    if scope.applications and method not in _SHARED_READS:
        if named.names_application and not named.applications:
            raise PermissionDenied(
                f"{method}: name an application; {who} is scoped to {scope.describe()}"
            )
        for app in named.applications:
            if app not in scope.applications:
                raise PermissionDenied(
                    f"{method} on application {app!r} is outside the scope of {who} ({scope.describe()})"
                )
    if scope.channels:
        if method in _DECLARATIONS:
            raise PermissionDenied(
                f"{method} changes every channel of the application; {who} is scoped to {scope.describe()}"
            )
        if is_command and named.names_channel and not named.channels:
            # An empty channel means every channel (PauseConvergence, Rollback …).
            raise PermissionDenied(
                f"{method}: name a channel (none means every channel); {who} is scoped to {scope.describe()}"
            )
        for channel in named.channels:
            if channel not in scope.channels:
                raise PermissionDenied(
                    f"{method} on channel {channel!r} is outside the scope of {who} ({scope.describe()})"
                )


def filtered(scope: Scope, method: str, response: Message) -> Message:
    """ListApplications shows a scoped caller only its applications."""
    if scope.applications and isinstance(response, api_pb2.ListApplicationsResponse):
        kept = [a for a in response.applications if a.name in scope.applications]
        del response.applications[:]
        response.applications.extend(kept)
    return response
