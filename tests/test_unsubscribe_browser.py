"""The unsubscribe pages in a real headless Chromium (Debian `chromium` + `chromium-driver`),
driven with Selenium: load the link, press confirm, see the confirmation and the row."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailctl.store.sqlite import SqliteStore
from mailctl.unsubscribe.tokens import Signer, load_secret
from tests.helpers.unsubscribe_server import UnsubscribeServer

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("MAILCTL_REQUIRE_CHROMIUM"):
    raise RuntimeError("MAILCTL_REQUIRE_CHROMIUM is set but chromium/chromedriver are missing")
selenium = pytest.importorskip("selenium")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"
)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=800,600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def test_confirming_in_chromium_unsubscribes_and_shows_the_confirmation(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    db = tmp_path / "m.db"
    SqliteStore.open(db).close()
    signer = Signer(load_secret(None, db))
    token = signer.token("jane.doe@example.com", "news", "customers", time.time() + 86400)
    server = UnsubscribeServer(tmp_path, db)
    try:
        url = f"http://127.0.0.1:{server.port}/unsubscribe?" + urllib.parse.urlencode({"t": token})
        browser.get(url)
        assert browser.title == "Unsubscribe"
        text = browser.find_element(By.TAG_NAME, "main").text
        assert "j***e@example.com" in text and "jane.doe" not in text
        # The inline style applied under the strict CSP: the button is styled, not default.
        button = browser.find_element(By.ID, "confirm")
        assert button.value_of_css_property("background-color") == "rgba(26, 79, 214, 1)"
        browser.save_screenshot(str(tmp_path / "confirm.png"))
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM suppression").fetchone()[0] == 0
        button.click()
        # The click submits the form; wait for the answer page (a loaded machine is slow).
        done = WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "done"))
        )
        assert done.text == "j***e@example.com will get no more of these messages."
        assert browser.title == "You are unsubscribed"
        assert browser.current_url == url  # answered in place, no redirect
        browser.save_screenshot(str(tmp_path / "done.png"))
        assert conn.execute("SELECT address, reason, source FROM suppression").fetchall() == [
            ("jane.doe@example.com", "unsubscribe", "web-confirm:news")
        ]
        # No console errors: nothing was blocked by the CSP.
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        assert server.stop() == 0
    for name in ("confirm.png", "done.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 2000
