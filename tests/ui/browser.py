"""A real Chromium, driven through Debian's chromedriver by Selenium (no browser download:
the tests use the machine's `chromium` and `chromium-driver`, which `make test` installs),
and the checks the UI tests share: waiting for what a person would see, axe-core's
accessibility audit, screenshots."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

HERE: Final = Path(__file__).resolve().parent
AXE: Final = HERE / "vendor" / "axe.min.js"
"""axe-core 4.10.3 (npm), vendored: sha256 880970c081707360e64f34cea25ff91892f5bc95675b0776925b9709dd8a68bb."""
WAIT: Final = 180.0
"""A deadline, not a pace: conditions are polled, so a fast machine passes at once."""


def executables() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(
            "the UI tests need Debian's chromium and chromium-driver (`make test` installs them as root: "
            "apt-get install chromium chromium-driver)"
        )
    return browser, driver


def start(downloads: Path) -> WebDriver:
    browser, driver = executables()
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], message: str, timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def text_of(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return " ".join(e.text for e in found)


def shows(css: str, *words: str) -> Callable[[WebDriver], bool]:
    """The element(s) at `css` show every one of `words`."""

    def check(driver: WebDriver) -> bool:
        text = text_of(driver, css)
        return all(w in text for w in words)

    return check


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the current page."""
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(JSON.stringify(r.violations)))"
        ".catch(e => done(JSON.stringify([{id: 'axe-error', impact: 'critical', description: String(e), nodes: []}])));"
    )
    violations = json.loads(result)
    return [
        {"id": v["id"], "impact": v["impact"], "help": v.get("description", ""),
         "nodes": [n.get("target") for n in v.get("nodes", [])][:5]}
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]


def screenshot(driver: WebDriver, name: str, folder: Path) -> Path:
    """The whole page as `folder/name.png` (CONVOY_UI_SCREENSHOTS names the folder to
    refresh docs/ui; otherwise the test's own folder)."""
    target = Path(os.environ.get("CONVOY_UI_SCREENSHOTS") or folder)
    target.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
    driver.set_window_size(1400, min(int(height) + 40, 3000))
    path = target / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path
