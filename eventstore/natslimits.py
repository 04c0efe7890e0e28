"""How much of a shared nats-server one Convoy instance may take: its account limits.

Instances sharing one NATS are isolated by account (eventstore.natsauth), but an account
without limits can still fill the server's disk, memory or connection table and so starve
every other instance. nats-server enforces per-account limits itself, from the same
`accounts {}` block that names the users, in this syntax (nats-server's opts.go,
`parseJetStreamForAccount` and `parseAccountLimits`):

    "CONVOY_A": {
      jetstream: {max_memory: 1048576, max_file: 104857600, max_streams: 4, max_consumers: 20}
      limits: {max_connections: 50}
      ...
    }

`max_memory`/`max_file` are bytes of JetStream memory and file storage, `max_streams` and
`max_consumers` count the account's streams and consumers, `max_connections` its client
connections. A limit left out is unlimited. Each runtime's agent account may get a
connection limit of its own (`agent_max_connections`), so a leaked agent secret cannot
open the server's connection table either.

Pure: validation and the config text; tests/isolation/test_bus_isolation.py shows a real
server refusing what goes beyond them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from eventstore.errors import InvalidInput

CONVOY_STREAMS: Final = 4
"""The streams every instance creates (events, observations, dead letters: eventstore.bus;
the agents' lease bucket: eventstore.leases)."""

REGISTRY_KEYS: Final = ("max_connections", "max_storage", "max_memory", "max_streams", "max_consumers")
"""The keys of an instance's `limits` in the instance registry (eventstore.instances)."""


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """One instance's limits; None is unlimited."""

    max_connections: int | None = None
    """Client connections of the instance's control account (API, planner, relay …)."""
    max_storage: int | None = None
    """Bytes of JetStream file storage (nats-server's `max_file`)."""
    max_memory: int | None = None
    """Bytes of JetStream memory storage (`max_memory`; Convoy's streams are on file)."""
    max_streams: int | None = None
    max_consumers: int | None = None
    agent_max_connections: int | None = None
    """Client connections of each runtime's agent account."""

    def __post_init__(self) -> None:
        minimum = {"max_streams": CONVOY_STREAMS, "max_consumers": 1, "max_connections": 1, "agent_max_connections": 1}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"NATS account limit {spec.name} must be a whole number or unset, not {value!r}")
            low = minimum.get(spec.name, 0)
            if value < low:
                why = f" (Convoy creates {CONVOY_STREAMS} streams per instance)" if spec.name == "max_streams" else ""
                raise InvalidInput(f"NATS account limit {spec.name} must be at least {low}{why}, not {value}")
            if value > 2**62:
                raise InvalidInput(f"NATS account limit {spec.name} is too large: {value}")

    @classmethod
    def from_mapping(cls, limits: Mapping[str, object] | None) -> AccountLimits:
        """From an instance registry record's `limits` (keys `REGISTRY_KEYS`, plus
        `agent_max_connections`); an unknown key is an error, not silently unlimited."""
        if not limits:
            return cls()
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(limits) - known)
        if unknown:
            raise InvalidInput(f"unknown NATS account limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in limits.items() if v is not None})  # type: ignore[arg-type]

    def jetstream(self) -> str:
        """The value of the control account's `jetstream:` field."""
        parts = [
            (key, value)
            for key, value in (
                ("max_memory", self.max_memory),
                ("max_file", self.max_storage),
                ("max_streams", self.max_streams),
                ("max_consumers", self.max_consumers),
            )
            if value is not None
        ]
        if not parts:
            return "enabled"
        return "{" + ", ".join(f"{key}: {value}" for key, value in parts) + "}"

    def control_limits(self) -> str | None:
        """The control account's `limits:` value, or None for no connection limit."""
        return _connections(self.max_connections)

    def agent_limits(self) -> str | None:
        """Each agent account's `limits:` value, or None."""
        return _connections(self.agent_max_connections)


def _connections(value: int | None) -> str | None:
    return None if value is None else f"{{max_connections: {value}}}"
