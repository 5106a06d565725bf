"""Sphinx extension: make sure the vendored MathJax and ipywidgets scripts are in book/_static/vendor/.

The book serves MathJax and the ipywidgets embed script itself (no CDN); the files come from the
npm registry through ``scripts/fetch_book_assets.sh``, which ``.ci/run`` runs before the build.
So that a plain ``jupyter-book build .`` works too, this extension runs the script when the files
are missing, before Sphinx checks ``html_static_path``. If it cannot (no npm, no network), the build
warns, and fails under ``--warningiserror``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fetch_book_assets.sh"
NEEDED = ["book/_static/vendor/mathjax/tex-chtml.js", "book/_static/vendor/html-manager/embed.js"]
logger = logging.getLogger(__name__)


def ensure_assets(app, config) -> None:
    if all((ROOT / path).is_file() for path in NEEDED):
        return
    logger.info("offline_assets: fetching MathJax and the widget embed script (%s)", SCRIPT.name)
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True)
    missing = [path for path in NEEDED if not (ROOT / path).is_file()]
    if done.returncode or missing:
        logger.warning("offline_assets: %s failed (%s); math and widgets will not render offline: %s",
                       SCRIPT.relative_to(ROOT), (done.stderr or done.stdout).strip()[-300:],
                       ", ".join(missing))


def setup(app):
    # before Sphinx validates html_static_path (priority 800)
    app.connect("config-inited", ensure_assets, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
