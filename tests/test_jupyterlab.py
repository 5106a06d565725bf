"""The notebooks in a real JupyterLab, as a learner gets it from `pip install -r requirements.txt`.

Starts `jupyter lab` (this Python's) on a free local port with a token, on a copy of a chapter in a
temporary folder, with fresh Jupyter config, data and runtime folders (so no user setting and no
notebook signature of this machine counts), opens it in headless Chromium (tests/browser.py) and
checks what a learner sees:

- the exercise statement renders as in the book (jupyterlab-myst): an exercise admonition with its
  title and typeset maths, no raw `:label:` / ``` / `{exercise}` text; the solution opener is a
  collapsed dropdown;
- the notebook is not marked modified once its kernel is running (a notebook whose kernelspec
  differs from the kernel's, as they all did, is: that copy is opened too, and must be);
- a widget cell of an untrusted notebook (a fresh clone) says to run it instead of showing
  `VBox(children=…`; in a trusted notebook (`jupyter trust`, as the README's set-up does) its
  controls are drawn from the stored widget state without running anything;
- no "Jupyter news" pop-up, no nbgrader menu, and the server logs no nbgrader warning and no error
  (jupyter-config/, installed by requirements.txt).

Skipped where Chromium or the course's JupyterLab set-up is missing, except in CI, where it fails.
About 40 s on a 2-core machine, most of it JupyterLab and the kernel starting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from browser import console_problems, free_port, headless_chromium, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "02_discretization.ipynb"       # exercises, maths and a widget explorer
TOKEN = "ssm-tutor-test-token"
LEARNER_SETTINGS = "labconfig/default_setting_overrides.d/ssm_tutor.json"


def _course_setup_or_skip() -> None:
    """JupyterLab must see what requirements.txt installs: the MyST and widget extensions and the
    learner settings (jupyter-config/)."""
    from jupyter_core.paths import jupyter_config_path, jupyter_path

    needed = {"jupyterlab-myst": "labextensions/jupyterlab-myst/package.json",
              "jupyterlab_widgets": "labextensions/@jupyter-widgets/jupyterlab-manager/package.json"}
    missing = [name for name, rel in needed.items()
               if not any((Path(p) / rel.split("/", 1)[1]).exists() for p in jupyter_path("labextensions"))]
    if not any((Path(p) / LEARNER_SETTINGS).exists() for p in jupyter_config_path()):
        missing.append("ssm-tutor-jupyterlab-settings (./jupyter-config)")
    if missing:
        skip_or_fail(f"this environment's JupyterLab lacks {', '.join(missing)}: set it up with "
                     f"`pip install -r requirements.txt` (in a virtual environment of its own)")


def _copy(name: str, into: Path, kernel_display_name: str | None = None) -> str:
    nb = json.loads(CHAPTER.read_text(encoding="utf-8"))
    # a signature covers the content: give each copy its own, so signing one trusts no other
    nb["metadata"]["ssm_tutor_test_copy"] = name
    if kernel_display_name:
        nb["metadata"]["kernelspec"]["display_name"] = kernel_display_name
    (into / name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return name


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(driver, notebook names, server log path, {notebook: modified once its kernel runs}) for a
    JupyterLab on copies of the chapter, each opened."""
    _course_setup_or_skip()
    home = tmp_path_factory.mktemp("lab")
    root = home / "course"
    root.mkdir()
    notebooks = {
        "untrusted": _copy("chapter.ipynb", root),
        "trusted": _copy("trusted_chapter.ipynb", root),
        "old_kernelspec": _copy("old_kernelspec.ipynb", root, kernel_display_name="Python 3"),
    }
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[var] = str(home / var.lower())
    env.pop("JUPYTER_CONFIG_PATH", None)
    env.pop("JUPYTER_PATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # as `jupyter trust` does: sign this copy in the (fresh) signature database
    subprocess.run([sys.executable, "-m", "nbformat.sign", str(root / notebooks["trusted"])],
                   env=env, check=True, capture_output=True)

    port = free_port()
    log_path = home / "server.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--LabApp.user_settings_dir={home / 'settings'}",
               "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")     # CI runs as root
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}api/status?token={TOKEN}", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
        with headless_chromium(width=1400, height=1000) as driver:
            driver.set_script_timeout(120)
            driver.get(f"{url}lab?token={TOKEN}")
            _lab_js(driver, "await waitFor(() => window.jupyterapp && window.jupyterapp.started, 90000);"
                            "await window.jupyterapp.started; await window.jupyterapp.restored;")
            # all three at once: their kernels start side by side
            dirty = _lab_js(driver, """
                const panels = await Promise.all(args[0].map(openNotebook));
                return Object.fromEntries(panels.map(p => [p.context.path, p.context.model.dirty]));""",
                            list(notebooks.values()))
            opening = console_problems(driver)      # before the tests scroll (scripted scrolling of a
            yield driver, notebooks, log_path, dirty, opening   # windowed notebook logs its own errors)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home / "jupyter_runtime_dir", ignore_errors=True)


# A few JavaScript helpers, run inside JupyterLab (window.jupyterapp is exposed by the fixture).
_JS_HELPERS = """
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function waitFor(test, timeout = 60000) {
  const end = Date.now() + timeout;
  while (Date.now() < end) { try { const v = test(); if (v) return v; } catch (e) {} await sleep(200); }
  return null;
}
async function openNotebook(path) {
  const app = window.jupyterapp;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  await waitFor(() => panel.sessionContext.session && panel.sessionContext.session.kernel
                      && panel.sessionContext.kernelDisplayStatus === 'idle', 90000);
  await sleep(1000);     // JupyterLab writes the kernel's spec and language into the notebook here
  return panel;
}
function panelOf(path) {
  return Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
}
async function showCell(panel, index) {
  const nb = panel.content;
  window.jupyterapp.shell.activateById(panel.id);
  await waitFor(() => panel.node.offsetParent !== null, 10000);       // its tab is shown
  nb.activeCellIndex = index;
  await nb.scrollToItem(index, 'center');
  const cell = nb.widgets[index];
  await waitFor(() => cell.node.isConnected
                      && (cell.model.type !== 'markdown' || cell.node.querySelector('.jp-MarkdownOutput, .myst')), 15000);
  await sleep(300);
  return cell;
}
function findCell(panel, test) {
  return panel.content.widgets.findIndex(cell => test(cell.model.toJSON()));
}
function isWidgetCell(cell) {
  return cell.cell_type === 'code' && (cell.outputs || []).some(
    o => o.data && o.data['application/vnd.jupyter.widget-view+json']);
}
"""


def _lab_js(driver, body: str, *args):
    """Run async JavaScript in the JupyterLab page; `return` a JSON-able value; arguments as args[i]."""
    script = (_JS_HELPERS + "const args = Array.from(arguments).slice(0, -1);"
              "const done = arguments[arguments.length - 1];"
              f"(async () => {{ {body} }})().then(done, e => done({{error: String(e && e.stack || e)}}));")
    result = driver.execute_async_script(script, *args)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"JavaScript in JupyterLab failed: {result['error']}")
    return result


def test_notebook_opens_unmodified_and_a_wrong_kernelspec_would_show(lab):
    _, notebooks, _, dirty, _ = lab
    assert dirty[notebooks["untrusted"]] is False, (
        "the chapter shows 'unsaved changes' as soon as it opens (run scripts/normalize_notebooks.py)")
    assert dirty[notebooks["old_kernelspec"]] is True, (
        "a notebook whose kernelspec differs from the kernel's should be modified on opening: "
        "the check above cannot fail")


def test_exercise_renders_as_in_the_book(lab):
    driver, notebooks, _, _, _ = lab
    report = _lab_js(driver, """
        const panel = panelOf(args[0]) || await openNotebook(args[0]);
        const at = findCell(panel, c => c.cell_type === 'markdown' && String(c.source).startsWith('```{exercise}'));
        const sol = findCell(panel, c => c.cell_type === 'markdown' && String(c.source).startsWith('```{solution-start}'));
        const t0 = Date.now();
        const cell = await showCell(panel, at);
        const t1 = Date.now();
        await waitFor(() => cell.node.querySelector('.myst .katex'), 20000);
        const t2 = Date.now();
        const shown = cell.node.querySelector('.myst');
        const solution = await showCell(panel, sol);
        const timings = [t1 - t0, t2 - t1, Date.now() - t2];
        const details = solution.node.querySelector('.myst details');
        return {source: String(cell.model.toJSON().source),
                text: shown ? shown.innerText : null,
                admonition: !!cell.node.querySelector('.myst .myst-exercise'),
                maths: cell.node.querySelectorAll('.myst .katex').length,     // jupyterlab-myst typesets with KaTeX
                solutionDropdown: !!details, solutionOpen: details ? details.open : null, timings};""",
                     notebooks["untrusted"])
    print("ms to show the exercise, typeset its maths, show the solution opener:", report["timings"])
    title = re.match(r"```\{exercise\}\s*(.*)", report["source"]).group(1).strip()
    assert report["text"] is not None, "the exercise cell is not rendered by jupyterlab-myst"
    assert report["admonition"], f"the exercise is not an admonition: {report['text'][:300]!r}"
    assert title in report["text"], f"exercise title {title!r} not shown: {report['text'][:300]!r}"
    raw = [marker for marker in (":label:", "```", "{exercise}", "*Hint:*", "$") if marker in report["text"]]
    assert not raw, f"raw MyST markup in the rendered exercise: {raw}: {report['text'][:300]!r}"
    assert report["maths"] > 0, "the exercise's maths is not typeset"
    assert report["solutionDropdown"] and report["solutionOpen"] is False, \
        "the solution opener is not a collapsed dropdown"


def test_widget_cell_shows_controls_when_trusted_and_says_to_run_it_otherwise(lab):
    driver, notebooks, _, _, _ = lab
    seen = _lab_js(driver, """
        const out = {};
        for (const path of args[0]) {
          const panel = panelOf(path) || await openNotebook(path);
          const cell = await showCell(panel, findCell(panel, isWidgetCell));
          await waitFor(() => cell.node.querySelector('.jp-OutputArea-output .widget-slider, .jp-OutputArea-output pre'), 20000);
          await sleep(500);
          const area = cell.node.querySelector('.jp-OutputArea');
          out[path] = {sliders: cell.node.querySelectorAll('.jp-OutputArea .widget-slider').length,
                       text: area ? area.innerText : ''};
        }
        return out;""", [notebooks["untrusted"], notebooks["trusted"]])
    untrusted, trusted = seen[notebooks["untrusted"]], seen[notebooks["trusted"]]
    assert "children=" not in untrusted["text"], f"widget placeholder shown: {untrusted['text'][:200]!r}"
    assert "run this cell" in untrusted["text"], f"untrusted widget cell: {untrusted['text'][:200]!r}"
    assert trusted["sliders"] > 0, (
        f"the trusted notebook's widget cell shows no controls from the stored state: {trusted['text'][:200]!r}")


def test_no_news_popup_no_nbgrader_and_a_quiet_server(lab):
    driver, notebooks, log_path, _, opening = lab
    page = _lab_js(driver, """
        await sleep(1000);
        return {menus: Array.from(document.querySelectorAll('.lm-MenuBar-itemLabel')).map(m => m.textContent),
                toasts: Array.from(document.querySelectorAll('.Toastify__toast')).map(t => t.innerText)};""")
    assert not [t for t in page["toasts"] if "news" in t.lower()], f"news pop-up shown: {page['toasts']}"
    assert "Nbgrader" not in page["menus"], f"learners see nbgrader's menu: {page['menus']}"
    assert "Kernel" in page["menus"], f"JupyterLab's menu bar did not load: {page['menus']}"
    log = log_path.read_text()
    assert not re.search(r"nbgrader", log, re.IGNORECASE), \
        "nbgrader's server extensions are loaded for learners:\n" + "\n".join(
            line for line in log.splitlines() if "nbgrader" in line.lower())
    errors = [line for line in log.splitlines() if re.match(r"\[(E|C) ", line) or "Traceback" in line]
    assert not errors, "the JupyterLab server logged errors:\n" + "\n".join(errors)
    severe = [m for m in opening if m.startswith("SEVERE")]
    assert not severe, f"JupyterLab's browser console reported errors while the notebooks opened: {severe}"


def test_every_committed_notebook_is_normalized_for_jupyterlab():
    """What the browser tests check on one chapter holds for all: kernelspec as JupyterLab writes it,
    widget placeholders replaced (scripts/normalize_notebooks.py; execute_notebooks.sh runs it)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from normalize_notebooks import normalize
    finally:
        sys.path.pop(0)
    import nbformat

    pending = {path.name: changes for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
               if (changes := normalize(nbformat.read(path, as_version=4)))}
    assert not pending, f"run `python scripts/normalize_notebooks.py`: {pending}"
