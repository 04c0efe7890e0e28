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


async def test_a_service_and_channel_of_the_application_narrow_it_by_stream_and_by_the_events_channel() -> None:
    store = await recorded_log()
    await store.append("release/shop/api", [REGISTRY.encode(E.ApprovalGranted(
        release_id="rel-2", application="shop", service="api", channel="prod", approver="ann"), actor="ann")])
    await store.append("release/shop/web", [REGISTRY.encode(E.ApprovalGranted(
        release_id="rel-1", application="shop", service="web", channel="prod", approver="ann"), actor="ann")])
    await store.append("observation/local/shop-prod/shop/web", [REGISTRY.encode(E.ObservationRecorded(
        observation=C.Observation(observation_id="o-p", runtime="local", namespace="shop-prod", application="shop",
                                  service="web", channel="prod", kind=C.OBSERVATION_KIND_HEALTHY)), actor="agent")])

    async def listed(**filters: str) -> list[tuple[str, str]]:
        answer = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest(application="shop", **filters))
        return names(list(answer.events))

    web = await listed(service="web")
    assert ("release/shop/api", "ApprovalGranted") not in web
    assert {s for s, _ in web} == {
        "release/shop/web", "intent/local/shop-staging/shop/web", "convergence/shop/web/staging",
        "observation/local/shop-staging/shop/web", "timer/shop/web/staging", "observation/local/shop-prod/shop/web",
    }
    assert await listed(service="web", channel="prod") == [
        ("release/shop/web", "ApprovalGranted"), ("observation/local/shop-prod/shop/web", "ObservationRecorded"),
    ]
    assert await listed(channel="staging") == [
        ("convergence/shop/web/staging", "InstanceStatusChanged"), ("timer/shop/web/staging", "TimerFired"),
    ]


async def test_service_or_channel_without_an_application_is_refused() -> None:
    import pytest

    from services.api.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="needs application"):
        await events.list_events(MemoryEventStore(), REGISTRY, api_pb2.ListEventsRequest(service="web"))


async def test_newest_first_pages_back_to_the_start_without_gaps_or_repeats() -> None:
    store = await recorded_log()
    for i in range(1200):  # more than a scan window, so paging crosses windows
        await store.append(f"app/a{i % 7}", [REGISTRY.encode(E.ApplicationCreated(application=R.Application(name=f"a{i}")), actor="x")])
    head = await store.head()
    seen: list[int] = []
    before = head + 1
    while before:
        answer = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest(before_position=before, limit=333))
        seen += [e.position for e in answer.events]
        before = answer.last_position
    assert seen == list(range(head, 0, -1))
    only = await events.list_events(store, REGISTRY, api_pb2.ListEventsRequest(before_position=head + 1, application="shop"))
    assert [e.position for e in only.events] == sorted((e.position for e in only.events), reverse=True)
    assert len(only.events) == sum(1 for *_, about in LOG if about)
