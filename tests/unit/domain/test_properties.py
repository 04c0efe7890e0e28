"""Properties of decide/evolve over random command sequences and random requests.

1. Idempotence: after folding what an Apply-style command decided, the same command
   decides nothing.
2. Consistency: every catalog reached by accepted commands satisfies the catalog
   invariants (channels bind registered runtimes, preconditions name existing channels
   and form no cycle, services see the resources they use …); every event is a
   valid, encodable Convoy event on a valid stream; no minted secret ever appears in
   an event's bytes; decide is deterministic.
3. Robustness: for any request — random field values, unknown enum numbers, arbitrary
   wire bytes, odd minted values — decide either decides or raises one of the domain's
   typed errors; what it accepts keeps the catalog consistent.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.codec import convoy_registry
from eventstore.types import validate_stream_id
from schemas.convoy.v1 import api_pb2, options_pb2, resources_pb2
from services.api.domain import Command, Decision, Minted, State, catalog_violations, decide, fold
from services.api.domain.decider import HANDLERS
from services.api.domain.errors import DOMAIN_ERRORS
from tests.unit.domain import strategies as S
from tests.unit.domain.builders import apply_all

R = resources_pb2
REGISTRY = convoy_registry()

IDEMPOTENT = (
    api_pb2.ApplyApplicationRequest,
    api_pb2.ApplyServiceRequest,
    api_pb2.ApplyRuntimeRequest,
    api_pb2.ApplyProtectionRequest,
    api_pb2.LinkResourceRequest,
    api_pb2.LabelRuntimeRequest,
    api_pb2.PauseRuntimeRequest,
    api_pb2.ResumeRuntimeRequest,
    api_pb2.ApproveRequest,
    api_pb2.RejectRequest,
    api_pb2.BypassRequest,
    api_pb2.PauseConvergenceRequest,
    api_pb2.ResumeConvergenceRequest,
    api_pb2.RevokeTokenRequest,
)
REQUEST_TYPES = [*HANDLERS]


def seeded() -> State:
    """A catalog over the strategies' name pools, so random commands hit deep paths
    (approvals, bypasses, rollbacks) without first having to build everything."""
    prod = R.ReleaseChannel(
        name="prod",
        runtimes=[R.RuntimeBinding(runtime="eu-1"), R.RuntimeBinding(runtime="us-1")],
        preconditions=[
            R.Precondition(channel_stable=R.ChannelStable(channel="staging")),
            R.Precondition(manual_approval=R.ManualApproval(name="qa", min_approvers=2)),
            R.Precondition(deploy_window=R.DeployWindow(days=["mon"], start="09:00", end="17:00")),
        ],
        protections=[R.ProtectionAttachment(protection="smoke", lifecycle=[R.LIFECYCLE_POST_DEPLOYMENT])],
    )
    staging = R.ReleaseChannel(name="staging", runtimes=[R.RuntimeBinding(runtime="eu-1")])
    requests: list[Message] = [
        api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="eu-1", kind=R.RUNTIME_KIND_KUBERNETES)),
        api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(name="us-1", kind=R.RUNTIME_KIND_KUBERNETES)),
        api_pb2.ApplyRuntimeRequest(runtime=R.Runtime(
            name="edge", kind=R.RUNTIME_KIND_EXEC, exec=R.ExecRuntimeConfig(apply=["./apply.sh"]))),
        api_pb2.ApplyProtectionRequest(protection=R.Protection(name="smoke", command=R.CommandCheck(command=["./c"]))),
        api_pb2.ApplyApplicationRequest(application=R.Application(name="shop", release_channels=[staging, prod])),
        api_pb2.ApplyApplicationRequest(application=R.Application(name="billing", release_channels=[staging])),
        api_pb2.LinkResourceRequest(resource=R.Resource(name="db", scope=R.RESOURCE_SCOPE_INFRASTRUCTURE)),
        api_pb2.LinkResourceRequest(resource=R.Resource(name="queue", scope=R.RESOURCE_SCOPE_APPLICATION, application="shop")),
        api_pb2.ApplyServiceRequest(service=R.Service(
            application="shop", name="api", programs=[R.Program(image="img:1")], resources=["db", "queue"],
            overrides=[R.ChannelOverride(channel="prod", replicas=3)])),
        api_pb2.ApplyServiceRequest(service=R.Service(application="billing", name="worker", programs=[R.Program(command=["run"])])),
    ]
    state = apply_all(State(), requests)
    state = apply_all(state, [api_pb2.DeployRequest(application="shop", service="api", version="v1")],
                      minted=Minted(release_id="rel-1"))
    return apply_all(state, [api_pb2.CreateTokenRequest(name="ci", role=options_pb2.ROLE_ADMIN)],
                     minted=Minted(token_id="tok-1", token_secret="seeded-token-secret-1"))


SEEDED = seeded()
STARTS = st.sampled_from([State(), SEEDED, SEEDED])


def minted_for(step: int, salt: bytes) -> Minted:
    return Minted(
        release_id=f"rel-{step}",
        token_id=f"tok-{step}",
        token_secret=f"token-secret-{salt.hex()}-{step}",
        credential_id=f"cred-{step}",
        credential_secret=f"credential-secret-{salt.hex()}-{step}",
    )


def check_events(decision: Decision, actor: str, secrets: Iterable[str]) -> None:
    for stream_id, event in decision.events:
        validate_stream_id(stream_id)
        data = REGISTRY.encode(event, actor=actor).data  # a current, storable Convoy event
        for secret in secrets:
            assert secret.encode() not in data, f"a secret leaked into {event.DESCRIPTOR.name}"


def assert_consistent(state: State) -> None:
    assert catalog_violations(state) == []


def test_seeded_catalog_is_consistent() -> None:
    assert_consistent(SEEDED)
    assert SEEDED.releases_of("shop", "api").latest is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=STARTS,
    steps=st.lists(st.tuples(S.plausible_requests(), st.sampled_from(S.ACTORS), st.binary(min_size=4, max_size=4)), max_size=40),
)
def test_random_sequences_keep_the_catalog_consistent(
    start: State, steps: list[tuple[tuple[Message, str], str, bytes]]
) -> None:
    state = start
    secrets: list[str] = ["seeded-token-secret-1"]
    log: list[Message] = []
    for i, ((request, method), actor, salt) in enumerate(steps):
        minted = minted_for(i, salt)
        command = Command(request, actor, options_pb2.ROLE_ADMIN, minted, method)
        try:
            decision = decide(state, command)
        except DOMAIN_ERRORS:
            continue
        assert decide(state, command) == decision  # deterministic
        secrets += [minted.token_secret, minted.credential_secret]
        check_events(decision, actor, secrets)
        log += [event for _, event in decision.events]
        state = fold(state, decision.events)
        assert_consistent(state)
        if isinstance(request, IDEMPOTENT):
            assert decide(state, command).events == (), f"re-running {type(request).__name__} changed something"
    for event in log:
        data = event.SerializeToString()
        assert not any(secret.encode() in data for secret in secrets)
    assert fold(start, log) == state  # replaying the log reproduces the catalog


APPLY = st.one_of(
    st.builds(api_pb2.ApplyApplicationRequest, application=S.application()),
    st.builds(api_pb2.ApplyServiceRequest, service=S.service()),
    st.builds(api_pb2.ApplyRuntimeRequest, runtime=S.runtime()),
    st.builds(api_pb2.LinkResourceRequest, resource=S.resource()),
)


@settings(max_examples=400, deadline=None)
@given(start=STARTS, request=APPLY)
def test_apply_is_idempotent(start: State, request: Message) -> None:
    command = Command(request, "alice", options_pb2.ROLE_ADMIN)
    try:
        decision = decide(start, command)
    except DOMAIN_ERRORS:
        return
    state = fold(start, decision.events)
    assert decide(state, command).events == ()
    assert decision.changed == (state != start)


@st.composite
def any_request(draw: st.DrawFn) -> Message:
    """Entirely random, or a plausible request with random fields merged over it."""
    if draw(st.booleans()):
        random_request: Message = draw(S.any_message(draw(st.sampled_from(REQUEST_TYPES))))
        return random_request
    request, _ = draw(S.plausible_requests())
    if draw(st.booleans()):
        request.MergeFrom(draw(S.any_message(type(request))))
    return request


@st.composite
def any_command(draw: st.DrawFn) -> Command:
    request = draw(any_request())
    return Command(
        request,
        draw(st.one_of(st.sampled_from(S.ACTORS), S.TEXT)),
        draw(S.INT32),
        draw(st.one_of(st.builds(minted_for, st.integers(0, 5), st.binary(min_size=4, max_size=4)),
                       st.builds(Minted, S.TEXT, S.TEXT, S.TEXT, S.TEXT, S.TEXT))),
        draw(st.sampled_from([*S.PAUSE_METHODS, "", "Deploy"])),
    )


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=STARTS, command=any_command())
def test_decide_raises_only_domain_errors_for_any_request(start: State, command: Command) -> None:
    try:
        decision = decide(start, command)
    except DOMAIN_ERRORS:
        return
    # A secret can only leak if it is one (long enough) and neither the request nor a
    # minted id or the actor, both recorded on purpose (hypothesis may make one contain it),
    # carried it.
    minted = command.minted
    public = command.request.SerializeToString() + "\0".join(
        (minted.release_id, minted.token_id, minted.credential_id, command.actor)).encode()
    secrets = [s for s in (minted.token_secret, minted.credential_secret) if len(s) >= 16]
    check_events(decision, command.actor, [s for s in secrets if s.encode() not in public])
    assert_consistent(fold(start, decision.events))


@settings(max_examples=800, deadline=None)
@given(start=STARTS, cls=st.sampled_from(REQUEST_TYPES), data=st.binary(max_size=120), method=st.sampled_from(S.PAUSE_METHODS))
def test_decide_raises_only_domain_errors_for_arbitrary_wire_bytes(
    start: State, cls: type[Message], data: bytes, method: str
) -> None:
    request = cls()
    try:
        request.ParseFromString(data)
    except DecodeError:
        return
    command = Command(request, "mallory", options_pb2.ROLE_ADMIN, minted_for(1, b"\0\0\0\0"), method)
    try:
        decision = decide(start, command)
    except DOMAIN_ERRORS:
        return
    check_events(decision, "mallory", [])
    assert_consistent(fold(start, decision.events))
