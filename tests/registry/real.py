"""Debian's real `docker-registry` (distribution 2.8.2) for tests: one process per call, on a
free loopback port, with its data, htpasswd file and log in the test's folder.

The registry cannot listen on port 0, so a free port is picked (bind 0, close) and the start
is retried if someone took it in between. It is ready when `GET /v2/` answers 401 (htpasswd
auth is on). `notify_url` points its notifications (push/pull events) at a test's endpoint.
When the binary is missing the tests skip with an install hint, except on CI (`CI` set),
where they fail: CI installs it (`scripts/ensure_test_tools.sh`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

BINARY = "docker-registry"
READY_TIMEOUT = 60.0
"""A deadline, not a pace: readiness is polled, so a fast machine passes at once."""
START_ATTEMPTS = 5


@dataclass(frozen=True)
class RealRegistry:
    url: str
    """`http://127.0.0.1:PORT`"""
    username: str
    password: str
    folder: Path
    log: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


def binary() -> str:
    found = shutil.which(BINARY) or (BINARY if Path(f"/usr/bin/{BINARY}").exists() else None)
    if found is None:
        message = (
            f"the registry tests need Debian's {BINARY} (distribution 2.8): "
            f"sudo apt-get install {BINARY} (`make test` installs it when run as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return shutil.which(BINARY) or f"/usr/bin/{BINARY}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(folder: Path, port: int, notify_url: str | None, notify_headers: Mapping[str, str] | None) -> dict:
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": {"htpasswd": {"realm": "convoy-tests", "path": str(folder / "htpasswd")}},
        "health": {"storagedriver": {"enabled": False}},
    }
    if notify_url is not None:
        config["notifications"] = {
            "endpoints": [{
                "name": "convoy-test",
                "url": notify_url,
                "headers": {k: [v] for k, v in (notify_headers or {}).items()},
                "timeout": "2s",
                "threshold": 5,
                "backoff": "100ms",
            }]
        }
    return config


@contextlib.contextmanager
def running(
    folder: Path,
    *,
    notify_url: str | None = None,
    notify_headers: Mapping[str, str] | None = None,
    username: str = "convoy",
    password: str | None = None,
) -> Iterator[RealRegistry]:
    """Start a registry, yield it when ready, stop it (SIGTERM, then SIGKILL) afterwards."""
    program = binary()
    folder.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(12)
    # Cost 4 (bcrypt's minimum): every Basic-authenticated request checks the hash.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (folder / "htpasswd").write_text(f"{username}:{hashed}\n")
    log = folder / "registry.log"
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        config = folder / "config.yml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(json.dumps(_config(folder, port, notify_url, notify_headers), indent=2))
        with log.open("ab") as out:
            proc = subprocess.Popen([program, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            if _wait_ready(proc, url):
                yield RealRegistry(url=url, username=username, password=password, folder=folder, log=log)
                return
            if "address already in use" not in log.read_text(errors="replace"):
                raise AssertionError(f"{BINARY} exited ({proc.returncode}) before it was ready:\n{log.read_text()[-3000:]}")
        finally:
            _stop(proc)
    raise AssertionError(f"{BINARY}: no free port after {START_ATTEMPTS} attempts:\n{log.read_text()[-3000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    """True when `GET /v2/` answers 401; False when the process exited first."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"{url}/v2/", timeout=2).close()
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 401:
                return True
        except OSError:
            pass
        time.sleep(0.02)  # a readiness poll with a deadline, not a wait for time to pass
    raise AssertionError(f"{BINARY} did not answer {url}/v2/ within {READY_TIMEOUT}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
