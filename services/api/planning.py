"""Dry runs of Deploy: validated here, simulated by the planner.

The API owns the command's rules (`decide` turns PlanDeploy's fields into the release a
Deploy would create, with every validation a real deploy gets); the planner owns the
convergence rules and the state they run on. So the API asks the planner over NATS
request/reply (`natsauth.plan_subject`: `convoy.<instance>.ctl.planner.plan`, which no
agent may publish on; the planner answers only on the control plane's own inboxes) to fold that release onto a copy
of its state and answer the plan. Nothing is recorded on either side. Services talk
only through the bus and the API — this is the bus.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import nats.errors
from nats.aio.client import Client

from eventstore import natsauth
from eventstore.errors import Unavailable
from schemas.convoy.v1 import api_pb2, events_pb2
from services.api.auth import Principal
from services.api.domain import Command, Minted, State, decide
from services.api.images import ImageResolver


def plan_subject(instance: str) -> str:
    return natsauth.plan_subject(instance)


class PlannerClient(Protocol):
    async def plan(self, query: api_pb2.PlannerQuery) -> api_pb2.DeployPlan: ...


class NatsPlannerClient:
    def __init__(self, *, nc: Client, instance: str, timeout: float = 15.0) -> None:
        self._nc = nc
        self._subject = plan_subject(instance)
        self._timeout = timeout

    async def plan(self, query: api_pb2.PlannerQuery) -> api_pb2.DeployPlan:
        try:
            reply = await self._nc.request(self._subject, query.SerializeToString(), timeout=self._timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as error:
            raise Unavailable(
                "no planner answered the dry run; is the planner running (`convoy up` or `convoy planner`)? retry shortly"
            ) from error
        except nats.errors.Error as error:
            raise Unavailable(f"asking the planner for a dry run failed: {error}") from error
        plan = api_pb2.DeployPlan()
        plan.ParseFromString(reply.data)
        return plan


def deploy_request(request: api_pb2.PlanDeployRequest) -> api_pb2.DeployRequest:
    return api_pb2.DeployRequest(
        application=request.application,
        service=request.service,
        version=request.version,
        image=request.image,
        parameters=dict(request.parameters),
    )


async def plan_deploy(
    planner: PlannerClient | None,
    state: State,
    request: api_pb2.PlanDeployRequest,
    principal: Principal,
    *,
    images: ImageResolver | None = None,
) -> api_pb2.DeployPlan:
    """The dry run of a Deploy; its registry images are resolved as a real deploy's are
    (a tag that does not exist fails the dry run the same way)."""
    deploy = deploy_request(request)
    digests = await images.resolve(state, deploy) if images is not None else {}
    command = Command(
        deploy, principal.name, principal.role, Minted(release_id=f"dry-run-{uuid.uuid4().hex[:12]}"), "Deploy",
        images=digests,
    )
    decision = decide(state, command)
    release = next(e.event.release for e in decision.events if isinstance(e.event, events_pb2.ReleaseCreated))
    if planner is None:
        raise Unavailable("this API has no connection to the planner (NATS), so it cannot answer dry runs")
    plan = await planner.plan(api_pb2.PlannerQuery(release=release, actor=principal.name))
    plan.release.CopyFrom(release)
    return plan
