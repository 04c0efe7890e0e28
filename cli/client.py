"""The CLI's connection to a Convoy API: where it is, who we are, and what a failure means.

Where and who are resolved once per invocation, first match wins: flags (`--endpoint`,
`--token`), the environment (`CONVOY_ENDPOINT`, `CONVOY_TOKEN`), the user's config file
(`~/.config/convoy/config.toml`, or `CONVOY_CONFIG`), then the local `convoy up` state
folder (`endpoint.json` and `admin-token`). A `grpcs://` endpoint is TLS, verified against
`--ca-file`, `CONVOY_CA_FILE` or `ca_file` in the config file, else the system trust store
(`cli.transport`); a certificate that does not verify fails the command. Every gRPC failure becomes a `CliError` with an
exit code a script can branch on and one line that says what to fix. Every mutating call
carries an `idempotency-key`, fresh per invocation, so a retry by the server's client
library never applies a command twice.

Several API processes behind one endpoint (a load balancer) answer from read models that
may lag each other by a moment, so the client carries the highest log position it has
seen — `CONVOY_MIN_POSITION` to start with (a script passes on the position a previous
command printed), then every answer's `position` — in the `convoy-min-position` metadata
of each call: whichever process answers waits until it has folded that position
(read-your-writes, services.api.handlers.MIN_POSITION_HEADER).
"""

from __future__ import annotations

import signal
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import Message

from cli import localstate, transport
from eventstore.settings import default_state_dir
from schemas.convoy.v1 import api_pb2_grpc

# Exit codes (documented in `convoy --help` via the commands' docstrings).
OK: Final = 0
FAILED: Final = 1
INVALID: Final = 2
NOT_FOUND: Final = 3
CONFLICT: Final = 4
DENIED: Final = 5
UNAVAILABLE: Final = 6

DEFAULT_TIMEOUT: Final = 30.0


class CliError(Exception):
    """A failure to report on one line of stderr, exiting with `exit_code`."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Target:
    grpc: str  # host:port
    token: str | None
    source: str  # where the endpoint came from, for error messages
    trust: transport.Trust | None = None
    """TLS verified against these roots (a `grpcs://` endpoint); None: plain text."""
    min_position: int = 0
    """`CONVOY_MIN_POSITION`: a log position every call must see (0: none)."""


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("CONVOY_CONFIG"):
        return Path(environ["CONVOY_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "convoy" / "config.toml"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}", INVALID) from None
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"{path} is not valid TOML ({e}); fix or remove it", INVALID) from None


def normalise_endpoint(endpoint: str, source: str) -> str:
    """Accept "host:port", "grpc://host:port" or "grpcs://host:port" (TLS); refuse a REST URL
    with a hint. The answer keeps "grpcs://" (`transport.split_scheme` takes it off)."""
    text = endpoint.strip()
    if text.startswith(("http://", "https://")):
        raise CliError(
            f"endpoint {endpoint!r} (from {source}) is a REST URL; the CLI speaks gRPC: give host:port "
            "of the gRPC listener (e.g. 127.0.0.1:7070), or grpcs://host:port when it serves TLS",
            INVALID,
        )
    address, tls = transport.split_scheme(text)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(
            f"endpoint {endpoint!r} (from {source}) is not host:port or grpcs://host:port (e.g. 127.0.0.1:7070)",
            INVALID,
        )
    return transport.TLS_SCHEME + address if tls else address


def _trust(ca_file: str | None, environ: Mapping[str, str], config: dict[str, Any], path: Path) -> transport.Trust:
    """The roots a TLS endpoint is verified against: the first CA file given, else the system's."""
    candidates = [
        (ca_file, "--ca-file"),
        (environ.get("CONVOY_CA_FILE"), "CONVOY_CA_FILE"),
        (_str(config.get("ca_file"), path), f"ca_file in {path}"),
    ]
    chosen = next(((f, s) for f, s in candidates if f), None)
    try:
        if chosen is None:
            return transport.system_trust()
        return transport.ca_file_trust(Path(chosen[0]).expanduser(), chosen[1])
    except transport.TrustError as error:
        raise CliError(str(error), INVALID) from None


def resolve(
    *, endpoint: str | None, token: str | None, environ: Mapping[str, str], ca_file: str | None = None
) -> Target:
    """Where to connect and which token to send (see the module docstring for the order)."""
    path = config_path(environ)
    config = _read_config(path)
    state_dir = Path(environ["CONVOY_STATE_DIR"]) if environ.get("CONVOY_STATE_DIR") else default_state_dir(environ)
    local = localstate.read_endpoint(state_dir)
    candidates: list[tuple[str | None, str | None, str]] = [
        (endpoint, token, "--endpoint"),
        (environ.get("CONVOY_ENDPOINT"), environ.get("CONVOY_TOKEN"), "CONVOY_ENDPOINT"),
        (_str(config.get("endpoint"), path), _str(config.get("token"), path), str(path)),
        (local.grpc if local else None, localstate.read_admin_token(state_dir), str(state_dir / "endpoint.json")),
    ]
    chosen_endpoint = next(((e, s) for e, _, s in candidates if e), None)
    if chosen_endpoint is None:
        raise CliError(
            "no Convoy API to talk to: pass --endpoint HOST:PORT, set CONVOY_ENDPOINT, add `endpoint = ...` to "
            f"{path}, or start a local one with `convoy up`",
            UNAVAILABLE,
        )
    chosen_token = next((t for _, t, _ in candidates if t), None)
    address, tls = transport.split_scheme(normalise_endpoint(*chosen_endpoint))
    trust = _trust(ca_file, environ, config, path) if tls else None
    return Target(
        grpc=address, token=chosen_token, source=chosen_endpoint[1], trust=trust,
        min_position=_min_position(environ.get("CONVOY_MIN_POSITION")),
    )


def _min_position(text: str | None) -> int:
    if not text or not text.strip():
        return 0
    try:
        position = int(text.strip())
    except ValueError:
        position = -1
    if position < 0:
        raise CliError(f"CONVOY_MIN_POSITION={text!r} is not a log position (a whole number >= 0)", INVALID)
    return position


def _str(value: Any, path: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CliError(f"{path}: endpoint, token and ca_file must be strings", INVALID)
    return value


_CODES: Final[dict[grpc.StatusCode, tuple[int, str]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (INVALID, "fix the request"),
    grpc.StatusCode.OUT_OF_RANGE: (INVALID, "fix the request"),
    grpc.StatusCode.NOT_FOUND: (NOT_FOUND, "check the name (list what exists with the `list` commands)"),
    grpc.StatusCode.ALREADY_EXISTS: (CONFLICT, "it already exists, or this idempotency key was used before"),
    grpc.StatusCode.FAILED_PRECONDITION: (CONFLICT, "the current state does not allow this yet"),
    grpc.StatusCode.ABORTED: (CONFLICT, "someone changed it at the same time; run the command again"),
    grpc.StatusCode.UNAUTHENTICATED: (
        DENIED,
        "pass a valid token with --token or CONVOY_TOKEN (a local `convoy up` writes one to <state dir>/admin-token)",
    ),
    grpc.StatusCode.PERMISSION_DENIED: (DENIED, "use a token with a role that allows this (convoy tokens create)"),
    grpc.StatusCode.UNAVAILABLE: (UNAVAILABLE, "is the API running there? start it with `convoy up` or check --endpoint"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (UNAVAILABLE, "the API did not answer in time; check it is healthy"),
}


def _from_server(error: grpc.RpcError) -> bool:
    """The Convoy API marks every error it sends with a correlation id; a transport
    failure (nobody listening, connection lost) has none."""
    try:
        trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - some transport errors carry no call at all
        return False
    return any(key == "x-correlation-id" for key, _ in trailing)


def describe(error: grpc.RpcError, target: Target) -> CliError:
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    details: str = error.details() or code.name  # type: ignore[attr-defined]
    exit_code, hint = _CODES.get(code, (FAILED, "see the API server's log"))
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not _from_server(error):
        return _unreachable(details, target, hint, exit_code)
    if code == grpc.StatusCode.UNAUTHENTICATED and not target.token:
        return CliError(f"no token given: {hint}", exit_code)
    return CliError(f"{details} ({code.name.lower()}): {hint}", exit_code)


def _unreachable(details: str, target: Target, hint: str, exit_code: int) -> CliError:
    """A transport failure: nobody there, or a TLS connection that could not be made."""
    where = f"the Convoy API at {target.grpc} (from {target.source})"
    kind = transport.failure_kind(details)
    if target.trust is not None and kind == "verify":
        return CliError(
            f"{where} presented a TLS certificate that does not verify against {target.trust.source} "
            f"(or is not for {target.grpc.rpartition(':')[0]}): pass the CA that signed it with --ca-file or "
            "CONVOY_CA_FILE, and use a host name the certificate names (nothing was sent)",
            exit_code,
        )
    if target.trust is not None and kind == "handshake":
        return CliError(
            f"the TLS handshake with {where} failed; is it serving plain text? "
            "(then drop grpcs:// from the endpoint, on loopback only)",
            exit_code,
        )
    if target.trust is None:
        hint += "; if it serves TLS, give the endpoint as grpcs://host:port"
    return CliError(f"cannot reach {where}: {hint}", exit_code)


@dataclass
class Client:
    """Every API service's stub on one channel, plus the invocation's credentials.

    `call` makes one unary call and turns failures into `CliError`; `write` does the same
    for a mutating call and adds its idempotency key."""

    target: Target
    timeout: float = DEFAULT_TIMEOUT
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex)
    _channel: grpc.Channel | None = None
    _writes: int = 0
    seen: int = 0
    """The highest log position seen (CONVOY_MIN_POSITION, then answers): sent with every call."""

    def __post_init__(self) -> None:
        self.seen = max(self.seen, self.target.min_position)
        self._channel = transport.channel(self.target.grpc, self.target.trust)
        channel = self._channel
        self.applications = api_pb2_grpc.ApplicationServiceStub(channel)
        self.services = api_pb2_grpc.ServiceServiceStub(channel)
        self.runtimes = api_pb2_grpc.RuntimeServiceStub(channel)
        self.protections = api_pb2_grpc.ProtectionServiceStub(channel)
        self.resources = api_pb2_grpc.ResourceServiceStub(channel)
        self.registries = api_pb2_grpc.RegistryServiceStub(channel)
        self.releases = api_pb2_grpc.ReleaseServiceStub(channel)
        self.tokens = api_pb2_grpc.TokenServiceStub(channel)
        self.events = api_pb2_grpc.EventServiceStub(channel)
        self.convergence = api_pb2_grpc.ConvergenceServiceStub(channel)
        self.declarations = api_pb2_grpc.DeclarationServiceStub(channel)
        self.secrets = api_pb2_grpc.SecretServiceStub(channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metadata(self, *, idempotent_write: bool = False) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        if self.target.token:
            md.append(("authorization", f"Bearer {self.target.token}"))
        if idempotent_write:
            self._writes += 1
            md.append(("idempotency-key", f"cli-{self.invocation}-{self._writes}"))
        if self.seen > 0:
            md.append(("convoy-min-position", str(self.seen)))
        return md

    def observe(self, answer: Any) -> Any:
        """Raise `seen` to the position an answer carries (its own, or its write's)."""
        for holder in (answer, getattr(answer, "write", None)):
            position = getattr(holder, "position", None) if holder is not None else None
            if isinstance(position, int) and position > self.seen:
                self.seen = position
        return answer

    def call(self, method: Any, request: Message) -> Any:
        try:
            return self.observe(method(request, metadata=self.metadata(), timeout=self.timeout))
        except grpc.RpcError as e:
            raise describe(e, self.target) from None

    def write(self, method: Any, request: Message) -> Any:
        try:
            return self.observe(method(request, metadata=self.metadata(idempotent_write=True), timeout=self.timeout))
        except grpc.RpcError as e:
            raise describe(e, self.target) from None

    def stream(self, method: Any, request: Message, *, until_interrupted: bool = False) -> Iterator[Any]:
        """A server stream with no deadline (Watch); failures become CliError. With
        `until_interrupted`, Ctrl-C (SIGINT) cancels the call and the stream just ends: a
        KeyboardInterrupt raised while the main thread is inside gRPC's C core can be lost,
        and a follow that ignores Ctrl-C is one the user has to kill."""
        call = method(request, metadata=self.metadata())
        previous = signal.signal(signal.SIGINT, lambda *_: call.cancel()) if until_interrupted else None
        try:
            yield from call
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                return
            raise describe(e, self.target) from None
        finally:
            if until_interrupted:
                signal.signal(signal.SIGINT, previous)

    def pages(self, method: Any, request: Message, items: str) -> list[Any]:
        """Every item of a paged List call."""
        out: list[Any] = []
        while True:
            answer = self.call(method, request)
            out.extend(getattr(answer, items))
            if not answer.next_page_token:
                return out
            request.page.page_token = answer.next_page_token  # type: ignore[attr-defined]
