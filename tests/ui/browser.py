"""A real Chromium, driven through Debian's chromedriver by Selenium (no browser download:
the tests use the machine's `chromium` and `chromium-driver`, which `make test` installs),
and the checks the UI tests share: waiting for what a person would see, axe-core's
accessibility audit, screenshots."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
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
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)
    except TimeoutException:
        seen = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(f"{message}: not seen within {timeout}s at {driver.current_url}; the page shows:\n{seen[:3000]}") from None


def text_of(driver: WebDriver, css: str) -> str:
    """The visible text at `css`, read in one script (a live page may swap its content
    between two WebDriver calls)."""
    text = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText).join(' ')", css
    )
    return str(text or "")


def shows(css: str, *words: str) -> Callable[[WebDriver], bool]:
    """The element(s) at `css` show every one of `words`."""

    def check(driver: WebDriver) -> bool:
        text = text_of(driver, css)
        return all(w in text for w in words)

    return check


def click(driver: WebDriver, css: str) -> None:
    """Click the element at `css` in one script: a live page may swap its content between
    finding an element and clicking it, which would leave a WebDriver reference stale."""
    found = driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) { e.click(); return true; } return false;", css
    )
    assert found, f"nothing at {css}"


def fresh(action: Callable[[], Any], attempts: int = 20) -> Any:
    """Run a WebDriver action again when the live page swapped the element out from under
    it (each attempt finds the element anew; this is not a wait)."""
    for attempt in range(attempts):
        try:
            return action()
        except StaleElementReferenceException:
            if attempt == attempts - 1:
                raise
    return None


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
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    height = min(int(metrics["cssContentSize"]["height"]), 4000)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path = target / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
