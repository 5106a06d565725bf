"""The built website works in a real browser, offline.

Opens `_build/html` (built by `jupyter-book build .`) in headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium) through a local `python -m http.server` on 127.0.0.1, with
every host other than 127.0.0.1 unresolvable, so nothing can come from a CDN. For each chapter of
`_toc.yml`: the page loads, its equations are typeset by MathJax (and none is a TeX error), its
figures are loaded images, its exercise solutions are collapsed dropdowns, and at least one widget
is rendered from the stored widget state.
Across the whole site: every internal link, image, script and stylesheet resolves (anchors too),
and no page loads a script from outside the site.

Where the site has not been built this module is skipped, except in CI (`CI` or
`SSM_TUTOR_REQUIRE_BOOK` set), where `.ci/run` builds the book first and a missing build fails.
`SSM_TUTOR_BOOK_HTML` points the test at another build directory; `SSM_TUTOR_CHROME` and
`SSM_TUTOR_CHROMEDRIVER` at another browser and driver (default: `chromium`, `chromedriver` on PATH).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("SSM_TUTOR_BOOK_HTML", ROOT / "_build" / "html"))
IN_CI = bool(os.environ.get("CI") or os.environ.get("SSM_TUTOR_REQUIRE_BOOK"))


def toc_chapters() -> list[str]:
    """The notebooks listed in _toc.yml, e.g. 'notebooks/01_continuous_ssm'."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [f for f in files if f.startswith("notebooks/")]


CHAPTERS = toc_chapters()


def test_toc_lists_the_chapters_in_order_and_they_exist():
    numbers = [int(Path(c).name[:2]) for c in CHAPTERS]
    assert numbers[:8] == list(range(1, 9)), numbers            # the eight core chapters, then later stages
    assert numbers == sorted(set(numbers)), f"chapters out of order or repeated: {numbers}"
    missing = [c for c in CHAPTERS if not (ROOT / f"{c}.ipynb").exists()]
    assert not missing, f"chapters in _toc.yml without a notebook: {missing}"


# --------------------------------------------------------------------------- the site, served
def _site_or_skip() -> Path:
    if (SITE / "index.html").exists():
        return SITE
    message = f"the book is not built ({SITE / 'index.html'} missing): run " \
              f"scripts/fetch_book_assets.sh && jupyter-book build ."
    if IN_CI:
        pytest.fail(message + " (in CI the book is built before the tests)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site_url():
    site = _site_or_skip()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"python -m http.server did not answer on {url}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(site_url):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("SSM_TUTOR_CHROME") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = os.environ.get("SSM_TUTOR_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "headless Chromium is needed: apt-get install -y chromium chromium-driver"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    profile = tempfile.mkdtemp(prefix="ssm-tutor-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1024", f"--user-data-dir={profile}",
                 # offline: no host but the local server resolves, so a CDN request cannot succeed
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for(driver, script: str, timeout: float = 30.0):
    """Poll a JavaScript expression until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    value = driver.execute_script(f"return ({script});")
    while not value and time.monotonic() < deadline:
        time.sleep(0.25)
        value = driver.execute_script(f"return ({script});")
    return value


# --------------------------------------------------------------------------- each chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: Path(c).name)
def test_chapter_page_renders_math_figures_solutions_and_a_widget(chapter, site_url, browser):
    browser.get(urljoin(site_url, f"{chapter}.html"))
    title = browser.execute_script("const h = document.querySelector('article h1');"
                                   "return h ? h.textContent.trim() : null;")
    assert title, f"{chapter}: no page title (the page did not load?)"

    typeset = _wait_for(browser, "document.querySelectorAll('article mjx-container').length")
    assert typeset, f"{chapter}: no equation typeset by MathJax"
    errors = browser.execute_script("return Array.from(document.querySelectorAll('mjx-merror'))"
                                    ".map(e => e.textContent)")
    assert not errors, f"{chapter}: MathJax could not typeset: {errors}"

    _wait_for(browser, "Array.from(document.images).every(i => i.complete)")
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img'))"
        ".map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])")
    assert images, f"{chapter}: no figure on the page"
    broken = [src for src, w, h in images if not (w and h)]
    assert not broken, f"{chapter}: images that did not load: {broken}"

    solutions = browser.execute_script(
        "return Array.from(document.querySelectorAll('article .solution')).map(s => {"
        "  const body = s.querySelector('section');"
        "  return [s.id, s.classList.contains('dropdown'),"
        "          !body || body.getBoundingClientRect().height === 0"
        "                || getComputedStyle(body).visibility === 'hidden'];})")
    assert len(solutions) >= 2, f"{chapter}: expected at least two exercise solutions, found {solutions}"
    shown = [sid for sid, dropdown, hidden in solutions if not (dropdown and hidden)]
    assert not shown, f"{chapter}: solutions not in a collapsed dropdown: {shown}"

    widgets = _wait_for(browser, "document.querySelectorAll('article .jupyter-widgets.widget-container, "
                                 "article .jupyter-widgets .widget-slider, article .widget-inline-hbox').length")
    assert widgets, (f"{chapter}: no widget rendered (is the widget state saved in the notebook, "
                     f"and the embed script in _static/vendor?)")


# --------------------------------------------------------------------------- the whole site
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []     # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh" and "url=" in a.get("content", ""):
            self.links.append(("a", a["content"].split("url=", 1)[1].strip()))   # a redirect page
        for attr in ("href", "src"):
            if a.get(attr) and tag in ("a", "link", "script", "img", "iframe", "source"):
                self.links.append((tag, a[attr]))


def _fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get_content_type()
    except urllib.error.HTTPError as err:
        return err.code, b"", ""


def test_no_broken_internal_links_and_no_external_scripts(site_url):
    """Crawl every page reachable from the start page; check each internal URL and anchor."""
    origin = urlparse(site_url).netloc
    pages: dict[str, _Links] = {}
    queue, seen = [site_url], {site_url}
    broken, external_scripts, anchors = [], [], []
    while queue:
        page = queue.pop()
        status, body, ctype = _fetch(page)
        if status != 200:
            continue  # reported by whoever linked to it
        if ctype != "text/html":
            continue
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        pages[page] = parser
        for tag, link in parser.links:
            target = urljoin(page, link)
            parsed = urlparse(target)
            if parsed.scheme not in ("http", "https"):
                continue  # mailto:, javascript:, data:
            if parsed.netloc != origin:
                if tag == "script":
                    external_scripts.append((page, target))
                continue
            url, fragment = urldefrag(target)
            if fragment:
                anchors.append((page, url, fragment))
            if url not in seen:
                seen.add(url)
                status, _, _ = _fetch(url)
                if status != 200:
                    broken.append(f"{page} -> {link} (HTTP {status})")
                elif url.endswith((".html", "/")):
                    queue.append(url)
    for page, url, fragment in anchors:
        if url in pages and fragment not in pages[url].ids:
            broken.append(f"{page} -> {url}#{fragment} (no such anchor)")
    assert len(pages) > len(CHAPTERS), f"crawled only {len(pages)} pages"
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))
    assert not external_scripts, f"scripts loaded from outside the site: {sorted(set(external_scripts))}"
    crawled = {urlparse(p).path for p in pages}
    for chapter in CHAPTERS:
        assert f"/{chapter}.html" in crawled, f"{chapter} is not linked from the site's navigation"
