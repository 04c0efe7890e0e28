"""The UI tests' world: `convoy up --demo` as a user starts it (a subprocess on free
ports, its output in a file), and a real headless Chromium per test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
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
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--demo", "--state-dir", str(state),
             "--grpc-port", "0", "--http-port", "0", "--ops-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 180
        while READY not in log.read_text():
            assert proc.poll() is None, "convoy up exited:\n" + log.read_text()[-5000:]
            assert time.monotonic() < deadline, "convoy up did not get ready:\n" + log.read_text()[-5000:]
            time.sleep(0.05)  # polling its output for the ready line, with the deadline above
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


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[WebDriver]:
    driver = ui_browser.start(tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()
