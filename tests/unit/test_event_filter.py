"""ListEvents and Watch with an application: every event about it — its commands, the
planner's decisions and rejections, its agents' observations — and nothing of another
application or of the infrastructure. On the in-memory store (the filter is the API's)."""

from __future__ import annotations

from google.protobuf.message import Message

from eventstore.codec import convoy_registry
from eventstore.memory import MemoryEventStore
from schemas.convoy.v1 import api_pb2
from schemas.convoy.v1 import convergence_pb2 as C
from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services.api import events

REGISTRY = convoy_registry()


def rejected(app: str) -> E.PlannerInputRejected:
    return E.PlannerInputRejected(position=1, event_type="convoy.v1.ReleaseCreated", error="KeyError: boom", application=app)


def observed(app: str) -> E.ObservationRecorded:
    return E.ObservationRecorded(observation=C.Observation(
        observation_id=f"obs-{app}", runtime="local", namespace=f"{app}-staging", application=app, service="web",
        kind=C.OBSERVATION_KIND_HEALTHY,
    ))


LOG: list[tuple[str, Message, bool]] = [
    # (stream, event, about shop?)
    ("runtime/local", E.RuntimeRegistered(runtime=R.Runtime(name="local", kind=R.RUNTIME_KIND_EXEC)), False),
    ("app/shop", E.ApplicationCreated(application=R.Application(name="shop")), True),
    ("app/shopping", E.ApplicationCreated(application=R.Application(name="shopping")), False),
    ("release/shop/web", E.ReleaseCreated(release=R.Release(id="rel-1", application="shop", service="web", version="v1")), True),
    ("planner/planner", E.PlannerVersionStarted(version=2, previous_version=1), False),
    ("intent/local/shop-staging/shop/web", E.IntentIssued(intent_id="int-1", target=C.Target(runtime="local")), True),
    ("convergence/shop/web/staging", E.InstanceStatusChanged(application="shop", service="web", channel="staging",
                                                             new_status=C.INSTANCE_STATUS_DEPLOYING), True),
    ("convergence/shopping/web/staging", E.InstanceStatusChanged(application="shopping", service="web"), False),
    ("observation/local/shop-staging/shop/web", observed("shop"), True),
    ("observation/local/shopping-staging/shopping/web", observed("shopping"), False),
    ("timer/shop/web/staging", E.TimerFired(timer_id="t-1"), True),
    ("planner/planner", rejected("shop"), True),
    ("planner/planner", rejected("shopping"), False),
]


async def recorded_log() -> MemoryEventStore:
    store = MemoryEventStore()
    for stream, message, _ in LOG:
        await store.append(stream, [REGISTRY.encode(message, actor="planner")])
    return store


def names(found: list[api_pb2.Event]) -> list[tuple[str, str]]:
    return [(e.stream_id, e.type.rsplit(".", 1)[-1]) for e in found]


EXPECTED = [(stream, message.DESCRIPTOR.name) for stream, message, about in LOG if about]


async def test_list_events_of_an_application_has_its_commands_decisions_and_observations() -> None:
    store = await recorded_log()

    page = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest(application="shop"))

    assert names(list(page.events)) == EXPECTED
    assert {"InstanceStatusChanged", "IntentIssued", "ObservationRecorded", "PlannerInputRejected"} <= {
        t for _, t in names(list(page.events))
    }
    everything = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest())
    assert len(everything.events) == len(LOG)


async def test_list_events_pages_through_an_application_across_scans() -> None:
    store = await recorded_log()
    found: list[api_pb2.Event] = []
    after = 0
    while True:
        page = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest(application="shop", limit=2, after_position=after))
        found += page.events
        if page.last_position <= after:
            break
        after = page.last_position

    assert names(found) == EXPECTED


class _Projection:
    """What `watch` needs of the projection: running, its position, a wait (never reached
    here: the test stops reading once it has the history)."""

    running = True
    position = 0

    async def wait_beyond(self, position: int, timeout: float) -> None:
        raise AssertionError("the history fits one batch")


async def test_watch_follows_the_same_rule() -> None:
    store = await recorded_log()
    stream = events.watch(store, REGISTRY, _Projection(), api_pb2.WatchRequest(application="shop"))  # type: ignore[arg-type]
    found = []
    async for event in stream:
        found.append(event)
        if len(found) == len(EXPECTED):
            break
    await stream.aclose()  # type: ignore[attr-defined]

    assert names(found) == EXPECTED
