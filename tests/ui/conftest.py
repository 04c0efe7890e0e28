"""The UI tests' world: `convoy up --demo` as a user starts it (a subprocess on free
ports, its output in a file), and a real headless Chromium per test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.ui import browser as ui_browser

ROOT = Path(__file__).resolve().parents[2]
READY = "press Ctrl-C"


@dataclass
class Demo:
    url: str
    admin: str
    env: dict[str, str]
    log: Path

    def convoy(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"convoy {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("ui-demo")
    state, log = folder / "state", folder / "convoy-up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env |= {"CONVOY_STATE_DIR": str(state), "CONVOY_CONFIG": str(folder / "no-config.toml")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--demo", "--state-dir", str(state),
         "--grpc-port", "0", "--http-port", "0", "--ops-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True,
    )
    ready = threading.Event()
    drain = threading.Thread(target=_drain, args=(proc, log, ready), name="convoy-up-output", daemon=True)
    drain.start()
    try:
        if not ready.wait(180):  # set by the line itself, or by the output ending
            raise AssertionError("convoy up did not get ready:\n" + log.read_text()[-5000:])
        assert READY in log.read_text(), "convoy up exited:\n" + log.read_text()[-5000:]
        url = re.search(r"web UI:\s+(http://\S+?)/ ", log.read_text())
        assert url is not None, log.read_text()
        yield Demo(url.group(1), (state / "admin-token").read_text().strip(), env, log)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(30)
        assert proc.stdout is not None
        proc.stdout.close()


def _drain(proc: subprocess.Popen[str], log: Path, ready: threading.Event) -> None:
    """Copy `convoy up`'s output to its log file as it comes (so it never blocks on a full
    pipe); `ready` is set on the ready line, or when the output ends (it exited)."""
    assert proc.stdout is not None
    with log.open("w") as out:
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if READY in line:
                ready.set()
    ready.set()


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    driver = ui_browser.start(tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()
