"""`convoy planner` (run the planner alone) and `convoy replay --check` (audit it).

Both talk to PostgreSQL directly: the planner is a processor of the log, and replay is
audit tooling that rebuilds the planner from position 0 — neither goes through the API.
The database comes from CONVOY_DATABASE_URL, or from a local `convoy up` (its state
folder records the embedded PostgreSQL's URL). The planner serves /metrics, /healthz and
/readyz on 127.0.0.1:`--ops-port`.

Run as many `convoy planner` processes as you like: each partition (`--partition K/N`,
default the whole instance) has one leader, the holder of its PostgreSQL advisory lock,
and the others stand by until it goes (services.planner.runner).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from cli import localstate, ops
from cli import logging as convoy_logging
from eventstore import bus, natsauth, natstls, probes
from eventstore.codec import convoy_registry
from eventstore.metrics import Registry
from eventstore.opsserver import OpsServer
from eventstore.pgsnapshots import PostgresSnapshotStore
from eventstore.snapshots import policy_every
from eventstore.postgres import MigrationsPending, PostgresEventStore, PostgresSettings, StoreAccessDenied
from eventstore.sessionlock import LockSettings, SessionLock
from eventstore.settings import Settings, environ
from services.planner.clock import SystemClock
from services.planner.partitions import WHOLE, Partition, partition_names
from services.planner.replay import Difference, replay_check
from services.planner.responder import PlanResponder
from services.planner.runner import Planner, PlannerSettings, planner_names

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="The state folder of a local `convoy up`.")]


def database_url(settings: Settings) -> str:
    url = settings.database_url or localstate.read_database_url(settings.state_dir)
    if not url:
        typer.echo(
            "error: no database: set CONVOY_DATABASE_URL to the PostgreSQL that holds Convoy's events, "
            "or start `convoy up` (its state folder records the embedded one)",
            err=True,
        )
        raise typer.Exit(2)
    return url


STARTUP_REFUSALS = (MigrationsPending, StoreAccessDenied)
"""Errors that stop a service at start for an operator to fix: printed, not a traceback."""


def planner(
    state_dir: StateDir = None,
    ops_port: Annotated[
        int, typer.Option("--ops-port", help="/metrics, /healthz, /readyz on 127.0.0.1 (0 = any free port).")
    ] = 9091,
    log_format: convoy_logging.LogFormatOpt = None,
    partition: Annotated[
        str | None,
        typer.Option(
            "--partition", metavar="K/N",
            help="Plan only the applications whose SHA-256 of the name, mod N, is K (its own checkpoint "
                 "`planner-K-of-N` and leader lock); default: every application.",
        ),
    ] = None,
    lock_poll: Annotated[
        float, typer.Option("--lock-poll", help="Seconds between a standby's tries to take the leader lock.")
    ] = 0.5,
) -> None:
    """Run the planner against the event store in CONVOY_DATABASE_URL (Ctrl-C stops it).

    It leads while it holds its partition's lock and stands by while another process does."""
    convoy_logging.setup(log_format)
    try:
        which = Partition.parse(partition) if partition is not None else WHOLE
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    settings = Settings.from_env(environ(), state_dir=state_dir)
    try:
        asyncio.run(_run_planner(
            database_url(settings), settings.instance, ops_port, settings.nats_url, settings.nats_ca,
            nats_password=settings.nats_password, partition=which, lock=LockSettings(poll=lock_poll),
            snapshot_every=settings.snapshot_every,
        ))
    except STARTUP_REFUSALS as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo("stopped")


async def _run_planner(
    url: str, instance: str, ops_port: int, nats_url: str | None, nats_ca: Path | None = None,
    *, nats_password: str | None = None, partition: Partition = WHOLE, lock: LockSettings | None = None,
    snapshot_every: int = 10_000,
) -> None:
    """The planner alone; with CONVOY_NATS_URL it also answers the API's dry runs (as the
    instance's system user when CONVOY_NATS_PASSWORD is set)."""
    store = await PostgresEventStore.open(PostgresSettings(dsn=url, schema=instance, pool_max=4))
    name = partition.name
    leader_lock = SessionLock(dsn=url, key=store.lock_key(f"planner:{name}"), name=name, settings=lock)
    credentials = {"user": natsauth.system_user(instance), "password": nats_password} if nats_password else {}
    nc = (
        await bus.connect(nats_url, name=f"convoy-planner:{instance}", tls=natstls.NatsTls(nats_ca), **credentials)
        if nats_url
        else None
    )
    metrics = Registry()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Planner(
            store=ops.counted(store, ops.events_appended(metrics), "planner"),
            registry=convoy_registry(),
            clock=SystemClock(),
            settings=PlannerSettings(name=name, partition=partition),
            on_converged=ops.convergence_histogram(metrics),
            lock=leader_lock,
            snapshot_store=PostgresSnapshotStore(pool=store.pool),
            snapshot_policy=policy_every(snapshot_every),
        ) as running:
            ops.instrument_planner(metrics, running)
            async with contextlib.AsyncExitStack() as stack:
                store_probe = await stack.enter_async_context(probes.store_probe(store))
                checks = [ops.planner_check(running), store_probe.check()]
                watched = [store_probe]
                if nc is not None:
                    await stack.enter_async_context(PlanResponder(nc=nc, planner=running, instance=instance))
                    watched.append(await stack.enter_async_context(probes.bus_probe(nc)))
                    checks.append(watched[-1].check())
                else:
                    typer.echo("no CONVOY_NATS_URL: dry runs (`deploy --dry-run`) will not be answered")
                ops.instrument_probes(metrics, watched)
                server = await stack.enter_async_context(
                    OpsServer(address=f"127.0.0.1:{ops_port}", registry=metrics, checks=checks)
                )
                typer.echo(f"operations:   http://127.0.0.1:{server.port} (/metrics /healthz /readyz)")
                who = "planner" if partition.whole else f"planner {name}"
                which = "" if partition.whole else f" (applications whose hash mod {partition.count} is {partition.index})"
                typer.echo(f"{who}{which}: leads while it holds its lock, stands by while another process does")
                if await _first(running.ready, running.standing_by, stop) is running.standing_by:
                    typer.echo(f"{who} standing by: another process holds its lock; press Ctrl-C to stop")
                    await _first(running.ready, stop)
                if running.ready.is_set() and not stop.is_set():
                    typer.echo(f"{who} leads, following the log from position {running.state.position}; press Ctrl-C to stop")
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if nc is not None:
            await nc.close()
        await store.close()


async def _first(*events: asyncio.Event) -> asyncio.Event:
    """The first of `events` to be set."""
    waits = {asyncio.ensure_future(e.wait()): e for e in events}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return next(waits[w] for w in waits if w in done)


def replay(
    check: Annotated[bool, typer.Option("--check", help="Compare the replay with what the planner recorded.")] = False,
    state_dir: StateDir = None,
    partitions: Annotated[
        int, typer.Option("--partitions", min=1, help="The planners wrote the log as N partitions (`convoy planner --partition K/N`).")
    ] = 1,
) -> None:
    """Rebuild the planner from position 0 and compare its decisions with the log."""
    if not check:
        typer.echo("error: say what to do: `convoy replay --check`", err=True)
        raise typer.Exit(2)
    settings = Settings.from_env(environ(), state_dir=state_dir)
    ok = asyncio.run(_replay(database_url(settings), settings.instance, partition_names(partitions)))
    raise typer.Exit(0 if ok else 1)


def _where(difference: Difference) -> str:
    return f"input at position {difference.position} ({difference.input_type or 'its output'})" if difference.position else "record"


async def _replay(url: str, instance: str, names: list[str]) -> bool:
    store = await PostgresEventStore.open(PostgresSettings(dsn=url, schema=instance, pool_max=2))
    try:
        writers = await planner_names(store, convoy_registry())
        missing = [name for name in names if name not in writers]
        if missing and writers:
            typer.echo(f"error: no planner {', '.join(missing)} wrote this log; its planners: {', '.join(writers)} "
                       "(say `--partitions N` for the layout that runs now)", err=True)
            return False
        report = await replay_check(store, convoy_registry(), names=names)
    finally:
        await store.close()
    typer.echo(
        f"replayed {report.inputs} inputs up to position {report.checkpoint} with planner version {report.version}: "
        f"{report.outputs} planner events checked, {len(report.differences)} difference(s)"
    )
    for difference in report.differences:
        typer.echo(f"  {_where(difference)}: {difference.what}")
    if report.upgraded:
        typer.echo(
            f"{len(report.upgraded)} difference(s) on inputs decided by an older planner version "
            f"(not failures: what upgrading to version {report.version} changed):"
        )
        for difference in report.upgraded:
            typer.echo(f"  {_where(difference)}, decided by version {report.versions.at(difference.position)}: {difference.what}")
    if report.ok:
        typer.echo("the planner's record is exactly what replaying the log produces" + (
            " (since the upgrade)" if report.upgraded else ""
        ))
    return report.ok
