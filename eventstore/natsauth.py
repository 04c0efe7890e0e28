"""Who may do what on the bus: NATS accounts, users and least-privilege permissions, rendered.

DESIGN.md: an agent's credential can read only its runtime's intents and publish only its
runtime's observations. NATS enforces that with per-user subject permissions, so this
module names every subject an agent needs and nothing more:

- publish its observations (`convoy.<i>.obs.<runtime>.>`) and its requests to the control
  plane (`convoy.<i>.req.<runtime>.>`: its desired state, the Convoy-kept secrets that
  state names);
- pull from and acknowledge its own durable consumer `agent-<runtime>`, which the control
  plane creates with the runtime's intent filter (an agent allowed to create consumers
  could pick any filter and read every runtime's intents);
- dead-letter its own poison messages (`convoy.<i>.dlq.agent-<runtime>`);
- write and read its runtime's lease (`$KV.<bucket>.<runtime>`, and the direct get of
  exactly that key), so that replicas of one agent take turns (eventstore.leases) —
  never another runtime's key;
- receive only on its own inbox prefix (`_INBOX_<i>_<runtime>.>`), so it cannot listen to
  anybody else's replies — which is why the agent connects with that `inbox_prefix`.

Permissions say where a client may publish, not where the answers to its publishes go: a
reply subject is the requester's choice, and whoever answers — a Convoy service, or
JetStream itself answering an API call, delivering a pull, confirming an ack or a
publish — publishes there with its own authority. In one account, runtime A's agent
could point those answers at runtime B's intent subject (the events stream stores them
and B's agent receives them), at B's inbox, or at `$JS.API.STREAM.PURGE.…` (tested:
tests/integration/test_agent_permissions.py). So the rule, DESIGN.md's "the control plane
never publishes on a subject an agent chose unless that subject belongs to the asking
runtime", is kept twice:

- by accounts: the control plane (its system user, JetStream, the streams) lives
  in the account `CONVOY_<INSTANCE>`; each runtime's agent in an account of its own,
  `CONVOY_<INSTANCE>/agent/<runtime>`, which imports exactly its subjects above as
  services from the control account. Across an import NATS replaces the requester's
  reply with one of its own (`_R_.…`) and carries the answer back into the requester's
  account, so whatever reply an agent chooses, every answer lands in its own account,
  where nothing leads to another runtime's subjects;
- by the services that answer requests: the desired-state and secret responders answer only on a
  reply that belongs to the asking runtime (`reply_belongs_to`), the planner only on the
  control plane's own inboxes (`is_control_plane_inbox`), so a server configured with
  plain users in one account (an operator's own configuration) does not turn them into
  a relay either — though JetStream's answers there remain a hole only accounts close.

The control plane's system user (`system_user`: `convoy`, or `convoy-<instance>` beside
other instances) may do everything in its account. Several instances share one server's
`accounts {}` block (`render_many`), each with its account limits (eventstore.natslimits).
Passwords are given as bcrypt hashes (NATS compares them itself), so neither the config
file nor the event log ever holds a usable secret. Pure: the sync task in services/api
writes the rendered block into the embedded server's config and reloads it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from eventstore import bus, leases, securefile
from eventstore.errors import InvalidInput
from eventstore.natslimits import AccountLimits

DEFAULT_INSTANCE: Final = "convoy"
SYSTEM_USER: Final = "convoy"
"""The control plane's user of the default instance (`system_user`)."""
SYSTEM_PASSWORD_FILE: Final = "nats-password"

AGENT_MAX_DELIVER: Final = 5
"""Handler attempts per intent on an agent's consumer (the server allows 2 spare
deliveries on top, see eventstore.subscriptions): the control plane creates the consumer
with this, the agent's subscription settings use it."""
AGENT_ACK_WAIT: Final = 60.0


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...] = (">",)
    subscribe: tuple[str, ...] = (">",)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str
    """A bcrypt hash (`$2a$…`/`$2b$…`), or a plain password for the system user."""
    permissions: Permissions = field(default_factory=Permissions)
    runtime: str = ""
    """The runtime whose agent this is ("" for the control plane): its own account."""


_SHARED_INSTANCE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
"""Instance names (eventstore.settings): no `-`, which is what keeps user names apart."""


def system_user(instance: str) -> str:
    """The NATS user name of an instance's control plane (API, planner, relay).

    NATS user names are server-wide, so instances sharing one nats-server need distinct
    ones: `convoy` for the default instance `convoy` (existing set-ups keep their user)
    and `convoy-<instance>` for any other.

    It never equals an agent's user `<instance'>-agent-<runtime>` (`agent_user`): instance
    names match `[a-z][a-z0-9_]{0,30}`, so they hold no `-`. `convoy` holds no `-` at all,
    an agent user at least two. In `convoy-<instance>` the only `-` is the first; in
    `<instance'>-agent-<runtime>` the first `-` is followed by `agent-`, a second `-`.
    Nor do two instances share one: `convoy-<x>` determines x, and `convoy` is not of
    that form (tests/unit/test_natsaccounts.py checks all of this)."""
    if not isinstance(instance, str) or not _SHARED_INSTANCE.fullmatch(instance):
        raise InvalidInput(
            f"invalid Convoy instance name {instance!r}: use 1-31 lower-case letters, digits or '_', "
            "starting with a letter"
        )
    return SYSTEM_USER if instance == DEFAULT_INSTANCE else f"{SYSTEM_USER}-{instance}"


def control_account(instance: str) -> str:
    """The NATS account of an instance's control plane, JetStream and streams."""
    return f"CONVOY_{bus.validate_instance(instance).upper()}"


def agent_account(instance: str, runtime: str) -> str:
    """The NATS account of one runtime's agent (`/` appears in neither an instance name
    nor an encoded runtime, so no two (instance, runtime) pairs share one)."""
    return f"{control_account(instance)}/agent/{bus.encode_token(runtime)}"


def agent_consumer(runtime: str) -> str:
    """The durable consumer of one runtime's intents (on the events stream)."""
    return f"agent-{runtime}"


def agent_user(instance: str, runtime: str) -> str:
    """The NATS user name of a runtime's agent (instances may share one NATS)."""
    return f"{bus.validate_instance(instance)}-agent-{runtime}"


def agent_inbox_prefix(instance: str, runtime: str) -> str:
    """The only inbox prefix an agent may receive on; pass it to `nats.connect`."""
    return f"_INBOX_{bus.validate_instance(instance)}_{bus.encode_token(runtime)}"


def desired_subject(instance: str, runtime: str) -> str:
    """Where an agent asks for its runtime's current desired state."""
    return f"convoy.{bus.validate_instance(instance)}.req.{bus.encode_token(runtime)}.desired"


def desired_subjects(instance: str) -> str:
    """Every runtime's desired-state requests (what the control plane answers)."""
    return f"convoy.{bus.validate_instance(instance)}.req.*.desired"


def runtime_of_desired(instance: str, subject: str) -> str | None:
    """The runtime whose desired state `subject` asks for, or None unless it is exactly
    `desired_subject(instance, runtime)` (one canonical token, nothing after `.desired`),
    so no spelling of one runtime's subject names another."""
    return _runtime_of_request(instance, subject, "desired")


def secret_subject(instance: str, runtime: str) -> str:
    """Where an agent asks for a Convoy-kept secret its desired state names (inside its
    own `convoy.<i>.req.<runtime>.>`, which it may already publish on)."""
    return f"convoy.{bus.validate_instance(instance)}.req.{bus.encode_token(runtime)}.secret"


def secret_subjects(instance: str) -> str:
    """Every runtime's secret requests (what the control plane answers)."""
    return f"convoy.{bus.validate_instance(instance)}.req.*.secret"


def runtime_of_secret(instance: str, subject: str) -> str | None:
    """The runtime asking on `subject`, or None unless it is exactly
    `secret_subject(instance, runtime)` (the same strictness as `runtime_of_desired`)."""
    return _runtime_of_request(instance, subject, "secret")


def _runtime_of_request(instance: str, subject: str, last: str) -> str | None:
    tokens = subject.split(".")
    if len(tokens) != 5 or tokens[:3] != ["convoy", bus.validate_instance(instance), "req"] or tokens[4] != last:
        return None
    try:
        runtime = bus.decode_token(tokens[3])
    except (InvalidInput, ValueError, UnicodeDecodeError):
        return None
    return runtime if runtime and bus.encode_token(runtime) == tokens[3] else None


def _is_literal(subject: str) -> bool:
    tokens = subject.split(".")
    return all(t and t not in ("*", ">") and not any(c.isspace() for c in t) for t in tokens)


def reply_belongs_to(instance: str, runtime: str, reply: str) -> bool:
    """May the control plane answer a request of `runtime`'s agent on `reply`?

    The rule (DESIGN.md, security model): the control plane never publishes on a subject
    an agent chose unless that subject belongs to the asking runtime. A reply subject is
    chosen by the requester, and the control plane's credential may publish anywhere, so
    answering on any reply would let one runtime's agent make the control plane write
    on another runtime's subjects (its intents, its inbox, the events stream, the
    JetStream API). The one reply that belongs to the runtime is one inside its own
    inbox prefix (`agent_inbox_prefix`), which only that runtime's NATS user may
    subscribe to — or, when the request came through the runtime's own account's import,
    the reply NATS made for it (`_R_.…`: clients may not use that prefix themselves, and
    the server carries the answer back into the requesting account only, which for
    `convoy.<i>.req.<runtime>.>` is that runtime's alone)."""
    if reply.startswith(SERVICE_REPLY_PREFIX) and len(reply) > len(SERVICE_REPLY_PREFIX) and _is_literal(reply):
        return True
    prefix = agent_inbox_prefix(instance, runtime) + "."
    return reply.startswith(prefix) and len(reply) > len(prefix) and _is_literal(reply)


SERVICE_REPLY_PREFIX: Final = "_R_."
"""The replies nats-server makes for requests that crossed an account import."""


CONTROL_PLANE_INBOX_PREFIX: Final = "_INBOX"
"""The control plane's processes connect with NATS's default inbox prefix; an agent's user
may subscribe only to its own (`agent_inbox_prefix`, which never starts with `_INBOX.`)."""


def plan_subject(instance: str) -> str:
    """Where the API asks the planner for dry runs. Outside `convoy.<i>.req.<runtime>.>`
    (the agents' request namespace: a runtime could be named `planner`), in the control
    plane's own `ctl` namespace, which no agent may publish on."""
    return f"convoy.{bus.validate_instance(instance)}.ctl.planner.plan"


def is_control_plane_inbox(reply: str) -> bool:
    """A reply subject only the control plane can receive: a control-plane service (the
    planner's dry runs) answers nothing else."""
    prefix = CONTROL_PLANE_INBOX_PREFIX + "."
    return reply.startswith(prefix) and len(reply) > len(prefix) and _is_literal(reply)


H_DESIRED_COUNT: Final = "Convoy-Desired-Count"
"""On the last reply to a desired-state request: how many event messages came before it.
Its payload is the runtime's configuration (`resources_pb2.Runtime`), empty when the
runtime is not registered; the messages before it are IntentIssued / ChecksRequested
events in the relay's envelope (`bus.event_headers`), so the agent decodes them exactly
like the intents its consumer delivers."""
H_DESIRED_POSITION: Final = "Convoy-Desired-Position"
"""On the last reply: the store position the answer reflects."""
H_DESIRED_STREAM_FIRST: Final = "Convoy-Desired-Stream-First"
H_DESIRED_STREAM_LAST: Final = "Convoy-Desired-Stream-Last"
"""On the last reply: the events stream's first and last sequence, read before the answer
was folded, so the answer covers every message up to the last (services/agent/continuity.py:
an agent whose consumer skipped messages the stream dropped resyncs)."""
H_DESIRED_PROBE: Final = "Convoy-Desired-Probe"
"""On a request: `stream` asks only for the events stream's bounds (an end message with a
count of 0 and no configuration), not the desired state."""


def heartbeat_subject(instance: str, runtime: str) -> str:
    """Core NATS, outside every stream: a heartbeat is news for a few seconds, and a
    stream would keep every one of them (100 agents every 5 s is 1.7 million a day)."""
    return f"convoy.{bus.validate_instance(instance)}.hb.{bus.encode_token(runtime)}"


def heartbeat_subjects(instance: str) -> str:
    return f"convoy.{bus.validate_instance(instance)}.hb.*"


def runtime_of_heartbeat(instance: str, subject: str) -> str | None:
    prefix = f"convoy.{bus.validate_instance(instance)}.hb."
    return bus.decode_token(subject[len(prefix):]) if subject.startswith(prefix) else None


def agent_permissions(instance: str, runtime: str) -> Permissions:
    """Exactly what a runtime's agent needs (see the module docstring)."""
    token = bus.encode_token(runtime)
    stream = bus.events_stream(instance)
    consumer = agent_consumer(runtime)
    return Permissions(
        publish=(
            bus.observation_filter(instance, runtime),
            heartbeat_subject(instance, runtime),
            f"convoy.{instance}.req.{token}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
            bus.dlq_subject(instance, consumer),
            leases.key_subject(instance, runtime),
            leases.read_subject(instance, runtime),
        ),
        subscribe=(f"{agent_inbox_prefix(instance, runtime)}.>",),
    )


def agent_imports(instance: str, runtime: str) -> list[tuple[str, bool]]:
    """What a runtime's account imports from the control account, as (subject, whether
    the answer may be several messages): exactly the subjects it may publish on, plus
    `$JS.API.INFO`, which its user may not publish on — importing it only keeps NATS from
    giving the agent's account a JetStream of its own (which would answer `$JS.API.…`
    before the imports do)."""
    streamed = {f"convoy.{instance}.req.{bus.encode_token(runtime)}.>", _pull_subject(instance, runtime)}
    return [(subject, subject in streamed) for subject in agent_permissions(instance, runtime).publish] + [
        (JS_API_INFO, False)
    ]


JS_API_INFO: Final = "$JS.API.INFO"


def _pull_subject(instance: str, runtime: str) -> str:
    return f"$JS.API.CONSUMER.MSG.NEXT.{bus.events_stream(instance)}.{agent_consumer(runtime)}"


def agent(instance: str, runtime: str, password_bcrypt: str) -> User:
    if not password_bcrypt.startswith("$2"):
        raise InvalidInput(f"the agent password of runtime {runtime!r} must be a bcrypt hash")
    return User(agent_user(instance, runtime), password_bcrypt, agent_permissions(instance, runtime), runtime=runtime)


def system(instance: str, password: str) -> User:
    """The control plane's user of `instance` (`system_user`), which may do everything in
    its account."""
    return User(system_user(instance), password)


def _user_line(user: User) -> str:
    pub = ", ".join(json.dumps(s) for s in user.permissions.publish)
    sub = ", ".join(json.dumps(s) for s in user.permissions.subscribe)
    return (
        f"        {{user: {json.dumps(user.name)}, password: {json.dumps(user.password)}, "
        f"permissions: {{publish: {{allow: [{pub}]}}, subscribe: {{allow: [{sub}]}}}}}}"
    )


@dataclass(frozen=True, slots=True)
class InstanceAccounts:
    """What one instance contributes to a shared server's `accounts {}` block."""

    instance: str
    users: tuple[User, ...]
    """Its control-plane user(s) (`runtime == ""`) and one user per runtime's agent."""
    limits: AccountLimits = field(default_factory=AccountLimits)

    def __post_init__(self) -> None:
        bus.validate_instance(self.instance)
        object.__setattr__(self, "users", tuple(self.users))


def render(instance: str, users: Iterable[User], limits: AccountLimits | None = None) -> str:
    """The `accounts { ... }` block of a nats-server config for one instance (see
    `render_many`)."""
    return render_many([InstanceAccounts(instance, tuple(users), limits or AccountLimits())])


def render_many(instances: Iterable[InstanceAccounts]) -> str:
    """The `accounts { ... }` block of a nats-server config shared by several instances
    (a server has one such block): per instance, the control account (its users,
    JetStream with the instance's limits, and one export per subject a runtime imports,
    to that runtime's account alone) and one account per runtime's agent (see the module
    docstring). Two instances of one name, or two users of one name anywhere in the
    block, are refused: NATS user names are server-wide."""
    listed = sorted(instances, key=lambda i: i.instance)
    names = [i.instance for i in listed]
    if len(set(names)) != len(names):
        raise InvalidInput(f"instance(s) listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    seen: dict[str, str] = {}
    for accounts in listed:
        for user in accounts.users:
            if user.name in seen:
                raise InvalidInput(
                    f"NATS user {user.name!r} of instance {accounts.instance!r} is also a user of "
                    f"instance {seen[user.name]!r}: user names are server-wide"
                )
            seen[user.name] = accounts.instance
    lines = ["accounts {"]
    for accounts in listed:
        lines += _instance_lines(accounts)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _instance_lines(accounts: InstanceAccounts) -> list[str]:
    instance, limits = accounts.instance, accounts.limits
    control = control_account(instance)
    ordered = sorted(accounts.users, key=lambda u: (u.runtime, u.name))
    agents = [u for u in ordered if u.runtime]
    exports: list[str] = []
    info_importers: list[str] = []
    for user in agents:
        account = agent_account(instance, user.runtime)
        for subject, streamed in agent_imports(instance, user.runtime):
            if subject == JS_API_INFO:
                info_importers.append(account)
                continue
            kind = ", response_type: stream" if streamed else ""
            exports.append(f"{{service: {json.dumps(subject)}, accounts: [{json.dumps(account)}]{kind}}}")
    if info_importers:
        exports.append(f"{{service: {json.dumps(JS_API_INFO)}, accounts: [{', '.join(map(json.dumps, info_importers))}]}}")
    lines = [f"  {json.dumps(control)}: {{", f"    jetstream: {limits.jetstream()}"]
    if (control_limits := limits.control_limits()) is not None:
        lines.append(f"    limits: {control_limits}")
    lines.append("    users: [")
    lines += [_user_line(u) for u in ordered if not u.runtime]
    lines += ["    ]", "    exports: ["]
    lines += [f"      {e}" for e in exports]
    lines += ["    ]", "  }"]
    agent_limits = limits.agent_limits()
    for user in agents:
        lines += [f"  {json.dumps(agent_account(instance, user.runtime))}: {{"]
        if agent_limits is not None:
            lines.append(f"    limits: {agent_limits}")
        lines += ["    users: [", _user_line(user), "    ]"]
        lines.append("    imports: [")
        lines += [
            f"      {{service: {{account: {json.dumps(control)}, subject: {json.dumps(subject)}}}}}"
            for subject, _ in agent_imports(instance, user.runtime)
        ]
        lines += ["    ]", "  }"]
    return lines


def system_password(state_dir: Path) -> str:
    """The system user's password, generated on first use into `<state_dir>/nats-password`
    (mode 0600)."""
    path = state_dir / SYSTEM_PASSWORD_FILE
    if not path.exists():
        securefile.create_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()
