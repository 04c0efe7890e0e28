"""`cli.client` without a server: where the CLI connects, and the metadata it sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.client import INVALID, CliError, Client, Target, resolve


def test_resolution_order_flags_env_config_local_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "endpoint.json").write_text(json.dumps({"grpc": "127.0.0.1:4", "rest": "http://127.0.0.1:5"}))
    (state / "admin-token").write_text("local-secret\n")
    config = tmp_path / "config.toml"
    config.write_text('endpoint = "127.0.0.1:3"\ntoken = "config-secret"\n')
    env = {"CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(config)}
    full_env = {**env, "CONVOY_ENDPOINT": "grpc://127.0.0.1:2", "CONVOY_TOKEN": "env-secret"}

    assert resolve(endpoint="127.0.0.1:1", token="flag", environ=full_env) == Target("127.0.0.1:1", "flag", "--endpoint")
    assert resolve(endpoint=None, token=None, environ=full_env).grpc == "127.0.0.1:2"
    assert resolve(endpoint=None, token=None, environ=full_env).token == "env-secret"
    assert resolve(endpoint=None, token=None, environ=env) == Target("127.0.0.1:3", "config-secret", str(config))
    local = resolve(endpoint=None, token=None, environ={"CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(tmp_path / "none")})
    assert (local.grpc, local.token) == ("127.0.0.1:4", "local-secret")


def test_a_broken_config_file_says_which_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("endpoint = \n")
    with pytest.raises(CliError) as caught:
        resolve(endpoint=None, token=None, environ={"CONVOY_CONFIG": str(config)})
    assert caught.value.exit_code == INVALID and str(config) in str(caught.value)


def test_every_write_carries_its_own_idempotency_key_and_reads_none() -> None:
    with Client(Target("127.0.0.1:1", "secret", "test")) as client:
        first = dict(client.metadata(idempotent_write=True))
        second = dict(client.metadata(idempotent_write=True))
        read = dict(client.metadata())
    assert first["authorization"] == "Bearer secret"
    assert first["idempotency-key"] != second["idempotency-key"]
    assert client.invocation in first["idempotency-key"]
    assert "idempotency-key" not in read
    with Client(Target("127.0.0.1:1", None, "test")) as other:
        assert other.invocation != client.invocation


def test_every_call_carries_the_highest_position_seen(tmp_path: Path) -> None:
    """Read-your-writes behind several API processes: CONVOY_MIN_POSITION to start with,
    then every answer's position (a write's own, or its `write`'s)."""
    from schemas.convoy.v1 import api_pb2

    env = {"CONVOY_ENDPOINT": "127.0.0.1:1", "CONVOY_CONFIG": str(tmp_path / "none"), "CONVOY_MIN_POSITION": "7"}
    with Client(resolve(endpoint=None, token=None, environ=env)) as client:
        assert ("convoy-min-position", "7") in client.metadata()
        client.observe(api_pb2.DeployResponse(write=api_pb2.WriteResult(position=12)))
        client.observe(api_pb2.WriteResult(position=9))  # an older answer does not lower it
        assert ("convoy-min-position", "12") in client.metadata(idempotent_write=True)
    with Client(Target("127.0.0.1:1", None, "test")) as client:
        assert [k for k, _ in client.metadata()] == []
    with pytest.raises(CliError) as caught:
        resolve(endpoint=None, token=None, environ=env | {"CONVOY_MIN_POSITION": "-1"})
    assert caught.value.exit_code == INVALID and "CONVOY_MIN_POSITION" in str(caught.value)
