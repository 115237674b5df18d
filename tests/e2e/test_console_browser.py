"""The console in a real browser (Debian's chromium through Playwright): sign in, dashboard, simulator, and the
broadcast composer's live count. Skipped when /usr/bin/chromium or Playwright is missing; screenshots go to
tests/artifacts/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.auth import create_user
from bot.dispatcher import utcnow
from bot.services import Envelope, receive
from tests.e2e._server import backend

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "correct horse battery"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(live_server: str) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(15000)
        yield tab
        context.close()
        browser.close()


def shot(page: Any, name: str, database_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}-{backend(database_url)}.png"), full_page=True)


def test_a_coordinator_signs_in_simulates_and_composes(page: Any, live_server: str, runtime: Any,
                                                        database_url: str) -> None:
    served = live_server  # the test app on a local port, in a thread
    create_user(runtime.factory, "coord@example.org", "coordinator", PASSWORD, utcnow())
    receive(runtime.factory, Envelope(channel="sms", provider_id="SM-e2e-1", address="+525512345678", text="RUTA"),
            runtime.context(utcnow()), runtime.senders)
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{served}/learners")
    assert "/login" in page.url
    page.fill("input[name=email]", "coord@example.org")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{served}/learners")
    page.goto(f"{served}/")
    assert page.locator("#active-learners").inner_text() == "1"
    shot(page, "dashboard", database_url)

    page.goto(f"{served}/simulator?channel=sms&address=%2B15555550177")
    page.fill("input[name=text]", "SEGURIDAD")
    page.click("#say button[type=submit]")
    page.wait_for_selector("#transcript li.out")
    course = runtime.catalog.get("seguridad-humana")
    transcript = page.locator("#transcript").inner_text()
    assert course.lessons[0].quiz[0].ask["es"] in transcript  # the lesson (its SMS text), then its question
    shot(page, "simulator", database_url)

    page.goto(f"{served}/broadcasts")
    page.fill("textarea[name=text_es]", "Reunión el martes")
    # expect() polls without evaluating strings (the console's CSP allows no eval)
    playwright_api.expect(page.locator("#enc-es")).to_contain_text("UCS-2")
    playwright_api.expect(page.locator("#live-count")).to_have_text("1")  # the SMS learner, not the simulated one
    page.click("button[value=preview]")
    page.wait_for_selector("#preview")
    shot(page, "broadcast-preview", database_url)
    page.click("button[value=send]")
    page.wait_for_selector("#by-channel")
    shot(page, "broadcast-report", database_url)

    assert hosts == {urlsplit(served).netloc}  # nothing but the console itself was fetched
    assert errors == []
