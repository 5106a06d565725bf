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

The grade cells (``check_exercise("04.1", fn)``) are kept as they are. ``student`` never writes
onto an input notebook or through a symbolic link: ``--out`` must not be a link nor an input's
directory (links in its parents followed), an existing file there that is a link (or a hard link
to an input) is refused, and each copy is written to a new file and renamed into place.

``check`` executes a notebook in a fresh kernel (nbclient, errors allowed so that every
exercise is reached) and prints, per exercise, the checker's line::

    Exercise 04.1 [PASS] discretise Δ per channel: matches the reference on 4 cases

The result does not come from what the notebook prints (a cell can print anything): the kernel
is started with ``SSM_TUTOR_RESULTS`` naming a file in a private temporary directory, the real
``check_exercise`` appends a JSON record to it per result, and after each cell the command reads
the new records and credits them to that cell. A grade cell passes only with a PASS record of
its own; one without any record (``check_exercise`` redefined, the cell edited) FAILs. Each check
has a time limit (``--time-limit``), so an answer that loops forever FAILs instead of hanging.

Exit status: 0 when no exercise fails (exercises still ``NOT ATTEMPTED`` do not count as
failures, so a fresh student copy checks clean; pass ``--require-all`` to count them as
failures, e.g. when grading a submission); 1 when an exercise fails, a grade cell does not
report, or a cell outside the exercises raises; 2 for bad arguments (missing path, not a
notebook, nothing to do).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.utils import is_solution as is_solution_cell

from ssm_tutor.exercises import (FAIL, NOT_ATTEMPTED, PASS, RESULTS_ENV, TIME_LIMIT, TIME_LIMIT_ENV,
                                 ExerciseResult)
from ssm_tutor.validate import positive_float_arg, positive_int_arg

__all__ = ["make_student_copy", "write_student_copies", "execute_notebook", "execute_and_record",
           "collect_results", "printed_results", "CheckerRecord", "NotebookReport", "main"]

#: the line ``check_exercise`` prints (``ExerciseResult.__str__`` in ``ssm_tutor.exercises``);
#: read only from stored outputs (:func:`printed_results`), never to decide a result
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


def _student_targets(paths: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, target) pairs, after checking that no target is an input notebook, a symbolic link,
    or a hard link to an input, and that ``out_dir`` is not a link nor (once every link in its
    parents is followed) the directory of an input. Raises UsageError naming the path; nothing
    has been written yet."""
    if out_dir.is_symlink():
        raise UsageError(f"--out {out_dir}: is a symbolic link (to {os.readlink(out_dir)}); refusing to "
                         f"write through it: give the directory it points to, if that is what you mean")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory")
    real_out = out_dir.resolve()                     # follows links in the parents too
    by_name: dict[str, Path] = {}
    for p in paths:
        home = p.resolve().parent
        if real_out == home:
            raise UsageError(f"--out {out_dir}: is the directory of the input {p}; refusing to overwrite "
                             f"the instructor notebooks: choose another directory (a subdirectory is fine)")
        if p.name in by_name and by_name[p.name].resolve() != p.resolve():
            raise UsageError(f"two inputs are named {p.name} ({by_name[p.name]} and {p}): "
                             f"their student copies would overwrite each other in {out_dir}")
        by_name.setdefault(p.name, p)
    pairs = []
    for name, p in by_name.items():
        target = out_dir / name
        if target.is_symlink():
            raise UsageError(f"{target}: is a symbolic link (to {os.readlink(target)}); refusing to write "
                             f"through it: remove it first")
        if target.exists():
            if not target.is_file():
                raise UsageError(f"{target}: exists and is not a file")
            twin = next((q for q in paths if os.path.samefile(target, q)), None)
            if twin is not None:
                raise UsageError(f"{target}: is the same file as the input {twin} (a hard link); "
                                 f"refusing to overwrite an instructor notebook: remove it first")
        pairs.append((p, target))
    return pairs


def _write_new_file(nb, target: Path) -> None:
    """Write ``nb`` to a new file beside ``target`` and rename it over ``target``: the rename
    replaces the directory entry, so nothing is ever written through a link planted there."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:   # "x": fails rather than follow anything there
            nbformat.write(nb, f)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_student_copies(inputs: list[str], out: str) -> list[Path]:
    """Write the student copy of each notebook in ``inputs`` (files or directories) to ``out``.

    Never writes onto an input notebook or through a symbolic link, whatever ``out`` holds:
    every target is checked (and every copy made) before the first file is written.
    """
    out_dir = Path(out)
    pairs = _student_targets(notebook_paths(inputs), out_dir)
    copies = []
    for p, target in pairs:
        try:
            copies.append((make_student_copy(read_notebook(p)), target))
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"{p}: {err}") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    for student, target in copies:
        _write_new_file(student, target)
    return [target for _, target in copies]


# --------------------------------------------------------------------------- checking
@dataclass
class ExerciseLine:
    id: str
    status: str
    line: str          # the checker's whole line


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


@dataclass
class CheckerRecord:
    """One result written by the real ``check_exercise`` to the private results file, with the
    index of the notebook cell that was running when it was written (None: after the last cell)."""
    cell: int | None
    id: str
    status: str
    line: str


def execute_notebook(nb, cwd: Path, timeout: int = 600, env: dict | None = None, on_cell_executed=None,
                     on_cell_start=None):
    """Execute ``nb`` in place, in a fresh kernel started in ``cwd`` (with environment ``env``,
    default: this process's); cell errors are recorded in the outputs, not raised.
    ``on_cell_start(cell=, cell_index=)`` is called before each code cell,
    ``on_cell_executed(cell=, cell_index=, execute_reply=)`` after it."""
    from nbclient import NotebookClient

    os.environ.setdefault("MPLBACKEND", "Agg")
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}}, on_cell_executed=on_cell_executed,
                            on_cell_start=on_cell_start)
    client.execute(**({"env": env} if env is not None else {}))
    return nb


def _read_records(f, cell: int | None) -> list[CheckerRecord]:
    """The records appended to the open results file ``f`` since the last read."""
    records = []
    for text in f.read().splitlines():
        try:
            result = ExerciseResult(**json.loads(text))
        except (ValueError, TypeError):
            continue   # not a whole record as check_exercise writes them
        if result.status in (PASS, FAIL, NOT_ATTEMPTED):
            records.append(CheckerRecord(cell, str(result.id), result.status, str(result)))
    return records


def execute_and_record(nb, cwd: Path, timeout: int = 600, env: dict | None = None,
                       time_limit: float | None = None, on_cell_start=None) -> tuple[list[CheckerRecord], str | None]:
    """Execute ``nb`` in place (see :func:`execute_notebook`) with the checker's results channel open.

    The kernel is started with ``SSM_TUTOR_RESULTS`` naming a fresh file in a private temporary
    directory; the real ``check_exercise`` appends one JSON record per result to it. After each
    cell the new records are read and tagged with that cell's index, so a record counts only for
    the cell that made it. Printed text never reaches the file. ``time_limit``: seconds allowed
    per ``check_exercise`` call (``SSM_TUTOR_TIME_LIMIT``); ``on_cell_start``: see
    :func:`execute_notebook`. Returns (records, why execution stopped early or None).
    """
    env = dict(os.environ if env is None else env)
    env.pop(TIME_LIMIT_ENV, None)
    if time_limit is not None:
        env[TIME_LIMIT_ENV] = repr(float(time_limit))
    records: list[CheckerRecord] = []
    stopped = None
    with tempfile.TemporaryDirectory(prefix="ssm-tutor-check-") as private:   # mode 0700
        path = Path(private) / f"results-{secrets.token_hex(8)}.jsonl"
        path.touch(mode=0o600)
        env[RESULTS_ENV] = str(path)
        with open(path, encoding="utf-8") as f:
            def after_cell(cell, cell_index, execute_reply=None):
                records.extend(_read_records(f, cell_index))

            try:
                execute_notebook(nb, cwd, timeout, env, on_cell_executed=after_cell, on_cell_start=on_cell_start)
            except Exception as err:  # the kernel died, a cell timed out, no such kernel…
                last_line = (str(err).strip().splitlines() or [""])[-1]
                stopped = f"execution stopped: {type(err).__name__}: {last_line}"
            records.extend(_read_records(f, None))
    return records, stopped


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


def _report(nb, path: str, results_of) -> NotebookReport:
    """The report of an executed notebook; ``results_of(i, cell, text)`` gives the
    ExerciseLines of code cell i (its id, status and line, once per id)."""
    report = NotebookReport(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        text, errors = _cell_text(cell)
        expected = list(dict.fromkeys(CHECK_CALL.findall(cell.source)))
        found = results_of(i, cell, text, expected)
        report.exercises.extend(found)
        missing = [ex_id for ex_id in expected if ex_id not in {f.id for f in found}]
        for ex_id in missing:  # the grade cell crashed before the checker could report
            why = f"{errors[0][0]}: {errors[0][1]}" if errors else \
                "ssm_tutor's checker recorded no result (was check_exercise redefined, or not called?)"
            report.exercises.append(ExerciseLine(ex_id, FAIL, f"Exercise {ex_id} [FAIL] {why}"))
        if errors and not expected and not found:
            ename, evalue = errors[0]
            if is_solution_cell(cell) and ename == "NotImplementedError":
                continue  # a stub at top level: reported as NOT ATTEMPTED by its grade cell
            first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            report.problems.append(f"cell {i} ({first_line[:60]!r}) raised {ename}: {evalue}")
    return report


def collect_results(nb, records: list[CheckerRecord], path: str = "") -> NotebookReport:
    """The report of a notebook executed by :func:`execute_and_record`, from the checker's records.

    A grade cell (one that calls ``check_exercise("ID", …)``) gets, per ID it names, the records
    for that ID written while it ran: PASS only if every one of them passed, else the first that
    did not. A grade cell with no record FAILs. What cells print is not read: a cell that prints
    "Exercise 04.1 [PASS]" or defines its own ``check_exercise`` makes nothing pass.
    """
    def results_of(i, cell, text, expected):
        found = []
        for ex_id in expected:
            mine = [r for r in records if r.cell == i and r.id == ex_id]
            if mine:
                worst = next((r for r in mine if r.status != PASS), mine[0])
                found.append(ExerciseLine(ex_id, worst.status, worst.line))
        return found

    return _report(nb, path, results_of)


def printed_results(nb, path: str = "") -> NotebookReport:
    """A report from the lines an executed notebook *printed* (its stored outputs), for reading
    committed notebooks and nbgrader's output. Anything can print such a line, so this is not
    evidence that an exercise passes: ``ssm-tutor check`` uses :func:`collect_results`."""
    def results_of(i, cell, text, expected):
        found: list[ExerciseLine] = []
        for m in RESULT_LINE.finditer(text):  # once per exercise (under nbgrader the line is
            if m["id"] not in {f.id for f in found}:  # printed and raised)
                found.append(ExerciseLine(m["id"], m["status"], m.group(0)))
        return found

    return _report(nb, path, results_of)


def check_notebooks(inputs: list[str], timeout: int, require_all: bool, out=sys.stdout,
                    time_limit: float | None = None) -> int:
    paths = notebook_paths(inputs)
    status = 0
    for p in paths:
        nb = read_notebook(p)
        print(f"{p}", file=out, flush=True)
        records, stopped = execute_and_record(nb, p.resolve().parent, timeout, time_limit=time_limit)
        report = collect_results(nb, records, str(p))
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
    check.add_argument("--timeout", type=positive_int_arg, default=600, help="seconds allowed per cell (default 600)")
    check.add_argument("--time-limit", type=positive_float_arg, default=TIME_LIMIT,
                       help=f"seconds allowed per exercise check, all its cases together (default {TIME_LIMIT:g}); "
                            f"an answer still running then is stopped and FAILs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "student":
            for target in write_student_copies(args.inputs, args.out):
                print(f"wrote {target}")
            return 0
        return check_notebooks(args.inputs, args.timeout, args.require_all, time_limit=args.time_limit)
    except UsageError as err:
        print(f"ssm-tutor {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
