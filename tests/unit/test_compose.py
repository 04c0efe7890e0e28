"""compose.yaml and the Dockerfile: valid, and consistent with the CLI they run.

No Docker engine runs in CI, so this checks what can be checked without one: compose.yaml
against the Compose Specification's JSON schema (vendored in tests/fixtures, see
compose-spec.SOURCE.md — never fetched at test time); every Convoy service's command
parses as a real `convoy` invocation (typer's own parser, so a renamed command or flag
fails here); the environment it sets is what the code reads; and the Dockerfile builds
the package, runs as the non-root user the Kubernetes manifest expects, and has `convoy`
as its entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"


def validator() -> jsonschema.protocols.Validator:
    """The schema says draft 2019-09 in a spelling jsonschema does not look up
    ("http://…/schema#"), so name the draft explicitly."""
    schema = json.loads(SCHEMA.read_text())
    assert "draft/2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def convoy_services() -> dict[str, dict[str, Any]]:
    """The services built from ./Dockerfile (the ones that run `convoy`)."""
    return {name: s for name, s in compose()["services"].items() if "build" in s}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.read_text().splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def env_of_dockerfile() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def parse_convoy(args: list[str]) -> Any:
    """Parse `convoy ARGS` the way the CLI would (types, required options), without running it."""
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="convoy")
    assert args, "empty command"
    command = group.get_command(ctx, args[0])  # type: ignore[attr-defined]
    assert command is not None, f"`convoy {args[0]}` is not a command; commands: {group.list_commands(ctx)}"  # type: ignore[attr-defined]
    return command.make_context(args[0], list(args[1:]), parent=ctx)


# ---------------------------------------------------------------------------------------
# compose.yaml


def test_the_vendored_schema_is_the_compose_specification() -> None:
    assert validator().schema["title"] == "Compose Specification"


def test_compose_yaml_validates_against_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_mistake() -> None:
    """Guard against a schema that accepts anything."""
    broken = compose()
    broken["services"]["agent"]["depends_on"] = {"api": {"condition": "when_it_feels_like_it"}}
    broken["services"]["nats"]["helthcheck"] = {}
    assert len(list(validator().iter_errors(broken))) >= 2


def test_compose_runs_nats_with_jetstream_postgres_with_a_health_check_and_convoy() -> None:
    services = compose()["services"]
    assert set(services) == {"nats", "postgres", "api", "planner", "agent"}
    assert services["nats"]["image"].startswith("nats:")
    assert "-js" in services["nats"]["command"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "healthcheck" in services["postgres"]
    assert set(convoy_services()) == {"api", "planner", "agent"}


@pytest.mark.parametrize("name", sorted(convoy_services()))
def test_each_convoy_service_runs_a_real_convoy_command(name: str) -> None:
    service = convoy_services()[name]
    assert service["build"] == "."
    ctx = parse_convoy(service["command"])
    assert ctx.command.name in {"api", "planner", "agent"}


def test_the_api_and_the_planner_use_the_external_servers() -> None:
    services = compose()["services"]
    for name, command in (("api", "api"), ("planner", "planner")):
        service = services[name]
        assert parse_convoy(service["command"]).command.name == command
        env = service["environment"]
        assert re.fullmatch(r"postgresql://convoy:[^@]+@postgres:5432/convoy", env["CONVOY_DATABASE_URL"])
        assert env["CONVOY_NATS_URL"] == "nats://nats:4222"
    api = services["api"]
    assert parse_convoy(api["command"]).params["host"] == "0.0.0.0"
    assert all(port.startswith("127.0.0.1:") for port in api["ports"]), "published on the host's loopback only"
    assert {s: d["condition"] for s, d in api["depends_on"].items()} == {
        "nats": "service_healthy",
        "postgres": "service_healthy",
    }
    assert services["planner"]["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_the_agent_dials_only_nats_and_serves_the_examples_runtime() -> None:
    agent = compose()["services"]["agent"]
    ctx = parse_convoy(agent["command"])
    assert ctx.command.name == "agent"
    runtime = yaml.safe_load((ROOT / "examples" / "shop" / "runtime.yaml").read_text())["runtime"]["name"]
    assert ctx.params["runtime"] == runtime
    assert "CONVOY_DATABASE_URL" not in agent["environment"], "agents never reach PostgreSQL"
    assert agent["environment"]["CONVOY_NATS_URL"] == "nats://nats:4222"
    # Its health check asks the port its command says /healthz is on.
    port = ctx.params["health"].rsplit(":", 1)[1]
    assert f":{port}/healthz" in " ".join(agent["healthcheck"]["test"])


def test_every_convoy_variable_compose_sets_is_one_the_code_reads() -> None:
    code = "\n".join(p.read_text() for p in [*(ROOT / "cli").rglob("*.py"), ROOT / "eventstore" / "settings.py"])
    for name, service in convoy_services().items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: write environment as a mapping"
        for key in env:
            assert key.startswith("CONVOY_"), f"{name}: {key}"
            assert f'"{key}"' in code, f"{name}: nothing in cli/ or eventstore/settings.py reads {key}"
        assert env.get("CONVOY_INSTANCE") == "convoy"


def test_convoy_services_keep_their_state_in_the_images_state_folder() -> None:
    state_dir = env_of_dockerfile()["CONVOY_STATE_DIR"]
    declared = set(compose()["volumes"])
    for name, service in convoy_services().items():
        mounts = dict(v.split(":", 1) for v in service["volumes"])
        assert state_dir in mounts.values(), f"{name} mounts no volume on {state_dir}"
        assert set(mounts) <= declared


# ---------------------------------------------------------------------------------------
# Dockerfile


def test_the_dockerfile_installs_the_package_on_python_311_slim() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    assert any(re.search(r"\bpip install \.(\s|$)", run) for run in instructions("RUN"))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {src for args in instructions("COPY") for src in args.split()[:-1]}
    for package in packages:
        assert package.rstrip("*") in copied, f"the Dockerfile does not copy {package.rstrip('*')}/"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert not copied & ignored, f".dockerignore excludes what the Dockerfile copies: {copied & ignored}"


def test_the_image_runs_convoy_as_the_non_root_user_the_kubernetes_manifest_expects() -> None:
    (user,) = instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "run as a numeric non-root uid (runAsNonRoot needs a number)"
    assert any(f"--uid {uid}" in run for run in instructions("RUN")), "the user is created with that uid"
    manifest = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "agent.yaml").read_text()) if d]
    (deployment,) = [d for d in manifest if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    (container,) = pod["containers"]
    assert container["command"][0] == "convoy"
    assert parse_convoy([a.replace("$(RUNTIME)", "my-cluster") for a in container["command"][1:]]).command.name == "agent"


def test_the_entrypoint_is_the_convoy_script_and_the_default_command_parses() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["convoy"]
    assert scripts["convoy"] == "cli.main:app"
    (cmd,) = instructions("CMD")
    assert json.loads(cmd) == ["--help"]
    env = env_of_dockerfile()
    assert instructions("VOLUME") == [json.dumps([env["CONVOY_STATE_DIR"]])]
    assert env["HOME"] == env["CONVOY_STATE_DIR"]
