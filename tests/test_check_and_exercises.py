"""The shared `check` helper and the exercise checker say precisely what is wrong."""

import pytest
import torch

from ssm_tutor import check
from ssm_tutor.exercises import check_exercise, exercise


def test_check_passes_within_tolerance(capsys):
    check(torch.ones(3), torch.ones(3) + 1e-9, "ones")
    assert "✓ ones matches the reference" in capsys.readouterr().out


def test_check_names_shape_mismatch():
    with pytest.raises(AssertionError, match=r"expected shape \(3,\), got shape \(3, 1\)"):
        check(torch.ones(3), torch.ones(3, 1), "x")


def test_check_reports_worst_element():
    ref = torch.zeros(4)
    cand = torch.tensor([0.0, 0.0, 0.5, 0.0])
    with pytest.raises(AssertionError, match=r"index \(2,\).*1 of 4 elements"):
        check(ref, cand, "y")


def test_check_rejects_nan():
    with pytest.raises(AssertionError, match="NaN"):
        check(torch.zeros(2), torch.tensor([0.0, float("nan")]), "z")


def test_check_rejects_a_nan_or_inf_in_the_reference_only():
    with pytest.raises(AssertionError, match="reference has 1"):
        check(torch.tensor([float("nan")]), torch.tensor([123.0]), "x")
    with pytest.raises(AssertionError, match="reference has 1"):
        check(torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 5.0]), "x")
    with pytest.raises(AssertionError, match="NaN or infinite"):
        check(torch.tensor([float("inf")]), torch.tensor([float("-inf")]), "x")


def test_check_accepts_matching_non_finite_values(capsys):
    check(torch.tensor([float("nan"), float("-inf"), 1.0]), torch.tensor([float("nan"), float("-inf"), 1.0 + 1e-9]), "w")
    assert "w matches" in capsys.readouterr().out


def test_check_handles_tuples(capsys):
    check((torch.ones(2), torch.zeros(1)), (torch.ones(2), torch.zeros(1)), "pair")
    assert "pair matches" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"pair\[1\]"):
        check((torch.ones(2), torch.zeros(1)), (torch.ones(2), torch.ones(1)), "pair")


@exercise("99.1", "square a tensor")
def _square_cases():
    for n in (1, 3):
        x = torch.arange(float(n))
        yield f"n={n}", (x,), {}, x * x


def test_exercise_pass(capsys):
    result = check_exercise("99.1", lambda x: x**2)
    assert result.passed
    assert capsys.readouterr().out.startswith("Exercise 99.1 [PASS] square a tensor: matches the reference on 2 cases")


def test_exercise_fail_names_case_shape_and_error():
    result = check_exercise("99.1", lambda x: x * 2, verbose=False)
    assert result.status == "FAIL"
    assert "case 2 (n=3)" in result.message and "differs from the reference by up to" in result.message
    wrong_shape = check_exercise("99.1", lambda x: (x * x)[None], verbose=False)
    assert "expected shape (1,), got shape (1, 1)" in wrong_shape.message


def test_exercise_not_attempted_and_crash():
    def stub(x):
        raise NotImplementedError()

    assert check_exercise("99.1", stub, verbose=False).status == "NOT ATTEMPTED"
    crashed = check_exercise("99.1", lambda x: x @ x @ x, verbose=False)
    assert crashed.status == "FAIL" and "raised" in crashed.message


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(KeyError, match="no chapter"):
        check_exercise("99.7", lambda x: x)
    with pytest.raises(KeyError, match="chapter 02 defines"):
        check_exercise("02.99", lambda x: x)


def test_exercise_without_cases_is_an_error_not_a_pass():
    exercise("99.2", "an exercise whose generator yields nothing")(lambda: iter(()))
    with pytest.raises(RuntimeError, match="no test cases"):
        check_exercise("99.2", lambda x: x)


def test_a_second_exercise_with_a_taken_id_is_refused_at_registration():
    def _other_cases():
        yield "n=1", (torch.ones(1),), {}, torch.ones(1)

    with pytest.raises(ValueError, match=r"exercise id '99\.1' is already registered by .*_square_cases"):
        exercise("99.1", "another exercise")(_other_cases)
    assert check_exercise("99.1", lambda x: x**2, verbose=False).passed      # the first one is intact
    exercise("99.1", "square a tensor")(_square_cases)                      # the same one again is fine


def test_an_answer_that_never_returns_fails_at_the_time_limit():
    import time

    def forever(x):
        while True:
            try:
                time.sleep(0.01)
            except Exception:        # a learner's catch-all does not swallow the time limit
                pass

    start = time.monotonic()
    result = check_exercise("99.1", forever, verbose=False, time_limit=0.5)
    assert time.monotonic() - start < 10
    assert result.status == "FAIL"
    assert "case 1 (n=1) did not finish within the time limit of 0.5 s" in result.message


def test_the_time_limit_must_be_positive_and_can_come_from_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        check_exercise("99.1", lambda x: x**2, time_limit=0)
    monkeypatch.setenv("SSM_TUTOR_TIME_LIMIT", "-1")
    with pytest.raises(ValueError, match="SSM_TUTOR_TIME_LIMIT must be a positive number"):
        check_exercise("99.1", lambda x: x**2)
    monkeypatch.setenv("SSM_TUTOR_TIME_LIMIT", "0.3")
    assert "time limit of 0.3 s" in check_exercise("99.1", _sleep_forever, verbose=False).message


def _sleep_forever(x):
    import time
    while True:
        time.sleep(0.01)


def test_results_go_to_the_private_file_not_only_to_the_screen(tmp_path, monkeypatch):
    import json
    import ssm_tutor.exercises as exercises

    results = tmp_path / "results.jsonl"
    monkeypatch.setattr(exercises, "_RESULTS_FILE", str(results))
    check_exercise("99.1", lambda x: x**2, verbose=False)
    check_exercise("99.1", lambda x: x * 2, verbose=False)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in records] == [("99.1", "PASS"), ("99.1", "FAIL")]
