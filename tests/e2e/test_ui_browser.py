"""The quarantine web page in a real browser: Debian's chromium, driven by Selenium through
Debian's chromedriver (the two ship at the same version). Sign in with a user token, the list
shows that user's held GTUBE message and not another user's, release it, and it reaches the
relay once. Screenshots are kept under var/test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness import ROOT, Gateway, Sink, wait_for
from tests.support.people import hold_spam, issue

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "var" / "test-artifacts"


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are not installed "
    "(make test installs them as root: scripts/ensure-chromium.sh)",
)
def test_sign_in_see_your_held_mail_and_release_it(
    gateway: Gateway, relay_sink: Sink, token: str, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bob, carol = f"bob-{token}@example.test", f"carol-{token}@example.test"
    mine, theirs = f"Your invoice {token[:8]}", f"Carol's offer {token[:8]}"
    held = hold_spam(gateway, [bob], mine, sender=f"offers-{token[:8]}@outside.test")
    hold_spam(gateway, [carol], theirs)
    user = issue(gateway, recipient=bob)

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--ignore-certificate-errors",  # the API's self-signed certificate
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,800",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    shots: list[Path] = []

    def shoot(name: str) -> None:
        path = tmp_path / name
        assert driver.save_screenshot(str(path))
        shots.append(path)

    try:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{gateway.api_url}/ui/")
        wait.until(lambda d: d.current_url.endswith("/ui/signin"))
        # The field is found by its label, as a screen reader would announce it.
        label = driver.find_element(By.XPATH, "//label[normalize-space()='Token']")
        driver.find_element(By.ID, label.get_attribute("for") or "").send_keys(user["token"])
        driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
        wait.until(lambda d: d.current_url.endswith("/ui/"))

        listed = driver.find_element(By.TAG_NAME, "main").text
        assert mine in listed and theirs not in listed
        assert driver.find_element(By.TAG_NAME, "h1").text == "Held mail"
        shoot("quarantine-list.png")
        driver.set_window_size(390, 844)  # a phone
        shoot("quarantine-list-phone.png")
        driver.set_window_size(1100, 800)

        driver.find_element(By.LINK_TEXT, mine).click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == mine)
        assert "GTUBE" in driver.find_element(By.TAG_NAME, "main").text
        shoot("quarantine-message.png")
        driver.find_element(By.XPATH, "//button[normalize-space()='Release']").click()
        wait.until(lambda d: "Released" in d.find_element(By.CSS_SELECTOR, "[role=status]").text)
        shoot("quarantine-released.png")
    finally:
        driver.quit()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            backend = "sqlite" if gateway.config["database_url"].startswith("sqlite") else "pg"
            kept = ARTIFACTS / f"{backend}-{shot.name}"
            shutil.copyfile(shot, kept)
            print(f"screenshot: {kept}")

    def released() -> list[object]:
        return [m for m in relay_sink.with_token(mine) if b"X-Moat-Released" in m.data]

    wait_for(released, 30, "the released message at the relay")
    gateway.wait_status(held, "delivered")
    assert len(released()) == 1
    assert len(relay_sink.with_token(theirs)) == 0
