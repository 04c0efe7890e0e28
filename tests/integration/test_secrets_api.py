"""Convoy-kept secrets through the API on real PostgreSQL: SetSecret records only
ciphertext, ListSecrets names names and keys (never values, never ciphertext), rotation
re-encrypts every secret as new events and retires old keys on request, and who may do
what (admin only; viewers see no ciphertext in the log)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp

from eventstore.postgres import PostgresEventStore
from schemas.convoy.v1 import api_pb2, options_pb2
from services.secrets.keyring import FileKeyring
from tests.integration.test_api_support import running_api


async def call(session: aiohttp.ClientSession, method: str, url: str, token: str, body: object = None) -> tuple[int, dict]:
    async with session.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, json.loads(await response.text() or "{}")


async def test_secrets_are_written_listed_rotated_and_never_read_back(pg_store: PostgresEventStore, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_api(pg_store, state) as api, aiohttp.ClientSession() as session:
        base, admin = api.base_url, api.admin
        status, _ = await call(session, "PUT", f"{base}/v1/secrets/db-password", admin, {"value": "hunter2-value"})
        assert status == 200
        status, _ = await call(session, "PUT", f"{base}/v1/secrets/api-key", admin, {"value": "key-value-42"})
        assert status == 200
        status, listed = await call(session, "GET", f"{base}/v1/secrets", admin)
        assert status == 200
        assert [s["name"] for s in listed["secrets"]] == ["api-key", "db-password"]
        assert all(s["updatedBy"] == "bootstrap-admin" and s["cause"] == "set" and s["updatedAt"] for s in listed["secrets"])
        first_key = listed["secrets"][0]["keyId"]
        assert "hunter2-value" not in json.dumps(listed)

        ring = FileKeyring(path=state / "secrets.keys")
        resolve = api.server.secrets.resolver(lambda: api.server.projection.state)
        assert resolve("db-password") == "hunter2-value"

        status, _ = await call(session, "POST", f"{base}/v1/secrets:rotate-key", admin, {"retireOldKeys": True})
        assert status == 200
        status, listed = await call(session, "GET", f"{base}/v1/secrets", admin)
        second_key = listed["currentKeyId"]
        assert second_key != first_key
        assert {(s["keyId"], s["cause"]) for s in listed["secrets"]} == {(second_key, "rotated")}
        assert ring.key_ids() == [second_key]  # the old key is retired from the file
        assert resolve("db-password") == "hunter2-value" and resolve("api-key") == "key-value-42"

        # The log: ciphertext only, and only admins see even that.
        status, viewer = await call(session, "POST", f"{base}/v1/tokens", admin, {"name": "val", "role": "ROLE_VIEWER"})
        assert status == 200
        status, seen = await call(session, "GET", f"{base}/v1/events?types=convoy.v1.SecretSet", viewer["secret"])
        assert status == 200 and len(seen["events"]) == 4
        assert all("ciphertext" not in e["json"] and "nonce" not in e["json"] for e in seen["events"])
        status, events = await call(session, "GET", f"{base}/v1/events?types=convoy.v1.SecretSet", admin)
        assert status == 200 and len(events["events"]) == 4
        for event in events["events"]:
            data = json.loads(event["json"])
            assert "hunter2-value" not in event["json"]
            assert b"hunter2-value" not in base64.b64decode(data["ciphertext"])
        # Values are admin-only to write, and viewers cannot list names either.
        status, _ = await call(session, "PUT", f"{base}/v1/secrets/x", viewer["secret"], {"value": "v"})
        assert status == 403
        status, _ = await call(session, "GET", f"{base}/v1/secrets", viewer["secret"])
        assert status == 403

        status, _ = await call(session, "DELETE", f"{base}/v1/secrets/api-key", admin)
        assert status == 200
        status, missing = await call(session, "DELETE", f"{base}/v1/secrets/api-key", admin)
        assert status == 404 and "secret \"api-key\" does not exist" in missing["error"]["message"]
        status, bad = await call(session, "PUT", f"{base}/v1/secrets/db-password", admin, {"value": ""})
        assert status == 400 and "value: required" in bad["error"]["message"]
    assert api_pb2.SetSecretRequest.DESCRIPTOR.fields_by_name["value"].GetOptions().Extensions[options_pb2.secret]
