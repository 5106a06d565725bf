"""Exercises of chapter 2 (notebooks/02_discretization.ipynb): discretization.

02.1  the largest stable forward-Euler step for a given A: expected values by bisection on the
      spectral radius (``scipy.linalg.eigvals``) of ``cont2discrete(..., method="euler")``'s Ā;
02.2  how ZOH's B̄ approaches Δ B as Δ → 0 (the order) and the step where they part by a given
      relative amount: expected values from SciPy's ``exprel`` (the ratio of ``cont2discrete``'s
      "zoh" and "euler" B̄, checked) and ``scipy.optimize.brentq``;
02.3  zero-order hold with a different step for every token: expected values from
      ``scipy.integrate.solve_ivp``, one integration per interval with the input held constant.
"""

from __future__ import annotations

import numpy as np
import scipy.integrate
import scipy.linalg
import scipy.optimize
import scipy.signal
import scipy.special
import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, close, compare_answer


def _discretize(A, B, dt, method):
    n, p = B.shape
    return scipy.signal.cont2discrete((A, B, np.eye(n), np.zeros((n, p))), dt, method=method)[:2]


# ----------------------------------------------------------------------------------------------
# 02.1 the largest stable Euler step
# ----------------------------------------------------------------------------------------------

def _euler_limit(A: np.ndarray) -> float:
    """The step where the spectral radius of Euler's Ā reaches 1 (stable just below it), by bisection
    on the eigenvalues SciPy computes. Ā = I + ΔA is SciPy's "euler" matrix (asserted once)."""
    Ad, _ = _discretize(A, np.zeros((A.shape[0], 1)), 0.1, "euler")
    assert np.allclose(Ad, np.eye(A.shape[0]) + 0.1 * A, rtol=0, atol=1e-15)
    radius = lambda dt: float(np.max(np.abs(scipy.linalg.eigvals(np.eye(A.shape[0]) + dt * A))))
    lo, hi = 0.0, 1e-3
    while radius(hi) < 1:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-13 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if radius(mid) < 1 else (lo, mid)
    return (lo + hi) / 2


@exercise("02.1", "the largest stable forward-Euler step", atol=1e-10, rtol=1e-7, compare=compare_answer)
def euler_step_cases():
    systems = {
        "the stiff system diag(−1, −60)": np.diag([-1.0, -60.0]),
        "the mass–spring–damper m=1, k=16, c=1": np.array([[0.0, 1.0], [-16.0, -1.0]]),
        "a fast real pole and a slow oscillation": np.array([[-6.0, 0, 0], [0, -0.4, 3.0], [0, -3.0, -0.4]]),
        "a non-normal 3-state system": np.array([[-2.0, 5.0, 0.0], [0.0, -0.5, 2.0], [0.0, -2.0, -0.5]]),
    }
    for name, A in systems.items():
        lam = scipy.linalg.eigvals(A)
        mistakes = (
            Mistake("an oscillating pole leaves the disc |1 + λΔ| < 1 sooner than its real part alone says: "
                    "|1 + λΔ|² = (1 + Δ Re λ)² + (Δ Im λ)² includes the imaginary part",
                    gives=float(np.min(2 / np.abs(lam.real)))),
            Mistake("the disc has radius 1/Δ around −1/Δ, so a real pole −a stays inside up to Δ = 2/a, not 1/a",
                    gives=float(np.min(2 * np.abs(lam.real) / np.abs(lam) ** 2)) / 2),
            Mistake("every pole must stay inside: take the smallest limit over the poles, not the largest",
                    gives=float(np.max(2 * np.abs(lam.real) / np.abs(lam) ** 2))),
        )
        yield name, (torch.tensor(A),), {}, Answer(
            _euler_limit(A), names=("dt_max",), mistakes=mistakes,
            hint="Euler maps a pole λ to 1 + λΔ; find, for each pole, where |1 + λΔ| = 1")


# ----------------------------------------------------------------------------------------------
# 02.2 where ZOH's B̄ and Δ B part
# ----------------------------------------------------------------------------------------------

def _zoh_over_euler(a: float, dt: float) -> float:
    """ZOH's B̄ divided by Euler's Δ B for the scalar system x' = a x + u: SciPy's relative exponential
    exprel(aΔ) = (e^{aΔ} − 1)/(aΔ), which is what cont2discrete's two B̄ give (asserted at one point)."""
    return float(scipy.special.exprel(a * dt))


def _parting_step(a: float, tol: float, relative_to: str = "euler") -> float:
    zoh_B = _discretize(np.array([[a]]), np.array([[1.0]]), 0.3, "zoh")[1][0, 0]
    euler_B = _discretize(np.array([[a]]), np.array([[1.0]]), 0.3, "euler")[1][0, 0]
    assert abs(zoh_B / euler_B - _zoh_over_euler(a, 0.3)) < 1e-14

    def gap(dt):
        r = _zoh_over_euler(a, dt)
        return (1 - r) if relative_to == "euler" else (1 / r - 1)
    return scipy.optimize.brentq(lambda dt: gap(dt) - tol, 1e-12, 1e4, xtol=1e-15, rtol=1e-13)


@exercise("02.2", "ZOH's B̄ against Δ B: the order, and where they part", atol=1e-10, rtol=1e-6,
          compare=compare_answer)
def parting_cases():
    for a_list, tol in [([-1.0], 0.01), ([-2.0, -0.5], 0.1), ([-1.0, -4.0, -16.0], 0.3)]:
        a = torch.tensor(a_list, dtype=torch.float64)
        steps = torch.tensor([_parting_step(x, tol) for x in a_list], dtype=torch.float64)
        mistakes = (
            Mistake("that is the first-order estimate 2·tol/|a| (from 1 − Δ|a|/2 + …): close, but the question asks "
                    "where the exact ratio reaches 1 − tol; solve for it (bisection)",
                    looks=lambda got, a=a: close(got[1], 2 * tol / a.abs(), rtol=1e-6)),
            Mistake("that is the point in units of Δ|a|; divide by |a| to get the step Δ",
                    looks=lambda got, a=a, s=steps: close(got[1], s * a.abs(), rtol=1e-5) and not close(got[1], s)),
            Mistake("measure the gap relative to Euler's Δ B: 1 − B̄_zoh / (Δ B), as plotted above",
                    gives=(1, torch.tensor([_parting_step(x, tol, "zoh") for x in a_list], dtype=torch.float64))),
            Mistake("the order is the integer r in gap ≈ c·Δ^r: fit log(gap) against log(Δ) at small Δ and round "
                    "the slope", looks=lambda got: not close(float(got[0]), 1.0)),
        )
        yield f"a={a_list}, tol={tol}", (a, tol), {}, Answer(
            (1, steps), names=("order (r in 1 − B̄_zoh/(ΔB) ≈ c·Δ^r)", "dt_part (n,)"), mistakes=mistakes,
            hint="the gap 1 − B̄_zoh/(ΔB) grows with Δ (plot it): bisect on Δ for each a until it equals tol")


# ----------------------------------------------------------------------------------------------
# 02.3 ZOH with a step per token
# ----------------------------------------------------------------------------------------------

def _solve_ivp_steps(A, B, C, dts, u) -> np.ndarray:
    """y_k = C x(t_k) at the end of each step, input u_k held during step k, from x(0) = 0."""
    x = np.zeros(A.shape[0])
    ys = []
    for dt, uk in zip(dts, u):
        sol = scipy.integrate.solve_ivp(lambda t, s: A @ s + B[:, 0] * uk, (0.0, dt), x, method="DOP853",
                                        rtol=1e-12, atol=1e-14)
        x = sol.y[:, -1]
        ys.append(float(C[0] @ x))
    return np.array(ys)


def _zoh_steps_mistake(A, B, C, dts, u, *, shift=0, euler_B=False, read_before=False):
    """What a typical mistake computes: the step of a neighbouring token, Euler's B̄, or y read
    from the state before the update."""
    A, B, C, u = (torch.as_tensor(x) for x in (A, B, C, u))
    dts = torch.roll(torch.as_tensor(dts), shift)
    n = A.shape[0]
    x = torch.zeros(n, dtype=torch.float64)
    ys = []
    for dt, uk in zip(dts.tolist(), u):
        M = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        M[:n, :n], M[:n, n:] = A, B
        E = torch.linalg.matrix_exp(dt * M)
        Bd = dt * B if euler_B else E[:n, n:]
        x_new = E[:n, :n] @ x + Bd[:, 0] * uk
        ys.append(C[0] @ (x if read_before else x_new))
        x = x_new
    return torch.stack(ys)


@exercise("02.3", "zero-order hold with a step per token", atol=1e-8, rtol=1e-6, compare=compare_answer)
def zoh_steps_cases():
    rng = np.random.default_rng(23)
    for n, L in [(1, 6), (2, 12), (4, 20)]:
        A = rng.standard_normal((n, n)) - 1.5 * np.eye(n)
        B, C = rng.standard_normal((n, 1)), rng.standard_normal((1, n))
        dts = rng.uniform(0.01, 1.5, L)                       # very uneven steps: one per token
        u = rng.standard_normal(L)
        args = tuple(torch.tensor(x) for x in (A, B, C, dts, u))
        mistakes = (
            Mistake("step k uses its own Δ_k: the input u_k is held during step k, which lasts dts[k] "
                    "(an index shifted by one)", looks=lambda got, a=args: close(got, _zoh_steps_mistake(*a, shift=1), atol=1e-8)
                    or close(got, _zoh_steps_mistake(*a, shift=-1), atol=1e-8)),
            Mistake("y_k reads the state after u_k has entered: update x first, then y_k = C x_k "
                    "(that is the x_{k−1} vs x_k convention of this notebook)",
                    gives=_zoh_steps_mistake(*args, read_before=True)),
            Mistake("that is Euler's B̄ = Δ_k B; the zero-order hold integrates e^{Aτ} over the step",
                    gives=_zoh_steps_mistake(*args, euler_B=True)),
            Mistake("one Δ for all tokens is not enough here: discretize with each token's own Δ_k",
                    looks=lambda got, a=args: close(got, _zoh_steps_mistake(*a[:3], torch.full_like(a[3], a[3].mean().item()), a[4]),
                                                    atol=1e-8)),
        )
        yield f"n={n}, L={L}", args, {}, Answer(torch.tensor(_solve_ivp_steps(A, B, C, dts, u)),
                                                names=("y (L,)",), mistakes=mistakes,
                                                hint="for each k: (Ā_k, B̄_k) = zoh(A, B, dts[k]), then "
                                                     "x_k = Ā_k x_{k−1} + B̄_k u_k and y_k = C x_k")
