"""`convoy nats-users` renders, from the log, an `accounts` block that a real external
nats-server accepts: the control plane connects with its password, each agent with its
current secret and nothing else, a rotated secret is out, a runtime without a credential
has no user."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from eventstore import bus, natsaccounts, natsauth
from eventstore import instances as provisioning
from eventstore.embedded import NatsServer
from eventstore.errors import InvalidInput, Unavailable
from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2
from tests.cli.conftest import Cli
from tests.integration.test_api_support import bearer, grpc_stubs, runtime


async def test_the_rendered_users_work_on_a_real_nats_server(
    cli: Cli, pg_store: PostgresEventStore, database_url: str, tmp_path: Path
) -> None:
    async with grpc_stubs(cli.api.grpc_target) as stubs:
        for name in ("eu-1", "eu-2", "us-1"):
            await stubs.runtimes.ApplyRuntime(api_pb2.ApplyRuntimeRequest(runtime=runtime(name)), metadata=bearer(cli.api.admin))
        old = await stubs.runtimes.IssueAgentCredential(api_pb2.IssueAgentCredentialRequest(runtime="eu-1"), metadata=bearer(cli.api.admin))
        eu1 = await stubs.runtimes.IssueAgentCredential(api_pb2.IssueAgentCredentialRequest(runtime="eu-1"), metadata=bearer(cli.api.admin))
        eu2 = await stubs.runtimes.IssueAgentCredential(api_pb2.IssueAgentCredentialRequest(runtime="eu-2"), metadata=bearer(cli.api.admin))
    password_file = tmp_path / "system-password"
    password_file.write_text("the control plane's password\n")
    users_file = tmp_path / "users.conf"
    env = {"CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": pg_store.schema}

    result = await cli.raw("nats-users", "--system-password-file", str(password_file), "--output", str(users_file), **env)

    assert result.exit_code == 0, result.output
    assert "2 agent user(s)" in result.output and "without a credential" in result.output and "us-1" in result.output
    assert users_file.stat().st_mode & 0o777 == 0o600  # password hashes: owner-only
    text = users_file.read_text()
    assert "the control plane's password" not in text and eu1.secret not in text  # hashes only
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=text)
    server.start()
    try:
        nc = await bus.connect(server.url, name="control-plane", user=natsauth.system_user(pg_store.schema), password="the control plane's password")
        await nc.close()
        for rt, secret in (("eu-1", eu1.secret), ("eu-2", eu2.secret)):
            nc = await bus.connect(
                server.url, name=f"agent-{rt}", user=natsauth.agent_user(pg_store.schema, rt), password=secret,
                inbox_prefix=natsauth.agent_inbox_prefix(pg_store.schema, rt),
            )
            await nc.close()
        for rt, secret in (("eu-1", old.secret), ("eu-2", eu1.secret), ("us-1", eu1.secret)):
            with pytest.raises(Unavailable):
                await bus.connect(server.url, name=f"refused-{rt}", connect_attempts=1,
                                  user=natsauth.agent_user(pg_store.schema, rt), password=secret)
    finally:
        server.stop()


async def test_nats_users_says_what_is_wrong(cli: Cli, pg_store: PostgresEventStore, database_url: str, tmp_path: Path) -> None:
    env = {"CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": pg_store.schema}
    missing = await cli.raw("nats-users", "--system-password-file", str(tmp_path / "nope"), **env)
    assert missing.exit_code == 2 and "cannot read" in missing.output
    (tmp_path / "empty").write_text("\n")
    empty = await cli.raw("nats-users", "--system-password-file", str(tmp_path / "empty"), **env)
    assert empty.exit_code == 2 and "is empty" in empty.output
    (tmp_path / "pw").write_text("secret")
    to_stdout = await cli.raw("nats-users", "--system-password-file", str(tmp_path / "pw"), **env)
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith("accounts {"), to_stdout.output


@dataclass(frozen=True)
class Record:
    """Shaped like eventstore.instances.InstanceRecord (what render_instances reads)."""

    name: str
    nats_system_bcrypt: str
    limits: dict[str, object] = field(default_factory=dict)


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


async def test_every_instance_renders_into_one_block_a_real_server_accepts(tmp_path: Path) -> None:
    records = [
        Record("shop", hashed("shop-pw"), {"max_connections": 4, "max_storage": 1 << 20, "max_streams": 4}),
        Record("convoy", hashed("default-pw")),
    ]
    agents = {"shop": {"eu-1": hashed("shop-agent-secret")}, "convoy": {"eu-1": hashed("default-agent-secret")}}
    text = natsaccounts.render_instances(records, agents)
    assert "shop-pw" not in text and "shop-agent-secret" not in text  # hashes only
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=text)
    server.start()
    try:
        for instance, password, agent_password in (("shop", "shop-pw", "shop-agent-secret"), ("convoy", "default-pw", "default-agent-secret")):
            nc = await bus.connect(server.url, name=f"sys-{instance}", user=natsauth.system_user(instance), password=password)
            assert (await nc.jetstream().account_info()).limits.max_streams == (4 if instance == "shop" else -1)
            await nc.close()
            nc = await bus.connect(server.url, name=f"agent-{instance}", user=natsauth.agent_user(instance, "eu-1"),
                                   password=agent_password, inbox_prefix=natsauth.agent_inbox_prefix(instance, "eu-1"))
            await nc.close()
        with pytest.raises(Unavailable):  # one instance's password is not another's
            await bus.connect(server.url, name="crossed", connect_attempts=1, user="convoy-shop", password="default-pw")
    finally:
        server.stop()


def test_a_record_without_a_system_hash_or_with_bad_limits_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no bcrypt"):
        natsaccounts.render_instances([Record("shop", "plain")], {})
    with pytest.raises(InvalidInput, match="instance 'shop'.*max_streams"):
        natsaccounts.render_instances([Record("shop", hashed("x"), {"max_streams": 1})], {})


async def test_nats_users_all_instances_needs_the_registry(cli: Cli, tmp_path: Path) -> None:
    no_url = await cli.raw("nats-users", "--all-instances", CONVOY_ADMIN_DATABASE_URL="")
    assert no_url.exit_code == 2 and "--admin-url" in no_url.output
    (tmp_path / "pw").write_text("secret")
    mixed = await cli.raw("nats-users", "--all-instances", "--admin-url", "postgresql://x/y",
                          "--system-password-file", str(tmp_path / "pw"))
    assert mixed.exit_code == 2 and "registry" in mixed.output
    neither = await cli.raw("nats-users")
    assert neither.exit_code == 2 and "--system-password-file" in neither.output


async def test_nats_users_all_instances_renders_what_the_registry_provisioned(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    names = [f"n{uuid.uuid4().hex[:8]}", f"n{uuid.uuid4().hex[:8]}"]
    for name in names:
        created = await cli.raw("instances", "create", name, "--admin-url", database_url)
        assert created.exit_code == 0, created.output
    records = {r.name: r for r in await provisioning.list_instances(database_url)}
    assert set(names) <= set(records)
    users_file = tmp_path / "accounts.conf"

    result = await cli.raw("nats-users", "--all-instances", "--output", str(users_file), CONVOY_ADMIN_DATABASE_URL=database_url)

    assert result.exit_code == 0, result.output
    assert f"{len(records)} instance(s)" in result.output
    assert users_file.stat().st_mode & 0o777 == 0o600
    text = users_file.read_text()
    for name in names:
        assert f'"{natsauth.control_account(name)}"' in text and f'"{natsauth.system_user(name)}"' in text
        assert records[name].nats_system_bcrypt in text
    server = NatsServer(data_dir=tmp_path / "nats", config_extra=text)
    server.start()  # a real server reads it
    server.stop()
