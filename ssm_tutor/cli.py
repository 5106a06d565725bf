"""``ssm-tutor``: student copies of the course notebooks, and a checker for them.

Two commands, both built on nbgrader's and nbclient's machinery::

    ssm-tutor student notebooks/ --out student/     # write student copies
    ssm-tutor check student/04_selection.ipynb      # run a notebook, report each exercise

``student`` keeps every cell a learner needs and takes out the answers. Per notebook it

1. drops the solution prose: every cell between a ``{solution-start}`` and its
   ``{solution-end}`` marker (the markers too), except the nbgrader solution cell itself,
   and any ungated ``{solution}`` directive;
2. replaces each ``### BEGIN SOLUTION`` … ``### END SOLUTION`` region with
   ``raise NotImplementedError()`` (nbgrader's ``ClearSolutions``);
3. clears outputs, execution counts and stored widget state (nbgrader's ``ClearOutput``);
4. marks grade cells read-only and solution cells undeletable (nbgrader's ``LockCells``).

The grade cells (``check_exercise("04.1", fn)``) are kept as they are.

``check`` executes a notebook in a fresh kernel (nbclient, errors allowed so that every
exercise is reached) and prints, per exercise, the checker's line::

    Exercise 04.1 [PASS] discretise Δ per channel: matches the reference on 4 cases

Exit status: 0 when no exercise fails (exercises still ``NOT ATTEMPTED`` do not count as
failures, so a fresh student copy checks clean; pass ``--require-all`` to count them as
failures, e.g. when grading a submission); 1 when an exercise fails, a grade cell does not
report, or a cell outside the exercises raises; 2 for bad arguments (missing path, not a
notebook, nothing to do).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.utils import is_solution as is_solution_cell

from ssm_tutor.exercises import FAIL, NOT_ATTEMPTED, PASS

__all__ = ["make_student_copy", "write_student_copies", "execute_notebook", "collect_results",
           "NotebookReport", "main"]

#: the line ``check_exercise`` prints (``ExerciseResult.__str__`` in ``ssm_tutor.exercises``)
RESULT_LINE = re.compile(rf"^Exercise (?P<id>\S+) \[(?P<status>{PASS}|{FAIL}|{NOT_ATTEMPTED})\] (?P<rest>.*)$",
                         re.MULTILINE)
CHECK_CALL = re.compile(r"check_exercise\(\s*[\"'](?P<id>[^\"']+)[\"']")
SOLUTION_START = re.compile(r"^\s*(```+|:::+)\s*\{solution-start\}", re.MULTILINE)
SOLUTION_END = re.compile(r"^\s*(```+|:::+)\s*\{solution-end\}", re.MULTILINE)
SOLUTION_DIRECTIVE = re.compile(r"^\s*(```+|:::+)\s*\{solution\}", re.MULTILINE)
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"


class UsageError(Exception):
    """A bad argument: reported on stderr with exit status 2."""


# --------------------------------------------------------------------------- helpers
def read_notebook(path: Path):
    """Read ``path`` as a notebook, or raise UsageError saying what is wrong with it."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; expected a notebook (.ipynb)")
    if path.suffix != ".ipynb":
        raise UsageError(f"{path}: expected a notebook ending in .ipynb, got {path.suffix or 'no suffix'!r}")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # JSON or schema errors
        raise UsageError(f"{path}: not a readable notebook ({type(err).__name__}: {err})") from err


def notebook_paths(inputs: list[str]) -> list[Path]:
    """Expand directories into their notebooks (sorted, not recursive, no checkpoints)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.ipynb") if not q.name.startswith("."))
            if not found:
                raise UsageError(f"{p}: directory contains no notebooks (*.ipynb)")
            paths.extend(found)
        else:
            read_notebook(p)  # raises a clear error for a missing / wrong file
            paths.append(p)
    if not paths:
        raise UsageError("no notebooks given")
    return paths


# --------------------------------------------------------------------------- student copies
def _drop_solution_prose(nb) -> None:
    """Remove the gated solution markers and any cell between them except the nbgrader
    solution cell (its answer is stubbed later), and ungated ``{solution}`` directives."""
    kept, inside = [], False
    for i, cell in enumerate(nb.cells):
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if cell.cell_type == "markdown" and SOLUTION_START.search(source):
            if inside:
                raise ValueError(f"cell {i}: {{solution-start}} inside another solution block")
            inside = True
            continue
        if cell.cell_type == "markdown" and SOLUTION_END.search(source):
            if not inside:
                raise ValueError(f"cell {i}: {{solution-end}} without a {{solution-start}} before it")
            inside = False
            continue
        if cell.cell_type == "markdown" and SOLUTION_DIRECTIVE.search(source):
            continue
        if inside and not is_solution_cell(cell):
            continue  # solution prose or a worked-solution cell
        kept.append(cell)
    if inside:
        raise ValueError("a {solution-start} block is never closed by {solution-end}")
    nb.cells = kept


def make_student_copy(nb):
    """Return the student copy of the notebook ``nb`` (``nb`` itself is not changed)."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions, LockCells

    nb = copy.deepcopy(nb)
    _drop_solution_prose(nb)
    resources: dict = {}
    clear_output = ClearOutput(remove_metadata_fields={"collapsed", "scrolled", "execution", "ExecuteTime"})
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), clear_output, LockCells()):
        nb, resources = preprocessor.preprocess(nb, resources)
    nb.metadata.pop("widgets", None)  # stored widget state belongs to the executed copy
    for i, cell in enumerate(nb.cells):
        if BEGIN_SOLUTION in cell.source or END_SOLUTION in cell.source:
            raise ValueError(f"cell {i}: a solution marker survived; is it in a cell without "
                             f"nbgrader solution metadata?")
    return nb


def write_student_copies(inputs: list[str], out: str) -> list[Path]:
    """Write the student copy of each notebook in ``inputs`` (files or directories) to ``out``."""
    paths = notebook_paths(inputs)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory")
    for p in paths:
        if p.resolve().parent == out_dir.resolve():
            raise UsageError(f"--out {out_dir}: is the directory of {p}; "
                             f"refusing to overwrite the instructor notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        try:
            student = make_student_copy(read_notebook(p))
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"{p}: {err}") from err
        target = out_dir / p.name
        nbformat.write(student, target)
        written.append(target)
    return written


# --------------------------------------------------------------------------- checking
@dataclass
class ExerciseLine:
    id: str
    status: str
    line: str          # the checker's whole line, as printed


@dataclass
class NotebookReport:
    path: str
    exercises: list[ExerciseLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # errors outside the exercises

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.exercises)

    def failed(self, require_all: bool = False) -> bool:
        return bool(self.problems or self.count(FAIL)
                    or (require_all and self.count(NOT_ATTEMPTED)))


def execute_notebook(nb, cwd: Path, timeout: int = 600, env: dict | None = None):
    """Execute ``nb`` in place, in a fresh kernel started in ``cwd`` (with environment ``env``,
    default: this process's); cell errors are recorded in the outputs, not raised."""
    from nbclient import NotebookClient

    os.environ.setdefault("MPLBACKEND", "Agg")
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(**({"env": env} if env is not None else {}))
    return nb


def _cell_text(cell) -> tuple[str, list[tuple[str, str]]]:
    """(all stream text, [(ename, evalue), …]) of a code cell's outputs."""
    text, errors = [], []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            text.append(out.text)
        elif out.output_type == "error":
            errors.append((out.ename, out.evalue))
            text.append(out.evalue)   # a checker run in strict mode raises with its line
    return "".join(text), errors


def collect_results(nb, path: str = "") -> NotebookReport:
    """Read the checker's lines back from an executed notebook."""
    report = NotebookReport(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        text, errors = _cell_text(cell)
        found: list[ExerciseLine] = []
        for m in RESULT_LINE.finditer(text):  # once per exercise (under nbgrader the line is
            if m["id"] not in {f.id for f in found}:  # printed and raised)
                found.append(ExerciseLine(m["id"], m["status"], m.group(0)))
        report.exercises.extend(found)
        expected = CHECK_CALL.findall(cell.source)
        missing = [ex_id for ex_id in expected if ex_id not in {f.id for f in found}]
        for ex_id in missing:  # the grade cell crashed before the checker could report
            why = f"{errors[0][0]}: {errors[0][1]}" if errors else "no result line printed"
            report.exercises.append(ExerciseLine(ex_id, FAIL, f"Exercise {ex_id} [FAIL] {why}"))
        if errors and not expected and not found:
            ename, evalue = errors[0]
            if is_solution_cell(cell) and ename == "NotImplementedError":
                continue  # a stub at top level: reported as NOT ATTEMPTED by its grade cell
            first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            report.problems.append(f"cell {i} ({first_line[:60]!r}) raised {ename}: {evalue}")
    return report


def check_notebooks(inputs: list[str], timeout: int, require_all: bool, out=sys.stdout) -> int:
    paths = notebook_paths(inputs)
    status = 0
    for p in paths:
        nb = read_notebook(p)
        print(f"{p}", file=out, flush=True)
        stopped = None
        try:
            execute_notebook(nb, p.resolve().parent, timeout)
        except Exception as err:  # the kernel died, a cell timed out, no such kernel…
            last_line = (str(err).strip().splitlines() or [""])[-1]
            stopped = f"execution stopped: {type(err).__name__}: {last_line}"
        report = collect_results(nb, str(p))
        if stopped:
            report.problems.append(stopped)
        for e in report.exercises:
            print(f"  {e.line}", file=out)
        for problem in report.problems:
            print(f"  ERROR {problem}", file=out)
        if not report.exercises:
            print("  (no exercises found in this notebook)", file=out)
        print(f"  {report.count(PASS)} passed, {report.count(FAIL)} failed, "
              f"{report.count(NOT_ATTEMPTED)} not attempted, {len(report.problems)} other errors",
              file=out, flush=True)
        if report.failed(require_all):
            status = 1
    return status


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssm-tutor", description="Student copies of the ssm-tutor notebooks, and a checker.")
    sub = parser.add_subparsers(dest="command", required=True)

    student = sub.add_parser("student", help="write student copies (solutions stubbed, outputs cleared)")
    student.add_argument("inputs", nargs="+", help="notebooks, or directories of notebooks")
    student.add_argument("--out", default="student", help="output directory (default: student/)")

    check = sub.add_parser("check", help="execute notebooks and report each exercise",
                           description="Exit status: 0 if no exercise fails, 1 if one fails or a "
                                       "cell outside the exercises raises, 2 for bad arguments.")
    check.add_argument("inputs", nargs="+", help="notebooks, or directories of notebooks")
    check.add_argument("--require-all", action="store_true",
                       help="count NOT ATTEMPTED exercises as failures (exit status 1)")
    check.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "student":
            for target in write_student_copies(args.inputs, args.out):
                print(f"wrote {target}")
            return 0
        return check_notebooks(args.inputs, args.timeout, args.require_all)
    except UsageError as err:
        print(f"ssm-tutor {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
