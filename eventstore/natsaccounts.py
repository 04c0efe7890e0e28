"""Every provisioned instance's NATS accounts, for one external nats-server.

Several Convoy instances may share one NATS (DESIGN.md, instances and scale-out). A
server has one `accounts {}` block, so the operator renders all instances into it at
once (`convoy nats-users --all-instances`): per instance, its control plane's user with
the bcrypt the instance registry stored when the instance was provisioned, its agents'
users with the credentials its own log holds now, and its account limits.

Pure: the registry records and each instance's folded credentials come in, the config
text goes out (the CLI reads them; eventstore.natsauth renders).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from eventstore import natsauth
from eventstore.errors import InvalidInput
from eventstore.natslimits import AccountLimits


class InstanceLike(Protocol):
    """What rendering needs of an instance registry record (eventstore.instances)."""

    @property
    def name(self) -> str: ...

    @property
    def nats_system_bcrypt(self) -> str: ...

    @property
    def limits(self) -> Mapping[str, object]: ...


def accounts_of(record: InstanceLike, agent_bcrypts: Mapping[str, str]) -> natsauth.InstanceAccounts:
    """One instance's share: its system user (stored bcrypt), one user per runtime with a
    credential (`agent_bcrypts`: runtime → bcrypt), its limits."""
    name = record.name
    stored = record.nats_system_bcrypt
    if not isinstance(stored, str) or not stored.startswith("$2"):
        raise InvalidInput(
            f"instance {name!r} has no bcrypt of its NATS system password in the registry; provision it again"
        )
    try:
        limits = AccountLimits.from_mapping(record.limits)
    except InvalidInput as error:
        raise InvalidInput(f"instance {name!r}: {error}") from None
    users = [natsauth.User(natsauth.system_user(name), stored)]
    users += [natsauth.agent(name, runtime, bcrypt) for runtime, bcrypt in sorted(agent_bcrypts.items())]
    return natsauth.InstanceAccounts(name, tuple(users), limits)


def render_instances(records: Iterable[InstanceLike], agents: Mapping[str, Mapping[str, str]]) -> str:
    """The accounts block of every instance in `records` (`agents`: instance → runtime →
    the bcrypt of its agent's current secret; an instance missing there has no agents)."""
    return natsauth.render_many(accounts_of(record, agents.get(record.name, {})) for record in records)
