"""A provisioned instance, run the way an operator runs one on shared servers.

`convoy instances create` on a shared PostgreSQL (the admin URL), `convoy nats-users
--all-instances` rendered into a shared nats-server, then `convoy api` and `convoy planner`
started with nothing but the instance's env file, the NATS URL and a state folder: they
run as the instance's least-privileged database role and as its NATS system user, in its
own account. Declarations are recorded, the planner answers a dry run over the bus, and a
deploy makes the planner record intents — every service writing through the grants
`eventstore.instances` gives, none of which lets it alter the log.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import asyncpg

from eventstore.embedded import NatsServer
from tests.conftest import eventually
from tests.e2e.processes import ROOT, convoy, service_process as process

EXAMPLES = ROOT / "examples" / "shop"


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


async def test_a_provisioned_instance_runs_on_its_own_role_and_account(tmp_path: Path, database_url: str) -> None:
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    admin = base | {"CONVOY_STATE_DIR": str(tmp_path / "operator"), "CONVOY_ADMIN_DATABASE_URL": database_url}

    code, out = await convoy(admin, "instances", "create", name, "--max-streams", "10", "--max-connections", "50")
    assert code == 0, out
    env_file = tmp_path / "operator" / "instances" / f"{name}.env"
    settings = read_env_file(env_file)
    assert settings["CONVOY_INSTANCE"] == name
    assert settings["CONVOY_NATS_PASSWORD"] not in out and settings["CONVOY_DATABASE_URL"] not in out

    accounts = tmp_path / "accounts.conf"
    code, out = await convoy(admin, "nats-users", "--all-instances", "--output", str(accounts))
    assert code == 0, out
    nats = NatsServer(data_dir=tmp_path / "nats", config_extra=accounts.read_text())
    nats.start()
    try:
        env = base | settings | {
            "CONVOY_NATS_URL": nats.url, "CONVOY_STATE_DIR": str(tmp_path / "state"),
            "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
        }
        async with (
            process(env, "api", "--grpc-port", "0", "--http-port", "0", ready="press Ctrl-C"),
            process(env, "planner", "--ops-port", "0", ready="press Ctrl-C"),
        ):
            code, out = await convoy(env, "apply", "-f", str(EXAMPLES))
            assert code == 0, out
            code, plan = await convoy(env, "deploy", "shop/web", "--version", "v1", "--dry-run")
            assert code == 0 and "nothing recorded" in plan, plan
            code, out = await convoy(env, "deploy", "shop/web", "--version", "v1")
            assert code == 0, out

            async def intents() -> bool:
                code, out = await convoy(env, "events", "--app", "shop", "--type", "IntentIssued")
                return code == 0 and "IntentIssued" in out

            await eventually(intents, timeout=120)

        role = await asyncpg.connect(settings["CONVOY_DATABASE_URL"])
        try:
            assert await role.fetchval(f"SELECT count(*) FROM {name}.events") > 0
            refused = await role.fetchval(
                f"SELECT has_table_privilege(current_user, '{name}.events', 'UPDATE, DELETE, TRUNCATE')"
            )
            assert refused is False
        finally:
            await role.close()
    finally:
        nats.stop()
        code, out = await convoy(admin, "instances", "delete", name, "--yes", "--force")
        assert code == 0, out
