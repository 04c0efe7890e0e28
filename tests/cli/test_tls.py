"""The CLI against an API serving TLS: `grpcs://` endpoints are verified against
`--ca-file`, `CONVOY_CA_FILE` or the config file's `ca_file`, else the system store; a
certificate that does not verify, a plain endpoint on a TLS port and a TLS endpoint on a
plain port each fail with exit 6 and a line saying what to do — never a silent fallback.
`convoy api` refuses half a TLS pair or bad files (exit 2) before it needs a database, and
says how it is reached: plain on loopback, a warning off it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cli import controlplane
from cli.client import INVALID, UNAVAILABLE
from eventstore.postgres import PostgresEventStore
from services.api.tls import ServerTls
from tests.cli.conftest import Cli
from tests.integration.test_api_support import running_api
from tests.tlscerts import Pki, make_ca, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def tls_cli(server_logs_aside: None, pg_store: PostgresEventStore, tmp_path: Path, pki: Pki) -> AsyncIterator[Cli]:
    tls = ServerTls.load(pki.server_cert, pki.server_key)
    async with running_api(pg_store, tmp_path / "state", tls=tls) as running:
        yield Cli(running, tmp_path)


def tls_endpoint(cli: Cli) -> str:
    return f"grpcs://{cli.api.grpc_target}"


async def test_a_grpcs_endpoint_verified_against_the_ca_file_answers(tls_cli: Cli, pki: Pki) -> None:
    result = await tls_cli.run("apps", "list", "--ca-file", str(pki.ca_cert), endpoint=tls_endpoint(tls_cli))
    assert result.exit_code == 0, result.output
    port = tls_cli.api.grpc_target.rpartition(":")[2]
    by_name = await tls_cli.run("apps", "list", endpoint=f"grpcs://localhost:{port}", CONVOY_CA_FILE=str(pki.ca_cert))
    assert by_name.exit_code == 0, by_name.output


async def test_the_config_file_can_name_the_ca_file(tls_cli: Cli, pki: Pki) -> None:
    config = tls_cli.home / "config.toml"
    config.write_text(f'endpoint = "{tls_endpoint(tls_cli)}"\nca_file = "{pki.ca_cert}"\n')
    result = await tls_cli.run("apps", "list", endpoint="", CONVOY_CONFIG=str(config))
    assert result.exit_code == 0, result.output


async def test_a_certificate_that_does_not_verify_fails_and_sends_nothing(tls_cli: Cli, tmp_path: Path) -> None:
    system = await tls_cli.run("apps", "list", endpoint=tls_endpoint(tls_cli))
    assert system.exit_code == UNAVAILABLE, system.output
    assert "does not verify against the system trust store" in system.output
    assert "--ca-file" in system.output
    other_ca, _ = make_ca(tmp_path / "other", "other-ca")
    other = await tls_cli.run("apps", "list", "--ca-file", str(other_ca), endpoint=tls_endpoint(tls_cli))
    assert other.exit_code == UNAVAILABLE, other.output
    assert f"does not verify against --ca-file {other_ca}" in other.output
    assert tls_cli.api.admin not in system.output + other.output


async def test_a_plain_endpoint_on_the_tls_port_fails_with_a_hint(tls_cli: Cli) -> None:
    result = await tls_cli.run("apps", "list")
    assert result.exit_code == UNAVAILABLE, result.output
    assert "grpcs://host:port" in result.output


async def test_a_grpcs_endpoint_on_a_plain_port_fails_instead_of_falling_back(cli: Cli, pki: Pki) -> None:
    result = await cli.run("apps", "list", "--ca-file", str(pki.ca_cert), endpoint=f"grpcs://{cli.api.grpc_target}")
    assert result.exit_code == UNAVAILABLE, result.output
    assert "TLS handshake" in result.output and "plain text" in result.output


async def test_a_ca_file_that_cannot_be_used_is_a_config_error(cli: Cli, tmp_path: Path) -> None:
    missing = await cli.run("apps", "list", "--ca-file", str(tmp_path / "nope.pem"), endpoint="grpcs://127.0.0.1:1")
    assert missing.exit_code == INVALID, missing.output
    assert "cannot read the CA file" in missing.output
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    bad = await cli.run("apps", "list", endpoint="grpcs://127.0.0.1:1", CONVOY_CA_FILE=str(junk))
    assert bad.exit_code == INVALID, bad.output
    assert "holds no PEM certificate" in bad.output and "CONVOY_CA_FILE" in bad.output


async def test_convoy_api_refuses_half_a_pair_or_bad_files_before_it_starts(cli: Cli, pki: Pki, tmp_path: Path) -> None:
    half = await cli.raw("api", "--tls-cert", str(pki.server_cert))
    assert half.exit_code == INVALID, half.output
    assert "--tls-cert needs --tls-key" in half.output
    from_env = await cli.raw("api", CONVOY_TLS_KEY=str(pki.server_key))
    assert from_env.exit_code == INVALID and "--tls-key needs --tls-cert" in from_env.output
    mismatched = await cli.raw("api", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.ca_key))
    assert mismatched.exit_code == INVALID and "does not belong to the certificate" in mismatched.output
    missing = await cli.raw("api", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.server_key))
    assert missing.exit_code == INVALID and "cannot read the TLS certificate file" in missing.output


def test_the_startup_line_says_plain_on_loopback_warns_off_it_and_names_the_certificate(pki: Pki) -> None:
    line, warning = controlplane.transport_notice(controlplane.Listen(grpc_port=0, http_port=0))
    assert line.startswith("transport:    plain HTTP/gRPC on 127.0.0.1 only;") and "--tls-cert/--tls-key" in line
    assert not warning
    line, warning = controlplane.transport_notice(controlplane.Listen(grpc_port=0, http_port=0, host="0.0.0.0"))
    assert warning and line.startswith("warning: serving plain HTTP/gRPC on 0.0.0.0")
    tls = ServerTls.load(pki.server_cert, pki.server_key)
    line, warning = controlplane.transport_notice(controlplane.Listen(grpc_port=0, http_port=0, host="0.0.0.0", tls=tls))
    assert not warning and "TLS" in line and str(pki.server_cert) in line
    assert controlplane.is_loopback("::1") and controlplane.is_loopback("localhost")
    assert not controlplane.is_loopback("10.0.0.1") and not controlplane.is_loopback("api.internal")
