"""Specification of the ``ssm-tutor`` command: student copies and the exercise checker.

Two kinds of test:

* on a small synthetic notebook written here (same exercise layout as the course): what a
  student copy keeps and drops, what ``ssm-tutor check`` prints and its exit status, and the
  errors for bad paths — end to end through the installed command;
* on every notebook of the course: its exercises follow the layout, the student copy holds no
  solution code, the committed outputs show every exercise passing, and — in one execution per
  notebook — the student copy runs to the end with every exercise NOT ATTEMPTED while the
  instructor's solutions PASS.

Execution cost: running the student copy and the instructor copy separately would execute each
notebook twice. Instead each notebook is executed once as a *combined* notebook: the student copy,
with each exercise's instructor solution cell and its check inserted just before the stub cell.
So each exercise is checked first with the solution (must PASS) and then with the stub (must be
NOT ATTEMPTED), and every later cell runs with the stub in place, exactly as in the student copy.
The notebooks are executed two at a time (the CI box has 2 cores), each kernel single-threaded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from nbgrader.utils import is_grade
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ssm_tutor import cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)\n\s*### END SOLUTION", re.DOTALL)


# --------------------------------------------------------------------------- a synthetic notebook
def _solution_meta(grade_id):
    return {"nbgrader": {"grade": False, "grade_id": grade_id, "locked": False,
                         "schema_version": 3, "solution": True, "task": False}}


def _grade_meta(grade_id):
    return {"nbgrader": {"grade": True, "grade_id": grade_id, "locked": True, "points": 1,
                         "schema_version": 3, "solution": False, "task": False}}


def _exercise(ex_id: str, name: str, body: str, prose: str | None = None):
    """The five cells of the brief's exercise layout (plus, optionally, solution prose)."""
    cc, n = ex_id.split(".")
    cells = [
        new_markdown_cell(f"```{{exercise}} Write {name}\n:label: ex-{cc}-{n}\n\n"
                          f"Write `{name}(x)`.\n```"),
        new_markdown_cell(f"```{{solution-start}} ex-{cc}-{n}\n:class: dropdown\n```"),
    ]
    if prose:
        cells.append(new_markdown_cell(prose))
    cells += [
        new_code_cell(f"def {name}(x):\n    \"\"\"The answer.\"\"\"\n    ### BEGIN SOLUTION\n"
                      f"    {body}\n    ### END SOLUTION",
                      metadata=_solution_meta(f"ex{cc}-{n}-solution")),
        new_markdown_cell("```{solution-end}\n```"),
        new_code_cell(f'check_exercise("{ex_id}", {name})', metadata=_grade_meta(f"ex{cc}-{n}-check")),
    ]
    return cells


def synthetic_notebook(*, wrong_answer: bool = False, broken_cell: bool = False):
    """Exercises 97.1 (x²) and 97.2 (x + 1), registered inside the notebook itself."""
    cells = [
        new_markdown_cell("# A synthetic chapter\n\n$x_k = \\bar A x_{k-1}$"),
        new_code_cell("import torch\nfrom ssm_tutor.exercises import exercise, check_exercise\n\n"
                      "@exercise('97.1', 'square')\ndef _square_cases():\n"
                      "    x = torch.arange(4.0)\n    yield ('four values', (x,), {}, x * x)\n\n"
                      "@exercise('97.2', 'add one')\ndef _add_one_cases():\n"
                      "    x = torch.arange(3.0)\n    yield ('three values', (x,), {}, x + 1)"),
        *_exercise("97.1", "square", "return x * x",
                   prose="Multiplying `x` by itself squares it elementwise: SECRET-PROSE."),
        *_exercise("97.2", "add_one", "return x + 2" if wrong_answer else "return x + 1"),
        new_code_cell("raise ValueError('a cell outside the exercises broke')" if broken_cell
                      else "print('the end')"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def run_cli(*args, cwd=ROOT):
    """Run the installed command line (``python -m ssm_tutor.cli``, as the entry point does)."""
    return subprocess.run([sys.executable, "-m", "ssm_tutor.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- student copies
def test_student_copy_stubs_the_solution_and_drops_its_prose():
    student = cli.make_student_copy(synthetic_notebook())
    text = json.dumps(student)
    assert "return x * x" not in text and "return x + 1" not in text
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "SECRET-PROSE" not in text
    assert "solution-start" not in text and "solution-end" not in text
    stubs = [c for c in student.cells if cli.is_solution_cell(c)]
    assert len(stubs) == 2
    for stub in stubs:
        assert stub.source.startswith("def ")            # signature and docstring kept
        assert "raise NotImplementedError()" in stub.source
        compile(stub.source, "<stub>", "exec")          # still valid Python


def test_student_copy_keeps_checks_and_exercise_text_and_clears_outputs():
    instructor = synthetic_notebook()
    instructor.cells[1].outputs = [nbformat.v4.new_output("stream", text="stale\n")]
    instructor.cells[1].execution_count = 3
    instructor.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    student = cli.make_student_copy(instructor)
    checks = [c.source for c in student.cells if is_grade(c)]
    assert checks == ['check_exercise("97.1", square)', 'check_exercise("97.2", add_one)']
    assert all(c.metadata.get("editable") is False for c in student.cells if is_grade(c))
    assert sum("{exercise}" in c.source for c in student.cells) == 2
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in student.cells if c.cell_type == "code")
    assert "widgets" not in student.metadata
    assert "SECRET-PROSE" in json.dumps(instructor)      # the instructor copy is not changed


def test_student_copy_rejects_an_unclosed_solution_block():
    nb = synthetic_notebook()
    del nb.cells[6]  # the first {solution-end}
    with pytest.raises(ValueError, match="solution"):
        cli.make_student_copy(nb)


def test_student_command_writes_copies_and_refuses_bad_paths(tmp_path, capsys):
    src = tmp_path / "course"
    src.mkdir()
    nbformat.write(synthetic_notebook(), src / "97_synthetic.ipynb")
    assert cli.main(["student", str(src), "--out", str(tmp_path / "student")]) == 0
    assert (tmp_path / "student" / "97_synthetic.ipynb").exists()
    capsys.readouterr()

    bad = {
        "no such file": ["student", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "s")],
        "refusing to overwrite": ["student", str(src), "--out", str(src)],
        "ending in .ipynb": ["check", str(Path(__file__))],
    }
    (tmp_path / "empty").mkdir()
    bad["contains no notebooks"] = ["check", str(tmp_path / "empty")]
    for expected, argv in bad.items():
        assert cli.main(argv) == 2, argv
        assert expected in capsys.readouterr().err, argv


def _course(tmp_path):
    src = tmp_path / "course"
    src.mkdir()
    nbformat.write(synthetic_notebook(), src / "97_synthetic.ipynb")
    return src, (src / "97_synthetic.ipynb").read_bytes()


@pytest.mark.parametrize("case", ["out_is_the_input_directory_spelt_differently", "out_is_a_symlink",
                                  "out_reaches_the_input_directory_through_a_linked_parent",
                                  "copy_is_a_symlink_to_the_input", "copy_is_a_dangling_symlink",
                                  "copy_is_a_hard_link_to_the_input", "two_inputs_with_one_name"])
def test_student_never_writes_onto_an_input_or_through_a_link(tmp_path, capsys, case):
    src, original = _course(tmp_path)
    out = tmp_path / "student"
    inputs = [str(src)]
    if case == "out_is_the_input_directory_spelt_differently":
        out = src / "sub" / ".."
    elif case == "out_is_a_symlink":                    # to a directory that is not an input's
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real", target_is_directory=True)
    elif case == "out_reaches_the_input_directory_through_a_linked_parent":
        (tmp_path / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
        out = tmp_path / "elsewhere" / "course"        # not a link itself; its parent is
    elif case == "copy_is_a_symlink_to_the_input":
        out.mkdir()
        (out / "97_synthetic.ipynb").symlink_to(src / "97_synthetic.ipynb")
    elif case == "copy_is_a_dangling_symlink":
        out.mkdir()
        (out / "97_synthetic.ipynb").symlink_to(tmp_path / "planted.ipynb")
    elif case == "copy_is_a_hard_link_to_the_input":
        out.mkdir()
        os.link(src / "97_synthetic.ipynb", out / "97_synthetic.ipynb")
    elif case == "two_inputs_with_one_name":
        (tmp_path / "other").mkdir()
        nbformat.write(synthetic_notebook(wrong_answer=True), tmp_path / "other" / "97_synthetic.ipynb")
        inputs.append(str(tmp_path / "other"))
    assert cli.main(["student", *inputs, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err or "would overwrite each other" in err, err
    assert (src / "97_synthetic.ipynb").read_bytes() == original          # the input is untouched
    assert not (tmp_path / "planted.ipynb").exists()                     # nothing written through a link
    assert not (tmp_path / "real").exists() or not any((tmp_path / "real").iterdir())
    assert sorted(p.name for p in src.iterdir()) == ["97_synthetic.ipynb"]


def test_student_may_write_into_a_subdirectory_of_the_inputs(tmp_path):
    src, original = _course(tmp_path)
    assert cli.main(["student", str(src), "--out", str(src / "student")]) == 0
    assert "raise NotImplementedError()" in (src / "student" / "97_synthetic.ipynb").read_text()
    assert (src / "97_synthetic.ipynb").read_bytes() == original


def test_student_replaces_an_existing_copy_by_a_new_file(tmp_path):
    src, _ = _course(tmp_path)
    out = tmp_path / "student"
    out.mkdir()
    (out / "97_synthetic.ipynb").write_text("an old copy")
    assert cli.main(["student", str(src), "--out", str(out)]) == 0
    assert "raise NotImplementedError()" in (out / "97_synthetic.ipynb").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["97_synthetic.ipynb"]   # no temporary file left


# --------------------------------------------------------------------------- the checker
def test_check_reports_each_exercise_and_fails_on_a_wrong_answer(tmp_path):
    """One execution: 97.1 passes, 97.2 is wrong, and a cell outside the exercises raises."""
    path = tmp_path / "97_wrong.ipynb"
    nbformat.write(synthetic_notebook(wrong_answer=True, broken_cell=True), path)
    done = run_cli("check", path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Exercise 97.1 [PASS] square: matches the reference on 1 cases" in done.stdout
    assert re.search(r"Exercise 97\.2 \[FAIL\] add one: case 1 \(three values\): output: differs",
                     done.stdout), done.stdout
    assert "ERROR cell" in done.stdout and "ValueError: a cell outside the exercises broke" in done.stdout
    assert "1 passed, 1 failed, 0 not attempted, 1 other errors" in done.stdout


def test_check_timeout_and_time_limit_must_be_positive(capsys):
    for flag, value in (("--timeout", "0"), ("--timeout", "-5"), ("--time-limit", "0"), ("--time-limit", "nan")):
        with pytest.raises(SystemExit) as stop:
            cli.main(["check", flag, value, str(NOTEBOOKS[0])])
        assert stop.value.code == 2
        assert f"argument {flag}: expected a positive" in capsys.readouterr().err


def test_check_cannot_be_fooled_by_printed_lines_or_a_redefined_checker_and_stops_endless_loops(tmp_path):
    """One execution of a notebook that cheats: 97.1's answer is wrong and a cell redefines
    check_exercise to print a PASS line; 97.2's wrong answer prints a PASS line itself (before the
    real checker's FAIL line, in the grade cell); 97.3's answer never returns. Nothing passes."""
    nb = synthetic_notebook(wrong_answer=True)
    sol = next(i for i, c in enumerate(nb.cells) if cli.is_solution_cell(c) and "square" in c.source)
    nb.cells[sol].source = nb.cells[sol].source.replace("return x * x", "return x * 3")
    forge = "print('Exercise {id} [PASS] {title}: matches the reference on 1 cases')"
    nb.cells.insert(sol + 1, new_code_cell(
        "def check_exercise(ex_id, fn):\n    " + forge.format(id="' + ex_id + '", title="square")))
    grade_971 = next(i for i, c in enumerate(nb.cells) if is_grade(c) and "97.1" in c.source)
    nb.cells.insert(grade_971 + 1, new_code_cell("from ssm_tutor.exercises import check_exercise"))
    add_one = next(c for c in nb.cells if cli.is_solution_cell(c) and "add_one" in c.source)
    add_one.source = add_one.source.replace("return x + 2", forge.format(id="97.2", title="add one")
                                            + "\n    return x + 2")
    nb.cells[-1:-1] = [
        new_code_cell("@exercise('97.3', 'returns')\ndef _returns_cases():\n"
                      "    yield ('one value', (torch.ones(1),), {}, torch.ones(1))"),
        new_code_cell("def forever(x):\n    while True:\n        try:\n            pass\n"
                      "        except Exception:\n            pass"),
        new_code_cell('check_exercise("97.3", forever)', metadata=_grade_meta("ex97-3-check")),
    ]
    path = tmp_path / "97_cheat.ipynb"
    nbformat.write(nb, path)
    done = run_cli("check", "--time-limit", "3", path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[PASS]" not in done.stdout.replace("print('Exercise", ""), done.stdout
    assert "Exercise 97.1 [FAIL] ssm_tutor's checker recorded no result" in done.stdout, done.stdout
    assert re.search(r"Exercise 97\.2 \[FAIL\] add one: case 1 \(three values\): output: differs", done.stdout)
    assert re.search(r"Exercise 97\.3 \[FAIL\] returns: case 1 \(one value\) did not finish within the "
                     r"time limit of 3 s", done.stdout), done.stdout
    assert "0 passed, 3 failed, 0 not attempted, 0 other errors" in done.stdout, done.stdout


def test_check_of_a_fresh_student_copy_reports_not_attempted_and_exits_zero(tmp_path):
    nbformat.write(synthetic_notebook(), tmp_path / "97_synthetic.ipynb")
    assert cli.main(["student", str(tmp_path / "97_synthetic.ipynb"), "--out", str(tmp_path / "student")]) == 0
    done = run_cli("check", tmp_path / "student" / "97_synthetic.ipynb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("[NOT ATTEMPTED]") == 2
    assert "0 passed, 0 failed, 2 not attempted, 0 other errors" in done.stdout


def test_nbgrader_scores_unattempted_and_wrong_exercises_zero(tmp_path):
    """Under `nbgrader autograde` (NBGRADER_EXECUTION set) a grade cell must raise unless its
    exercise passes: nbgrader's own scoring gives 0 to the wrong answer, 1 to the right one."""
    from nbgrader.utils import determine_grade

    nb = synthetic_notebook(wrong_answer=True)
    env = dict(os.environ, NBGRADER_EXECUTION="autograde")
    cli.execute_notebook(nb, tmp_path, timeout=120, env=env)
    grades = [determine_grade(c)[0] for c in nb.cells if is_grade(c)]
    assert grades == [1.0, 0.0]
    student = cli.execute_notebook(cli.make_student_copy(synthetic_notebook()), tmp_path, 120, env)
    assert [determine_grade(c)[0] for c in student.cells if is_grade(c)] == [0.0, 0.0]
    report = cli.printed_results(student)
    assert [(e.id, e.status) for e in report.exercises] == [("97.1", cli.NOT_ATTEMPTED),
                                                             ("97.2", cli.NOT_ATTEMPTED)]


def test_not_attempted_fails_only_with_require_all():
    report = cli.NotebookReport("x", [cli.ExerciseLine("1.1", cli.PASS, ""),
                                      cli.ExerciseLine("1.2", cli.NOT_ATTEMPTED, "")])
    assert not report.failed()
    assert report.failed(require_all=True)
    report.exercises.append(cli.ExerciseLine("1.3", cli.FAIL, ""))
    assert report.failed()


def test_a_grade_cell_that_crashes_counts_as_a_failure():
    nb = synthetic_notebook()
    grade = next(c for c in nb.cells if is_grade(c))
    grade.outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="name 'square' is not defined",
                                            traceback=[])]
    report = cli.collect_results(nb, records=[])
    assert [(e.id, e.status) for e in report.exercises] == [("97.1", cli.FAIL), ("97.2", cli.FAIL)]
    assert "NameError" in report.exercises[0].line
    assert "recorded no result" in report.exercises[1].line


# --------------------------------------------------------------------------- the course's notebooks
def _solution_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and cli.is_solution_cell(c)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_exercises_follow_the_layout(path):
    """Each exercise: {exercise} cell, gated solution-start, nbgrader solution cell with markers,
    solution-end, locked grade cell calling check_exercise; at least two per notebook."""
    cells = nbformat.read(path, as_version=4).cells
    grades = [i for i, c in enumerate(cells) if is_grade(c)]
    assert len(grades) >= 2, f"{path.name}: expected at least two exercises, found {len(grades)}"
    for g in grades:
        where = f"{path.name} cell {g}"
        assert cli.CHECK_CALL.search(cells[g].source), f"{where}: grade cell does not call check_exercise"
        assert cells[g].metadata["nbgrader"].get("locked") is True, f"{where}: grade cell not locked"
        assert "{solution-end}" in cells[g - 1].source, f"{where}: not preceded by {{solution-end}}"
        sol = cells[g - 2]
        assert cli.is_solution_cell(sol) and "### BEGIN SOLUTION" in sol.source \
            and "### END SOLUTION" in sol.source, f"{where}: cell before {{solution-end}} is not a solution cell"
        start = max(i for i in range(g) if "{solution-start}" in cells[i].source)
        assert ":class: dropdown" in cells[start].source, f"{where}: solution is not a dropdown"
        assert "{exercise}" in cells[start - 1].source, f"{where}: no {{exercise}} cell before the solution"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_contains_no_solution_code(path):
    instructor = nbformat.read(path, as_version=4)
    student = cli.make_student_copy(instructor)
    text = json.dumps(student)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "{solution-start}" not in text and "{solution-end}" not in text
    elsewhere = "\n".join(c.source for c in instructor.cells if not cli.is_solution_cell(c))
    for cell in _solution_cells(instructor):
        for region in SOLUTION_REGION.findall(cell.source):
            lines = [line.strip() for line in region.splitlines() if line.strip()]
            secret = [line for line in lines if line not in elsewhere]  # not shown outside the solution
            leaked = [line for line in secret if line in "\n".join(c.source for c in student.cells)]
            assert not leaked, f"solution code of {cell.metadata['nbgrader']['grade_id']} leaked: {leaked}"
    for cell in _solution_cells(student):
        assert "raise NotImplementedError()" in cell.source
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_show_every_exercise_passing(path):
    report = cli.printed_results(nbformat.read(path, as_version=4), str(path))
    assert report.exercises, f"{path.name}: no exercise results in the committed outputs"
    assert all(e.status == cli.PASS for e in report.exercises), [e.line for e in report.exercises]


def combined_notebook(instructor):
    """The student copy with, before each stub, the instructor's solution cell and its check."""
    student = cli.make_student_copy(instructor)
    solutions = {c.metadata["nbgrader"]["grade_id"]: c for c in _solution_cells(instructor)}
    cells = []
    for i, cell in enumerate(student.cells):
        if cell.cell_type == "code" and cli.is_solution_cell(cell):
            grade = next(c for c in student.cells[i + 1:] if is_grade(c))
            solution = copy.deepcopy(solutions[cell.metadata["nbgrader"]["grade_id"]])
            solution.outputs, solution.execution_count = [], None
            check = copy.deepcopy(grade)
            solution.id, check.id = f"{solution.id}-solution", f"{check.id}-check"   # ids stay unique
            cells += [solution, check]
        cells.append(cell)
    student.cells = cells
    return student


# Runs in a child process: execute one combined notebook in place, write its checker records as
# JSON, and log each code cell as it starts (what a notebook that never ends was doing).
_EXECUTE_COMBINED = """
import dataclasses, json, sys, time
from pathlib import Path
import nbformat
from ssm_tutor import cli
source, cwd, out, log = sys.argv[1:]
nb = nbformat.read(source, as_version=4)
t0 = time.perf_counter()
with open(log, "w", encoding="utf-8", buffering=1) as progress:
    def started(cell, cell_index):
        first_line = (cell.source.strip().splitlines() or [""])[0][:70]
        progress.write(f"{time.perf_counter() - t0:6.1f} s  cell {cell_index}: {first_line}\\n")
    records, stopped = cli.execute_and_record(nb, Path(cwd), timeout=600, on_cell_start=started)
nbformat.write(nb, source)   # with its outputs, for the report
Path(out).write_text(json.dumps({"records": [dataclasses.asdict(r) for r in records], "stopped": stopped}))
"""
NOTEBOOK_TIME_LIMIT = 300   # seconds for one combined notebook; the slowest takes under a minute


def execute_combined(path, tmp_dir):
    """Execute the combined notebook of ``path`` in a child process (a fresh Python, its kernel
    single-threaded) and return its report.

    A process, not a thread of this one, so that it can be stopped: twice in full runs of the suite
    a notebook client waited forever on a kernel that had gone idle, in a different notebook and
    cell each time, and never when the notebook ran alone. A run still going after
    NOTEBOOK_TIME_LIMIT is stopped (its kernel exits with its parent) and made once more; a second
    overrun fails, naming the cells each run last started, so an endless notebook still fails."""
    source, out = tmp_dir / f"{path.stem}.ipynb", tmp_dir / f"{path.stem}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    overruns = []
    for attempt in (1, 2):
        log = tmp_dir / f"{path.stem}.{attempt}.log"
        nbformat.write(combined_notebook(nbformat.read(path, as_version=4)), source)
        command = [sys.executable, "-c", _EXECUTE_COMBINED, str(source), str(path.parent), str(out), str(log)]
        try:
            run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=NOTEBOOK_TIME_LIMIT)
            break
        except subprocess.TimeoutExpired:
            last_cells = "".join(log.read_text().splitlines(True)[-2:]) if log.exists() else "(none)\n"
            overruns.append(f"run {attempt} stopped after {NOTEBOOK_TIME_LIMIT} s; its last cells started:\n{last_cells}")
            print(f"{path.name}: {overruns[-1]}", file=sys.stderr)
    else:
        pytest.fail(f"{path.name}: " + "".join(overruns))
    assert run.returncode == 0, f"{path.name}: the executing process failed:\n{run.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["stopped"] is None, f"{path.name}: {result['stopped']}"
    records = [cli.CheckerRecord(**r) for r in result["records"]]
    return cli.collect_results(nbformat.read(source, as_version=4), records, str(path))


@pytest.fixture(scope="module")
def executed_course(tmp_path_factory):
    """Each course notebook executed once, combined (see the module docstring), 2 at a time."""
    tmp_dir = tmp_path_factory.mktemp("combined")
    with ThreadPoolExecutor(max_workers=2) as pool:   # threads that wait on child processes
        reports = pool.map(lambda path: execute_combined(path, tmp_dir), NOTEBOOKS)
        return dict(zip(NOTEBOOKS, reports))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_runs_to_the_end_and_instructor_solutions_pass(path, executed_course):
    report = executed_course[path]
    assert not report.problems, report.problems
    statuses: dict[str, list[str]] = {}
    for e in report.exercises:
        statuses.setdefault(e.id, []).append(e.status)
    expected_ids = [m for c in nbformat.read(path, as_version=4).cells if is_grade(c)
                    for m in cli.CHECK_CALL.findall(c.source)]
    assert sorted(statuses) == sorted(expected_ids)
    for ex_id, seen in statuses.items():
        lines = [e.line for e in report.exercises if e.id == ex_id]
        assert seen == [cli.PASS, cli.NOT_ATTEMPTED], f"{path.name} {ex_id}: {lines}"
