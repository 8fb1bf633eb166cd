"""The dashboard in a real browser (Debian's Chromium, headless), inside the Airflow UI:
log in on Airflow's own login page, open "Tuning", follow a search, see its curves drawn,
and kill a configuration with its button.

``make test`` installs chromium and chromium-driver (scripts/install-browser.sh). Set
CIRRUS_DASHBOARD_SCREENSHOT=FILE to save what the browser shows (the README's picture)."""

import os
import shutil
import tempfile
import time

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Chromium is not installed: run scripts/install-browser.sh (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cirrus-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _until(driver, check, timeout=60.0, what="the page"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d):
        try:
            return check(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(safe, message=f"timed out waiting for {what}")


def test_the_dashboard_in_the_airflow_ui_draws_curves_and_kills_a_configuration(api_server, live_search, browser):
    from selenium.webdriver.common.by import By

    live = live_search()
    browser.get(f"{api_server.url}/plugin/cirrus-tuning")
    # Airflow's own login page, as for the rest of the UI.
    _until(browser, lambda d: d.find_element(By.NAME, "username"), what="Airflow's login page")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("admin-secret")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The "Tuning" view embeds the dashboard; the search is listed there.
    frame = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "iframe[src*='cirrus']"), what="the view")
    browser.switch_to.frame(frame)
    _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-run='{live.key}'] a"),
           what="the search in the list").click()
    # Curves are drawn, one per configuration, and grow.
    curves = _until(browser, lambda d: len(paths := d.find_elements(By.CSS_SELECTOR, "#plot-time path.curve")) == 3
                    and all(int(p.get_attribute("data-points")) >= 3 for p in paths) and paths,
                    what="three curves")
    assert all(p.get_attribute("d").count("L") >= 2 for p in curves)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot-cost path.curve")) == 3
    victim = browser.find_element(By.CSS_SELECTOR, "#configs tr[data-config]").get_attribute("data-config")
    drawn = int(_path(browser, victim).get_attribute("data-points"))
    _until(browser, lambda d: int(_path(d, victim).get_attribute("data-points")) > drawn, timeout=10,
           what="the curve to grow")  # redrawn as the search goes on
    browser.find_element(By.CSS_SELECTOR, f"button[data-kill='{victim}']").click()
    _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-config='{victim}'] .status").text == "killed",
           what="the configuration to end as killed")
    assert "ended" in _path(browser, victim).get_attribute("class")
    others = browser.find_elements(By.CSS_SELECTOR, "#configs tr[data-config] .status")
    assert sorted(o.text for o in others) == ["killed", "running", "running"]
    assert not browser.find_elements(By.CSS_SELECTOR, f"button[data-kill='{victim}']")
    if os.environ.get("CIRRUS_DASHBOARD_SCREENSHOT"):
        time.sleep(3)
        browser.switch_to.default_content()
        browser.save_screenshot(os.environ["CIRRUS_DASHBOARD_SCREENSHOT"])
        browser.switch_to.frame(frame)
    # "Kill all" asks first (a second click), then ends the search.
    browser.find_element(By.CSS_SELECTOR, "button[data-kill='all']").click()
    time.sleep(1.5)  # a redraw in between keeps the question
    assert live.thread.is_alive()
    _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "button[data-kill='all'][data-armed='1']"),
           what="the question").click()
    _until(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done",
           what="the search to end")
    assert {c["status"] for c in live.wait()["configs"]} == {"killed"}


def _path(browser, config):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f"#plot-time path[data-config='{config}']")
