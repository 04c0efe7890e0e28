"""How the CLI reaches the API's gRPC listener: plain text, or TLS when the endpoint says so.

An endpoint written `grpcs://host:port` is TLS, verified against a CA file (`--ca-file`,
`CONVOY_CA_FILE`, `ca_file` in the config file) or else the system trust store (OpenSSL's
default CA file; `SSL_CERT_FILE` overrides it). `host:port` and `grpc://host:port` are
plain text, which only a loopback `convoy up` should serve. There is no fallback in either
direction: a certificate that does not verify is an error (gRPC's secure channel offers no
"insecure" mode, and this module asks for none), and a TLS endpoint is never retried in
plain text. `Trust.ssl_context()` gives the same roots to an HTTPS client of the REST API.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

TLS_SCHEME: Final = "grpcs://"
PLAIN_SCHEME: Final = "grpc://"


class TrustError(Exception):
    """The CA file cannot be used (unreadable, empty, not PEM certificates): fix the path."""


@dataclass(frozen=True, slots=True)
class Trust:
    """The roots a TLS connection to the API is verified against."""

    source: str
    """Where they come from, for error messages ("--ca-file /etc/convoy/ca.pem")."""
    pem: bytes | None = field(default=None, repr=False)
    """PEM certificates; None: gRPC's built-in roots (no system CA file was found)."""

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.pem)

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS clients (the REST API, the UI): these roots, hostname checked, TLS 1.2+."""
        context = ssl.create_default_context(cadata=self.pem.decode("ascii")) if self.pem else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def split_scheme(endpoint: str) -> tuple[str, bool]:
    """"grpcs://h:p" -> ("h:p", True); "grpc://h:p" and "h:p" -> ("h:p", False)."""
    if endpoint.startswith(TLS_SCHEME):
        return endpoint[len(TLS_SCHEME) :], True
    if endpoint.startswith(PLAIN_SCHEME):
        return endpoint[len(PLAIN_SCHEME) :], False
    return endpoint, False


def ca_file_trust(path: Path, source: str) -> Trust:
    """The certificates of a PEM CA file, checked now (not at the first handshake)."""
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise TrustError(f"cannot read the CA file {path} (from {source}): {error.strerror or error}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TrustError(f"the CA file {path} (from {source}) holds no PEM certificate ('-----BEGIN CERTIFICATE-----')")
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError) as error:
        raise TrustError(f"the CA file {path} (from {source}) is not valid PEM certificates: {error}") from None
    return Trust(source=f"{source} {path}", pem=pem)


def system_trust() -> Trust:
    """The system's CA file, as OpenSSL finds it (SSL_CERT_FILE, else its default)."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile:
        try:
            return Trust(source=f"the system trust store ({cafile})", pem=Path(cafile).read_bytes())
        except OSError:
            pass
    return Trust(source="gRPC's built-in roots (no system CA file found)")


def channel(address: str, trust: Trust | None) -> grpc.Channel:
    """A channel to `address`: TLS verified against `trust`, or plain text when None."""
    if trust is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, trust.grpc_credentials())


_VERIFY_FAILURES: Final = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification", "verification check failed")
"""gRPC's words for a chain that does not lead to the roots, or a certificate for another name."""
_HANDSHAKE_FAILURES: Final = ("handshake failed", "WRONG_VERSION_NUMBER", "SSL_ERROR")


def failure_kind(details: str) -> str | None:
    """What a transport failure's text says about TLS: "verify", "handshake" or None."""
    if any(mark.lower() in details.lower() for mark in _VERIFY_FAILURES):
        return "verify"
    if any(mark.lower() in details.lower() for mark in _HANDSHAKE_FAILURES):
        return "handshake"
    return None
