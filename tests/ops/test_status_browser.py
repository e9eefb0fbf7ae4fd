"""The status page in a real browser: headless Chromium (Debian's ``chromium``) driven by Selenium through Debian's
``chromium-driver``, against the local functions host. The verdict and per-mailbox rows render at 1,280 px without
sideways scrolling, the console stays clean (a CSP violation would show there), injected markup does not execute,
and a screenshot is saved (to ``STATUS_SCREENSHOT`` when set: docs/status-page.png, shown by the README, is
taken that way against ``make demo-up``; see docs/operations.md).

The browser is installed by ``make browser-deps`` (``make test`` runs it; CI runs as root). Without it this test
fails and says how to install it: it never passes or skips silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sync import bootstrap
from sync.ports import AuditEntry
from tests.functions.conftest import ANN, BOB
from tests.functions.test_through_host import Stack

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
MARKUP = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: run `make browser-deps` "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_status_page_renders_in_chromium_without_errors_or_injected_markup(subscribed: Stack, browser: Any,
                                                                          tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    s = subscribed
    s.settle()
    bootstrap.current().audit.write([AuditEntry(
        at=datetime.now(UTC), mailbox=ANN, sf_id="003000000000009AAA", action="update:salesforce", reason="x",
        outcome="failed", error=f"{MARKUP}: FIELD_CUSTOM_VALIDATION_EXCEPTION")])
    browser.get(f"{s.url('status')}?code={s.host.host_key}")
    verdict = browser.find_element(By.CSS_SELECTOR, "p.verdict[role=status]")
    assert verdict.text.split()[0] in ("HEALTHY", "DEGRADED", "FAILING")
    assert verdict.value_of_css_property("border-left-style") == "solid"  # the hashed style was allowed by the CSP
    rows = browser.find_elements(By.CSS_SELECTOR, "table:first-of-type tbody tr")
    assert {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows} >= {ANN, BOB}
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert "<img src=x" in browser.find_element(By.TAG_NAME, "main").text  # shown as text, not run
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 1,280 px: {width}"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    shot = Path(os.environ.get("STATUS_SCREENSHOT") or tmp_path / "status.png")
    browser.set_window_size(1280, max(1000, int(browser.execute_script("return document.body.scrollHeight")) + 40))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
