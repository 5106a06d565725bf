"""The exercises of chapters 1–3: a correct answer (built from the package's teaching layer where
it has the piece) passes, each typical mistake fails with its hint, a stub is NOT ATTEMPTED.
(The expected answers come from SciPy / NumPy inside ssm_tutor.exercises.ch01–ch03.)"""

import math

import pytest
import torch

from ssm_tutor.continuous import damped_oscillator
from ssm_tutor.discretize import zoh
from ssm_tutor.exercises import check_exercise


# ------------------------------------------------------------------------------ correct answers
def fastest_settling(m, k):
    c = 2 * math.sqrt(m * k)                      # critical damping: the double pole −c/2m
    return c, c / (2 * m)


def step_response(A, B, C, t):
    # ∫_0^t e^{Aτ} dτ B is ZOH's B̄ for the step t (and 0 at t = 0)
    return torch.stack([C @ zoh(A, B, tk)[1] if tk > 0 else torch.zeros(C.shape[0], B.shape[1], dtype=A.dtype)
                        for tk in t.tolist()])


def matrix_with_poles(poles):
    blocks = []
    for z in poles.tolist():
        if z.imag > 0:
            blocks.append(damped_oscillator(-z.real, z.imag).A)        # poles −σ ± iω
        elif z.imag == 0:
            blocks.append(torch.tensor([[z.real]], dtype=torch.float64))
    return torch.block_diag(*blocks)


def euler_max_step(A):
    lam = torch.linalg.eigvals(A)
    return float((-2 * lam.real / lam.abs() ** 2).min())


def _gap(a, dt):
    return 1 - torch.expm1(dt * a) / (dt * a)


def zoh_vs_euler_B(a, tol, *, order=1, first_order=False):
    if first_order:
        return order, 2 * tol / a.abs()
    lo, hi = torch.zeros_like(a), torch.full_like(a, 100.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        below = _gap(a, mid) < tol
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return order, (lo + hi) / 2


def zoh_recurrence(A, B, C, dts, u, *, shift=0, read_before=False):
    x = torch.zeros(A.shape[0], dtype=A.dtype)
    ys = []
    for dt, uk in zip(torch.roll(dts, shift).tolist(), u):
        Ad, Bd = zoh(A, B, dt)
        x_new = Ad @ x + Bd[:, 0] * uk
        ys.append(C[0] @ (x if read_before else x_new))
        x = x_new
    return torch.stack(ys)


ANSWERS = {
    "01.1": fastest_settling,
    "01.2": step_response,
    "01.3": matrix_with_poles,
    "02.1": euler_max_step,
    "02.2": zoh_vs_euler_B,
    "02.3": zoh_recurrence,
}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_correct_answer_passes(exercise_id, capsys):
    assert check_exercise(exercise_id, ANSWERS[exercise_id]).passed
    assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_stub_is_not_attempted(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"


# ------------------------------------------------------------------------------ typical mistakes
def _impulse(A, B, C, t):
    return C @ torch.linalg.matrix_exp(t[:, None, None] * A) @ B


def _swapped_blocks(poles):
    blocks = []
    for z in poles.tolist():
        if z.imag > 0:
            blocks.append(torch.tensor([[z.real, z.imag], [z.imag, z.real]], dtype=torch.float64))
        elif z.imag == 0:
            blocks.append(torch.tensor([[z.real]], dtype=torch.float64))
    return torch.block_diag(*blocks)


MISTAKES = [
    # (exercise, wrong answer, a phrase of the hint it must get)
    ("01.1", lambda m, k: (math.sqrt(m * k), math.sqrt(k / m)), "half the answer"),
    ("01.1", lambda m, k: (20 * math.sqrt(m * k), math.sqrt(k / m)), "more damping is not faster"),
    ("01.1", lambda m, k: (2 * math.sqrt(m * k), 2 * math.sqrt(k / m)), "not c/m"),
    ("01.2", _impulse, "impulse response"),
    ("01.2", lambda A, B, C, t: C @ torch.linalg.solve(A, torch.linalg.matrix_exp(t[:, None, None] * A)) @ B,
     "must be 0"),
    ("01.2", lambda A, B, C, t: -step_response(A, B, C, t), "sign is flipped"),
    ("01.3", lambda z: torch.diag(z), "real 2×2 block"),
    ("01.3", _swapped_blocks, "opposite signs"),
    ("02.1", lambda A: float((2 / torch.linalg.eigvals(A).real.abs()).min()), "imaginary part"),
    ("02.1", lambda A: float((-2 * torch.linalg.eigvals(A).real / torch.linalg.eigvals(A).abs() ** 2).max()),
     "smallest limit"),
    ("02.2", lambda a, tol: zoh_vs_euler_B(a, tol, first_order=True), "first-order estimate"),
    ("02.2", lambda a, tol: zoh_vs_euler_B(a, tol, order=2), "round the slope"),
    ("02.3", lambda *args: zoh_recurrence(*args, shift=1), "own Δ_k"),
    ("02.3", lambda *args: zoh_recurrence(*args, read_before=True), "x_{k−1} vs x_k"),
]


@pytest.mark.parametrize("exercise_id,wrong,hint", MISTAKES, ids=[f"{m[0]}-{m[2]}" for m in MISTAKES])
def test_typical_mistake_fails_with_its_hint(exercise_id, wrong, hint):
    result = check_exercise(exercise_id, wrong, verbose=False)
    assert result.status == "FAIL", result
    assert hint in result.message, result.message
    assert "np.float64" not in result.message and "output[" not in result.message


def test_singular_A_is_reported_by_case_name():
    # A⁻¹(e^{At} − I) is right for an invertible A but cannot handle the free mass (A singular)
    def with_inverse(A, B, C, t):
        I = torch.eye(A.shape[0], dtype=A.dtype)
        return C @ torch.linalg.solve(A, torch.linalg.matrix_exp(t[:, None, None] * A) - I) @ B

    result = check_exercise("01.2", with_inverse, verbose=False)
    assert result.status == "FAIL" and "pole at 0" in result.message
