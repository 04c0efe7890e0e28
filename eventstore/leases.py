"""Leases on the bus: at most one holder per key, kept in a JetStream key-value bucket.

Why: an agent's runtime must be driven by one agent process at a time (two would apply
the same intent twice, both supervise the same workloads, both repair the same drift),
yet a runtime should not lose its agent for longer than a restart when a node dies. So
agents of one runtime run as replicas, active and standby, and the active one holds the
runtime's lease. Agents reach only NATS (never PostgreSQL), so the lease lives there.

How: the bucket `CONVOY_AGENT_LEASES_<INSTANCE>` (stream `KV_<bucket>`, created by the
control plane with the other streams) keeps one message per key (history 1) and
forgets it `LEASE_TTL` seconds after it was written (the stream's max age: the
server's clock alone decides expiry, so replicas' clocks need not agree). A holder
writes its value again every `ttl / 4` with compare-and-set
(`Nats-Expected-Last-Subject-Sequence` = the sequence it last wrote); a standby reads the
key every `poll` seconds and creates it (expected sequence 0) once it is gone — its
holder died or was cut off for a whole TTL — or marked released (a clean stop). The
holder counts its lease as held only until `ttl * 0.8` after it *sent* its last
successful write, which the server stored no earlier, so it gives up before anyone can
take over (the agent then stops: `agent.py`, `lost`).

The key is the runtime's subject token, and only raw subjects are used — not nats-py's
KV API, whose `get` asks `$JS.API.DIRECT.GET.<stream>` with the key in the body, which a
permission cannot narrow to one key. A runtime's credential may publish exactly
`$KV.<bucket>.<runtime>` and ask exactly `$JS.API.DIRECT.GET.<stream>.$KV.<bucket>.<runtime>`
(eventstore.natsauth, tests/integration/test_agent_permissions.py): it can neither take
nor read nor release another runtime's lease.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from eventstore import bus
from eventstore.errors import BusRejected, ConvoyError, Unavailable

log = structlog.get_logger("convoy.leases")

LEASE_TTL: Final = 10.0
"""Seconds a lease outlives its holder's last write (the bucket's max age): a standby
takes over within this (plus its poll) after the active agent died."""
HELD_FRACTION: Final = 0.8
"""The holder stops counting on its lease this far into the TTL after its last write."""
WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for a failed compare-and-set."""
H_EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"


def bucket(instance: str) -> str:
    return f"CONVOY_AGENT_LEASES_{bus.validate_instance(instance).upper()}"


def stream(instance: str) -> str:
    return f"KV_{bucket(instance)}"


def key_subject(instance: str, runtime: str) -> str:
    """Where `runtime`'s lease is written (the one subject its agent may write it on)."""
    return f"$KV.{bucket(instance)}.{bus.encode_token(runtime)}"


def read_subject(instance: str, runtime: str) -> str:
    """The direct-get request that answers `runtime`'s lease, and no other key."""
    return f"$JS.API.DIRECT.GET.{stream(instance)}.{key_subject(instance, runtime)}"


def bucket_config(instance: str, *, replicas: int = 1, ttl: float = LEASE_TTL) -> StreamConfig:
    return StreamConfig(
        name=stream(instance),
        description=f"Convoy {instance}: which agent replica drives each runtime (eventstore.leases)",
        subjects=[f"$KV.{bucket(instance)}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        max_age=ttl,
        duplicate_window=ttl,
        num_replicas=replicas,
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
    )


async def ensure_bucket(js: JetStreamContext, instance: str, *, replicas: int = 1, ttl: float = LEASE_TTL) -> str:
    """Create the instance's lease bucket, or update it to this configuration. Idempotent."""
    config = bucket_config(instance, replicas=replicas, ttl=ttl)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as error:
        if error.err_code != 10058:  # already in use with a different configuration
            raise bus.translate(error, f"creating stream {config.name}") from error
        await bus.guarded(f"updating stream {config.name}", functools.partial(js.update_stream, config))
    except bus.NATS_ERRORS as error:
        raise bus.translate(error, f"creating stream {config.name}") from error
    assert config.name is not None
    return config.name


@dataclass(frozen=True, slots=True)
class Value:
    """A lease as read: who holds it (or held it, when `released`) and its sequence."""

    holder: str
    released: bool
    sequence: int


class LeaseTaken(ConvoyError):
    """Someone else wrote the lease first (compare-and-set failed): not retryable as is;
    read it again."""


class Lease:
    """One key's lease for `holder`. `await acquire()` (waits while another holds it),
    then `await keep()` (returns when the lease is lost), `held()` before each act,
    `await release()` on a clean stop."""

    def __init__(
        self,
        nc: Client,
        *,
        instance: str,
        runtime: str,
        holder: str,
        ttl: float = LEASE_TTL,
        poll: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self.runtime = runtime
        self.holder = holder
        self.ttl = ttl
        self.poll = poll
        self.timeout = timeout
        self._clock = clock
        self._write = key_subject(instance, runtime)
        self._read = read_subject(instance, runtime)
        self._sequence = 0
        self._valid_until = 0.0
        self.other: str = ""
        """The holder last seen while waiting ("" when none)."""
        self.lost = asyncio.Event()

    def held(self) -> bool:
        """Whether this holder may act now (its last write is recent enough)."""
        return self._sequence > 0 and self._clock() < self._valid_until and not self.lost.is_set()

    async def read(self) -> Value | None:
        """The lease as stored (None: nobody holds it)."""
        msg = await bus.guarded("reading a lease", lambda: self._nc.request(self._read, b"", timeout=self.timeout))
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "404":
            return None
        if status:
            raise BusRejected(f"reading lease {self._write}: status {status} {headers.get('Description', '')}")
        try:
            document = json.loads(msg.data or b"{}")
            return Value(str(document.get("holder", "")), bool(document.get("released")), int(headers["Nats-Sequence"]))
        except (ValueError, KeyError, TypeError) as error:
            raise BusRejected(f"lease {self._write} holds no lease document ({error})") from error

    async def _put(self, *, expected: int, released: bool = False) -> int:
        """Compare-and-set: write the lease if its last sequence is `expected`."""
        body = json.dumps({"holder": self.holder, "released": released}).encode()
        headers = {H_EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected)}
        msg = await bus.guarded(
            "writing a lease", lambda: self._nc.request(self._write, body, timeout=self.timeout, headers=headers)
        )
        try:
            answer = json.loads(msg.data or b"{}")
        except ValueError as error:
            raise BusRejected(f"writing lease {self._write}: unreadable answer ({error})") from error
        if "error" in answer:
            code = int(answer["error"].get("err_code", 0))
            if code == WRONG_LAST_SEQUENCE:
                raise LeaseTaken(f"lease {self._write} was written by someone else")
            raise BusRejected(f"writing lease {self._write}: {answer['error'].get('description', answer)}", code=code)
        return int(answer["seq"])

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, released, or ours already (a restart of the same
        replica); answer whether it is held now."""
        current = await self.read()
        if current is not None and not current.released and current.holder != self.holder:
            self.other = current.holder
            return False
        sent = self._clock()
        try:
            self._sequence = await self._put(expected=current.sequence if current is not None else 0)
        except LeaseTaken:
            return False
        self._valid_until = sent + self.ttl * HELD_FRACTION
        self.other = ""
        return True

    async def acquire(self, *, waiting: Callable[[str], None] | None = None) -> None:
        """Wait until this holder has the lease. `waiting(holder)` is called when another
        is seen to hold it (once per holder)."""
        told = ""
        while True:
            try:
                if await self.try_acquire():
                    log.info("lease acquired", runtime=self.runtime, holder=self.holder, sequence=self._sequence)
                    return
            except ConvoyError as error:
                log.warning("cannot reach the lease; trying again", runtime=self.runtime, error=str(error))
            if self.other and self.other != told and waiting is not None:
                waiting(self.other)
                told = self.other
            await asyncio.sleep(self.poll)

    async def keep(self) -> None:
        """Renew every ttl/4 until the lease is lost (someone else wrote it, or no renewal
        succeeded in time); then set `lost` and return."""
        while True:
            await asyncio.sleep(self.ttl / 4)
            sent = self._clock()
            try:
                self._sequence = await self._put(expected=self._sequence)
                self._valid_until = sent + self.ttl * HELD_FRACTION
                continue
            except LeaseTaken:
                # Our own last write may have been stored with its answer lost: then the
                # lease is still ours, at a sequence we did not hear of.
                try:
                    current = await self.read()
                except ConvoyError:
                    current = None
                if current is not None and current.holder == self.holder and not current.released:
                    self._sequence = current.sequence
                    continue
                log.error("lease lost: another replica holds it", runtime=self.runtime, holder=self.holder)
            except (Unavailable, BusRejected) as error:
                if self._clock() < self._valid_until:
                    log.warning("lease not renewed yet; trying again", runtime=self.runtime, error=str(error))
                    continue
                log.error("lease lost: not renewed in time", runtime=self.runtime, error=str(error))
            self.lost.set()
            return

    async def release(self) -> None:
        """Mark the lease released (a standby takes it at its next poll). Best effort:
        unreleased, it expires after the TTL."""
        if not self.held():
            return
        try:
            await self._put(expected=self._sequence, released=True)
            log.info("lease released", runtime=self.runtime, holder=self.holder)
        except ConvoyError as error:
            log.warning("lease not released; it expires by itself", runtime=self.runtime, error=str(error))
        self._sequence = 0
