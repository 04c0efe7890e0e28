"""The control plane as separate processes on servers it did not start (what compose.yaml
and production run): `convoy api`, `convoy planner` and `convoy agent` on
CONVOY_DATABASE_URL / CONVOY_NATS_URL, driven by the CLI — a release converges in staging
through a real agent running local processes, and a dry run is answered by the planner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncpg

from eventstore.embedded import NatsServer
from tests.conftest import eventually
from tests.e2e.processes import ROOT, convoy, service_process as process
from tests.webhooks import PATH, receiving

EXAMPLES = ROOT / "examples" / "shop"


async def test_api_planner_and_agent_as_separate_processes(
    tmp_path: Path, database_url: str, schema_name: str, embedded_nats: NatsServer
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env = base | {
        "CONVOY_DATABASE_URL": database_url, "CONVOY_NATS_URL": embedded_nats.url, "CONVOY_INSTANCE": schema_name,
        "CONVOY_STATE_DIR": str(tmp_path / "state"), "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    try:
        async with (
            receiving() as webhook,
            process(env, "api", "--grpc-port", "0", "--http-port", "0", ready="press Ctrl-C"),
            process(env, "planner", "--ops-port", "0", ready="press Ctrl-C"),
            process(env | {"CONVOY_NOTIFY_WEBHOOK": webhook.url}, "notify", "--on", "waiting_approval",
                    "--format", "slack", ready="press Ctrl-C") as notifier,
        ):
            code, out = await convoy(env, "apply", "-f", str(EXAMPLES))
            assert code == 0, out
            agent_state = str(tmp_path / "agent")
            async with process(env, "agent", "--runtime", "local", "--state-dir", agent_state, "--instance", schema_name,
                               ready="agent ready"):
                code, plan = await convoy(env, "deploy", "shop/web", "--version", "v1", "--dry-run")
                assert code == 0 and "nothing recorded" in plan and "waiting for 1 approval" in plan, plan
                code, out = await convoy(env, "deploy", "shop/web", "--version", "v1", "--wait", "--timeout", "90")
                assert code == 0, out
                assert "staging: CONVERGED" in out and "prod needs a person" in out, out

                async def staging_runs_v1() -> bool:
                    code, out = await convoy(env, "status", "shop", "-o", "json")
                    found = {(c["service"], c["channel"]): c for c in json.loads(out)["channels"]} if code == 0 else {}
                    web = found.get(("web", "staging"), {})
                    return [t.get("status") for t in web.get("targets", [])] == ["INSTANCE_STATUS_CONVERGED"]

                await eventually(staging_runs_v1, timeout=60, interval=0.5, message="staging runs v1")
                # `convoy notify` told the webhook (Slack's shape) that prod waits, and only that.
                await eventually(lambda: bool(webhook.received), message="a notification")
                assert [body["text"][:40] for body in webhook.bodies()] == ["shop/web v1 in prod: WAITING_APPROVAL — "]
                assert PATH not in "".join(notifier)
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
        finally:
            await conn.close()
