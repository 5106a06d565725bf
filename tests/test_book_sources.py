"""The book reads its own pages and nothing else, whatever else lies in the repository.

The book's root is the repository root, so Sphinx walks everything below it. The README's set-up
makes a virtual environment in `.venv/`, whose `huggingface_hub/templates/*.md` Sphinx cannot parse
(their front matter is a Jinja placeholder): reading one crashed `jupyter-book build .`. Student
copies (`student/`), training runs (`runs/`) and build outputs (`_build/`, `build/`) would be read
too, or slow the build down.

This test lays out a copy of the repository's book (links to `_config.yml`, `_toc.yml`, `book/`,
`notebooks/`) next to such folders, including a `.venv/` holding the real huggingface_hub template,
starts Sphinx with the configuration `jupyter-book build .` makes from `_config.yml`, and runs its
source discovery: the documents found must be exactly the pages `_toc.yml` lists. It does not parse
or write any page, so it takes a few seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# what a Jupyter Book source discovery must never pick up: path -> text of the file planted there
BROKEN_FRONT_MATTER = "---\n{{ card_data }}\n---\n\n# {{ model_id | default('Model ID', true) }}\n"
PLANTED = {
    ".venv/lib/python3.11/site-packages/huggingface_hub/templates/modelcard_template.md": None,
    ".venv/lib/python3.11/site-packages/somepkg/README.rst": "Title\n=====\n\n.. broken::\n",
    "venv/lib/python3.11/site-packages/huggingface_hub/templates/datasetcard_template.md": BROKEN_FRONT_MATTER,
    "env/share/doc/notes.md": BROKEN_FRONT_MATTER,
    "student/01_continuous_ssm.ipynb": "notebook",
    "runs/sc_mamba/notes.md": BROKEN_FRONT_MATTER,
    "_build/html/_sources/book/intro.md": BROKEN_FRONT_MATTER,
    "build/book-assets/package/README.md": BROKEN_FRONT_MATTER,
    "notebooks/.ipynb_checkpoints/01_continuous_ssm-checkpoint.ipynb": "notebook",
    "ssm_tutor.egg-info/README.md": BROKEN_FRONT_MATTER,
}
# Sphinx and Jupyter Book leave these out whatever _config.yml says
SPHINX_SKIPS_ITSELF = ("_build/html/_sources/", "notebooks/.ipynb_checkpoints/")


def _toc_docnames() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = {toc["root"]}
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            names.add(chapter["file"])
            names.update(section["file"] for section in chapter.get("sections", []))
    return {str(Path(name).with_suffix("")) for name in names}


def _plant(tree: Path) -> None:
    """The folders a learner's or an instructor's checkout really has, with unreadable pages in them."""
    notebook = (ROOT / "notebooks" / "01_continuous_ssm.ipynb").read_text()
    try:  # the very template that crashed the build, when huggingface_hub is installed
        import huggingface_hub
        template = (Path(huggingface_hub.__file__).parent / "templates" / "modelcard_template.md").read_text()
    except (ImportError, OSError):
        template = BROKEN_FRONT_MATTER
    for relative, text in PLANTED.items():
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(notebook if text == "notebook" else text if text is not None else template)


@pytest.fixture(scope="module")
def book_tree(tmp_path_factory) -> Path:
    """A repository-like tree: the real book's files, linked, plus the planted folders."""
    tree = tmp_path_factory.mktemp("repo")
    for name in ("_config.yml", "_toc.yml", "book"):
        (tree / name).symlink_to(ROOT / name)
    (tree / "notebooks").mkdir()        # a real folder, so the checkpoint folder can be planted inside
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        (tree / "notebooks" / notebook.name).symlink_to(notebook)
    _plant(tree)
    return tree


def _discover(tree: Path, tmp_path: Path, **overrides) -> set[str]:
    """Sphinx's source discovery under the configuration `jupyter-book build` makes from _config.yml."""
    from jupyter_book.config import get_final_config
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace, patch_docutils

    config, _ = get_final_config(user_yaml=tree / "_config.yml", sourcedir=tree,
                                 cli_config={"latex_individualpages": False})   # as the CLI passes
    # the offline-assets step fetches MathJax; not what is checked here (and no network in tests)
    config["extensions"] = [ext for ext in config["extensions"] if ext != "offline_assets"]
    config.update(overrides)
    with patch_docutils(tree), docutils_namespace():
        app = Sphinx(srcdir=tree, confdir=None, outdir=tmp_path / "html", doctreedir=tmp_path / "doctrees",
                     buildername="html", confoverrides=config, status=None, warning=None, freshenv=True)
        app.env.find_files(app.config, app.builder)
        return set(app.env.found_docs)


def test_the_planted_pages_are_where_sphinx_would_read_them(book_tree, tmp_path):
    """Without the book's exclusions the planted files are found: the next test can fail."""
    found = _discover(book_tree, tmp_path, exclude_patterns=[], include_patterns=["**"],
                      external_toc_exclude_missing=False)
    planted = {str(Path(p).with_suffix("")) for p in PLANTED if not p.startswith(SPHINX_SKIPS_ITSELF)}
    assert planted <= found, f"not discovered even without exclusions: {sorted(planted - found)}"


def test_book_sources_are_exactly_the_toc_pages_with_a_venv_in_the_tree(book_tree, tmp_path):
    found = _discover(book_tree, tmp_path)
    expected = _toc_docnames()
    assert found == expected, (
        f"the book would read files that are not its pages: {sorted(found - expected)}; "
        f"pages of _toc.yml it would miss: {sorted(expected - found)} "
        f"(see exclude_patterns and sphinx.config.include_patterns in _config.yml)")
