"""The two tests every chapter's exercises get: the instructor's answer PASSes, a stub that raises
NotImplementedError is NOT ATTEMPTED. A test module assigns them by name, so pytest collects them:

    test_answer_passes, test_stub_is_not_attempted = answer_tests(ANSWERS)
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
