"""The exercises of chapter 5: a right answer PASSes, each typical mistake FAILs with its hint, a stub
is NOT ATTEMPTED; and `ssm-tutor check` on notebook 05's own exercise cells FAILs a typical mistake in
each. (Expected answers: torch.cumprod and a Python loop, the package's recorded scan cost, autograd.)"""

import pytest
import torch

from notebook_mistakes import assert_check_fails_each_mistake
from ssm_tutor.exercises import check_exercise
from ssm_tutor.scan import blelloch_down_sweep, combine, linear_scan


def stub(*args, **kwargs):
    raise NotImplementedError()


# ---- 05.1: the down-sweep -------------------------------------------------------------------
def down_sweep(tree, *, swap=False, own_block=False, from_root=False, inclusive=False):
    """The right down-sweep, or one typical mistake."""
    if inclusive:                                       # the inclusive prefixes instead
        a, b = tree[0]
        return torch.cumprod(a, -1), linear_scan(a, b)
    a_P, b_P = tree[-1] if from_root else (torch.ones_like(tree[-1][0]), torch.zeros_like(tree[-1][1]))
    for a, b in reversed(tree[:-1]):
        blk = (a[..., 1::2], b[..., 1::2]) if own_block else (a[..., 0::2], b[..., 0::2])
        a_r, b_r = combine(*blk, a_P, b_P) if swap else combine(a_P, b_P, *blk)
        a_P = torch.stack([a_P, a_r], dim=-1).flatten(-2)
        b_P = torch.stack([b_P, b_r], dim=-1).flatten(-2)
    return a_P, b_P


def test_05_1_right_answers_pass():
    assert check_exercise("05.1", down_sweep, verbose=False).status == "PASS"
    assert check_exercise("05.1", blelloch_down_sweep, verbose=False).status == "PASS"


@pytest.mark.parametrize("mistake, hint", [
    (dict(swap=True), "P first"),
    (dict(own_block=True), "LEFT sibling"),
    (dict(from_root=True), "start the walk from the identity"),
    (dict(inclusive=True), "inclusive prefixes"),
])
def test_05_1_typical_mistakes_fail_with_their_hint(mistake, hint):
    result = check_exercise("05.1", lambda tree: down_sweep(tree, **mistake), verbose=False)
    assert result.status == "FAIL" and hint in result.message, result.message


# ---- 05.2: the chunked scan's cost ----------------------------------------------------------
def chunked_work_depth(L, T, *, padded=True, fold_round=True, fold_all=False):
    chunks = -(-L // T)
    work = ((T - 1) * chunks if padded else L - chunks) + (chunks - 1) + (L if fold_all else max(L - T, 0))
    depth = (T - 1) + (chunks - 1) + (1 if fold_round and L > T else 0)
    return work, depth


def test_05_2_right_answer_passes_and_names_the_output_that_differs():
    assert check_exercise("05.2", chunked_work_depth, verbose=False).status == "PASS"
    result = check_exercise("05.2", lambda L, T: (chunked_work_depth(L, T)[0], 0), verbose=False)
    assert result.status == "FAIL" and "depth: expected 63, got 0" in result.message, result.message


@pytest.mark.parametrize("mistake, hint", [
    (dict(padded=False), "padded with identity steps"),
    (dict(fold_all=True), "chunk 0 starts from h = 0"),
    (dict(fold_round=False), "the fold-in is one more round"),
])
def test_05_2_typical_mistakes_fail_with_their_hint(mistake, hint):
    result = check_exercise("05.2", lambda L, T: chunked_work_depth(L, T, **mistake), verbose=False)
    assert result.status == "FAIL" and hint in result.message, result.message


def test_05_2_the_approximations_are_not_the_count():
    result = check_exercise("05.2", lambda L, T: (2 * L, T + -(-L // T)), verbose=False)
    assert result.status == "FAIL" and "approximations" in result.message, result.message


# ---- 05.3: the reverse scan -----------------------------------------------------------------
def reverse_scan(a, g):
    a_next = torch.cat([a[..., 1:], torch.ones_like(a[..., :1])], dim=-1)
    return linear_scan(a_next.flip(-1), g.flip(-1)).flip(-1)


def test_05_3_right_answer_passes():
    assert check_exercise("05.3", reverse_scan, verbose=False).status == "PASS"


@pytest.mark.parametrize("wrong, hint", [
    (lambda a, g: linear_scan(a.flip(-1), g.flip(-1)).flip(-1), "not a_t"),
    (lambda a, g: reverse_scan(a, g).flip(-1), "flip the scan's result back"),
    (lambda a, g: linear_scan(a, g), "forward scan"),
])
def test_05_3_typical_mistakes_fail_with_their_hint(wrong, hint):
    result = check_exercise("05.3", wrong, verbose=False)
    assert result.status == "FAIL" and hint in result.message, result.message


@pytest.mark.parametrize("exercise_id", ["05.1", "05.2", "05.3"])
def test_stub_is_not_attempted_and_a_malformed_answer_fails_cleanly(exercise_id):
    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"
    result = check_exercise(exercise_id, lambda *args: "not a tensor", verbose=False)
    assert result.status == "FAIL", result.message


# ---- end to end: `ssm-tutor check` on notebook 05's own exercise cells, with a mistake in each ----
MISTAKES = {   # grade id of the solution cell: (text of the right answer, a typical mistake, hint expected)
    "ex05-1-solution": ("combine(a_P, b_P, a[..., 0::2], b[..., 0::2])", "combine(a[..., 0::2], b[..., 0::2], a_P, b_P)",
                        "P first"),
    "ex05-2-solution": ("(1 if L > T else 0)", "0", "the fold-in is one more round"),
    "ex05-3-solution": ("linear_scan(a_next.flip(-1), g.flip(-1)).flip(-1)", "linear_scan(a.flip(-1), g.flip(-1)).flip(-1)",
                        "not a_t"),
}


def test_ssm_tutor_check_fails_each_typical_mistake_in_the_notebook(tmp_path):
    """The setup cell, the cell that writes `combine` (the down-sweep uses it) and the exercise cells
    of notebooks/05_parallel_scan.ipynb, each solution with one typical mistake: `ssm-tutor check`
    must report FAIL, with the mistake's hint, for every one."""
    assert_check_fails_each_mistake(
        tmp_path, "05_parallel_scan.ipynb", MISTAKES,
        setup_cells=lambda code: [code[0], next(c for c in code if c.source.startswith("def combine("))])
