"""`convoy apply`, `validate` and `diff` against a real API, with the example configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.conftest import Cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def test_apply_twice_creates_then_reports_everything_unchanged(cli: Cli) -> None:
    first = await cli.run("apply", "-f", str(EXAMPLES), "--output", "json")
    assert first.exit_code == 0, first.output
    results = json.loads(first.stdout)
    assert {(r["kind"], r["name"]) for r in results} == {
        ("runtime", "local"),
        ("protection", "http-ok"),
        ("application", "shop"),
        ("resource", "shop/shop-db"),
        ("service", "shop/web"),
        ("service", "shop/api"),
    }
    assert {r["result"] for r in results} == {"created"}, results
    head = await cli.api.store.head()

    second = await cli.run("apply", "-f", str(EXAMPLES))
    assert second.exit_code == 0, second.output
    lines = [line.split() for line in second.stdout.splitlines()[1:]]
    assert len(lines) == 6 and all(line[2] == "unchanged" for line in lines), second.stdout
    assert await cli.api.store.head() == head, "applying the same files again recorded events"


async def test_apply_reports_updated(cli: Cli, tmp_path: Path) -> None:
    configs = tmp_path / "shop"
    shutil.copytree(EXAMPLES, configs)
    assert (await cli.run("apply", "-f", str(configs))).exit_code == 0
    app_file = configs / "application.yaml"
    app_file.write_text(app_file.read_text().replace("team: storefront", "team: checkout"))
    again = await cli.run("apply", "-f", str(configs), "--output", "json")
    assert again.exit_code == 0, again.output
    outcome = {r["name"]: r["result"] for r in json.loads(again.stdout)}
    assert outcome["shop"] == "updated"
    assert outcome["shop/api"] == "unchanged"


async def test_validate_reports_file_document_and_field_and_exits_2(cli: Cli, tmp_path: Path) -> None:
    good = await cli.raw("validate", "-f", str(EXAMPLES))
    assert good.exit_code == 0, good.output
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "runtime:\n  name: ok\n  kind: exec\n  exec:\n    apply: [x]\n---\n"
        "application:\n  name: shop\n  releaseChanels: []\n"
    )
    result = await cli.raw("validate", "-f", str(broken))
    assert result.exit_code == 2, result.output
    assert f"{broken}: document 1: application.releaseChanels" in result.stderr, result.stderr
    assert "releaseChannels" in result.stderr  # the suggestion


async def test_validate_needs_no_server(cli: Cli) -> None:
    result = await cli.raw("validate", "-f", str(EXAMPLES), CONVOY_ENDPOINT="127.0.0.1:1")
    assert result.exit_code == 0, result.output
    assert "6 documents OK" in result.stdout


async def test_diff_shows_a_change_and_exits_1(cli: Cli, tmp_path: Path) -> None:
    configs = tmp_path / "shop"
    shutil.copytree(EXAMPLES, configs)
    assert (await cli.run("apply", "-f", str(configs))).exit_code == 0
    same = await cli.run("diff", "-f", str(configs))
    assert same.exit_code == 0, same.output
    assert "no differences" in same.stdout

    services = configs / "services.yaml"
    services.write_text(services.read_text().replace("replicas: 1", "replicas: 3", 1))
    changed = await cli.run("diff", "-f", str(configs))
    assert changed.exit_code == 1, changed.output
    assert "-  replicas: 1" in changed.stdout and "+  replicas: 3" in changed.stdout, changed.stdout
    assert "service/shop/web" in changed.stdout
    as_json = await cli.run("diff", "-f", str(configs), "--output", "json")
    assert as_json.exit_code == 1
    assert [(c["kind"], c["name"]) for c in json.loads(as_json.stdout)] == [("service", "shop/web")]
