"""Deploy preview: what a deploy would do, channel by channel, before anything is recorded.

The planner simulates the deploy on a copy of its state (`PlanDeploy`, a dry run); the
page shows each step with its simulated time, and a deployer confirms with the same
fields to record the deploy itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.convoy.v1 import api_pb2
from services.api.errors import invalid
from services.api.ui import present
from services.api.ui.client import UiClient
from services.api.ui.views import common


def parameters(text: str) -> dict[str, str]:
    """`key=value` lines (blank lines ignored) as a deploy's parameters."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise invalid("params", f"line {number}: expected key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True, slots=True)
class PlanStep:
    after: str
    channel: str
    action: str
    runtime: str
    detail: str


async def load(client: UiClient, query: Mapping[str, str], application: str, service: str) -> common.Page:
    version = query.get("version", "").strip()
    image = query.get("image", "").strip()
    params = query.get("params", "")
    steps: list[PlanStep] = []
    if version and client.as_of is not None:
        raise invalid("at", "a deploy preview plans from now: leave the past (Back to now) to preview one")
    if version:
        plan = await client.write(
            "PlanDeploy",
            api_pb2.PlanDeployRequest(
                application=application, service=service, version=version, image=image, parameters=parameters(params)
            ),
        )
        assert isinstance(plan, api_pb2.DeployPlan)
        steps = [
            PlanStep(
                "+" + present.duration(s.after.seconds + s.after.nanos / 1e9), s.channel, s.action, s.runtime, s.detail
            )
            for s in plan.steps
        ]
    return common.Page(
        "preview.html",
        f"Deploy {application}/{service}",
        {"application": application, "service": service, "version": version, "image": image, "params": params, "steps": steps},
        client.api.position,
    )
