"""The README's demo story, in a real browser, the way a person does it: sign in; staging
converged and prod waiting; approve prod with the keyboard alone; watch it converge live
without reloading; deploy the failing v2 from its preview and watch staging roll back while
prod keeps v1; drag the time slider back to before the approval; and a viewer who cannot
approve. Every view passes axe-core with no serious or critical violation, and each is
saved as a screenshot (docs/ui when CONVOY_UI_SCREENSHOTS=docs/ui)."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.ui.browser import axe_violations, click, fresh, screenshot, shows, text_of, wait
from tests.ui.conftest import Demo

WEB_STAGING = "section[data-app=shop] tr[data-service=web] td[data-channel=staging]"
WEB_PROD = "section[data-app=shop] tr[data-service=web] td[data-channel=prod]"


def sign_in(driver: WebDriver, demo: Demo, token: str, page: str = "/ui/fleet") -> None:
    driver.get(demo.url + page)
    wait(driver, lambda d: "/ui/login" in d.current_url, "redirected to sign-in")
    driver.find_element(By.ID, "token").send_keys(token)  # the sign-in page is not live
    click(driver, "main.login button[type=submit]")
    wait(driver, lambda d: page.split("?")[0] in d.current_url and "/ui/login" not in d.current_url, "signed in")


def accessible(driver: WebDriver, view: str) -> None:
    assert axe_violations(driver) == [], f"axe on the {view} view"


def mark_page(driver: WebDriver) -> None:
    """A marker a reload or navigation would wipe: the page must stay this document."""
    driver.execute_script("window.__convoy_same_page = 'yes'")


def same_page(driver: WebDriver) -> bool:
    return driver.execute_script("return window.__convoy_same_page === 'yes'") is True


def tab_to(driver: WebDriver, element_id: str, limit: int = 300) -> None:
    """Press Tab (only) until the element has the focus."""
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    for _ in range(limit):
        if fresh(lambda: driver.switch_to.active_element.get_attribute("id")) == element_id:
            return
        fresh(lambda: driver.switch_to.active_element.send_keys(Keys.TAB))
    raise AssertionError(f"#{element_id} is not reachable with the Tab key")


def position(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "content").get_attribute("data-position") or 0)


def test_the_demo_story_in_the_browser(demo: Demo, chrome: WebDriver, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    sign_in(chrome, demo, demo.admin)

    # Staging converged at v1 and prod waiting for its approval, on the fleet view.
    chrome.get(demo.url + "/ui/fleet")
    mark_page(chrome)
    wait(chrome, shows(WEB_STAGING, "runs v1", "healthy"), "staging runs v1")
    wait(chrome, shows(WEB_PROD, "v1 waiting for 1 approval"), "prod waits for approval")
    assert same_page(chrome)  # it got there live, if it was not there at once
    accessible(chrome, "fleet")
    screenshot(chrome, "fleet-waiting", shots)
    before_approval = position(chrome)

    # The inbox lists it with the approval dialog.
    chrome.get(demo.url + "/ui/approvals")
    wait(chrome, shows("[data-item='shop/web/prod']", "v1 → prod"), "the inbox lists web → prod")
    accessible(chrome, "approvals")
    screenshot(chrome, "approvals", shots)

    # Approve prod on the application's pipeline, with the keyboard alone.
    chrome.get(demo.url + "/ui/apps/shop")
    wait(chrome, shows("li.step[data-channel=prod] li[data-service=web]", "waiting for 1 approval"), "pipeline")
    accessible(chrome, "application")
    screenshot(chrome, "application", shots)
    tab_to(chrome, "reason-shop-web-prod")
    # The focus is in the reason field: the live page does not swap its content under it.
    chrome.switch_to.active_element.send_keys("tested in staging")
    chrome.switch_to.active_element.send_keys(Keys.TAB)
    assert fresh(lambda: chrome.switch_to.active_element.text) == "Approve prod"
    fresh(lambda: chrome.switch_to.active_element.send_keys(Keys.ENTER))
    wait(chrome, shows(".banner.notice", "Approval recorded"), "the approval is recorded")

    # Prod deploys, soaks behind its probe and converges, shown live on the open page.
    mark_page(chrome)
    prod_web = "li.step[data-channel=prod] li[data-service=web]"
    # While it soaks, the soak's countdown shows and ticks (the 30 s soak is the planner's
    # timer, so it is there to see however fast the machine is).
    wait(chrome, shows(prod_web, "soak ends in"), "the soak countdown")
    ticking = text_of(chrome, f"{prod_web} [data-countdown]")
    wait(chrome, lambda d: text_of(d, f"{prod_web} [data-countdown]") not in ("", ticking), "the countdown ticks")
    wait(chrome, shows(prod_web, "runs v1"), "prod converges at v1")
    assert same_page(chrome), "the page updated itself (no reload, no navigation)"
    assert "waiting for" not in text_of(chrome, prod_web)

    # The failing v2: previewed (nothing recorded), deployed, rolled back in staging; prod keeps v1.
    chrome.get(demo.url + "/ui/apps/shop/services/web/deploy")
    fresh(lambda: chrome.find_element(By.ID, "d-version").send_keys("v2"))
    fresh(lambda: chrome.find_element(By.ID, "d-params").send_keys("docroot=/nonexistent"))
    head = position(chrome)
    click(chrome, "form[aria-label='Preview a deploy'] button")
    wait(chrome, shows("main", "What deploying v2 would do", "staging"), "the plan")
    assert fresh(lambda: position(chrome)) == head, "a preview records nothing"
    accessible(chrome, "deploy preview")
    screenshot(chrome, "deploy-preview", shots)
    click(chrome, "form[aria-label='Deploy'] button")
    wait(chrome, shows(".banner.notice", "Deploy recorded"), "the deploy is recorded")
    mark_page(chrome)
    wait(chrome, shows("section[data-channel=staging] .headline", "Runs v1", "v2 failed; rolled back to v1"),
         "staging rolls v2 back")
    assert same_page(chrome)
    prod = text_of(chrome, "section[data-channel=prod] .headline")
    assert prod.startswith("Runs v1.") and "v2 not promoted: staging rolled back" in prod, prod
    accessible(chrome, "release")
    screenshot(chrome, "release", shots)

    chrome.get(demo.url + "/ui/fleet")
    wait(chrome, shows(WEB_STAGING, "runs v1", "healthy", "v2 failed; rolled back to v1"), "the fleet: staging")
    prod_cell = text_of(chrome, WEB_PROD)
    assert "runs v1" in prod_cell and "healthy" in prod_cell and "v2 not promoted" in prod_cell, prod_cell
    assert "failed" not in prod_cell, prod_cell
    screenshot(chrome, "fleet", shots)

    # The history holds people's commands, the planner's decisions and the agents' observations.
    chrome.get(demo.url + "/ui/history?app=shop")
    kinds = text_of(chrome, "table.history")
    for kind in ("ApprovalGranted", "InstanceStatusChanged", "ObservationRecorded", "ReleaseCreated"):
        assert kind in kinds or kind in _older_kinds(chrome, demo), kind
    accessible(chrome, "history")
    screenshot(chrome, "history", shots)
    click(chrome, "table.history td a")
    wait(chrome, shows("main h1", "Event"), "an event's permalink")
    accessible(chrome, "event")

    chrome.get(demo.url + "/ui/runtimes")
    wait(chrome, shows("table", "local", "connected"), "the local runtime's agent")
    accessible(chrome, "runtimes")
    screenshot(chrome, "runtimes", shots)

    # Time travel: the slider set to the position before the approval shows prod waiting.
    chrome.get(demo.url + "/ui/fleet")
    slider = chrome.find_element(By.ID, "at-slider")  # in the header: the live swap leaves it alone
    steps_back = int(slider.get_attribute("value") or 0) - before_approval
    assert steps_back > 0
    slider.send_keys(*([Keys.ARROW_LEFT] * steps_back))
    assert chrome.find_element(By.ID, "at-input").get_attribute("value") == str(before_approval)
    slider.send_keys(Keys.ENTER)
    wait(chrome, shows(".banner.past", "looking at the past", f"position {before_approval}"), "the past banner")
    assert "v1 waiting for 1 approval" in text_of(chrome, WEB_PROD)
    assert "v2" not in text_of(chrome, WEB_STAGING)
    assert not chrome.find_elements(By.CSS_SELECTOR, "form.approve")  # no actions in the past
    accessible(chrome, "fleet in the past")
    screenshot(chrome, "time-travel", shots)


def _older_kinds(driver: WebDriver, demo: Demo) -> str:
    """The event kinds on the history's next pages (the first page holds the newest 50)."""
    seen = ""
    for _ in range(10):
        if not driver.find_elements(By.CSS_SELECTOR, "nav.pager a[rel=next]"):
            break
        click(driver, "nav.pager a[rel=next]")
        seen += text_of(driver, "table.history")
    return seen


def test_a_viewer_cannot_approve_and_a_forged_form_is_refused(demo: Demo, chrome: WebDriver) -> None:
    created = demo.convoy("tokens", "create", "vic", "--role", "viewer", "-o", "json")
    import json

    secret = json.loads(created)["secret"]
    sign_in(chrome, demo, secret, "/ui/approvals")
    wait(chrome, shows("main h1", "Approvals"), "the inbox")
    assert not chrome.find_elements(By.CSS_SELECTOR, "form.approve")
    assert "Approve" not in text_of(chrome, "main")
    chrome.get(demo.url + "/ui/apps/shop")
    assert not chrome.find_elements(By.CSS_SELECTOR, "form.approve")
    # A form another page would post (no CSRF token of this session): 403.
    chrome.execute_script(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/actions/approve';"
        "for (const [k, v] of [['application','shop'],['service','api'],['channel','prod'],['decision','approve']]) {"
        "  const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();"
    )
    wait(chrome, shows("main", "Refused", "CSRF"), "the forged form is refused")
    # Signing out ends the session.
    chrome.get(demo.url + "/ui/fleet")
    click(chrome, "header form button")
    wait(chrome, lambda d: "/ui/login" in d.current_url, "signed out")
    chrome.get(demo.url + "/ui/fleet")
    wait(chrome, lambda d: "/ui/login" in d.current_url, "pages need a session again")


pytestmark = pytest.mark.timeout(900)
