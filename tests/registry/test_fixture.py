"""The real-registry fixture's own contract: without the binary it skips with an install
hint, except on CI, where it fails (CI is meant to have installed it); a port taken by
someone else is retried on another."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.registry import real


def test_a_missing_binary_skips_locally_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real, "BINARY", "no-such-docker-registry")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install no-such-docker-registry"):
        real.binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="sudo apt-get install no-such-docker-registry"):
        real.binary()


def test_a_taken_port_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        free = real._free_port
        monkeypatch.setattr(real, "_free_port", lambda: next(ports, None) or free())
        with real.running(tmp_path / "r") as registry:
            assert registry.url != f"http://127.0.0.1:{taken.getsockname()[1]}"
        assert "address already in use" in registry.log.read_text()
