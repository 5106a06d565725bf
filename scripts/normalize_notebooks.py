#!/usr/bin/env python
"""Make the committed notebooks open cleanly in JupyterLab. Re-runnable; changes only what differs.

    python scripts/normalize_notebooks.py                  # every notebooks/NN_*.ipynb, in place
    python scripts/normalize_notebooks.py notebooks/04_selection.ipynb
    python scripts/normalize_notebooks.py --check          # exit 1 and list what would change

`scripts/execute_notebooks.sh` runs it after executing, so re-executed notebooks are normalized.
Two things, each one found by opening the notebooks in JupyterLab 4 in a browser:

1. **"Unsaved changes" as soon as a notebook opens.** When JupyterLab connects a kernel it writes
   that kernel's spec into `metadata.kernelspec`; the notebooks said `"display_name": "Python 3"`
   where ipykernel's kernel is "Python 3 (ipykernel)", so every notebook was modified on opening.
   The kernelspec is set to the one ipykernel installs (name `python3`). (`language_info` is
   rewritten the same way from the running kernel; it matches when the learner's Python has the
   version the notebook was executed with.)
2. **A widget cell showing `VBox(children=(HBox(…` instead of its controls.** JupyterLab draws
   the stored widget state only in a *trusted* notebook (one the learner executed or ran
   `jupyter trust` on, as the README's set-up does); elsewhere it shows the output's text/plain.
   That text is replaced by a sentence saying to run the cell. Only in cells marked
   `# NBVAL_IGNORE_OUTPUT` (all widget cells are): nbval compares the text/plain of other cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_PLACEHOLDER = ("Interactive controls: run this cell (Shift+Enter) to show them and use them "
                      "(they need the running kernel).")


def normalize(nb) -> list[str]:
    """Normalize one notebook in place; return what was changed, in words."""
    changes = []
    if nb.metadata.get("kernelspec") != KERNELSPEC:
        changes.append(f"kernelspec {nb.metadata.get('kernelspec')} -> {KERNELSPEC}")
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.lstrip().startswith("# NBVAL_IGNORE_OUTPUT"):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and data.get("text/plain") != WIDGET_PLACEHOLDER:
                changes.append(f"cell {index}: widget output's text/plain -> the run-this-cell sentence")
                data["text/plain"] = WIDGET_PLACEHOLDER
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to normalize (default: notebooks/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a notebook would change")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    pending = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        changes = normalize(nb)
        if not changes:
            continue
        pending += 1
        print(f"{path}: " + "; ".join(changes))
        if not args.check:
            nbformat.write(nb, path)
    if args.check and pending:
        print(f"{pending} notebook(s) need `python scripts/normalize_notebooks.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
