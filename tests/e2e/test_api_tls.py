"""`convoy api --tls-cert/--tls-key` as a real process, on a PostgreSQL it did not start:
it says it serves TLS, records `grpcs://`/`https://` in endpoint.json, and the CLI on the
same machine reaches it through that file only with the CA that signed its certificate.
Without a certificate, `--host 0.0.0.0` warns that it serves plain text."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import asyncpg

from tests.e2e.processes import convoy, convoy_process
from tests.tlscerts import make_pki


async def test_convoy_api_serves_tls_and_the_cli_verifies_it(tmp_path: Path, database_url: str, schema_name: str) -> None:
    pki = make_pki(tmp_path / "pki")
    state = tmp_path / "state"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env = base | {
        "CONVOY_DATABASE_URL": database_url, "CONVOY_INSTANCE": schema_name, "CONVOY_STATE_DIR": str(state),
        "CONVOY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    try:
        args = ("api", "--grpc-port", "0", "--http-port", "0", "--tls-cert", str(pki.server_cert))
        async with convoy_process(env | {"CONVOY_TLS_KEY": str(pki.server_key)}, *args) as api:
            assert f"transport:    TLS (gRPC and HTTPS) with the certificate {pki.server_cert}" in api.output
            endpoint = json.loads((state / "endpoint.json").read_text())
            assert endpoint["grpc"].startswith("grpcs://127.0.0.1:") and endpoint["rest"].startswith("https://127.0.0.1:")
            code, out = await convoy(env | {"CONVOY_CA_FILE": str(pki.ca_cert)}, "apps", "list")
            assert code == 0, out
            code, out = await convoy(env, "apps", "list")
            assert code == 6 and "does not verify against the system trust store" in out, out
            assert await api.stop(signal.SIGTERM) == 0, api.output[-4000:]
        async with convoy_process(env, "api", "--grpc-port", "0", "--http-port", "0", "--host", "0.0.0.0") as plain:
            assert "warning: serving plain HTTP/gRPC on 0.0.0.0" in plain.output
            assert json.loads((state / "endpoint.json").read_text())["grpc"].startswith("0.0.0.0:")
            assert await plain.stop(signal.SIGTERM) == 0, plain.output[-4000:]
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
        finally:
            await conn.close()
