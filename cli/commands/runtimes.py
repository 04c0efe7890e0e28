"""`convoy runtimes`: where services run — list and show them, pause and resume them, set
their labels, issue their agent's credential, deregister them.

`get` and `list` also say what the API last heard from each runtime's agent (its
heartbeats): whether it is connected, and whether its runtime answers it — an agent
whose cluster is unreachable keeps retrying, and this is where that shows.

An agent credential's secret exists only in IssueAgentCredential's answer (Convoy keeps its
hash), so `credential` shows it exactly once: printed to stdout, or written to a file only
its owner can read — and then never printed. The file is claimed before the credential is
issued, so a secret is never issued (and the old one revoked) that could then not be
stored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.client import CONFLICT, INVALID, CliError
from cli.commands.common import (
    CaFileOpt,
    EndpointOpt,
    OutputOpt,
    TokenOpt,
    YesOpt,
    confirm,
    connect,
    reports_errors,
    show_resource,
    suffix,
    written,
)
from cli.output import Column, Format, as_dict, emit_many, emit_one
from schemas.convoy.v1 import api_pb2, convergence_pb2, resources_pb2

runtimes = typer.Typer(name="runtimes", help="Runtimes (where services run).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The runtime.", show_default=False)]


def _runtime_kind(state: api_pb2.RuntimeState) -> str:
    desc = resources_pb2.RuntimeKind.DESCRIPTOR.values_by_number.get(state.runtime.kind)
    return desc.name.removeprefix("RUNTIME_KIND_").lower() if desc else str(state.runtime.kind)


_BEAT = convergence_pb2.Heartbeat


def _ago(seconds: float) -> str:
    """Seconds, coarsely and rounded down: 2s, 5m, 3h, 2d."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _agent_cell(state: api_pb2.RuntimeState) -> str:
    if not state.HasField("agent"):
        return "-"
    agent = state.agent
    ago = _ago(agent.last_seen_ago.ToTimedelta().total_seconds())
    return f"connected ({ago} ago)" if agent.connected else f"LOST ({ago} ago)"


def _runtime_cell(state: api_pb2.RuntimeState) -> str:
    if not state.HasField("agent"):
        return "-"
    availability = state.agent.runtime_availability
    if availability == _BEAT.RUNTIME_AVAILABILITY_AVAILABLE:
        return "available"
    if availability == _BEAT.RUNTIME_AVAILABILITY_UNAVAILABLE:
        return "UNAVAILABLE"
    return "-"


def agent_lines(state: api_pb2.RuntimeState) -> list[str]:
    """What the API heard from the runtime's agent, as `runtimes get` prints it."""
    if not state.HasField("agent"):
        return ["# agent: no heartbeat heard by this API (no agent running, or this API does not listen to the bus)"]
    agent = state.agent
    ago = _ago(agent.last_seen_ago.ToTimedelta().total_seconds())
    workloads = f"{agent.workloads} workload{'' if agent.workloads == 1 else 's'}"
    if agent.connected:
        lines = [f"# agent: connected (last heartbeat {ago} ago; {agent.agent_id}, {workloads})"]
        stale = ""
    else:
        lines = [f"# agent: NOT CONNECTED (last heartbeat {ago} ago; {agent.agent_id}, {workloads})"]
        stale = " (as of its last heartbeat)"
    availability = agent.runtime_availability
    if availability == _BEAT.RUNTIME_AVAILABILITY_UNAVAILABLE:
        since = ""
        if agent.HasField("runtime_unavailable_since"):
            since = agent.runtime_unavailable_since.ToDatetime().strftime(" since %Y-%m-%d %H:%M:%S UTC")
        error = " ".join(agent.runtime_error.split())
        lines.append(f"# runtime: UNAVAILABLE{since}{stale}" + (f" — {error}" if error else ""))
    elif availability == _BEAT.RUNTIME_AVAILABILITY_AVAILABLE:
        lines.append(f"# runtime: available{stale}")
    else:
        lines.append("# runtime: not reported by the agent yet")
    return lines


@runtimes.command("list")
@reports_errors
def runtimes_list(
    endpoint: EndpointOpt = None, ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """List runtimes, with whether each agent is connected and its runtime available."""
    with connect(endpoint, token, ca_file) as client:
        found = client.pages(client.runtimes.ListRuntimes, api_pb2.ListRuntimesRequest(), "runtimes")
    emit_many(
        found,
        output,
        [
            Column("name", lambda r: r.runtime.name),
            Column("kind", _runtime_kind),
            Column("labels", lambda r: dict(r.runtime.labels)),
            Column("paused", lambda r: r.paused),
            Column("agent", _agent_cell),
            Column("runtime", _runtime_cell),
        ],
    )


@runtimes.command("get")
@reports_errors
def runtimes_get(
    name: str, endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None, token: TokenOpt = None, output: OutputOpt = Format.table
) -> None:
    """Show one runtime and its state: paused, agent connected, runtime available."""
    with connect(endpoint, token, ca_file) as client:
        found: api_pb2.RuntimeState = client.call(client.runtimes.GetRuntime, api_pb2.GetRuntimeRequest(name=name))
    if output is Format.table:
        state = f"# paused: {found.pause_reason or 'yes'}" if found.paused else "# not paused"
        show_resource(
            found.runtime,
            output,
            state,
            f"# agent credential generation: {found.credential_generation}",
            *agent_lines(found),
        )
    else:
        emit_one(found, output)


class _PrivateFile:
    """A file for a secret, claimed before the secret exists and mode 0600 from its first
    byte. Without `force` the file itself is created exclusively (an existing one is
    refused); with `force` a temporary file beside it is renamed over it at the end, so a
    failed attempt leaves the old file as it was. `abandon` removes what was claimed."""

    def __init__(self, path: Path, *, force: bool) -> None:
        self.path = path
        try:
            if force:
                if path.is_dir():
                    raise CliError(f"--file {path} is a directory; give a file name", INVALID)
                self.fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                self.writing = Path(name)
            else:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self.writing = path
        except FileExistsError:
            raise CliError(
                f"--file {path} already exists; refusing to overwrite it (pass --force to replace it)", CONFLICT
            ) from None
        except FileNotFoundError:
            raise CliError(f"--file {path}: the folder {path.parent} does not exist", INVALID) from None
        except OSError as e:
            raise CliError(f"--file {path}: cannot write there: {e.strerror or e}", INVALID) from None
        os.fchmod(self.fd, 0o600)  # whatever the umask

    def commit(self, text: str) -> None:
        try:
            with os.fdopen(self.fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if self.writing != self.path:
                os.replace(self.writing, self.path)
        except OSError as e:
            self.writing.unlink(missing_ok=True)
            raise CliError(
                f"--file {self.path}: the credential was issued but could not be written ({e.strerror or e}); "
                "issue it again",
            ) from None

    def abandon(self) -> None:
        os.close(self.fd)
        self.writing.unlink(missing_ok=True)


@runtimes.command("credential")
@reports_errors
def credential(
    name: NameArg,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Write the credential (JSON, with its secret) to this new file, mode 0600, instead of printing it.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --file replace an existing file.")] = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Issue the runtime's agent credential; issuing again rotates it (the old one stops working).

    The secret is shown once. Without --file the JSON answer (YAML with -o yaml) goes to
    stdout; with --file it goes only to that file, which `convoy agent --credential-file`
    reads, and the command prints where it went and the credential's generation and id."""
    request = api_pb2.IssueAgentCredentialRequest(runtime=name)
    if file is None:
        with connect(endpoint, token, ca_file) as client:
            answer: api_pb2.AgentCredential = client.write(client.runtimes.IssueAgentCredential, request)
        emit_one(answer, Format.yaml if output is Format.yaml else Format.json)
        typer.echo("the secret is shown this once: store it now (or use --file PATH)", err=True)
        return
    target = _PrivateFile(file, force=force)
    try:
        with connect(endpoint, token, ca_file) as client:
            answer = client.write(client.runtimes.IssueAgentCredential, request)
    except BaseException:
        target.abandon()
        raise
    target.commit(json.dumps(as_dict(answer), indent=2) + "\n")
    public = api_pb2.AgentCredential()
    public.CopyFrom(answer)
    public.ClearField("secret")
    written(
        output,
        public,
        f"agent credential {answer.credential_id} (generation {answer.generation}) of runtime {name} "
        f"written to {file} (mode 0600)",
    )


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded).", show_default=False)]


@runtimes.command("pause")
@reports_errors
def pause(
    name: NameArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded; required).", show_default=False)],
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Pause a runtime: the planner sends it no new deployments until it is resumed."""
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.runtimes.PauseRuntime, api_pb2.PauseRuntimeRequest(name=name, reason=reason))
    line = f"paused runtime {name}" if answer.changed else f"runtime {name} was already paused"
    written(output, answer, line + suffix(answer))


@runtimes.command("resume")
@reports_errors
def resume(
    name: NameArg,
    reason: ReasonOpt = "",
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Resume a paused runtime."""
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.runtimes.ResumeRuntime, api_pb2.ResumeRuntimeRequest(name=name, reason=reason))
    line = f"resumed runtime {name}" if answer.changed else f"runtime {name} was not paused"
    written(output, answer, line + suffix(answer))


def _parse_labels(items: list[str], remove: list[str]) -> dict[str, str]:
    """`key=value` arguments as a mapping; a key both set and removed is a contradiction."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"label {item!r} is not key=value (e.g. env=prod); remove a label with --remove KEY", INVALID)
        labels[key] = value
    both = sorted(set(labels) & set(remove))
    if both:
        raise CliError(f"label {both[0]!r} is both set and removed; do one or the other", INVALID)
    if not labels and not remove:
        raise CliError("give labels to set (key=value) or --remove KEY", INVALID)
    return labels


def _labels_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


@runtimes.command("label")
@reports_errors
def label(
    name: NameArg,
    labels: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE", help="Labels to set (added, or changed).", show_default=False),
    ] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="A label to remove (repeatable).", show_default=False)
    ] = None,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Set or remove a runtime's labels, keeping the others; prints the labels it has now.

    The API takes the complete label set, so this reads the current labels and sends them
    with the changes (a label someone changes in between is overwritten)."""
    removals = remove or []
    changes = _parse_labels(labels or [], removals)
    with connect(endpoint, token, ca_file) as client:
        state: api_pb2.RuntimeState = client.call(client.runtimes.GetRuntime, api_pb2.GetRuntimeRequest(name=name))
        current = dict(state.runtime.labels)
        for key in removals:
            if key not in current:
                typer.echo(f"note: runtime {name} has no label {key!r} to remove", err=True)
        after = {k: v for k, v in current.items() if k not in removals} | changes
        answer = client.write(client.runtimes.LabelRuntime, api_pb2.LabelRuntimeRequest(name=name, labels=after))
    written(output, answer, f"labels of runtime {name}: {_labels_text(after)}" + suffix(answer))


@runtimes.command("deregister")
@reports_errors
def deregister(
    name: NameArg,
    yes: YesOpt = False,
    endpoint: EndpointOpt = None,
    ca_file: CaFileOpt = None,
    token: TokenOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Deregister a runtime (refused while release channels still bind it)."""
    confirm(f"deregister runtime {name}", yes)
    with connect(endpoint, token, ca_file) as client:
        answer = client.write(client.runtimes.DeregisterRuntime, api_pb2.DeregisterRuntimeRequest(name=name))
    written(output, answer, f"deregistered runtime {name} (position {answer.position})")
