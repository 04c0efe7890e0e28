"""The administration commands — runtimes (credential, pause, resume, label, deregister),
deleting applications and services, protections, resources, and `convoy delete -f` —
against a real API on PostgreSQL, with the example configs."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.commands import common
from cli.commands.agent import read_secret
from cli.main import app
from tests.cli.conftest import Cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def applied(cli: Cli) -> None:
    result = await cli.run("apply", "-f", str(EXAMPLES))
    assert result.exit_code == 0, result.output


async def runtime_state(cli: Cli, name: str) -> dict[str, Any]:
    result = await cli.run("runtimes", "get", name, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_credential_to_a_file_is_private_works_for_the_agent_and_rotates(cli: Cli, tmp_path: Path) -> None:
    await applied(cli)
    file = tmp_path / "agent.json"
    issued = await cli.run("runtimes", "credential", "local", "--file", str(file))
    assert issued.exit_code == 0, issued.output
    stored = json.loads(file.read_text())
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stored["runtime"] == "local" and stored["generation"] == "1"
    assert stored["secret"] and stored["secret"] not in issued.output
    assert f"written to {file}" in issued.stdout and stored["credentialId"] in issued.stdout
    assert read_secret(file) == stored["secret"]  # what `convoy agent --credential-file` reads
    assert (await runtime_state(cli, "local"))["credentialGeneration"] == "1"

    refused = await cli.run("runtimes", "credential", "local", "--file", str(file))
    assert refused.exit_code == 4, refused.output
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert json.loads(file.read_text()) == stored, "a refused overwrite changed the file"
    assert (await runtime_state(cli, "local"))["credentialGeneration"] == "1", "refused, yet a credential was issued"

    rotated = await cli.run("runtimes", "credential", "local", "--file", str(file), "--force", "-o", "json")
    assert rotated.exit_code == 0, rotated.output
    answer = json.loads(rotated.stdout)
    again = json.loads(file.read_text())
    assert answer["generation"] == again["generation"] == "2" and "secret" not in answer
    assert again["secret"] != stored["secret"] and again["secret"] not in rotated.output
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".agent.json")) == [], "temporary file left"
    assert (await runtime_state(cli, "local"))["credentialGeneration"] == "2"

    printed = await cli.run("runtimes", "credential", "local")
    assert printed.exit_code == 0, printed.output
    shown = json.loads(printed.stdout)  # shown once, as the JSON the agent reads
    assert shown["generation"] == "3" and shown["secret"]


async def test_credential_of_an_unknown_runtime_leaves_no_file(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "agent.json"
    result = await cli.run("runtimes", "credential", "nope", "--file", str(file))
    assert result.exit_code == 3, result.output
    assert "nope" in result.stderr
    assert not file.exists()
    missing = await cli.run("runtimes", "credential", "nope", "--file", str(tmp_path / "no" / "agent.json"))
    assert missing.exit_code == 2, missing.output
    assert "does not exist" in missing.stderr


async def test_pause_and_resume_a_runtime(cli: Cli) -> None:
    await applied(cli)
    paused = await cli.run("runtimes", "pause", "local", "--reason", "maintenance")
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.startswith("paused runtime local (position ")
    state = await runtime_state(cli, "local")
    assert state["paused"] is True and state["pauseReason"] == "maintenance"
    twice = await cli.run("runtimes", "pause", "local", "--reason", "maintenance")
    assert twice.exit_code == 0 and "already paused (nothing changed)" in twice.stdout

    resumed = await cli.run("runtimes", "resume", "local", "--reason", "done", "-o", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["changed"] is True
    assert not (await runtime_state(cli, "local")).get("paused")

    unknown = await cli.run("runtimes", "pause", "nope", "--reason", "x")
    assert unknown.exit_code == 3, unknown.output
    assert "not registered" in unknown.stderr


async def test_label_adds_changes_and_removes(cli: Cli) -> None:
    await applied(cli)
    added = await cli.run("runtimes", "label", "local", "tier=gold", "zone=eu")
    assert added.exit_code == 0, added.output
    assert "labels of runtime local: env=laptop, tier=gold, zone=eu" in added.stdout
    assert (await runtime_state(cli, "local"))["runtime"]["labels"] == {"env": "laptop", "tier": "gold", "zone": "eu"}

    changed = await cli.run("runtimes", "label", "local", "zone=us", "--remove", "tier")
    assert changed.exit_code == 0, changed.output
    assert (await runtime_state(cli, "local"))["runtime"]["labels"] == {"env": "laptop", "zone": "us"}

    same = await cli.run("runtimes", "label", "local", "zone=us")
    assert same.exit_code == 0 and "(nothing changed)" in same.stdout

    malformed = await cli.run("runtimes", "label", "local", "foo")
    assert malformed.exit_code == 2, malformed.output
    assert "label 'foo' is not key=value" in malformed.stderr
    nothing = await cli.run("runtimes", "label", "local")
    assert nothing.exit_code == 2 and "--remove" in nothing.stderr
    unknown = await cli.run("runtimes", "label", "nope", "a=b")
    assert unknown.exit_code == 3, unknown.output


async def test_deregister_needs_yes_without_a_terminal_and_is_refused_while_bound(cli: Cli, tmp_path: Path) -> None:
    await applied(cli)
    unconfirmed = await cli.run("runtimes", "deregister", "local")
    assert unconfirmed.exit_code == 2, unconfirmed.output
    assert "--yes" in unconfirmed.stderr and "not a terminal" in unconfirmed.stderr
    bound = await cli.run("runtimes", "deregister", "local", "--yes")
    assert bound.exit_code == 4, bound.output
    assert "still bound by release channels (shop/prod, shop/staging)" in bound.stderr

    spare = tmp_path / "spare.yaml"
    spare.write_text("runtime:\n  name: spare\n  kind: exec\n  exec:\n    apply: [x]\n")
    assert (await cli.run("apply", "-f", str(spare))).exit_code == 0
    gone = await cli.run("runtimes", "deregister", "spare", "--yes")
    assert gone.exit_code == 0, gone.output
    assert gone.stdout.startswith("deregistered runtime spare")
    assert (await cli.run("runtimes", "get", "spare")).exit_code == 3


async def test_deleting_an_application_is_refused_until_its_services_and_resources_are_gone(cli: Cli) -> None:
    await applied(cli)
    assert (await cli.run("apps", "delete", "shop")).exit_code == 2  # no terminal, no --yes
    refused = await cli.run("apps", "delete", "shop", "--yes")
    assert refused.exit_code == 4, refused.output
    assert 'application "shop" still has services (api, web); delete them first' in refused.stderr, refused.stderr

    for service in ("web", "api"):
        deleted = await cli.run("services", "delete", "shop", service, "--yes")
        assert deleted.exit_code == 0, deleted.output
        assert deleted.stdout.startswith(f"deleted service shop/{service} (position ")
    assert (await cli.run("services", "delete", "shop", "web", "--yes")).exit_code == 3

    linked = await cli.run("apps", "delete", "shop", "--yes")
    assert linked.exit_code == 4 and "still has linked resources (shop-db)" in linked.stderr, linked.output

    seen = await cli.run("resources", "list", "--app", "shop", "-o", "json")
    assert seen.exit_code == 0, seen.output
    assert [(r["name"], r["scope"], r["application"]) for r in json.loads(seen.stdout)] == [
        ("shop-db", "RESOURCE_SCOPE_APPLICATION", "shop")
    ]
    infra = await cli.run("resources", "list")
    assert infra.exit_code == 0 and "shop-db" not in infra.stdout, infra.output
    assert (await cli.run("resources", "unlink", "shop-db", "--yes")).exit_code == 3  # not at infrastructure level
    unlinked = await cli.run("resources", "unlink", "shop-db", "--app", "shop", "--yes")
    assert unlinked.exit_code == 0, unlinked.output
    assert unlinked.stdout.startswith("unlinked resource shop/shop-db")

    deleted = await cli.run("apps", "delete", "shop", "--yes", "-o", "json")
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout)["changed"] is True
    assert (await cli.run("apps", "get", "shop")).exit_code == 3


async def test_protections_list_get_delete(cli: Cli) -> None:
    await applied(cli)
    listed = await cli.run("protections", "list")
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "CHECK", "INTERVAL", "DESCRIPTION"]
    assert row.split()[:4] == ["http-ok", "http", "http://127.0.0.1:{{.Port}}/", "5s"]
    shown = await cli.run("protections", "get", "http-ok")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("protection:\n  name: http-ok") and "httpProbe:" in shown.stdout
    assert (await cli.run("protections", "get", "nope")).exit_code == 3

    attached = await cli.run("protections", "delete", "http-ok", "--yes")
    assert attached.exit_code == 4, attached.output
    assert "still attached to release channels (shop/prod)" in attached.stderr

    assert (await cli.run("delete", "-f", str(EXAMPLES / "services.yaml"), "--yes")).exit_code == 0
    assert (await cli.run("delete", "-f", str(EXAMPLES / "resources.yaml"), "--yes")).exit_code == 0
    assert (await cli.run("apps", "delete", "shop", "--yes")).exit_code == 0
    deleted = await cli.run("protections", "delete", "http-ok", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.startswith("deleted protection http-ok")
    empty = await cli.run("protections", "list", "-o", "json")
    assert json.loads(empty.stdout) == []


async def test_delete_f_removes_what_apply_created_and_again_reports_not_found(cli: Cli) -> None:
    await applied(cli)
    unconfirmed = await cli.run("delete", "-f", str(EXAMPLES))
    assert unconfirmed.exit_code == 2, unconfirmed.output
    assert "--yes" in unconfirmed.stderr
    assert (await cli.run("apps", "get", "shop")).exit_code == 0, "deleted without --yes"

    deleted = await cli.run("delete", "-f", str(EXAMPLES), "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.splitlines() == [
        "deleted service shop/web",
        "deleted service shop/api",
        "unlinked resource shop/shop-db",
        "deleted application shop",
        "deleted protection http-ok",
        "deregistered runtime local",
    ]
    for gone in (("apps", "get", "shop"), ("runtimes", "get", "local"), ("protections", "get", "http-ok")):
        assert (await cli.run(*gone)).exit_code == 3, gone
    head = await cli.api.store.head()

    again = await cli.run("delete", "-f", str(EXAMPLES), "--yes", "-o", "json")
    assert again.exit_code == 0, again.output
    results = json.loads(again.stdout)
    assert [(r["kind"], r["name"], r["result"]) for r in results] == [
        ("service", "shop/web", "not found"),
        ("service", "shop/api", "not found"),
        ("resource", "shop/shop-db", "not found"),
        ("application", "shop", "not found"),
        ("protection", "http-ok", "not found"),
        ("runtime", "local", "not found"),
    ]
    assert await cli.api.store.head() == head, "deleting what does not exist recorded events"

    # And it can all be applied again.
    await applied(cli)


async def test_delete_f_stops_at_a_refusal_with_the_apis_message(cli: Cli) -> None:
    await applied(cli)
    refused = await cli.run("delete", "-f", str(EXAMPLES / "application.yaml"), "--yes")
    assert refused.exit_code == 4, refused.output
    assert 'application.yaml: document 0: application shop: application "shop" still has services' in refused.stderr
    broken = await cli.run("delete", "-f", str(EXAMPLES / "missing.yaml"), "--yes")
    assert broken.exit_code == 2, broken.output
    assert "nothing was sent" in broken.stderr


async def test_on_a_terminal_a_deletion_asks_first(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the terminal check is faked (CliRunner's stdin is never a terminal); the
    answer is read from stdin as a user would type it."""
    await applied(cli)
    monkeypatch.setattr(common, "sys", SimpleNamespace(stdin=SimpleNamespace(isatty=lambda: True)))
    argv = ["services", "delete", "shop", "web", "--endpoint", cli.api.grpc_target, "--token", cli.api.admin]

    def invoke(answer: str) -> Result:
        return CliRunner().invoke(app, argv, input=answer, env=cli.env(), catch_exceptions=False)

    declined = await asyncio.to_thread(invoke, "n\n")
    assert declined.exit_code == 1, declined.output
    assert "Delete service shop/web? [y/N]" in declined.output and "nothing was changed" in declined.stderr
    assert (await cli.run("services", "get", "shop", "web")).exit_code == 0
    agreed = await asyncio.to_thread(invoke, "y\n")
    assert agreed.exit_code == 0, agreed.output
    assert "deleted service shop/web" in agreed.stdout
    assert (await cli.run("services", "get", "shop", "web")).exit_code == 3
