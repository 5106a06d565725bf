"""Headless Chromium for the browser tests (the built book, and JupyterLab): find it, start it
offline, wait for the page, read its console.

Chromium and its driver come from the system, not from pip:

- Debian: ``sudo apt-get install chromium chromium-driver``
- Ubuntu: ``sudo snap install chromium`` (the driver is ``chromium.chromedriver``)
- macOS: ``brew install --cask google-chrome chromedriver``
- anywhere else: a Chrome or Chromium and the chromedriver of the same major version; point
  ``SSM_TUTOR_CHROME`` and ``SSM_TUTOR_CHROMEDRIVER`` at them.

Where none is found the browser tests are skipped, except in CI (``CI`` or
``SSM_TUTOR_REQUIRE_BOOK`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


IN_CI = _flag("CI") or _flag("SSM_TUTOR_REQUIRE_BOOK")

HOW_TO_GET_CHROMIUM = (
    "headless Chromium and its driver are needed for the browser tests: "
    "Debian `sudo apt-get install chromium chromium-driver`; Ubuntu `sudo snap install chromium`; "
    "macOS `brew install --cask google-chrome chromedriver`; or set SSM_TUTOR_CHROME and "
    "SSM_TUTOR_CHROMEDRIVER to a Chrome/Chromium and the chromedriver of the same version"
)

_CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_MAC_CHROMES = ("/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
                "/Applications/Chromium.app/Contents/MacOS/Chromium")
_DRIVER_NAMES = ("chromedriver", "chromium.chromedriver")

# Console messages that are not ours to fix, each with its reason. Matched as substrings.
KNOWN_CONSOLE_MESSAGES = {
    # the ipywidgets embed script validates the stored widget state with ajv in strict mode and
    # warns about its own schema (a warning, not an error; nothing on the page is affected)
    "use allowUnionTypes to allow union type keyword": "ipywidgets html-manager's own schema",
}


def skip_or_fail(message: str):
    """Skip a browser test where its tools are missing; in CI, fail instead."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def find_chromium() -> tuple[str, str]:
    """(browser, driver) paths, or skip/fail saying how to install them."""
    chrome = os.environ.get("SSM_TUTOR_CHROME") or next(
        (p for p in (*map(shutil.which, _CHROME_NAMES), *_MAC_CHROMES) if p and Path(p).exists()), None)
    driver = os.environ.get("SSM_TUTOR_CHROMEDRIVER") or next(
        (p for p in map(shutil.which, _DRIVER_NAMES) if p), None)
    if not (chrome and driver):
        missing = " and ".join(name for name, path in (("a browser", chrome), ("chromedriver", driver)) if not path)
        skip_or_fail(f"{missing} not found. {HOW_TO_GET_CHROMIUM}")
    return chrome, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 1024):
    """A selenium driver for headless Chromium that can reach 127.0.0.1 and nothing else.

    Its console is recorded (read it with `console_problems`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path = find_chromium()
    profile = tempfile.mkdtemp(prefix="ssm-tutor-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}",
                 # offline: no host but the local server resolves, so a CDN request cannot succeed
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 30.0):
    """Poll a JavaScript expression until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    value = driver.execute_script(f"return ({script});")
    while not value and time.monotonic() < deadline:
        time.sleep(0.25)
        value = driver.execute_script(f"return ({script});")
    return value


def console_problems(driver, known: dict[str, str] = KNOWN_CONSOLE_MESSAGES) -> list[str]:
    """Errors and warnings the page logged since the last call (uncaught exceptions, failed
    requests such as a 404, console.error/console.warn), less the known messages."""
    problems = []
    for entry in driver.get_log("browser"):
        if entry["level"] not in ("SEVERE", "WARNING"):
            continue
        if any(pattern in entry["message"] for pattern in known):
            continue
        problems.append(f"{entry['level']}: {entry['message']}")
    return problems
