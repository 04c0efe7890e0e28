"""Several instances in one nats-server: distinct user names, one `accounts {}` block,
account limits in nats-server's syntax (pure; tests/integration/test_nats_accounts.py
has a real server read the same text)."""

from __future__ import annotations

import itertools
import re

import pytest

from eventstore import natsauth
from eventstore.errors import InvalidInput
from eventstore.natslimits import AccountLimits

INSTANCES = ["convoy", "a", "b", "agent", "convoy_x", "x_agent", "a1", "z" * 31]
RUNTIMES = ["rt", "agent", "convoy", "a-agent-b", "x.y", "-", "agent-rt"]


def test_the_default_instance_keeps_its_user_and_others_get_their_own() -> None:
    assert natsauth.system_user("convoy") == "convoy" == natsauth.SYSTEM_USER
    assert natsauth.system_user("shop") == "convoy-shop"
    assert natsauth.system("shop", "pw").name == "convoy-shop"


@pytest.mark.parametrize("bad", ["", "Shop", "a-b", "1a", "agent-x", "a" * 32, "a.b"])
def test_a_system_user_needs_an_instance_name(bad: str) -> None:
    with pytest.raises(InvalidInput, match="instance name"):
        natsauth.system_user(bad)


def test_a_system_user_never_equals_another_instances_user_or_any_agent_user() -> None:
    systems = {natsauth.system_user(i): i for i in INSTANCES}
    assert len(systems) == len(INSTANCES)
    for instance, runtime in itertools.product(INSTANCES, RUNTIMES):
        assert natsauth.agent_user(instance, runtime) not in systems
    # the argument of the docstring: instance names hold no '-'; a system user at most one,
    # an agent user at least two
    assert all(name.count("-") <= 1 for name in systems)
    assert all(natsauth.agent_user(i, r).count("-") >= 2 for i, r in itertools.product(INSTANCES, RUNTIMES))


def agents_of(instance: str, *runtimes: str) -> natsauth.InstanceAccounts:
    users = (natsauth.system(instance, f"pw-{instance}"), *(natsauth.agent(instance, r, f"$2b$08${instance}{r}") for r in runtimes))
    return natsauth.InstanceAccounts(instance, users, AccountLimits(max_streams=5, max_connections=7, agent_max_connections=2))


def test_render_many_puts_every_instance_in_one_block() -> None:
    text = natsauth.render_many([agents_of("b", "rt-1"), agents_of("a", "rt-1", "rt-2")])
    assert text.startswith("accounts {\n") and text.count("accounts {") == 1 and text.endswith("}\n")
    accounts = re.findall(r'^  "([^"]+)": \{$', text, re.MULTILINE)
    assert accounts == ["CONVOY_A", "CONVOY_A/agent/rt-1", "CONVOY_A/agent/rt-2", "CONVOY_B", "CONVOY_B/agent/rt-1"]
    assert text.count("jetstream: {max_streams: 5}") == 2
    assert text.count("limits: {max_connections: 7}") == 2 and text.count("limits: {max_connections: 2}") == 3
    # one instance rendered alone is exactly its share of the block
    alone = natsauth.render("a", agents_of("a", "rt-1", "rt-2").users, agents_of("a").limits)
    assert alone.removesuffix("}\n") in text


def test_render_many_refuses_colliding_names() -> None:
    with pytest.raises(InvalidInput, match="listed twice"):
        natsauth.render_many([agents_of("a"), agents_of("a")])
    stolen = natsauth.InstanceAccounts("b", (natsauth.User("convoy-a", "pw"),))
    with pytest.raises(InvalidInput, match="server-wide"):
        natsauth.render_many([agents_of("a"), stolen])


def test_limits_render_in_nats_server_syntax() -> None:
    assert AccountLimits().jetstream() == "enabled"
    assert AccountLimits().control_limits() is None and AccountLimits().agent_limits() is None
    full = AccountLimits(max_connections=3, max_storage=1024, max_memory=0, max_streams=4, max_consumers=9)
    assert full.jetstream() == "{max_memory: 0, max_file: 1024, max_streams: 4, max_consumers: 9}"
    assert full.control_limits() == "{max_connections: 3}"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_streams": 3}, "at least 4"),
        ({"max_connections": 0}, "at least 1"),
        ({"max_storage": -1}, "at least 0"),
        ({"max_memory": "1G"}, "whole number"),
        ({"max_consumers": True}, "whole number"),
        ({"max_storage": 2**63}, "too large"),
        ({"max_conn": 3}, "unknown NATS account limit"),
    ],
)
def test_bad_limits_are_refused_clearly(limits: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        AccountLimits.from_mapping(limits)


def test_registry_limits_map_onto_account_limits() -> None:
    limits = AccountLimits.from_mapping(
        {"max_connections": 10, "max_storage": 2048, "max_memory": None, "max_streams": 4, "max_consumers": 50}
    )
    assert limits == AccountLimits(max_connections=10, max_storage=2048, max_streams=4, max_consumers=50)
    assert AccountLimits.from_mapping({}) == AccountLimits.from_mapping(None) == AccountLimits()
