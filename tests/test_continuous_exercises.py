"""The exercises of chapters 1–3: the package's own functions pass, a wrong answer fails, a stub is
NOT ATTEMPTED. (The expected answers come from SciPy / NumPy inside ssm_tutor.exercises.ch01–ch03.)"""

import pytest
import torch

from ssm_tutor.continuous import ContinuousSSM, impulse_response, is_stable, mass_spring_damper
from ssm_tutor.convolution import causal_conv, ssm_kernel
from ssm_tutor.discretize import bilinear, recurrence, zoh_diag
from ssm_tutor.exercises import check_exercise


def _msd(m, k, c):
    s = mass_spring_damper(m, k, c)
    return s.A, s.B, s.C


def _zoh_diag(a, b, dt):
    Ad, Bd = zoh_diag(a[None], b[None], dt)
    return Ad[0], Bd[0]


ANSWERS = {
    "01.1": _msd,
    "01.2": lambda A, B, C, t: impulse_response(ContinuousSSM(A, B, C), t),
    "01.3": lambda A: is_stable(ContinuousSSM(A, torch.ones(A.shape[0], 1, dtype=A.dtype), torch.ones(1, A.shape[0], dtype=A.dtype))),
    "02.1": _zoh_diag,
    "02.2": bilinear,
    "02.3": lambda Ad, Bd, C, u: recurrence(Ad, Bd, C, None, u[:, None])[:, 0],
    "03.1": lambda Ad, Bd, C, L: ssm_kernel(Ad, Bd, C, L)[:, 0, 0],
    "03.2": causal_conv,
}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_package_answer_passes(exercise_id, capsys):
    assert check_exercise(exercise_id, ANSWERS[exercise_id]).passed
    assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_stub_is_not_attempted(exercise_id):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"


@pytest.mark.parametrize("exercise_id,wrong", [
    ("01.1", lambda m, k, c: (lambda A, B, C: (A.T, B, C))(*_msd(m, k, c))),             # A transposed
    ("01.2", lambda A, B, C, t: impulse_response(ContinuousSSM(A.T, B, C), t)),          # transposed A
    ("01.3", lambda A: bool(torch.all(torch.diagonal(A) < 0))),                             # diagonal is not the spectrum
    ("02.1", lambda a, b, dt: (torch.exp(dt * a), dt * b)),                                 # Euler's B̄, not ZOH's
    ("02.2", lambda A, B, dt: (torch.eye(A.shape[0], dtype=A.dtype) + dt * A, dt * B)),     # forward Euler
    ("02.3", lambda Ad, Bd, C, u: recurrence(Ad, Bd, C, None, u[:, None])[:, 0][:-1]),      # wrong length
    ("03.1", lambda Ad, Bd, C, L: ssm_kernel(Ad, Bd, C, L + 1)[1:, 0, 0]),                  # off by one power of Ā
    ("03.2", lambda u, K: torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(K), n=u.shape[0])),  # circular, no padding
])
def test_wrong_answer_fails(exercise_id, wrong):
    result = check_exercise(exercise_id, wrong, verbose=False)
    assert result.status == "FAIL", result
