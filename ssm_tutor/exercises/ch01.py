"""Exercises of chapter 1 (notebooks/01_continuous_ssm.ipynb): the continuous SSM.

01.1  choose the damping that settles fastest: expected values from the eigenvalues SciPy computes
      (``scipy.linalg.eigvals``) for a fine sweep and a bisection over the damping c;
01.2  the step response ∫_0^t C e^{Aτ} B dτ, including a system with a pole at 0: expected values
      from ``scipy.signal.lsim`` with a constant input (exact for a constant input);
01.3  a real matrix A with given poles: the learner's A is judged by its eigenvalues
      (``scipy.linalg.eigvals``), so any real A with the right spectrum passes.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.signal
import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, close, compare_answer


# ----------------------------------------------------------------------------------------------
# 01.1 the damping with the fastest settling
# ----------------------------------------------------------------------------------------------

def _msd_A(m: float, k: float, c: float) -> np.ndarray:
    return np.array([[0.0, 1.0], [-k / m, -c / m]])


def _slowest_decay(m: float, k: float, c: float) -> float:
    """The decay rate of the slowest mode, min over poles of −Re λ (SciPy's eigenvalues)."""
    return float(np.min(-scipy.linalg.eigvals(_msd_A(m, k, c)).real))


def _fastest_settling_damping(m: float, k: float) -> tuple[float, float]:
    """Maximise the slowest decay rate over c ≥ 0, numerically: the rate rises while the poles are
    a complex pair (Re λ = −c/2m) and falls once they split on the real axis, so bisect on the
    sign of its slope. Returns (c, rate) from SciPy's eigenvalues, never from a closed form."""
    lo, hi = 0.0, 1.0
    while _slowest_decay(m, k, 2 * hi) > _slowest_decay(m, k, hi):     # bracket the peak
        hi *= 2
    hi *= 2
    for _ in range(200):                                                  # ternary-like bisection
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if _slowest_decay(m, k, a) < _slowest_decay(m, k, b):
            lo = a
        else:
            hi = b
        if hi - lo < 1e-13 * hi:
            break
    c = (lo + hi) / 2
    return c, _slowest_decay(m, k, c)


@exercise("01.1", "the damping that settles fastest", atol=1e-9, rtol=1e-6, compare=compare_answer)
def settling_cases():
    for m, k in [(0.5, 3.0), (1.0, 4.0), (2.0, 8.0), (3.0, 0.75)]:
        c, rate = _fastest_settling_damping(m, k)
        mistakes = (
            Mistake("c = √(mk) is half the answer: the poles meet when the discriminant c² − 4mk of "
                    "m λ² + c λ + k = 0 vanishes", looks=lambda got, m=m, k=k, c=c: close(got[0], math.sqrt(m * k))
                    and not close(got[0], c)),
            Mistake("check the units: c is in N·s/m, so it needs both m and k (the poles solve m λ² + c λ + k = 0)",
                    looks=lambda got, m=m, k=k, c=c: close(got[0], 2 * math.sqrt(k / m)) and not close(got[0], c)),
            Mistake("the rate is −Re λ of the double pole λ = −c/(2m), not c/m",
                    looks=lambda got, m=m, c=c: close(got[1], c / m)),
            Mistake("more damping is not faster: once c passes the critical value the two poles split on "
                    "the real axis and one of them moves back toward 0, so the slowest mode slows down",
                    looks=lambda got, c=c: float(got[0]) > 1.5 * c),
        )
        yield f"m={m}, k={k}", (m, k), {}, Answer(
            (c, rate), names=("c (the damping)", "rate (decay rate of the slowest mode)"), mistakes=mistakes,
            hint="plot the slowest decay rate min(−Re λ) against c (poles from torch.linalg.eigvals) and see "
                 "where it peaks")


# ----------------------------------------------------------------------------------------------
# 01.2 the step response
# ----------------------------------------------------------------------------------------------

def _lsim_step(A, B, C, t) -> np.ndarray:
    """s(t) (L, q, p): the response to a unit step on each input, by scipy.signal.lsim."""
    L, p, q = len(t), B.shape[1], C.shape[0]
    s = np.zeros((L, q, p))
    for j in range(p):
        _, y, _ = scipy.signal.lsim((A, B[:, j:j + 1], C, np.zeros((q, 1))), np.ones(L), t)
        s[:, :, j] = y.reshape(L, q)
    return s


@exercise("01.2", "the step response", atol=1e-8, rtol=1e-6, compare=compare_answer)
def step_cases():
    rng = np.random.default_rng(12)
    systems = []
    for n, p, q in [(1, 1, 1), (2, 1, 1), (4, 2, 3)]:
        systems.append((f"n={n}, p={p}, q={q}", rng.standard_normal((n, n)) - 1.5 * np.eye(n),
                        rng.standard_normal((n, p)), rng.standard_normal((q, n))))
    # a pole at 0: a mass with no spring and no damper integrates the force twice, A is singular
    systems.append(("a pole at 0 (A singular: a free mass)", np.array([[0.0, 1.0], [0.0, 0.0]]),
                    np.array([[0.0], [1.0]]), np.array([[1.0, 0.0]])))
    t = np.linspace(0.0, 3.0, 16)
    for name, A, B, C in systems:
        expected = torch.tensor(_lsim_step(A, B, C, t))
        At, Bt, Ct, tt = (torch.tensor(x) for x in (A, B, C, t))
        impulse = Ct @ torch.linalg.matrix_exp(tt[:, None, None] * At) @ Bt
        mistakes = (
            Mistake("that is the impulse response C e^{At} B, the derivative of the step response; integrate it "
                    "from 0 to t", impulse),
            Mistake("at t = 0 the step response must be 0 (nothing has happened yet): did you forget the − I in "
                    "A⁻¹(e^{At} − I)?", looks=lambda got: not close(got[0], torch.zeros_like(got[0]), atol=1e-6)),
            Mistake("the sign is flipped: a stable system settles at the DC gain −C A⁻¹ B",
                    looks=lambda got, e=expected: close(got, -e, atol=1e-6)),
        )
        hint = ("A is singular here, so A⁻¹ does not exist: compute ∫_0^t e^{Aτ} dτ B without it, e.g. from the "
                "matrix exponential of the block matrix t·[[A, B], [0, 0]] (its top-right block)") \
            if "singular" in name else "s(t) = ∫_0^t C e^{Aτ} B dτ"
        yield name, (At, Bt, Ct, tt), {}, Answer(expected, names=("s (the step response, shape (L, q, p))",),
                                                 mistakes=mistakes, hint=hint)


# ----------------------------------------------------------------------------------------------
# 01.3 a real matrix with given poles
# ----------------------------------------------------------------------------------------------

def _sorted_poles(z: np.ndarray) -> np.ndarray:
    return np.array(sorted(np.asarray(z, dtype=np.complex128), key=lambda w: (round(w.real, 8), round(w.imag, 8))))


def _swapped_signs(z: torch.Tensor) -> np.ndarray:
    """The eigenvalues of the mistaken blocks [[σ, ω], [ω, σ]]: σ ± ω for each pair σ ± iω."""
    out = []
    for w in z.tolist():
        if w.imag > 0:
            out += [w.real + w.imag, w.real - w.imag]
        elif w.imag == 0:
            out.append(w.real)
    return np.array(out, dtype=np.complex128)


def _eigenvalues_of_real_matrix(n: int):
    def view(A):
        if not isinstance(A, torch.Tensor):
            raise ValueError(f"A: expected a torch tensor, got {type(A).__name__}")
        if A.is_complex():
            raise ValueError("A is complex; a real system needs a real A")
        if A.shape != (n, n):
            raise ValueError(f"A: expected shape ({n}, {n}) (one state per pole), got shape {tuple(A.shape)}")
        return torch.tensor(_sorted_poles(scipy.linalg.eigvals(A.detach().double().numpy())))
    return view


@exercise("01.3", "a real matrix with given poles", atol=1e-8, rtol=1e-6, compare=compare_answer)
def poles_cases():
    cases = {
        "two real poles": [-1.0, -3.0],
        "one oscillating pair": [-0.5 + 3j, -0.5 - 3j],
        "a pair and a real pole": [-0.3 + 4j, -0.3 - 4j, -1.0],
        "two pairs and a growing real pole": [-0.1 + 1j, -0.1 - 1j, -2 + 0.5j, -2 - 0.5j, 0.2],
    }
    for name, poles in cases.items():
        z = torch.tensor(poles, dtype=torch.complex128)
        n = len(poles)
        mistakes = (
            Mistake("each complex pole needs its conjugate partner in one real 2×2 block [[σ, ω], [−ω, σ]]; "
                    "torch.diag of complex poles is not a real matrix", looks=lambda got: got.is_complex()),
            Mistake("a conjugate pair σ ± iω makes ONE 2×2 block, not one block per pole",
                    looks=lambda got, n=n: got.shape[0] > n),
            Mistake("[[σ, ω], [ω, σ]] has the real eigenvalues σ ± ω: the rotation needs opposite signs, "
                    "[[σ, ω], [−ω, σ]]",
                    looks=lambda got, z=z: bool(torch.any(z.imag != 0))
                    and close(_sorted_poles(scipy.linalg.eigvals(got.numpy())), _sorted_poles(_swapped_signs(z)))),
        )
        yield name, (z,), {}, Answer(torch.tensor(_sorted_poles(z.numpy())),
                                     names=("the eigenvalues of your A (sorted)",), mistakes=mistakes,
                                     view=_eigenvalues_of_real_matrix(n),
                                     hint="a real 2×2 block [[a, b], [c, d]] has eigenvalues with trace a + d and "
                                          "determinant ad − bc: match them to 2σ and σ² + ω²")
