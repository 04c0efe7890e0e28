"""The README's story, end to end, on `convoy up --demo` with real local processes:
v1 through staging → prod with the approval and the soak; v2 with a failing health check
rolled back in staging while prod stays on v1; pause/resume; the whole control plane
killed mid-rollout and restarted finishes exactly once, recovering its state from the
store; the replay check agrees with the record; Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.processes import ConvoyProcess, convoy, convoy_process
from tests.webhooks import PATH, Receiver, receiving


def convoy_up(state: Path, env: dict[str, str]) -> AbstractAsyncContextManager[ConvoyProcess]:
    return convoy_process(
        env, "up", "--demo", "--state-dir", str(state), "--grpc-port", "0", "--http-port", "0", "--ops-port", "0"
    )


async def channels(env: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    code, out = await convoy(env, "status", "shop", "-o", "json")
    assert code == 0, out
    return {(c["service"], c["channel"]): c for c in json.loads(out)["channels"]}


async def status_rows(env: dict[str, str]) -> dict[tuple[str, str], str]:
    """`convoy status shop` as a person reads it: (service, channel) -> its table line."""
    code, out = await convoy(env, "status", "shop")
    assert code == 0, out
    rows, channel = {}, ""
    for line in out.splitlines():
        if line.startswith("channel "):
            channel = line.split()[1]
        elif line.split() and line.split()[0] in ("web", "api"):
            rows[(line.split()[0], channel)] = line
    return rows


async def reaches(env: dict[str, str], wanted: dict[tuple[str, str], tuple[str, str]], timeout: float = 120) -> None:
    """Wait until each (service, channel) shows (version, status)."""

    async def check() -> bool:
        found = await channels(env)
        return all(
            (found.get(k, {}).get("version"), found.get(k, {}).get("status", "").removeprefix("INSTANCE_STATUS_")) == v
            for k, v in wanted.items()
        )

    await eventually(check, timeout=timeout, interval=0.5, message=f"status {wanted}")


@pytest.fixture
async def webhook() -> AsyncIterator[Receiver]:
    async with receiving() as found:
        yield found


def notified(hook: Receiver, prefix: str) -> bool:
    return any(text.startswith(prefix) for text in hook.texts())


async def test_the_demo_story(tmp_path: Path, webhook: Receiver) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env |= {"CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(tmp_path / "no-config.toml")}
    env |= {"CONVOY_NOTIFY_WEBHOOK": webhook.url}  # the chat channel that hears about approvals and failures

    async with convoy_up(state, env) as up:
        output = "".join(up.lines)
        assert "demo: deployed shop/web v1" in output and "demo: deployed shop/api v1" in output, output
        # The README's first command leaves staging converged and prod waiting for approval.
        await reaches(env, {("web", "staging"): ("v1", "CONVERGED"), ("api", "staging"): ("v1", "CONVERGED"),
                            ("web", "prod"): ("v1", "WAITING_APPROVAL"), ("api", "prod"): ("v1", "WAITING_APPROVAL")})
        rows = await status_rows(env)
        assert rows[("web", "staging")].split()[:3] == ["web", "v1", "1/1"], rows
        assert rows[("web", "prod")].split()[:3] == ["web", "nothing", "0/1"], rows
        assert "v1 waiting for 1 approval of prod-signoff" in rows[("web", "prod")], rows
        # ... and the webhook was told that prod waits for an approval.
        await eventually(lambda: notified(webhook, "shop/web v1 in prod: WAITING_APPROVAL — waiting for 1 approval"),
                         message="approval-needed notification")
        assert "notifying:" in up.output and PATH not in up.output

        # Pause prod for api: its approval does not move it until it is resumed.
        assert (await convoy(env, "pause", "shop/api", "--channel", "prod", "--reason", "freeze"))[0] == 0
        assert (await convoy(env, "approve", "shop/api", "--channel", "prod"))[0] == 0
        await reaches(env, {("api", "prod"): ("v1", "PAUSED")})
        assert (await convoy(env, "resume", "shop/api", "--channel", "prod"))[0] == 0

        # Approve web in prod: it deploys and soaks behind the HTTP probe, then converges.
        assert (await convoy(env, "approve", "shop/web", "--channel", "prod"))[0] == 0
        code, why = await convoy(env, "why", "shop/web", "--channel", "prod", "--no-evidence")
        assert code == 0 and why.startswith("prod v1: "), why
        await reaches(env, {("web", "prod"): ("v1", "CONVERGED"), ("api", "prod"): ("v1", "CONVERGED")}, timeout=150)
        before_v2 = time.time()

        # A bad release: its health check fails, staging rolls back, prod stays on v1.
        code, out = await convoy(env, "deploy", "shop/web", "--version", "v2", "--param", "docroot=/nonexistent",
                                 "--wait", "--timeout", "150")
        assert code == 1, out
        assert "staging ROLLED_BACK: rolled back to v1" in out, out
        code, why = await convoy(env, "why", "shop/web", "--channel", "staging")
        assert code == 0 and "ROLLED_BACK: rolled back to v1" in why and "ObservationRecorded by agent:local" in why, why
        await eventually(lambda: notified(webhook, "shop/web v2 in staging: ROLLED_BACK — rolled back to v1"),
                         message="rollback notification")
        prod = (await channels(env))[("web", "prod")]
        assert {t["version"] for t in prod["targets"]} == {"v1"}, prod  # prod never ran v2
        # What status says: both run v1; v2 failed and was rolled back in staging, never reached prod.
        rows = await status_rows(env)
        assert rows[("web", "prod")].split()[:3] == ["web", "v1", "1/1"], rows
        assert rows[("web", "prod")].endswith("v2 not promoted: staging rolled back"), rows
        assert rows[("web", "staging")].split()[:3] == ["web", "v1", "1/1"], rows
        assert "v2 failed; rolled back to v1: " in rows[("web", "staging")] and "<" not in rows[("web", "staging")], rows
        # How it stood before v2 (the README asks "2m" ago; a subprocess's clock reading
        # comes a moment later than ours, so the test names the time itself).
        then_at = datetime.fromtimestamp(before_v2, UTC).isoformat()
        code, past = await convoy(env, "status", "shop", "--at", then_at, "-o", "json")
        assert code == 0, past
        then = {(c["service"], c["channel"]): c for c in json.loads(past)["channels"]}
        assert (then[("web", "staging")]["version"], then[("web", "staging")]["status"]) == (
            "v1", "INSTANCE_STATUS_CONVERGED"
        ), past

        # A new release, and the whole control plane killed (-9) in the middle of it.
        code, out = await convoy(env, "deploy", "shop/api", "--version", "v3")
        assert code == 0, out
        assert await up.stop(signal.SIGKILL) == -signal.SIGKILL

    # Everything restarted recovers its state from the store and finishes the rollout once.
    async with convoy_up(state, env) as up:
        assert "demo: deployed" not in "".join(up.lines)  # nothing deployed twice on restart
        await reaches(env, {("api", "staging"): ("v3", "CONVERGED"), ("api", "prod"): ("v3", "WAITING_APPROVAL")})
        code, report = await convoy(env, "replay", "--check")
        assert code == 0 and "0 difference(s)" in report, report
        code, out = await convoy(env, "events", "--type", "IntentIssued", "-o", "json")
        intents = [json.loads(line) for line in out.splitlines()]
        streams = Counter((e["streamId"], json.loads(e["json"])["generation"]) for e in intents)
        assert intents and max(streams.values()) == 1, streams  # no intent issued twice
        # `convoy down` stops it from another terminal, as Ctrl-C would.
        code, out = await convoy(env, "down")
        assert code == 0 and "stopped convoy up" in out, out
        assert await up.stop() == 0
        assert (await convoy(env, "down"))[1].startswith("no convoy up is running")
        rest = "".join(up.lines)
        assert "stopped" in rest and "Traceback" not in rest and "Task was destroyed" not in rest, rest[-3000:]
