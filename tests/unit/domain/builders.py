"""Small builders for domain tests: declarations, commands, and a catalog built by
running real commands through decide + evolve (never by poking State directly)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from schemas.convoy.v1 import api_pb2, options_pb2, resources_pb2
from services.api.domain import Command, Decision, Minted, State, decide, fold

MINTED = Minted(
    release_id="rel-1",
    token_id="tok-1",
    token_secret="s3cr3t-token-value-0001",
    credential_id="cred-1",
    credential_secret="s3cr3t-credential-0001",
)


def command(request: Message, *, actor: str = "alice", minted: Minted = MINTED, method: str = "") -> Command:
    return Command(request, actor, options_pb2.ROLE_ADMIN, minted, method)


def run(state: State, request: Message, **kwargs: object) -> tuple[Decision, State]:
    """decide, then fold what it decided."""
    decision = decide(state, command(request, **kwargs))  # type: ignore[arg-type]
    return decision, fold(state, decision.events)


def apply_all(state: State, requests: Iterable[Message], **kwargs: object) -> State:
    for request in requests:
        _, state = run(state, request, **kwargs)
    return state


def k8s(name: str, **labels: str) -> api_pb2.ApplyRuntimeRequest:
    return api_pb2.ApplyRuntimeRequest(
        runtime=resources_pb2.Runtime(name=name, kind=resources_pb2.RUNTIME_KIND_KUBERNETES, labels=labels)
    )


def channel(
    name: str,
    *runtimes: str,
    after: str = "",
    approval: str = "",
    protections: Iterable[str] = (),
) -> resources_pb2.ReleaseChannel:
    preconditions = []
    if after:
        preconditions.append(resources_pb2.Precondition(channel_stable=resources_pb2.ChannelStable(channel=after)))
    if approval:
        preconditions.append(
            resources_pb2.Precondition(manual_approval=resources_pb2.ManualApproval(name=approval, min_approvers=1))
        )
    return resources_pb2.ReleaseChannel(
        name=name,
        runtimes=[resources_pb2.RuntimeBinding(runtime=r) for r in runtimes],
        preconditions=preconditions,
        protections=[
            resources_pb2.ProtectionAttachment(protection=p, lifecycle=[resources_pb2.LIFECYCLE_PRE_APPROVAL])
            for p in protections
        ],
    )


def application(name: str, *channels: resources_pb2.ReleaseChannel) -> resources_pb2.Application:
    return resources_pb2.Application(name=name, release_channels=list(channels))


def apply_app(name: str, *channels: resources_pb2.ReleaseChannel) -> api_pb2.ApplyApplicationRequest:
    return api_pb2.ApplyApplicationRequest(application=application(name, *channels))


def service(app: str, name: str, *, image: str = "registry.example/api:1", **fields: object) -> resources_pb2.Service:
    return resources_pb2.Service(
        application=app, name=name, programs=[resources_pb2.Program(image=image)], **fields  # type: ignore[arg-type]
    )


def apply_service(app: str, name: str, **fields: Any) -> api_pb2.ApplyServiceRequest:
    return api_pb2.ApplyServiceRequest(service=service(app, name, **fields))


def protection(name: str) -> api_pb2.ApplyProtectionRequest:
    return api_pb2.ApplyProtectionRequest(
        protection=resources_pb2.Protection(
            name=name, command=resources_pb2.CommandCheck(command=["./check.sh"])
        )
    )


def infra_resource(name: str, kind: str = "database") -> api_pb2.LinkResourceRequest:
    return api_pb2.LinkResourceRequest(
        resource=resources_pb2.Resource(name=name, scope=resources_pb2.RESOURCE_SCOPE_INFRASTRUCTURE, kind=kind)
    )


def app_resource(app: str, name: str, kind: str = "queue") -> api_pb2.LinkResourceRequest:
    return api_pb2.LinkResourceRequest(
        resource=resources_pb2.Resource(
            name=name, scope=resources_pb2.RESOURCE_SCOPE_APPLICATION, application=app, kind=kind
        )
    )


def shop() -> State:
    """A small, realistic catalog: runtimes eu-1 and us-1, a protection, resources, the
    application "shop" (staging → prod with approval "release-manager") with service
    "api", and the application "billing" with its own resource "ledger"."""
    return apply_all(
        State(),
        [
            k8s("eu-1", region="eu"),
            k8s("us-1", region="us"),
            protection("smoke"),
            infra_resource("registry", "registry"),
            apply_app(
                "shop",
                channel("staging", "eu-1"),
                channel("prod", "eu-1", "us-1", after="staging", approval="release-manager", protections=["smoke"]),
            ),
            apply_app("billing", channel("prod", "us-1")),
            app_resource("shop", "orders"),
            app_resource("billing", "ledger"),
            apply_service("shop", "api", resources=["registry", "orders"]),
        ],
    )


def deployed(state: State | None = None, version: str = "v1", release_id: str = "rel-1") -> State:
    """`shop()` with release `version` of shop/api."""
    state = shop() if state is None else state
    minted = Minted(release_id=release_id)
    return apply_all(state, [api_pb2.DeployRequest(application="shop", service="api", version=version)], minted=minted)
