"""`convoy instances` against the embedded PostgreSQL: create writes a 0600 env file and
prints no secret, the URL in it works and reaches only its own schema, the registry keeps
only a bcrypt, list/upgrade/delete do what they say, and bad input gets a clear error."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path

import asyncpg
import bcrypt
import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.commands import instances as command
from cli.main import app
from eventstore import instances, securefile
from eventstore.embedded import PostgresServer


def convoy(admin_url: str | None, state_dir: Path, *argv: str) -> Result:
    env = {"CONVOY_ADMIN_DATABASE_URL": admin_url, "CONVOY_STATE_DIR": str(state_dir), "CONVOY_CONFIG": "/nonexistent"}
    return CliRunner().invoke(app, ["instances", *argv], env=env, catch_exceptions=False)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return dict(pairs)


@pytest.fixture
def name() -> str:
    return f"cli_{uuid.uuid4().hex[:8]}"


async def test_create_list_upgrade_delete(embedded_postgres: PostgresServer, tmp_path: Path, name: str) -> None:
    admin = embedded_postgres.dsn
    run = lambda *argv: asyncio.to_thread(convoy, admin, tmp_path, *argv)  # noqa: E731

    created = await run("create", name, "--max-streams", "5", "--max-storage", "1G")

    assert created.exit_code == 0, created.output
    path = tmp_path / "instances" / f"{name}.env"
    assert str(path) in created.output and "nats-users --all-instances" in created.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = read_env(path)
    assert settings["CONVOY_INSTANCE"] == name
    assert settings["CONVOY_NATS_PASSWORD"] not in created.output
    assert settings["CONVOY_DATABASE_URL"].split("@")[0].split(":")[-1] not in created.output  # the role's password
    assert embedded_postgres.password not in path.read_text()  # the admin's is not copied
    conn = await asyncpg.connect(settings["CONVOY_DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT current_user") == f"convoy_{name}"
        assert await conn.fetchval("SELECT current_schemas(false)") == [name]
    finally:
        await conn.close()
    (record,) = [r for r in await instances.list_instances(admin) if r.name == name]
    assert record.nats_system_bcrypt.startswith("$2b$11$")
    assert bcrypt.checkpw(settings["CONVOY_NATS_PASSWORD"].encode(), record.nats_system_bcrypt.encode())
    assert record.limits == {"max_streams": 5, "max_storage": 1024**3}

    listed = await run("list")
    assert listed.exit_code == 0 and name in listed.output and "max_streams=5" in listed.output
    assert "$2b$" not in listed.output
    upgraded = await run("upgrade", name)
    assert upgraded.exit_code == 0 and "already current" in upgraded.output
    again = await run("create", name)
    assert again.exit_code == 4 and "exists" in again.output

    unconfirmed = await run("delete", name)
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.output
    session = await asyncpg.connect(settings["CONVOY_DATABASE_URL"])
    try:
        busy = await run("delete", name, "--yes")
        assert busy.exit_code == 4 and "1 open database session" in busy.output and "--force" in busy.output
        assert any(r.name == name for r in await instances.list_instances(admin))  # nothing dropped
        forced = await run("delete", name, "--yes", "--force")
        assert forced.exit_code == 0, forced.output
    finally:
        session.terminate()
    assert not path.exists()
    assert all(r.name != name for r in await instances.list_instances(admin))
    conn = await asyncpg.connect(admin)
    try:
        assert await conn.fetchval("SELECT to_regnamespace($1)", name) is None
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", f"convoy_{name}%") == 0
    finally:
        await conn.close()
    gone = await run("delete", name, "--yes")
    assert gone.exit_code == 3 and "convoy instances list" in gone.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("create", "Bad-Name"), "invalid instance name"),
        (("create", "admin"), "reserved"),
        (("create", "ok_name", "--max-storage", "lots"), "--max-storage must be a size"),
        (("create", "ok_name", "--max-streams", "0"), "--max-streams must be at least 1"),
        (("delete", "Bad-Name", "--yes"), "invalid instance name"),
    ],
)
def test_bad_input_is_refused_before_anything_is_done(
    embedded_postgres: PostgresServer, tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    result = convoy(embedded_postgres.dsn, tmp_path, *argv)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "instances").exists()


def test_without_an_admin_url_it_says_how_to_give_one(tmp_path: Path) -> None:
    result = convoy(None, tmp_path, "list")
    assert result.exit_code == 2 and "CONVOY_ADMIN_DATABASE_URL" in result.output


def test_the_env_file_is_private_from_its_first_byte_and_never_replaced(tmp_path: Path) -> None:
    """Even under umask 0 the file is 0600 before a byte is written (securefile's hook
    sees the temporary file at creation); an existing file is left alone."""
    seen: list[int] = []
    securefile._created_hook = lambda path: seen.append(stat.S_IMODE(os.stat(path).st_mode))
    old = os.umask(0)
    path = tmp_path / "instances" / "x.env"
    try:
        command.write_env_file(path, "x", "postgresql://convoy_x:pw@h/db", "nats-pw")
        with pytest.raises(FileExistsError):
            command.write_env_file(path, "x", "postgresql://convoy_x:other@h/db", "other")
    finally:
        os.umask(old)
        securefile._created_hook = None
    assert seen and all(m == 0o600 for m in seen)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "pw@" in path.read_text() and "other" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["x.env"]


@pytest.mark.parametrize("argv", [("planner", "--ops-port", "0"), ("api", "--grpc-port", "0", "--http-port", "0")])
def test_a_service_on_another_instances_schema_stops_with_a_clear_error(
    embedded_postgres: PostgresServer, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """(Sync, on the main thread: `convoy api` installs signal handlers.)"""
    from tests.isolation.store_env import provision

    admin = embedded_postgres.dsn
    a = asyncio.run(provision(admin, f"cli_{uuid.uuid4().hex[:8]}"))
    b = asyncio.run(provision(admin, f"cli_{uuid.uuid4().hex[:8]}"))
    try:
        env = {"CONVOY_DATABASE_URL": b.dsn, "CONVOY_INSTANCE": a.name, "CONVOY_STATE_DIR": str(tmp_path),
               "CONVOY_NATS_URL": None, "CONVOY_CONFIG": "/nonexistent"}
        result = CliRunner().invoke(app, list(argv), env=env, catch_exceptions=False)
        assert result.exit_code == 1, result.output
        assert f"may not use schema '{a.name}'" in result.output and "Traceback" not in result.output
        assert b.dsn.split("@")[0].split(":")[-1] not in result.output  # b's password
    finally:
        for instance in (a, b):
            asyncio.run(instances.delete(admin, instance.name, force=True))
