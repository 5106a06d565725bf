"""The exercises of chapter 4: a right answer passes, each typical mistake fails with its hint, a
malformed answer fails with a message that says what was expected, a stub is NOT ATTEMPTED; and
`ssm-tutor check` on notebook 04's own exercise cells, with a typical mistake in each, reports FAIL.
(The expected answers come from transformers' scan and scipy's dlsim inside ssm_tutor.exercises.ch04.)"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import nbformat
import pytest
import torch

from ssm_tutor.exercises import check_exercise
from ssm_tutor.exercises.ch04 import _half_life_by_bisection
from ssm_tutor.selective import selective_scan_ref
from exercise_answers import mistake_test

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ right answers
def half_life_bias(A_log, k):
    slowest = torch.exp(A_log).amin(-1)                      # |A| closest to 0: (d,)
    return torch.log(torch.expm1(math.log(2) / (k * slowest)))


def delta_for(tokens, A, *, filler=0.0, data=0.5, erase=None):
    erase = math.log(1e6) / A.abs().min().item() if erase is None else erase
    return torch.tensor([filler if w == "um" else erase if w == "|" else data for w in tokens], dtype=torch.float64)


def copy_table(noise=(0.0, 0.0, 0.0), mark=(20.0, 1 / 20, 0.0), query=(0.0, 0.0, 1.0)):
    def copy_head(kinds):
        rows = torch.tensor([{"noise": noise, "mark": mark, "query": query}[k] for k in kinds], dtype=torch.float64)
        return rows[:, 0], rows[:, 1], rows[:, 2]
    return copy_head


ANSWERS = {"04.1": half_life_bias, "04.2": delta_for, "04.3": copy_table()}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_right_answer_passes(exercise_id, capsys):
    assert check_exercise(exercise_id, ANSWERS[exercise_id]).passed
    assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out


def test_other_right_answers_pass_too():
    # any large enough Δ erases; numpy arrays and lists are read as vectors
    assert check_exercise("04.2", lambda tokens, A: delta_for(tokens, A, erase=1e5).numpy(), verbose=False).passed
    assert check_exercise("04.3", copy_table(mark=(1e3, 1e-3, 0.0)), verbose=False).passed
    assert check_exercise("04.3", lambda kinds: [x.tolist() for x in copy_table()(kinds)], verbose=False).passed


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError()

    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"


def test_the_bisection_reference_is_the_closed_form():
    # 04.1's expected values come from bisection on transformers' scan; they equal the derivation
    A_log = torch.log(torch.tensor([[1.0, 2.0, 5.0], [0.3, 0.1, 4.0]], dtype=torch.float64))
    for k in (1, 7):
        torch.testing.assert_close(_half_life_by_bisection(A_log, k), half_life_bias(A_log, k), atol=1e-10, rtol=0)


def test_delta_for_answer_skips_fillers_and_erases_at_the_separator():
    # what 04.2 asks, seen in the package's scan: the state after "a um | b" equals the state after "b" alone
    A = torch.tensor([-0.3, -1.5], dtype=torch.float64)
    tokens = "a um | b".split()
    u = torch.tensor([0.7, 0.0, 0.0, -0.4], dtype=torch.float64)

    def run(u, delta):                                       # the last state (1, 1, n), B = C = 1
        ones = torch.ones(1, 2, len(u), dtype=torch.float64)
        return selective_scan_ref(u[None, None], delta[None, None], A[None], ones, ones, return_last_state=True)[1]

    torch.testing.assert_close(run(u, delta_for(tokens, A)), run(u[-1:], torch.tensor([0.5], dtype=torch.float64)),
                               atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ typical mistakes
def _bias(delta):
    return torch.log(torch.expm1(delta))


MISTAKES = [
    # (exercise, wrong answer, a phrase of the hint it must get)
    ("04.1", lambda A_log, k: math.log(2) / (k * torch.exp(A_log).amin(-1)), "that is Δ itself"),
    ("04.1", lambda A_log, k: _bias(math.log(2) / (k * torch.exp(A_log).amax(-1))), "halves the fastest entry"),
    ("04.1", lambda A_log, k: _bias(1 / (k * torch.exp(A_log).amin(-1))), "needs ln 2"),
    ("04.1", lambda A_log, k: _bias(math.log(2) / torch.exp(A_log).amin(-1)), "compounds over the k tokens"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, filler=0.5), "a filler must take no time"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, erase=0.0), "keeps the state"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, erase=50.0), "not large enough"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, data=1.0), "a data word keeps its step"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, erase=math.inf), "Δ is inf at token"),
    ("04.2", lambda tokens, A: delta_for(tokens, A, erase=-1.0), "Δ is negative at token"),
    ("04.2", lambda tokens, A: delta_for(tokens, A)[:-1], "must have shape"),
    ("04.3", copy_table(noise=(0.5, 0.0, 0.0)), "noise and queries must leave the state alone"),
    ("04.3", copy_table(query=(1.0, 0.0, 1.0)), "noise and queries must leave the state alone"),
    ("04.3", copy_table(noise=(0.0, 0.0, 1.0)), "the output must be 0 except at a query"),
    ("04.3", copy_table(mark=(20.0, 1.0, 0.0)), "Mamba's B̄ = Δ B"),
    ("04.3", copy_table(mark=(1.0, 1.0, 0.0)), "a new mark must replace the old value"),
    ("04.3", copy_table(query=(0.0, 0.0, 2.0)), "C = 1 reads"),
    ("04.3", lambda kinds: [torch.arange(len(kinds), dtype=torch.float64)] * 3, "differs between tokens of kind"),
    ("04.3", lambda kinds: torch.zeros(len(kinds)), "expected a tuple (delta, B, C)"),
]


test_typical_mistake_fails_with_its_hint = mistake_test(MISTAKES)


# ---- end to end: `ssm-tutor check` on notebook 04's own exercise cells, with a mistake in each ----
NOTEBOOK_MISTAKES = {   # grade id of the solution cell: (text of the right answer, a typical mistake, hint expected)
    "ex04-1-solution": ("slowest = torch.exp(A_log).amin(-1)", "slowest = torch.exp(A_log).amax(-1)",
                        "halves the fastest entry"),
    "ex04-2-solution": ('"um": 0.0', '"um": 0.5', "a filler must take no time"),
    "ex04-3-solution": ('"mark": (big, 1 / big, 0.0)', '"mark": (big, 1.0, 0.0)', "Mamba's B̄ = Δ B"),
}


def test_ssm_tutor_check_passes_the_solutions_and_fails_each_typical_mistake(tmp_path):
    """The setup cell and the exercise cells of notebooks/04_selection.ipynb, once as they are and
    once with one typical mistake in each solution: `ssm-tutor check` reports PASS for the first and
    FAIL, with the mistake's hint, for every exercise of the second."""
    nb = nbformat.read(ROOT / "notebooks" / "04_selection.ipynb", as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    right, wrong = [setup], [setup]
    for i, cell in enumerate(nb.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id in NOTEBOOK_MISTAKES:
            good, bad, _ = NOTEBOOK_MISTAKES[grade_id]
            assert good in cell.source, f"{grade_id}: the notebook's solution changed; update NOTEBOOK_MISTAKES"
            mistaken = nbformat.from_dict(dict(cell, source=cell.source.replace(good, bad)))
            right += nb.cells[i - 2:i + 3]
            wrong += [nb.cells[i - 2], nb.cells[i - 1], mistaken, nb.cells[i + 1], nb.cells[i + 2]]
    assert len(wrong) == 1 + 5 * len(NOTEBOOK_MISTAKES)
    ids = ("04.1", "04.2", "04.3")
    for name, cells, summary in (("right", right, "3 passed, 0 failed"), ("wrong", wrong, "0 passed, 3 failed")):
        path = tmp_path / f"04_{name}.ipynb"
        nbformat.write(nbformat.from_dict(dict(nb, cells=cells)), path)
        done = subprocess.run([sys.executable, "-m", "ssm_tutor.cli", "check", str(path)], capture_output=True,
                              text=True, timeout=600, cwd=ROOT)
        assert done.returncode == (0 if name == "right" else 1), done.stdout + done.stderr
        assert summary in done.stdout, done.stdout
        if name == "wrong":
            for ex_id, (_, _, hint) in zip(ids, NOTEBOOK_MISTAKES.values()):
                line = next((l for l in done.stdout.splitlines() if f"Exercise {ex_id} [FAIL]" in l), None)
                assert line is not None and hint in line, done.stdout
