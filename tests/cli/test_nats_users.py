"""`convoy nats-users` renders, from the log, an `accounts` block that a real external
nats-server accepts: the control plane connects with its password, each agent with its
current secret and nothing else, a rotated secret is out, a runtime without a credential
has no user."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstore import bus, natsauth
from eventstore.embedded import NatsServer
from eventstore.errors import Unavailable
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
        nc = await bus.connect(server.url, name="control-plane", user=natsauth.SYSTEM_USER, password="the control plane's password")
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
