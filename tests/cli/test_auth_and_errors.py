"""Tokens, roles, and how the CLI reports failures: exit codes and one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def test_tokens_create_list_revoke_and_a_viewer_cannot_deploy(cli: Cli) -> None:
    assert (await cli.run("apply", "-f", str(EXAMPLES))).exit_code == 0
    created = await cli.run("tokens", "create", "ci-viewer", "--role", "viewer", "--output", "json")
    assert created.exit_code == 0, created.output
    viewer = json.loads(created.stdout)
    assert viewer["secret"] and viewer["role"] == "ROLE_VIEWER"

    listed = await cli.run("tokens", "list", "--output", "json")
    by_id = {t["tokenId"]: t for t in json.loads(listed.stdout)}
    assert by_id[viewer["tokenId"]]["name"] == "ci-viewer"
    assert all("secret" not in t for t in by_id.values())

    reads = await cli.run("apps", "list", token=viewer["secret"])
    assert reads.exit_code == 0, reads.output
    denied = await cli.run("deploy", "shop/api", "--version", "v9", token=viewer["secret"])
    assert denied.exit_code == 5, denied.output
    assert denied.stderr.startswith("error: ") and len(denied.stderr.strip().splitlines()) == 1, denied.stderr
    assert "role" in denied.stderr

    revoked = await cli.run("tokens", "revoke", viewer["tokenId"], "--reason", "rotated")
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout, revoked.output
    after = await cli.run("apps", "list", token=viewer["secret"])
    assert after.exit_code == 5, after.output
    table = await cli.run("tokens", "list")
    row = next(line for line in table.stdout.splitlines() if viewer["tokenId"] in line)
    assert row.split()[-1] == "yes"


async def test_tokens_create_with_expiry_scope_and_owner(cli: Cli) -> None:
    assert (await cli.run("apply", "-f", str(EXAMPLES))).exit_code == 0
    created = await cli.run(
        "tokens", "create", "ci-2", "--role", "deployer", "--expires-in", "30d", "--application", "shop",
        "--channel", "staging,prod", "--owner", "Alice", "--output", "json",
    )
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)
    assert token["owner"] == "alice" and token["scope"] == {"applications": ["shop"], "channels": ["staging", "prod"]}
    assert token["expiresAt"].endswith("Z")
    table = await cli.run("tokens", "list")
    row = next(line for line in table.stdout.splitlines() if token["tokenId"] in line)
    assert "alice" in row and "applications shop" in row
    refused = await cli.run("deploy", "blog/api", "--version", "v1", token=token["secret"])
    assert refused.exit_code == 5 and "outside the scope" in refused.stderr, refused.output
    bad = await cli.run("tokens", "create", "x", "--role", "viewer", "--expires-in", "soon")
    assert bad.exit_code == 2 and "--expires-in 'soon'" in bad.stderr, bad.output


async def test_bad_token_exits_5(cli: Cli) -> None:
    result = await cli.run("apps", "list", token="not-a-real-token")
    assert result.exit_code == 5, result.output
    assert "token" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = await cli.run("apps", "list", token="")
    assert missing.exit_code == 5 and "no token given" in missing.stderr, missing.output


async def test_unreachable_endpoint_exits_6(cli: Cli, unused_tcp_port: int) -> None:
    result = await cli.run("apps", "list", endpoint=f"127.0.0.1:{unused_tcp_port}")
    assert result.exit_code == 6, result.output
    assert f"cannot reach the Convoy API at 127.0.0.1:{unused_tcp_port}" in result.stderr
    assert "convoy up" in result.stderr


async def test_endpoint_and_token_from_env_config_and_local_state(cli: Cli, tmp_path: Path) -> None:
    env = await cli.raw("apps", "list", CONVOY_ENDPOINT=cli.api.grpc_target, CONVOY_TOKEN=cli.api.admin)
    assert env.exit_code == 0, env.output

    config = tmp_path / "config.toml"
    config.write_text(f'endpoint = "{cli.api.grpc_target}"\ntoken = "{cli.api.admin}"\n')
    from_file = await cli.raw("apps", "list", CONVOY_CONFIG=str(config))
    assert from_file.exit_code == 0, from_file.output

    # What `convoy up` leaves in its state folder: endpoint.json next to admin-token.
    state = tmp_path / "state"
    (state / "endpoint.json").write_text(json.dumps({"grpc": cli.api.grpc_target, "rest": cli.api.base_url}))
    local = await cli.raw("apps", "list", CONVOY_STATE_DIR=str(state))
    assert local.exit_code == 0, local.output

    # Flags win over the environment.
    flags = await cli.run("apps", "list", CONVOY_ENDPOINT="127.0.0.1:1", CONVOY_TOKEN="wrong")
    assert flags.exit_code == 0, flags.output

    nothing = await cli.raw("apps", "list")
    assert nothing.exit_code == 6 and "--endpoint" in nothing.stderr, nothing.output
    rest_url = await cli.run("apps", "list", endpoint=cli.api.base_url)
    assert rest_url.exit_code == 2 and "gRPC" in rest_url.stderr, rest_url.output


async def test_api_command_needs_a_database_url(cli: Cli) -> None:
    result = await cli.raw("api", CONVOY_DATABASE_URL="")
    assert result.exit_code == 2 and "CONVOY_DATABASE_URL" in result.stderr, result.output


def test_installed_cli_smoke_and_completion_is_enabled(tmp_path: Path) -> None:
    """The real entry point in a subprocess: validate, and typer's completion options."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    validate = subprocess.run(
        [sys.executable, "-m", "cli.main", "validate", "-f", str(EXAMPLES)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert validate.returncode == 0, validate.stderr
    assert "6 documents OK" in validate.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert "--install-completion" in helped.stdout


async def test_convoy_events_shows_secret_hashes_to_admins_only(cli: Cli) -> None:
    created = await cli.run("tokens", "create", "auditor", "--role", "viewer", "--output", "json")
    viewer = json.loads(created.stdout)["secret"]

    def hashes(stdout: str) -> list[str]:
        events = [json.loads(line) for line in stdout.splitlines()]
        payloads = [json.loads(e["json"]) for e in events if e["type"] == "convoy.v1.TokenCreated"]
        assert {p["name"] for p in payloads} >= {"auditor"} and len(payloads) == 2
        return [p["secretSha256"] for p in payloads]

    as_viewer = await cli.run("events", "--type", "TokenCreated", "-o", "json", token=viewer)
    assert as_viewer.exit_code == 0, as_viewer.output
    assert hashes(as_viewer.stdout) == ["[redacted]", "[redacted]"]
    as_admin = await cli.run("events", "--type", "TokenCreated", "-o", "json")
    assert all(len(h) == 64 for h in hashes(as_admin.stdout)), as_admin.stdout
