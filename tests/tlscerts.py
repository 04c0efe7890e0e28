"""Certificates for TLS tests, made by the test itself (no files checked in, nothing expires
between runs): a CA and server certificates it signs, written as PEM files.

`make_pki(dir)` gives a CA plus a server certificate for 127.0.0.1 and localhost;
`make_ca(dir, "other")` is a CA a client may wrongly trust, `make_server_cert(..., hosts=…)`
a certificate for other names. Keys are P-256, unencrypted, written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PRIVATE = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _key_pem(key: _PRIVATE) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))


def make_ca(directory: Path, name: str = "convoy-test-ca") -> tuple[Path, Path]:
    """A self-signed CA certificate and its key: (cert.pem, key.pem) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
        _write(directory / f"{name}.key", _key_pem(key), secret=True),
    )


def make_server_cert(
    directory: Path, ca_cert: Path, ca_key: Path, *, name: str = "server", hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> tuple[Path, Path]:
    """A server certificate for `hosts` (IP addresses and DNS names) signed by the CA."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    assert isinstance(signer, _PRIVATE)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(hosts[0]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    return (
        _write(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
        _write(directory / f"{name}.key", _key_pem(key), secret=True),
    )


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    ca_cert, ca_key = make_ca(directory)
    server_cert, server_key = make_server_cert(directory, ca_cert, ca_key)
    return Pki(ca_cert=ca_cert, ca_key=ca_key, server_cert=server_cert, server_key=server_key)
