"""The API's TLS material: one certificate and key, read and checked once at start.

`convoy api --tls-cert/--tls-key` serves gRPC and REST+UI over TLS from the same pair.
Both files are read when the process starts, so a wrong path, a file that is not PEM, an
encrypted key (a server cannot stop to ask for its passphrase) or a key that does not
belong to the certificate is a clear `InvalidInput` before anything listens — never a
listener that fails at the first handshake. gRPC gets the PEM bytes
(`grpc.ssl_server_credentials`), aiohttp an `ssl.SSLContext` with TLS 1.2 as the floor;
gRPC's own floor is TLS 1.2 as well.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from eventstore.errors import InvalidInput

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARK = b"PRIVATE KEY-----"
_ENCRYPTED = (b"ENCRYPTED PRIVATE KEY", b"Proc-Type: 4,ENCRYPTED")


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInput(f"cannot read the TLS {what} file {path}: {error.strerror or error}") from None
    if not data.strip():
        raise InvalidInput(f"the TLS {what} file {path} is empty")
    return data


def _no_passphrase() -> bytes:
    raise InvalidInput("the TLS key is encrypted; give the server an unencrypted key file (kept 0600)")


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A checked certificate (chain) and private key, in PEM."""

    cert_path: Path
    key_path: Path
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    context: ssl.SSLContext = field(repr=False, compare=False)
    """For the REST+UI listener (aiohttp): TLS 1.2 or later, this pair."""

    @classmethod
    def load(cls, cert: Path | str, key: Path | str) -> ServerTls:
        """Read and check the pair; `InvalidInput` says which file is wrong and how."""
        cert_path, key_path = Path(cert), Path(key)
        cert_pem = _read(cert_path, "certificate")
        key_pem = _read(key_path, "key")
        if _CERT_MARK not in cert_pem:
            raise InvalidInput(
                f"the TLS certificate file {cert_path} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----')"
            )
        if _KEY_MARK not in key_pem:
            raise InvalidInput(f"the TLS key file {key_path} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----')")
        if any(mark in key_pem for mark in _ENCRYPTED):
            raise InvalidInput(
                f"the TLS key file {key_path} is encrypted; a server cannot ask for its passphrase: "
                "decrypt it (openssl pkey -in KEY -out KEY.plain) and keep it 0600"
            )
        try:
            ssl.create_default_context().load_verify_locations(cadata=cert_pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            raise InvalidInput(f"the TLS certificate file {cert_path} holds no valid certificate: {error}") from None
        return cls(
            cert_path=cert_path, key_path=key_path, cert_pem=cert_pem, key_pem=key_pem,
            context=_server_context(cert_path, key_path),
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For the gRPC listener: this pair, no client certificate asked."""
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """OpenSSL's own check that the key belongs to the certificate, as it will serve them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise InvalidInput(
                f"the TLS key file {key_path} does not belong to the certificate in {cert_path}"
            ) from None
        raise InvalidInput(
            f"the TLS certificate {cert_path} and key {key_path} could not be loaded: {error}"
        ) from None
    except OSError as error:
        raise InvalidInput(f"cannot read the TLS certificate or key: {error.strerror or error}") from None
    return context
