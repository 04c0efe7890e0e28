"""The administration commands — runtimes (credential, pause, resume, label, deregister) —
against a real API on PostgreSQL, with the example configs."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from cli.commands.agent import read_secret
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
