"""For the exercise tests: run `ssm-tutor check` on a notebook's own exercise cells, each solution
with one typical mistake planted, and check that every exercise FAILs with that mistake's hint."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import nbformat

from ssm_tutor import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def assert_check_fails_each_mistake(tmp_path, notebook: str, mistakes: dict, setup_cells=lambda code: code[:1]):
    """mistakes: {grade id of a solution cell: (text of the right answer, the mistake, hint expected)},
    in the notebook's order. setup_cells(code cells) -> the cells the exercises need (default: the
    first code cell, the imports). The notebook's other cells are left out."""
    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    keep = list(setup_cells([c for c in nb.cells if c.cell_type == "code"]))
    ids = []
    for i, cell in enumerate(nb.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id in mistakes:
            right, wrong, _ = mistakes[grade_id]
            assert right in cell.source, f"{grade_id}: the notebook's solution changed; update the mistakes"
            mistaken = nbformat.from_dict(dict(cell, source=cell.source.replace(right, wrong)))
            keep += [nb.cells[i - 2], nb.cells[i - 1], mistaken, nb.cells[i + 1], nb.cells[i + 2]]
            ids += cli.CHECK_CALL.findall(nb.cells[i + 2].source)
    assert len(ids) == len(mistakes), ids
    nb.cells = keep
    path = tmp_path / f"mistakes_{notebook}"
    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "ssm_tutor.cli", "check", str(path)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    for ex_id, (_, _, hint) in zip(ids, mistakes.values()):
        line = next((l for l in done.stdout.splitlines() if f"Exercise {ex_id} [FAIL]" in l), None)
        assert line is not None and hint in line, done.stdout
    assert f"0 passed, {len(mistakes)} failed, 0 not attempted, 0 other errors" in done.stdout, done.stdout

