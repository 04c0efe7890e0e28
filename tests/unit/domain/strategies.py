"""Hypothesis strategies for domain commands.

`plausible_requests()` draws requests over small pools of names, so that sequences of
them build real catalogs (runtimes get registered, channels bind them, services get
deployed, approved, paused …) and references resolve often — or just fail to, which is
the interesting edge. `any_message(cls)` draws arbitrary messages of a type from its
descriptor: any string, any number, unknown enum values, half-set oneofs.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from schemas.convoy.v1 import api_pb2, resources_pb2

R = resources_pb2
RUNTIMES = ["eu-1", "us-1", "edge"]
APPS = ["shop", "billing"]
CHANNELS = ["staging", "prod", "canary"]
SERVICES = ["api", "worker"]
PROTECTIONS = ["smoke", "soak"]
RESOURCES = ["db", "queue"]
APPROVALS = ["qa", "security"]
VERSIONS = ["v1", "v2", "v3"]
ACTORS = ["alice", "bob", "carol"]
RELEASE_IDS = ["", "", "rel-1", "rel-2", "rel-3", "rel-missing"]
TOKEN_IDS = ["tok-1", "tok-2", "tok-3"]
PAUSE_METHODS = ["PauseConvergence", "ResumeConvergence"]

# Keep examples small: a few of each.
few = functools.partial(st.lists, max_size=3)


def maybe(strategy: st.SearchStrategy[Any], default: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(default), strategy)


def runtime() -> st.SearchStrategy[R.Runtime]:
    exec_config = st.builds(R.ExecRuntimeConfig, apply=few(st.sampled_from(["./apply.sh", ""])))
    return st.builds(
        R.Runtime,
        name=st.sampled_from(RUNTIMES),
        kind=st.sampled_from([0, 1, 2, 2]),
        labels=st.dictionaries(st.sampled_from(["region", "tier"]), st.sampled_from(["eu", "gold", ""]), max_size=2),
        exec=maybe(exec_config, None),
    )


def precondition() -> st.SearchStrategy[R.Precondition]:
    window = st.builds(
        R.DeployWindow,
        days=few(st.sampled_from(["mon", "sat", "xyz"])),
        start=st.sampled_from(["09:00", "18:00"]),
        end=st.sampled_from(["17:00", "23:59"]),
        timezone=st.sampled_from(["", "Europe/Berlin", "Mars/Olympus"]),
    )
    return st.one_of(
        st.builds(lambda c: R.Precondition(channel_stable=R.ChannelStable(channel=c)), st.sampled_from(CHANNELS)),
        st.builds(
            lambda n, m: R.Precondition(manual_approval=R.ManualApproval(name=n, min_approvers=m)),
            st.sampled_from(APPROVALS), st.integers(0, 3),
        ),
        st.builds(lambda w: R.Precondition(deploy_window=w), window),
    )


def channel() -> st.SearchStrategy[R.ReleaseChannel]:
    return st.builds(
        R.ReleaseChannel,
        name=st.sampled_from(CHANNELS),
        runtimes=st.lists(st.builds(R.RuntimeBinding, runtime=st.sampled_from(RUNTIMES)), min_size=1, max_size=2),
        preconditions=few(precondition()),
        protections=st.lists(
            st.builds(R.ProtectionAttachment, protection=st.sampled_from(PROTECTIONS),
                      lifecycle=st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=1)),
            max_size=1,
        ),
    )


def application() -> st.SearchStrategy[R.Application]:
    return st.builds(R.Application, name=st.sampled_from(APPS), release_channels=few(channel()))


def service() -> st.SearchStrategy[R.Service]:
    return st.builds(
        R.Service,
        application=st.sampled_from(APPS),
        name=st.sampled_from(SERVICES),
        programs=st.lists(st.builds(R.Program, image=st.sampled_from(["img:1", "img:2"])), min_size=1, max_size=1),
        replicas=st.integers(0, 3),
        overrides=st.lists(st.builds(R.ChannelOverride, channel=st.sampled_from(CHANNELS)), max_size=1),
        resources=st.lists(st.sampled_from(RESOURCES), max_size=2, unique=True),
        parameters=st.lists(st.builds(R.Parameter, name=st.just("tag"), required=st.booleans()), max_size=1),
    )


def resource() -> st.SearchStrategy[R.Resource]:
    return st.one_of(
        st.builds(R.Resource, name=st.sampled_from(RESOURCES), scope=st.just(R.RESOURCE_SCOPE_INFRASTRUCTURE)),
        st.builds(R.Resource, name=st.sampled_from(RESOURCES), scope=st.just(R.RESOURCE_SCOPE_APPLICATION),
                  application=st.sampled_from(APPS)),
    )


# Release-level commands mostly target the service the seeded catalog has deployed.
SERVICE_PAIRS = [("shop", "api")] * 4 + [("billing", "worker"), ("shop", "worker"), ("billing", "api")]
RELEASE_CHANNELS = ["prod", "prod", "staging", "canary"]


def _svc(cls: type[Message], **extra: st.SearchStrategy[Any]) -> st.SearchStrategy[Message]:
    def make(pair: tuple[str, str], **fields: Any) -> Message:
        return cls(application=pair[0], service=pair[1], **fields)

    return st.builds(make, st.sampled_from(SERVICE_PAIRS), **extra)


@functools.cache
def plausible_requests() -> st.SearchStrategy[tuple[Message, str]]:
    """(request, method) pairs; the method is only a label (every RPC has its own request)."""
    name_rt = st.sampled_from(RUNTIMES)
    requests = st.one_of(
        st.builds(api_pb2.ApplyRuntimeRequest, runtime=runtime()),
        st.builds(api_pb2.LabelRuntimeRequest, name=name_rt, labels=st.dictionaries(st.just("tier"), st.just("gold"))),
        st.builds(api_pb2.PauseRuntimeRequest, name=name_rt),
        st.builds(api_pb2.ResumeRuntimeRequest, name=name_rt),
        st.builds(api_pb2.DeregisterRuntimeRequest, name=name_rt),
        st.builds(api_pb2.IssueAgentCredentialRequest, runtime=name_rt),
        st.builds(api_pb2.ApplyProtectionRequest, protection=st.builds(
            R.Protection, name=st.sampled_from(PROTECTIONS),
            command=st.just(R.CommandCheck(command=["./check.sh"])))),
        st.builds(api_pb2.DeleteProtectionRequest, name=st.sampled_from(PROTECTIONS)),
        st.builds(api_pb2.LinkResourceRequest, resource=resource()),
        st.builds(lambda r: api_pb2.UnlinkResourceRequest(name=r.name, scope=r.scope, application=r.application), resource()),
        st.builds(api_pb2.ApplyApplicationRequest, application=application()),
        st.builds(api_pb2.DeleteApplicationRequest, name=st.sampled_from(APPS)),
        st.builds(api_pb2.ApplyServiceRequest, service=service()),
        st.builds(api_pb2.DeleteServiceRequest, application=st.sampled_from(APPS), name=st.sampled_from(SERVICES)),
        _svc(api_pb2.DeployRequest, version=st.sampled_from(VERSIONS),
             image=st.sampled_from(["", "img:9"]), parameters=st.dictionaries(st.just("tag"), st.just("x"))),
        _svc(api_pb2.ApproveRequest, channel=st.sampled_from(RELEASE_CHANNELS), release_id=st.sampled_from(RELEASE_IDS),
             approval=st.sampled_from(["", "", *APPROVALS])),
        _svc(api_pb2.RejectRequest, channel=st.sampled_from(RELEASE_CHANNELS), release_id=st.sampled_from(RELEASE_IDS),
             approval=st.sampled_from(["", "", *APPROVALS]), reason=st.sampled_from(["no", "no", ""])),
        _svc(api_pb2.BypassRequest, channel=st.sampled_from(RELEASE_CHANNELS), release_id=st.sampled_from(RELEASE_IDS),
             target=st.sampled_from(["precondition:qa", "precondition:channel_stable:staging", "precondition:deploy_window",
                                     "protection:smoke", "smoke"]), reason=st.just("incident")),
        _svc(api_pb2.PauseConvergenceRequest, channel=st.sampled_from(["", *RELEASE_CHANNELS])),
        _svc(api_pb2.ResumeConvergenceRequest, channel=st.sampled_from(["", *RELEASE_CHANNELS])),
        _svc(api_pb2.RollbackRequest, channels=few(st.sampled_from(RELEASE_CHANNELS), unique=True),
             target_release_id=st.sampled_from(RELEASE_IDS), reason=st.sampled_from(["", "bad"])),
        st.builds(api_pb2.CreateTokenRequest, name=st.just("ci"), role=st.integers(0, 5)),
        st.builds(api_pb2.RevokeTokenRequest, token_id=st.sampled_from(TOKEN_IDS)),
    )
    return st.tuples(requests, st.sampled_from(PAUSE_METHODS))


# -- arbitrary messages from descriptors -------------------------------------------------------

TEXT = st.one_of(
    st.sampled_from(["", *RUNTIMES, *APPS, *CHANNELS, *SERVICES, *PROTECTIONS, *RESOURCES, *APPROVALS, "x" * 70]),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
INT32 = st.one_of(st.integers(-3, 10), st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.integers(-3, 10), st.integers(-(2**63), 2**63 - 1))
MAX_DEPTH = 4


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM):
        return INT32
    if field.type == FieldDescriptor.TYPE_INT64:
        return INT64
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.sampled_from([0.0, 1.5, -1.0, 1e9]), st.floats(allow_nan=True, allow_infinity=True, width=32))
    raise AssertionError(f"no strategy for {field.full_name} (type {field.type})")


def _field_strategy(field: Any, depth: int) -> st.SearchStrategy[Any] | None:
    """What to put in one field (None: leave it unset at this depth)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if value_field.message_type is None:
            return st.dictionaries(TEXT, TEXT, max_size=3)
        if depth >= MAX_DEPTH:
            return None
        values = any_message(message_factory.GetMessageClass(value_field.message_type), depth + 1)
        return st.dictionaries(TEXT, values, max_size=3)
    if field.message_type is not None:
        if depth >= MAX_DEPTH:
            return None
        child = any_message(message_factory.GetMessageClass(field.message_type), depth + 1)
        return few(child) if field.is_repeated else child
    return few(_scalar(field)) if field.is_repeated else _scalar(field)


_BUILT: dict[tuple[str, int], st.SearchStrategy[Any]] = {}


def any_message(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Any]:
    """Arbitrary messages of `cls` (built once per type and depth: strategies are
    expensive to construct, cheap to draw from)."""
    key = (cls.DESCRIPTOR.full_name, depth)
    if key not in _BUILT:
        _BUILT[key] = _build_any_message(cls, depth)
    return _BUILT[key]


def _build_any_message(cls: type[Message], depth: int) -> st.SearchStrategy[Any]:
    fields = [(f, s) for f in cls.DESCRIPTOR.fields if (s := _field_strategy(f, depth)) is not None]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field, strategy in fields:
            if not draw(st.booleans()):
                continue
            value = draw(strategy)
            target = getattr(message, field.name) if (field.is_repeated or field.message_type is not None) else None
            if target is None:
                setattr(message, field.name, value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, Message):
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.message_type is not None and field.is_repeated:
                for item in value:
                    target.add().CopyFrom(item)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                target.extend(value)
        return message

    return build()
