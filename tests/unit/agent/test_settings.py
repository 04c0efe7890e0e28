"""The agent's consumer settings: cheap when idle, and still a pull request nats-server takes."""

from __future__ import annotations

from services.agent.agent import AgentSettings


def test_an_idle_agent_asks_for_few_heartbeats_and_notices_a_lost_request_within_seconds() -> None:
    s = AgentSettings(instance="i", runtime="r").subscription
    assert s.heartbeat <= s.fetch_timeout / 2  # the server refuses a heartbeat above half the expiry
    # per idle second: one heartbeat per `heartbeat`, one new request per `fetch_timeout`
    assert 1 / s.heartbeat + 1 / s.fetch_timeout < 0.5
    assert s.missed_heartbeats * s.heartbeat <= 10
