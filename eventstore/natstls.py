"""TLS to NATS: agents and the control plane use it whenever the server offers it.

Agents dial out to NATS over networks Convoy does not own, with credentials that let them
pull intents, so the connection is encrypted and the server verified whenever TLS is
possible:

- the server is verified against `CONVOY_NATS_CA` / `--nats-ca FILE` when given, against
  the system's trust store otherwise; its certificate must name the host dialled;
- a server whose INFO says `tls_required` *or* `tls_available` (nats-server's
  `allow_non_tls`) gets a TLS handshake. nats-py upgrades only on `tls_required`, so
  `Client` marks an offered TLS as required before nats-py decides;
- a `tls://` URL, or a CA file given, means TLS is expected: a server that offers none
  is refused (`TlsNotOffered`) instead of being talked to in plaintext — nats-py would
  silently go on in plaintext there.

A certificate that does not verify fails the first connection with `TlsRefused`, which
says so and what to do (not retryable: retrying the same certificate cannot help),
instead of nats-py's "no servers available" (and instead of the hang nats-py's close
falls into after a failed handshake: `Client._process_connect_init`). tests/integration/test_nats_tls.py runs
agents against a nats-server with a certificate the test makes.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nats.errors
from nats.aio.client import Client as NatsClient

from eventstore.errors import ConvoyError, InvalidInput


class TlsNotOffered(nats.errors.Error):
    """The server offers no TLS although this connection expects it (a nats-py error, so
    its connect loop reports it like any failed attempt)."""

    def __str__(self) -> str:
        return "nats: the server does not offer TLS, but a tls:// URL or a CA file asks for it"


class TlsRefused(ConvoyError):
    """The TLS connection to NATS could not be made safely: the server's certificate is
    not trusted or does not name the host, or the server offers no TLS. Fix the
    certificate, the CA file (CONVOY_NATS_CA / --nats-ca) or the URL; retrying as is
    cannot help."""

    retryable = False


@dataclass(frozen=True, slots=True)
class NatsTls:
    """How a connection to NATS verifies the server."""

    ca_file: Path | None = None
    """PEM file of the CA(s) that sign the server's certificate; None: the system store."""

    def context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
        except FileNotFoundError:
            raise InvalidInput(f"cannot read the NATS CA file {self.ca_file}: no such file") from None
        except (ssl.SSLError, OSError, ValueError) as error:
            raise InvalidInput(f"the NATS CA file {self.ca_file} holds no usable PEM certificate: {error}") from None

    def required_for(self, servers: Sequence[str]) -> bool:
        """Whether connecting to `servers` must use TLS (a tls:// URL or a CA file)."""
        return self.ca_file is not None or any(urlparse(url).scheme == "tls" for url in servers)


def offers_tls(info: dict[str, Any]) -> bool:
    """Whether a nats-server INFO says it speaks TLS on this port."""
    return bool(info.get("tls_required") or info.get("tls_available"))


class Client(NatsClient):
    """nats-py's client, upgrading to TLS whenever the server offers it and refusing
    plaintext where TLS is expected (`require_tls`)."""

    def __init__(self, *, require_tls: bool) -> None:
        super().__init__()
        self._require_tls = require_tls

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # nats-py checks `tls_required` of this very INFO (its `_server_info`) right after.
        if initial_connection:
            if offers_tls(info):
                info["tls_required"] = True
            elif self._require_tls:
                raise TlsNotOffered()
        await super()._process_info(info, initial_connection)

    async def _process_connect_init(self) -> None:
        try:
            await super()._process_connect_init()
        except ssl.SSLError:
            # A failed handshake leaves nats-py's plain stream writer waiting forever for a
            # close its protocol never hears of (asyncio's start_tls took the socket over),
            # and nats-py's close awaits exactly that: drop the transport here instead.
            transport, self._transport = self._transport, None
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            raise


def is_tls_failure(error: BaseException) -> bool:
    return isinstance(error, ssl.SSLError | TlsNotOffered) or isinstance(error, ssl.CertificateError)


def refusal(error: BaseException, servers: Sequence[str]) -> TlsRefused:
    where = ", ".join(servers)
    if isinstance(error, TlsNotOffered):
        return TlsRefused(f"NATS at {where} offers no TLS, but a tls:// URL or a CA file asks for it")
    if isinstance(error, ssl.SSLCertVerificationError):
        return TlsRefused(
            f"the TLS certificate of NATS at {where} is not trusted ({error.verify_message}); "
            "give the CA that signed it with --nats-ca FILE or CONVOY_NATS_CA"
        )
    return TlsRefused(f"TLS to NATS at {where} failed: {error}")
