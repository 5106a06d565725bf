"""The exercises of chapter 10: a right answer PASSes, each typical mistake FAILs with its hint, a stub
is NOT ATTEMPTED. (The expected answers are computed inside ssm_tutor.exercises.ch10 by loops and
index arithmetic, independently of the package's functions.)"""

import pytest
import torch

from ssm_tutor.bidirectional import flip_and_combine
from ssm_tutor.exercises import check_exercise
from ssm_tutor.exercises.ch10 import _mistaken_all_positions, _mistaken_by_row_count
from ssm_tutor.hybrid import layer_types
from ssm_tutor.tasks import IGNORE, masked_accuracy


def stub(*args, **kwargs):
    raise NotImplementedError()


# ---- right answers, built from the package where it has the piece ----------------------------
def accuracy_by_pairs(logits, targets):
    counts = (targets != IGNORE).sum(1)                              # pair count of each example
    return {int(P): masked_accuracy(logits[counts == P], targets[counts == P]) for P in counts.unique()}


def choose_period(curves, num_layers, pairs, min_accuracy):
    good = [pattern for pattern, accuracy in curves.items() if accuracy[pairs] >= min_accuracy]
    return min(good, key=lambda pattern: layer_types(num_layers, *pattern).count("attention"))


@pytest.mark.parametrize("exercise,answer", [("10.1", accuracy_by_pairs), ("10.2", choose_period),
                                             ("10.3", flip_and_combine)])
def test_right_answers_pass_and_stubs_are_not_attempted(exercise, answer, capsys):
    assert check_exercise(exercise, answer).passed
    assert f"Exercise {exercise} [PASS]" in capsys.readouterr().out
    assert check_exercise(exercise, stub, verbose=False).status == "NOT ATTEMPTED"


@pytest.mark.parametrize("exercise,wrong,hint", [
    ("10.1", _mistaken_all_positions, "score only the query positions"),
    ("10.1", _mistaken_by_row_count, "group the examples by their pair count"),
    ("10.1", lambda logits, targets: masked_accuracy(logits, targets), "expected a dict"),
    ("10.2", lambda c, n, p, m: max(c, key=lambda k: c[k][p]), "FEWEST attention layers"),
    ("10.2", lambda c, n, p, m: max((k for k in c if c[k][p] >= m), key=lambda k: k[0]),
     "a larger period does not always mean fewer attention layers"),
    ("10.3", lambda f, b, h: f(h) + b(h.flip(1)), "flip the backward mixer's output back"),
    ("10.3", lambda f, b, h: f(h) + b(h.flip(-1)).flip(-1), "reverse the TIME axis"),
    ("10.3", lambda f, b, h: (f(h) + b(h.flip(1)).flip(1)) / 2, "added, not averaged"),
    ("10.3", lambda f, b, h: f(h) + b(h), "must read the reversed sequence"),
], ids=["ignore-included", "grouped-by-row", "one-number", "most-accurate", "largest-period",
        "no-flip-back", "flipped-channels", "averaged", "no-flip-at-all"])
def test_typical_mistakes_fail_with_their_hint(exercise, wrong, hint):
    result = check_exercise(exercise, wrong, verbose=False)
    assert result.status == "FAIL", result
    assert hint in result.message, result.message
    assert "np.float" not in result.message
