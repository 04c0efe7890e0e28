"""`convoy apply`, `validate` and `diff` against a real API, with the example configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eventstore.codec import convoy_registry
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


# -- apply is all or nothing -------------------------------------------------------------

RUNTIME = "runtime:\n  name: local\n  kind: exec\n  exec:\n    apply: [convoy-local, apply]\n"
APPLICATION = "application:\n  name: shop\n  releaseChannels:\n    - name: staging\n      runtimes: [{runtime: local}]\n"


def service_yaml(*resources: str) -> str:
    return (
        "service:\n  application: shop\n  name: web\n  programs:\n    - image: registry.example/web:1\n"
        f"  resources: [{', '.join(resources)}]\n"
    )


async def test_apply_records_nothing_when_the_server_refuses_one_document(cli: Cli, tmp_path: Path) -> None:
    # The scenario: a good new application, then a service naming an unlinked resource.
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a-app.yaml").write_text(RUNTIME + "---\n" + APPLICATION)
    (configs / "b-service.yaml").write_text(service_yaml("db"))
    head = await cli.api.store.head()

    refused = await cli.run("apply", "-f", str(configs))
    assert refused.exit_code == 2, refused.output
    assert await cli.api.store.head() == head, "documents before the refused one were recorded"
    apps = await cli.run("apps", "list", "--output", "json")
    assert apps.exit_code == 0 and "shop" not in apps.stdout, apps.stdout
    assert f"{configs / 'b-service.yaml'}: document 0: service shop/web: " in refused.stderr, refused.stderr
    assert "service.resources[0]" in refused.stderr and 'resource "db" is not linked' in refused.stderr
    assert "nothing was applied" in refused.stderr


async def test_apply_records_the_whole_set_in_one_commit(cli: Cli, tmp_path: Path) -> None:
    # The service names a resource the same set links (it sorts before the service).
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "all.yaml").write_text(
        service_yaml("db") + "---\n" + RUNTIME + "---\n" + APPLICATION
        + "---\nresource:\n  name: db\n  application: shop\n  kind: database\n"
    )
    head = await cli.api.store.head()
    applied = await cli.run("apply", "-f", str(configs), "--output", "json")
    assert applied.exit_code == 0, applied.output
    results = json.loads(applied.stdout)
    assert [(r["kind"], r["name"], r["result"]) for r in results] == [
        ("runtime", "local", "created"),
        ("application", "shop", "created"),
        ("resource", "shop/db", "created"),
        ("service", "shop/web", "created"),
    ]
    events = await cli.api.store.read_all(after=head)
    assert [e.position for e in events] == list(range(head + 1, head + 5))
    assert {r["position"] for r in results} == {head + 4}, "not one write"
    assert len({e.correlation_id for e in events}) == 1
    transactions = await cli.api.store.pool.fetch("SELECT DISTINCT xmin::text FROM events WHERE position > $1", head)
    assert len(transactions) == 1, "the set was recorded by several transactions"

    again = await cli.run("apply", "-f", str(configs), "--output", "json")
    assert again.exit_code == 0, again.output
    assert {r["result"] for r in json.loads(again.stdout)} == {"unchanged"}
    assert await cli.api.store.head() == head + 4


async def test_apply_with_a_deployer_token_is_refused_whole(cli: Cli) -> None:
    created = await cli.run("tokens", "create", "ci", "--role", "deployer", "--output", "json")
    assert created.exit_code == 0, created.output
    secret = json.loads(created.stdout)["secret"]
    head = await cli.api.store.head()
    refused = await cli.run("apply", "-f", str(EXAMPLES), token=secret)
    assert refused.exit_code == 5, refused.output
    assert ": runtime local: " in refused.stderr and "needs the admin role" in refused.stderr, refused.stderr
    assert "nothing was applied" in refused.stderr
    assert await cli.api.store.head() == head


async def test_files_without_documents_are_refused_by_apply_validate_diff_and_delete(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    comments = tmp_path / "commented-out"
    comments.mkdir()
    (comments / "a.yaml").write_text("# application:\n#   name: shop\n---\n")
    head = await cli.api.store.head()
    for path in (empty, comments):
        for args in (("apply",), ("validate",), ("diff",), ("delete", "--yes")):
            result = await (cli.raw if args == ("validate",) else cli.run)(*args, "-f", str(path))
            assert result.exit_code == 2, (args, path, result.output)
            assert f"no documents in {path}" in result.stderr, (args, result.stderr)
            assert "0 documents OK" not in result.stdout
    assert await cli.api.store.head() == head


GATE_YAML = """\
protection:
  name: change-approved
  externalApproval:
    url: "https://snow.example/api/now/table/change_request?sysparm_query=number%3D{{.Params.ticket}}"
    secretHeaders:
      Authorization:
        env: SNOW_AUTHORIZATION
    success: 'status == 200 and body.result[0].approval == "approved"'
    failure: 'body.result[0].approval == "rejected"'
    ticket: body.result[0].number
    pollInterval: 30s
    timeout: 2h
"""


async def test_a_yaml_external_approval_applies_and_a_bad_expression_is_named(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good" / "gate.yaml"
    good.parent.mkdir()
    good.write_text(GATE_YAML)
    applied = await cli.run("apply", "-f", str(good.parent), "--output", "json")
    assert applied.exit_code == 0, applied.output
    assert [(r["kind"], r["name"], r["result"]) for r in json.loads(applied.stdout)] == [
        ("protection", "change-approved", "created")]
    [event] = await cli.api.store.read_stream("protection/change-approved")
    recorded = convoy_registry().decode(event).message.protection.external_approval
    assert recorded.secret_headers["Authorization"].env == "SNOW_AUTHORIZATION"
    assert recorded.poll_interval.seconds == 30 and recorded.timeout.seconds == 7200

    bad = tmp_path / "bad" / "gate.yaml"
    bad.parent.mkdir()
    bad.write_text(GATE_YAML.replace('approval == "rejected"', 'approval = "rejected"'))
    result = await cli.raw("validate", "-f", str(bad.parent))
    assert result.exit_code == 2, result.output
    assert "protection.externalApproval.failure: at column 25: unexpected character '='" in result.stderr, result.stderr
