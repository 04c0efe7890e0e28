"""The planner's answer to dry runs: NATS request/reply on
`convoy.<instance>.ctl.planner.plan` (`natsauth.plan_subject`).

The API validates a Deploy and sends the release it would create (`PlannerQuery`); this
responder simulates it on a copy of the running planner's state (`dryrun.simulate`) with
the planner's clock and replies with the `DeployPlan`. A malformed query gets no answer
(the caller times out and reports the planner unavailable) and is logged; it never
touches the planner's own state.

Every planner process subscribes (no queue group) and the one that answers is the one
that plans the application: a standby (not ready: it does not hold the lock) and a
partition that does not own the release's application stay silent, so exactly one
answers — or, while a standby takes over, none (the caller reports the planner
unavailable and may retry).

Only the control plane asks: the subject is in its own `ctl` namespace, outside the
agents' `convoy.<i>.req.<runtime>.>` (a runtime named `planner` must not reach it), and
a query whose reply subject is not a control-plane inbox (`natsauth.is_control_plane_inbox`)
is dropped unanswered — this process publishes with the control plane's credential, so
answering on any reply would write wherever the asker pointed it (DESIGN.md: the control
plane never publishes on a subject an agent chose).
"""

from __future__ import annotations

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from eventstore import natsauth
from eventstore.tasks import describe
from schemas.convoy.v1 import api_pb2, events_pb2
from services.planner.dryrun import simulate
from services.planner.runner import Planner

log = structlog.get_logger("convoy.planner.responder")


class PlanResponder:
    def __init__(self, *, nc: Client, planner: Planner, instance: str) -> None:
        self._nc = nc
        self._planner = planner
        self._subject = natsauth.plan_subject(instance)
        self._subscription: Subscription | None = None
        self.answered = 0
        self.refused = 0
        """Queries dropped because their reply was not a control-plane inbox."""
        self.elsewhere = 0
        """Queries about an application another partition plans (left to it)."""

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._subject, cb=self._answer)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def __aenter__(self) -> PlanResponder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _answer(self, msg: Msg) -> None:
        if not natsauth.is_control_plane_inbox(msg.reply or ""):
            self.refused += 1
            log.warning("dry-run query dropped: its reply is not a control-plane inbox", reply=(msg.reply or "")[:200])
            return
        query = api_pb2.PlannerQuery()
        try:
            query.ParseFromString(msg.data)
        except DecodeError as error:
            log.warning("malformed dry-run query ignored", error=str(error))
            return
        if not self._planner.settings.partition.owns(query.release.application):
            self.elsewhere += 1
            return
        if not query.release.id or not self._planner.ready.is_set():
            if self._planner.role == "standby" and query.release.id:
                return  # the leader answers
            log.warning("dry-run query not answered", reason="no release" if not query.release.id else "planner starting")
            return
        try:
            steps = simulate(
                self._planner.state,
                [events_pb2.ReleaseCreated(release=query.release)],
                now=self._planner.clock.now(),
                actor=query.actor or "dry-run",
            )
        except Exception as error:  # a bug in the simulation must not take the planner down
            log.error("dry run failed", error=describe(error))
            return
        plan = api_pb2.DeployPlan()
        for step in steps:
            out = plan.steps.add(channel=step.channel, action=step.action, runtime=step.runtime, detail=step.detail)
            out.after.FromTimedelta(step.after)
        await msg.respond(plan.SerializeToString())
        self.answered += 1
