"""The tests every chapter's exercises get: the instructor's answer PASSes, a stub that raises
NotImplementedError is NOT ATTEMPTED, a typical mistake FAILs with its hint. A test module assigns
them by name, so pytest collects them:

    test_answer_passes, test_stub_is_not_attempted = answer_tests(ANSWERS)
    test_typical_mistake_fails_with_its_hint = mistake_test(MISTAKES)
"""

import pytest

from ssm_tutor.exercises import check_exercise


def answer_tests(answers: dict):
    """(test_answer_passes, test_stub_is_not_attempted), parametrized over ``answers``' exercise ids."""

    @pytest.mark.parametrize("exercise_id", sorted(answers))
    def test_answer_passes(exercise_id, capsys):
        assert check_exercise(exercise_id, answers[exercise_id]).passed
        assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out

    @pytest.mark.parametrize("exercise_id", sorted(answers))
    def test_stub_is_not_attempted(exercise_id):
        def stub(*args, **kwargs):
            raise NotImplementedError()

        assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"

    return test_answer_passes, test_stub_is_not_attempted


def mistake_test(mistakes: list):
    """test_typical_mistake_fails_with_its_hint over ``mistakes`` = [(exercise id, wrong answer, hint)]:
    each FAILs, its message carries the hint, and it prints plain numbers and named outputs."""

    @pytest.mark.parametrize("exercise_id,wrong,hint", mistakes, ids=[f"{m[0]}-{m[2]}" for m in mistakes])
    def test_typical_mistake_fails_with_its_hint(exercise_id, wrong, hint):
        result = check_exercise(exercise_id, wrong, verbose=False)
        assert result.status == "FAIL", result
        assert hint in result.message, result.message
        assert "np.float64" not in result.message and "output[" not in result.message

    return test_typical_mistake_fails_with_its_hint
