"""The exercises of chapters 1–3: a correct answer (built from the package's teaching layer where
it has the piece) passes, each typical mistake fails with its hint, a stub is NOT ATTEMPTED.
(The expected answers come from SciPy / NumPy inside ssm_tutor.exercises.ch01–ch03.)"""

import math

import torch

from ssm_tutor.continuous import damped_oscillator
from ssm_tutor.convolution import causal_conv
from ssm_tutor.discretize import recurrence_diag, zoh
from ssm_tutor.exercises.ch03 import _blocks_without_tails, _fft_blocks_no_pad
from ssm_tutor.exercises import check_exercise
from exercise_answers import answer_tests, mistake_test


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


def lti_step(Ad, Bd, C, D, u_t, h):
    h = Ad * h + Bd * u_t[..., None]                  # (b, d, n)
    return (C * h).sum(-1) + D * u_t, h


def blocked_causal_conv(u, K, block):
    # the package's FFT convolution applied to each block, tails added into the next block
    y = torch.zeros(u.shape[0] + K.shape[0], dtype=u.dtype)
    for s in range(0, u.shape[0], block):
        seg = u[s:s + block]
        full = causal_conv(torch.cat([seg, torch.zeros(K.shape[0] - 1, dtype=u.dtype)]), K)  # the whole linear conv
        y[s:s + full.shape[0]] += full
    return y[:u.shape[0]]


def dplr_solve(d, p, q, b):
    b_d, p_d = b / d, p / d
    return b_d - p_d * (q.conj() @ b_d) / (1 + q.conj() @ p_d)


ANSWERS = {
    "01.1": fastest_settling,
    "01.2": step_response,
    "01.3": matrix_with_poles,
    "02.1": euler_max_step,
    "02.2": zoh_vs_euler_B,
    "02.3": zoh_recurrence,
    "03.1": lti_step,
    "03.2": blocked_causal_conv,
    "03.3": dplr_solve,
}


test_answer_passes, test_stub_is_not_attempted = answer_tests(ANSWERS)


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
    ("03.1", lambda Ad, Bd, C, D, u, h: ((C * h).sum(-1) + D * u, Ad * h + Bd * u[..., None]), "read from the new state"),
    ("03.1", lambda Ad, Bd, C, D, u, h: ((C * (Ad * h + Bd * u[..., None])).sum(-1), Ad * h + Bd * u[..., None]),
     "skip term"),
    ("03.2", _fft_blocks_no_pad, "wraps onto its start"),
    ("03.2", _blocks_without_tails, "overlap-add"),
    ("03.2", lambda u, K, block: torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(K, n=u.shape[0]), n=u.shape[0]),
     "y_k = Σ_j K_j u_{k−j}"),
    ("03.3", lambda d, p, q, b: b / d - (p / d) * (q @ (b / d)) / (1 + q @ (p / d)), "conjugate transpose"),
    ("03.3", lambda d, p, q, b: b / d, "rank-1 term"),
    ("03.3", lambda d, p, q, b: b / d + (p / d) * (q.conj() @ (b / d)) / (1 - q.conj() @ (p / d)), "sign"),
]


test_typical_mistake_fails_with_its_hint = mistake_test(MISTAKES)


def test_singular_A_is_reported_by_case_name():
    # A⁻¹(e^{At} − I) is right for an invertible A but cannot handle the free mass (A singular)
    def with_inverse(A, B, C, t):
        I = torch.eye(A.shape[0], dtype=A.dtype)
        return C @ torch.linalg.solve(A, torch.linalg.matrix_exp(t[:, None, None] * A) - I) @ B

    result = check_exercise("01.2", with_inverse, verbose=False)
    assert result.status == "FAIL" and "pole at 0" in result.message


def test_lti_step_over_a_sequence_is_the_package_recurrence():
    # the answer to 03.1, stepped token by token from h = 0, equals recurrence_diag's whole-sequence loop
    g = torch.Generator().manual_seed(5)
    b, d, n, L = 2, 3, 4, 12
    Ad, Bd, C = torch.rand(d, n, generator=g), torch.randn(d, n, generator=g), torch.randn(d, n, generator=g)
    D, u = torch.randn(d, generator=g), torch.randn(b, d, L, generator=g)
    h, ys = torch.zeros(b, d, n), []
    for t in range(L):
        y_t, h = lti_step(Ad, Bd, C, D, u[:, :, t], h)
        ys.append(y_t)
    y_ref, h_ref = recurrence_diag(Ad, Bd, C, D, u, return_last_state=True)
    assert torch.allclose(torch.stack(ys, -1), y_ref, atol=1e-6) and torch.allclose(h, h_ref, atol=1e-6)
