"""`convoy secrets`: set from stdin (never an argument), list without values, rotate the
key, delete — against a real API on PostgreSQL."""

from __future__ import annotations

import asyncio
import json

from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from tests.cli.conftest import Cli

VALUE = "correct-horse-battery-staple"


async def run(cli: Cli, *args: str, stdin: str | None = None) -> Result:
    argv = [*args, "--endpoint", cli.api.grpc_target, "--token", cli.api.admin]
    return await asyncio.to_thread(
        CliRunner().invoke, app, argv, input=stdin, env=cli.env(), catch_exceptions=False
    )


async def test_set_list_rotate_delete(cli: Cli) -> None:
    result = await run(cli, "secrets", "set", "db-password", stdin=VALUE + "\n")
    assert result.exit_code == 0, result.output
    assert "secret db-password set" in result.stdout and VALUE not in result.output

    listed = await run(cli, "secrets", "list", "-o", "json")
    assert listed.exit_code == 0, listed.output
    [info] = json.loads(listed.stdout)
    assert info["name"] == "db-password" and info["keyId"] and VALUE not in listed.output
    resolve = cli.api.server.secrets.resolver(lambda: cli.api.server.projection.state)
    assert resolve("db-password") == VALUE  # the trailing newline of stdin dropped

    rotated = await run(cli, "secrets", "rotate-key", "--retire-old-keys")
    assert rotated.exit_code == 0, rotated.output
    assert "key rotated; 1 secret(s) re-encrypted" in rotated.stdout
    [after] = json.loads((await run(cli, "secrets", "list", "-o", "json")).stdout)
    assert after["keyId"] != info["keyId"] and after["cause"] == "rotated"
    assert resolve("db-password") == VALUE

    empty = await run(cli, "secrets", "set", "other", stdin="")
    assert empty.exit_code != 0 and "the value is empty" in empty.stderr

    deleted = await run(cli, "secrets", "delete", "db-password", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert json.loads((await run(cli, "secrets", "list", "-o", "json")).stdout) == []
    missing = await run(cli, "secrets", "delete", "db-password", "--yes")
    assert missing.exit_code != 0 and "does not exist" in missing.stderr


async def test_the_value_is_never_an_argument(cli: Cli) -> None:
    result = await run(cli, "secrets", "set", "db-password", VALUE, stdin=VALUE)
    assert result.exit_code == 2  # no such argument: usage error
