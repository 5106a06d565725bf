"""The built website works in a real browser, offline, with a clean console.

Opens `_build/html` (built by `jupyter-book build .`) in headless Chromium (see tests/browser.py for
how to get it) through a local `python -m http.server` on 127.0.0.1, with every host other than
127.0.0.1 unresolvable, so nothing can come from a CDN.

Every page of the book (the `_toc.yml` pages, the search page and the index) logs no error and no
warning in the browser console (an uncaught exception, a failed request such as a missing favicon,
console.error), apart from the known messages listed in tests/browser.py. Each chapter also: its
equations are typeset by MathJax (none is a TeX error) and no display equation is wider than the
text column (book/_static/fit_equations.js shrinks the slightly wide ones; one that still does not
fit is cut off on the page); its figures are loaded images; its exercise solutions are collapsed
dropdowns; at least one widget is rendered from the stored widget state, and no widget label is
cut short. Across the whole site: every internal link, image, script and stylesheet resolves
(anchors too), and no page loads a script from outside the site. `test_the_checks_catch_*` plants
each problem in a copy of a chapter page and checks that the checks report it.

Where the site has not been built this module is skipped, except in CI (`CI` or
`SSM_TUTOR_REQUIRE_BOOK` set), where `.ci/run` builds the book first and a missing build fails.
`SSM_TUTOR_BOOK_HTML` points the test at another build directory; `SSM_TUTOR_CHROME` and
`SSM_TUTOR_CHROMEDRIVER` at another browser and driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest
import yaml

from browser import IN_CI, console_problems, free_port, headless_chromium, wait_for

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("SSM_TUTOR_BOOK_HTML", ROOT / "_build" / "html"))


def toc_files() -> list[str]:
    """Every page of _toc.yml, root first, e.g. 'book/intro', 'notebooks/01_continuous_ssm'."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return [str(Path(f).with_suffix("")) for f in files]


CHAPTERS = [f for f in toc_files() if f.startswith("notebooks/")]
OTHER_PAGES = [f for f in toc_files() if not f.startswith("notebooks/")] + ["search", "genindex"]


def test_toc_lists_the_chapters_in_order_and_they_exist():
    numbers = [int(Path(c).name[:2]) for c in CHAPTERS]
    assert numbers == list(range(1, len(numbers) + 1)), f"chapters missing, repeated or out of order: {numbers}"
    assert len(numbers) >= 8, CHAPTERS
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


def _serve(directory: Path):
    """Start `python -m http.server` on a free local port; return (process, url)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return server, url
        except OSError:
            time.sleep(0.1)
    server.terminate()
    pytest.fail(f"python -m http.server did not answer on {url}")


@pytest.fixture(scope="module")
def site_url():
    server, url = _serve(_site_or_skip())
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(site_url):
    with headless_chromium() as driver:
        yield driver


# --------------------------------------------------------------------------- the checks
def open_page(driver, url: str) -> None:
    """Load a page and wait until MathJax has typeset it (and the equations are fitted) and its
    widgets are drawn, so that everything it logs is in the console."""
    driver.get_log("browser")        # forget what earlier pages logged
    driver.get(url)
    driver.set_script_timeout(30)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const mj = window.MathJax;"
        "if (!(mj && mj.startup && mj.startup.promise)) { done(); return; }"
        "mj.startup.promise.then(() => setTimeout(done, 100), () => done());")
    if driver.execute_script("return !!document.querySelector("
                             "'script[type=\"application/vnd.jupyter.widget-state+json\"]')"):
        wait_for(driver, "document.querySelector('.jupyter-widgets')", timeout=20)
        time.sleep(0.5)


def overflowing_equations(driver) -> list[str]:
    """Display equations wider than the text column (after fit_equations.js): cut off on screen."""
    return driver.execute_script("""
        const column = document.querySelector('article');
        const right = column.getBoundingClientRect().right;
        return Array.from(column.querySelectorAll('mjx-container[display="true"]'))
          .filter(eq => eq.clientWidth > 0)
          .filter(eq => eq.scrollWidth > eq.clientWidth + 1 || eq.getBoundingClientRect().right > right + 1)
          .map(eq => `${eq.textContent.slice(0, 60)}... (${eq.scrollWidth} px wide in a ${eq.clientWidth} px box)`);
    """)


def cut_widget_labels(driver) -> list[str]:
    """Widget labels (slider descriptions, readouts) whose text is cut short."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll(
              'article .jupyter-widgets .widget-label, article .jupyter-widgets .widget-readout'))
          .filter(label => label.clientWidth > 0 && label.scrollWidth > label.clientWidth + 1)
          .map(label => `"${label.textContent}" (${label.scrollWidth} px of text in ${label.clientWidth} px)`);
    """)


# --------------------------------------------------------------------------- each page
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: Path(c).name)
def test_chapter_page_renders_math_figures_solutions_and_a_widget(chapter, site_url, browser):
    open_page(browser, urljoin(site_url, f"{chapter}.html"))
    title = browser.execute_script("const h = document.querySelector('article h1');"
                                   "return h ? h.textContent.trim() : null;")
    assert title, f"{chapter}: no page title (the page did not load?)"

    typeset = wait_for(browser, "document.querySelectorAll('article mjx-container').length")
    assert typeset, f"{chapter}: no equation typeset by MathJax"
    errors = browser.execute_script("return Array.from(document.querySelectorAll('mjx-merror'))"
                                    ".map(e => e.textContent)")
    assert not errors, f"{chapter}: MathJax could not typeset: {errors}"
    assert not (wide := overflowing_equations(browser)), (
        f"{chapter}: display equations wider than the text column, cut off on the page: {wide}. "
        f"Split them over lines (e.g. \\begin{{aligned}} … \\\\ … \\end{{aligned}})")

    wait_for(browser, "Array.from(document.images).every(i => i.complete)")
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

    widgets = wait_for(browser, "document.querySelectorAll('article .jupyter-widgets.widget-container, "
                                "article .jupyter-widgets .widget-slider, article .widget-inline-hbox').length")
    assert widgets, (f"{chapter}: no widget rendered (is the widget state saved in the notebook, "
                     f"and the embed script in _static/vendor?)")
    assert not (cut := cut_widget_labels(browser)), f"{chapter}: widget labels cut short: {cut}"

    assert not (logged := console_problems(browser)), f"{chapter}: the browser console reports {logged}"


@pytest.mark.parametrize("page", OTHER_PAGES)
def test_page_logs_no_console_error(page, site_url, browser):
    open_page(browser, urljoin(site_url, f"{page}.html"))
    assert browser.execute_script("return !!document.querySelector('article, #search-results, main')"), \
        f"{page}: the page did not load"
    assert not (logged := console_problems(browser)), f"{page}: the browser console reports {logged}"


# --------------------------------------------------------------------------- the checks can fail
PLANTED = """
<script>const planted_twice = 1;</script>
<script>const planted_twice = 2;</script>
<img src="no-such-image.png" alt="planted: a missing image">
<div class="math notranslate nohighlight">\\[ {wide} \\]</div>
<div class="jupyter-widgets widget-inline-hbox">
  <div class="widget-label" style="width: 40px !important; overflow: hidden; text-overflow: ellipsis">
    a description far too long for its box</div>
</div>
"""


@pytest.fixture(scope="module")
def broken_page_url(tmp_path_factory):
    """A copy of the site with one extra page: chapter 4 with each problem planted in its article."""
    site = _site_or_skip()
    copy = tmp_path_factory.mktemp("site")
    for entry in site.iterdir():
        if entry.name != "notebooks":
            (copy / entry.name).symlink_to(entry)
    (copy / "notebooks").mkdir()
    for entry in (site / "notebooks").iterdir():
        (copy / "notebooks" / entry.name).symlink_to(entry)
    page = (site / f"{CHAPTERS[3]}.html").read_text()
    wide = " + ".join(f"x_{{{i}}}" for i in range(1, 90))       # no column holds this, even at 70 %
    at = page.index("<h1", page.index('<article class="bd-article"'))
    (copy / "notebooks" / "planted.html").write_text(page[:at] + PLANTED.format(wide=wide) + page[at:])
    server, url = _serve(copy)
    try:
        yield urljoin(url, "notebooks/planted.html")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_checks_catch_a_console_error_a_wide_equation_and_a_cut_label(broken_page_url, browser):
    open_page(browser, broken_page_url)
    logged = console_problems(browser)
    assert any("planted_twice" in message for message in logged), logged
    assert any("no-such-image.png" in message and "404" in message for message in logged), logged
    assert any("x1+x2+x3" in eq for eq in overflowing_equations(browser)), overflowing_equations(browser)
    assert any("far too long" in label for label in cut_widget_labels(browser)), cut_widget_labels(browser)


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
