"""The exercises of chapter 11: the package's answers pass, a stub is NOT ATTEMPTED, and each typical
mistake fails with the hint that names it."""

import math

import pytest
import torch

from ssm_tutor.exercises import check_exercise
from ssm_tutor.exercises.ch11 import measured_flops
from ssm_tutor.ssd import chunk_diagonal_blocks, matmul_flops, pass_states, segsum, ssd_chunked, ssd_scan


def flops(L, Q, n, p):
    c = math.ceil(L / Q)
    return {"diagonal_blocks": 2 * c * Q * Q * (n + p), "chunk_states": 2 * c * Q * n * p,
            "off_diagonal_blocks": 2 * c * Q * n * p}


def passing_loop(states, totals, initial):
    entering, S = [], initial
    for k in range(states.shape[1]):
        entering.append(S)
        S = torch.exp(totals[:, :, k])[..., None, None] * S + states[:, k]
    return torch.stack(entering, dim=1), S


ANSWERS = {"11.1": segsum, "11.2": passing_loop, "11.3": flops}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_answer_passes(exercise_id, capsys):
    assert check_exercise(exercise_id, ANSWERS[exercise_id]).passed
    assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out


def test_package_matrix_form_of_the_state_passing_passes_too():
    assert check_exercise("11.2", lambda states, totals, h0: pass_states(states, totals[..., None], h0),
                          verbose=False).passed


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_stub_is_not_attempted(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"


def naive_segsum(a):
    cs = a.cumsum(-1)
    out = cs[..., :, None] - cs[..., None, :]
    T = a.shape[-1]
    return out.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)


def segsum_including_s(a):
    T = a.shape[-1]
    terms = torch.where(torch.ones(T, T, dtype=torch.bool).tril(), a.unsqueeze(-1), 0.0)
    return terms.cumsum(-2).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)


def passing_after(states, totals, initial):
    entering, final = passing_loop(states, totals, initial)
    return torch.cat([entering[:, 1:], final[:, None]], dim=1), final


def passing_without_decay(states, totals, initial):
    return passing_loop(states, torch.zeros_like(totals), initial)


@pytest.mark.parametrize("exercise_id,wrong,hint", [
    ("11.1", naive_segsum, "differences of cumulative sums"),
    ("11.1", segsum_including_s, "the diagonal must be 0"),
    ("11.1", lambda a: segsum(a).clamp(min=-1e30), "above the diagonal"),
    ("11.2", passing_after, "the states *after* each chunk"),
    ("11.2", passing_without_decay, "the carried state decays by exp(T_k)"),
    ("11.3", lambda L, Q, n, p: {k: v // 2 for k, v in flops(L, Q, n, p).items()}, "a multiply-add counts as 2 FLOPs"),
    ("11.3", lambda L, Q, n, p: flops(L // Q * Q, Q, n, p), "ceil(L / Q) chunks"),
    ("11.3", lambda L, Q, n, p: list(flops(L, Q, n, p).values()), "expected a dict with the keys"),
])
def test_typical_mistake_fails_with_its_hint(exercise_id, wrong, hint):
    result = check_exercise(exercise_id, wrong, verbose=False)
    assert result.status == "FAIL", result
    assert hint in result.message, result.message


def test_matmul_flops_counts_what_pytorchs_flop_counter_counts():
    from torch.utils.flop_counter import FlopCounterMode
    g = torch.Generator().manual_seed(0)
    x, dt = torch.randn(2, 37, 4, 3, generator=g), torch.rand(2, 37, 4, generator=g)
    A, B, C = -torch.rand(4, generator=g), torch.randn(2, 37, 2, 5, generator=g), torch.randn(2, 37, 2, 5, generator=g)
    runs = [lambda: ssd_chunked(x, dt, A, B, C, 8), lambda: ssd_scan(x, dt, A, B, C, 8),
            lambda: chunk_diagonal_blocks(*(torch.randn(s, generator=g) for s in
                                            [(1, 3, 4, 2, 5), (1, 2, 3, 4), (1, 3, 4, 2, 6), (1, 3, 4, 2, 6)])),
            lambda: torch.addmm(torch.zeros(3, 5), torch.randn(3, 7), torch.randn(7, 5))]
    for run in runs:
        with FlopCounterMode(display=False) as reference:
            run()
        assert matmul_flops(run) == reference.get_total_flops() > 0
        with torch.inference_mode():
            assert matmul_flops(run) == reference.get_total_flops()    # inference mode skips dispatch modes


def test_flop_cases_are_exact_formulas():
    for L, Q, n, p in [(64, 16, 8, 4), (50, 16, 8, 4), (7, 8, 3, 5)]:
        assert measured_flops(L, Q, n, p) == flops(L, Q, n, p)
