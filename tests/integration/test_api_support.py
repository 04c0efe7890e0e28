"""Shared pieces of the API tests (fixtures and small builders; no tests here).

Each test gets a real `ApiServer` on a fresh PostgreSQL schema, listening on 127.0.0.1
port 0 for both gRPC and REST, and the bootstrap admin secret it wrote to its state
directory. Declarations are built the way a user would write them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc.aio
import pytest

from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, api_pb2_grpc, options_pb2, resources_pb2
from services.api.server import ApiServer


@dataclass
class Running:
    server: ApiServer
    store: PostgresEventStore
    admin: str
    grpc_target: str
    base_url: str

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin}"),)


@contextlib.asynccontextmanager
async def running_api(store: PostgresEventStore, state_dir: Path, **kwargs: Any) -> AsyncIterator[Running]:
    server = ApiServer(
        store=store, state_dir=state_dir, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", **kwargs
    )
    ports = await server.start()
    try:
        admin_file = state_dir / "admin-token"
        admin = admin_file.read_text().strip() if admin_file.exists() else ""
        yield Running(server, store, admin, f"127.0.0.1:{ports.grpc}", f"http://127.0.0.1:{ports.http}")
    finally:
        await server.stop()


@pytest.fixture
async def api(pg_store: PostgresEventStore, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_api(pg_store, tmp_path / "state") as running:
        yield running


class Stubs:
    """Every service's stub on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.applications = api_pb2_grpc.ApplicationServiceStub(channel)
        self.services = api_pb2_grpc.ServiceServiceStub(channel)
        self.runtimes = api_pb2_grpc.RuntimeServiceStub(channel)
        self.protections = api_pb2_grpc.ProtectionServiceStub(channel)
        self.resources = api_pb2_grpc.ResourceServiceStub(channel)
        self.releases = api_pb2_grpc.ReleaseServiceStub(channel)
        self.tokens = api_pb2_grpc.TokenServiceStub(channel)
        self.events = api_pb2_grpc.EventServiceStub(channel)


@contextlib.asynccontextmanager
async def grpc_stubs(target: str) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield Stubs(channel)


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


def runtime(name: str = "eu-1") -> resources_pb2.Runtime:
    return resources_pb2.Runtime(name=name, kind=resources_pb2.RUNTIME_KIND_KUBERNETES, labels={"region": "eu"})


def application(name: str = "shop", *, runtime_name: str = "eu-1") -> resources_pb2.Application:
    return resources_pb2.Application(
        name=name,
        description="the shop",
        release_channels=[
            resources_pb2.ReleaseChannel(name="staging", runtimes=[resources_pb2.RuntimeBinding(runtime=runtime_name)]),
            resources_pb2.ReleaseChannel(
                name="prod",
                runtimes=[resources_pb2.RuntimeBinding(runtime=runtime_name)],
                preconditions=[
                    resources_pb2.Precondition(channel_stable=resources_pb2.ChannelStable(channel="staging")),
                    resources_pb2.Precondition(
                        manual_approval=resources_pb2.ManualApproval(name="release-manager", min_approvers=1)
                    ),
                ],
            ),
        ],
    )


def service(app: str = "shop", name: str = "api") -> resources_pb2.Service:
    return resources_pb2.Service(
        application=app, name=name, replicas=2, programs=[resources_pb2.Program(name="api", image="registry.example/api:1")]
    )


async def create_token(stubs: Stubs, admin: str, role: int, name: str = "someone") -> api_pb2.CreatedToken:
    created: api_pb2.CreatedToken = await stubs.tokens.CreateToken(
        api_pb2.CreateTokenRequest(name=name, role=role), metadata=bearer(admin)
    )
    return created


async def seed(stubs: Stubs, admin: str) -> None:
    """runtime eu-1, application shop (staging -> prod with an approval), service api."""
    metadata = bearer(admin)
    await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=runtime()), metadata=metadata)
    await stubs.applications.ApplyApplication(api_pb2.ApplyApplicationRequest(application=application()), metadata=metadata)
    await stubs.services.ApplyService(api_pb2.ApplyServiceRequest(service=service()), metadata=metadata)


ROLES = {
    "viewer": options_pb2.ROLE_VIEWER,
    "deployer": options_pb2.ROLE_DEPLOYER,
    "approver": options_pb2.ROLE_APPROVER,
    "admin": options_pb2.ROLE_ADMIN,
}
