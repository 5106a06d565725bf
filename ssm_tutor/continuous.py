"""Stage 1: the continuous-time state space model.

Notebook: ``notebooks/01_continuous_ssm.ipynb``. Paper: Gu, Goel & Ré, *Efficiently
Modeling Long Sequences with Structured State Spaces* (S4, 2022), Section 2.1, eq. (1).

A linear time-invariant (LTI) state space model maps an input signal u(t) ∈ R^p to an
output y(t) ∈ R^q through a hidden state x(t) ∈ R^n:

    x'(t) = A x(t) + B u(t)          A: (n, n), B: (n, p)
    y(t)  = C x(t) + D u(t)          C: (q, n), D: (q, p)

Starting from rest, the output is the convolution of the input with the impulse response

    h(t) = C exp(A t) B  (t ≥ 0),    y(t) = ∫_0^t h(t - s) u(s) ds + D u(t),

and the system is (asymptotically) stable when every eigenvalue of A, every *pole*, has a
negative real part, because then every mode exp(λ t) decays.

Layout: like SciPy (``scipy.signal.lsim``), signals here are *time first*: an input sampled
at L times is a tensor of shape (L, p), the output (L, q), the impulse response (L, q, p).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "ContinuousSSM",
    "impulse_response",
    "simulate",
    "poles",
    "is_stable",
    "mass_spring_damper",
    "damped_oscillator",
    "oscillating_and_decaying",
]


#: half-precision dtypes: a continuous system is computed in float32 instead (the matrix exponential
#: in float16 overflows to inf/NaN, and eigenvalues are not implemented for it)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def as_real_matrix(name: str, x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Turn ``x`` (tensor, array or nested list) into a real floating 2-D tensor, or raise
    an error naming ``name``. Integer input becomes float64, float16/bfloat16 becomes float32;
    complex and boolean input are refused; nothing is reshaped."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_complex():
        raise TypeError(f"{name} must be real, got complex dtype {x.dtype}")
    if x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype torch.bool")
    if x.dtype in HALF_DTYPES:
        x = x.to(torch.float32)
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if dtype is not None:
        x = x.to(dtype)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix (2-D tensor), got shape {tuple(x.shape)}")
    return x


@dataclass(frozen=True)
class ContinuousSSM:
    """The continuous LTI system x' = A x + B u, y = C x + D u (S4 paper, eq. 1).

    Shapes: A (n, n), B (n, p), C (q, n), D (q, p); ``D=None`` means zeros. All four are
    converted to real floating tensors of A's dtype (integers become float64; float16 and
    bfloat16 become float32, since a matrix exponential in half precision overflows) and
    checked: complex or boolean matrices raise a TypeError, a wrong shape a ValueError naming
    the matrix and the shape it should have.
    """

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None = None

    def __post_init__(self):
        A = as_real_matrix("A", self.A)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square (n, n), got shape {tuple(A.shape)}")
        n = A.shape[0]
        B = as_real_matrix("B", self.B, A.dtype)
        if B.shape[0] != n:
            raise ValueError(f"B must have shape (n, p) with n = {n} rows like A, got shape {tuple(B.shape)}")
        C = as_real_matrix("C", self.C, A.dtype)
        if C.shape[1] != n:
            raise ValueError(f"C must have shape (q, n) with n = {n} columns like A, got shape {tuple(C.shape)}")
        p, q = B.shape[1], C.shape[0]
        D = A.new_zeros(q, p) if self.D is None else as_real_matrix("D", self.D, A.dtype)
        if D.shape != (q, p):
            raise ValueError(f"D must have shape (q, p) = ({q}, {p}), got shape {tuple(D.shape)}")
        for name, m in (("A", A), ("B", B), ("C", C), ("D", D)):
            if m.device != A.device:
                raise ValueError(f"{name} is on device {m.device} but A is on {A.device}")
            if not torch.all(torch.isfinite(m)):
                raise ValueError(f"{name} contains NaN or infinite values")
        # frozen dataclass: write the validated tensors through object.__setattr__
        for name, m in (("A", A), ("B", B), ("C", C), ("D", D)):
            object.__setattr__(self, name, m)

    @property
    def n(self) -> int:
        """State size."""
        return self.A.shape[0]

    @property
    def p(self) -> int:
        """Number of inputs."""
        return self.B.shape[1]

    @property
    def q(self) -> int:
        """Number of outputs."""
        return self.C.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    def poles(self) -> torch.Tensor:
        """The eigenvalues of A, shape (n,), complex. See :func:`poles`."""
        return poles(self)

    def is_stable(self) -> bool:
        """True when every pole has a negative real part. See :func:`is_stable`."""
        return is_stable(self)


def _check_ssm(ssm) -> None:
    if not isinstance(ssm, ContinuousSSM):
        raise TypeError(f"ssm must be a ContinuousSSM, got {type(ssm).__name__}")


def _check_times(t, ssm: ContinuousSSM, *, increasing: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=ssm.dtype)
    if t.dim() != 1:
        raise ValueError(f"t must be a 1-D tensor of times (L,), got shape {tuple(t.shape)}")
    if t.is_complex():
        raise TypeError(f"t must be real times, got complex dtype {t.dtype}")
    t = t.to(ssm.dtype)
    if not torch.all(torch.isfinite(t)):
        raise ValueError("t contains NaN or infinite values")
    if increasing and t.numel() > 1 and not torch.all(t[1:] > t[:-1]):
        raise ValueError("t must be strictly increasing")
    return t


def _real_signal(name: str, x, ssm: ContinuousSSM) -> torch.Tensor:
    """``x`` as a finite tensor of the system's dtype; a complex one is refused, not made real
    (casting would silently drop its imaginary part)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.is_complex():
        raise TypeError(f"{name} must be real (a ContinuousSSM is a real system), got complex dtype {x.dtype}; "
                        f"simulate its real and imaginary parts separately")
    x = x.to(ssm.dtype)
    if not torch.all(torch.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def impulse_response(ssm: ContinuousSSM, t) -> torch.Tensor:
    """h(t) = C exp(A t) B at the times ``t`` (shape (L,), t ≥ 0): returns (L, q, p).

    Entry [k, i, j] is output i at time t[k] after a unit impulse δ(t) on input j, from
    rest. The feed-through D contributes D δ(t), a Dirac spike at t = 0 that no sample
    can hold, so it is left out (as ``scipy.signal.impulse`` does).
    """
    _check_ssm(ssm)
    t = _check_times(t, ssm, increasing=False)
    if torch.any(t < 0):
        raise ValueError("t must be ≥ 0: the impulse response of a causal system is zero before the impulse")
    expAt = torch.linalg.matrix_exp(t[:, None, None] * ssm.A)      # (L, n, n)
    return ssm.C @ expAt @ ssm.B                                   # (L, q, p)


def _hold_matrices(A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, order: int):
    """Exact one-step matrices for an input held constant (order 0) or linear (order 1)
    over each interval dt[k]. One matrix exponential of an augmented generator per step:

        order 0:  exp(dt [[A, B], [0, 0]])        = [[Ā, Γ0], [0, I]]
        order 1:  exp([[dt A, dt B, 0], [0, 0, I], [0, 0, 0]]) = [[Ā, Γ0, Γ1], ...]

    so that x_{k+1} = Ā x_k + Γ0 u_k (+ Γ1 (u_{k+1} - u_k)).
    """
    n, p = B.shape
    m = n + p * (order + 1)
    M = A.new_zeros(dt.shape[0], m, m)                             # (L-1, m, m)
    M[:, :n, :n] = dt[:, None, None] * A
    M[:, :n, n:n + p] = dt[:, None, None] * B
    if order == 1:
        M[:, n:n + p, n + p:] = torch.eye(p, dtype=A.dtype, device=A.device)
    E = torch.linalg.matrix_exp(M)
    Ad = E[:, :n, :n]                                              # (L-1, n, n)
    G0 = E[:, :n, n:n + p]                                         # (L-1, n, p)
    G1 = E[:, :n, n + p:] if order == 1 else None                  # (L-1, n, p)
    return Ad, G0, G1


def simulate(ssm: ContinuousSSM, u, t, x0=None, *, hold: str = "linear", return_states: bool = False):
    """Solve x' = A x + B u, y = C x + D u for an input sampled at the times ``t``.

    Args:
        ssm: the system.
        u: (L, p) input samples u(t_k).
        t: (L,) strictly increasing sample times (need not be evenly spaced).
        x0: (n,) initial state, zeros by default.
        hold: how u behaves *between* samples: ``"linear"`` (straight lines between the
            samples, like ``scipy.signal.lsim``'s default ``interp=True``) or ``"zero"``
            (held constant from one sample to the next, ``lsim(..., interp=False)``).
        return_states: also return the states x(t_k), shape (L, n).

    Returns:
        y of shape (L, q) (and x of shape (L, n) when asked).

    Method: no step-size error at all. For either hold the ODE is linear with a
    polynomial input on each interval, so its exact solution over the interval is one
    matrix exponential of an augmented matrix (see ``_hold_matrices``); the only error
    left is how well the hold describes the true input between samples.
    """
    _check_ssm(ssm)
    if hold not in ("linear", "zero"):
        raise ValueError(f"hold must be 'linear' or 'zero', got {hold!r}")
    t = _check_times(t, ssm, increasing=True)
    u = _real_signal("u", u, ssm)
    if u.dim() != 2 or u.shape != (t.shape[0], ssm.p):
        raise ValueError(f"u must have shape (L, p) = ({t.shape[0]}, {ssm.p}) (one row per time in t), "
                         f"got shape {tuple(u.shape)}")
    if x0 is None:
        x = ssm.A.new_zeros(ssm.n)
    else:
        x = _real_signal("x0", x0, ssm)
        if x.shape != (ssm.n,):
            raise ValueError(f"x0 must have shape (n,) = ({ssm.n},), got shape {tuple(x.shape)}")
    steps = t[1:] - t[:-1]                                         # (L-1,)
    uniform = steps.numel() > 0 and bool(torch.all((steps - steps[0]).abs() <= 1e-12 * steps[0]))
    # an evenly spaced grid needs one matrix exponential, an uneven one needs one per step
    Ad, G0, G1 = _hold_matrices(ssm.A, ssm.B, steps[:1] if uniform else steps, order=1 if hold == "linear" else 0)
    kick = (G0 @ u[:-1, :, None])[..., 0]                          # Γ0 u_k: (L-1, n)
    if G1 is not None:
        kick = kick + (G1 @ (u[1:] - u[:-1])[:, :, None])[..., 0]  # + Γ1 (u_{k+1} - u_k)
    xs = [x]
    for k in range(t.shape[0] - 1):
        x = Ad[0 if uniform else k] @ x + kick[k]
        xs.append(x)
    X = torch.stack(xs)                                            # (L, n)
    y = X @ ssm.C.T + u @ ssm.D.T                                  # (L, q)
    return (y, X) if return_states else y


def poles(ssm: ContinuousSSM) -> torch.Tensor:
    """The poles of the system: the eigenvalues λ of A, shape (n,), complex.

    Each pole is a mode exp(λ t) of the free response: Re λ is its growth rate (decay when
    negative) and Im λ its angular frequency in rad per unit time.
    """
    _check_ssm(ssm)
    return torch.linalg.eigvals(ssm.A)


def is_stable(ssm: ContinuousSSM, tol: float = 0.0) -> bool:
    """True when every pole satisfies Re λ < -tol: every mode decays, so a bounded input
    gives a bounded output and the state forgets its initial condition."""
    return bool(torch.all(poles(ssm).real < -tol))


# ----------------------------------------------------------------------------------------
# Worked examples
# ----------------------------------------------------------------------------------------

def _example_args(dtype, **numbers_) -> dict:
    """Check a worked example's arguments: ``dtype`` float32 or float64 (an integer dtype would
    truncate c/m = 0.2 to 0, a bool one make it 1, a half one round it), each number a finite
    real. Returns the numbers as floats."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    for name, v in numbers_.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite real number, got {v!r}")
    return {name: float(v) for name, v in numbers_.items()}


def mass_spring_damper(m: float = 1.0, k: float = 1.0, c: float = 0.2, dtype=torch.float64) -> ContinuousSSM:
    """A mass m on a spring (stiffness k) with a damper (coefficient c), pushed by a force u.

    Newton: m z'' = -k z - c z' + u. With the state x = (z, z') (position, velocity):

        A = [[0, 1], [-k/m, -c/m]],  B = [[0], [1/m]],  C = [[1, 0]] (we observe z),  D = 0.

    Poles: λ = (-c ± sqrt(c² - 4 m k)) / (2m): underdamped (oscillating) when c² < 4mk.
    """
    m, k, c = _example_args(dtype, m=m, k=k, c=c).values()
    for name, v, lo in (("m", m, "> 0"), ("k", k, "≥ 0"), ("c", c, "≥ 0")):
        if v <= 0 if name == "m" else v < 0:
            raise ValueError(f"{name} must be {lo}, got {v}")
    A = torch.tensor([[0.0, 1.0], [-k / m, -c / m]], dtype=dtype)
    B = torch.tensor([[0.0], [1.0 / m]], dtype=dtype)
    C = torch.tensor([[1.0, 0.0]], dtype=dtype)
    return ContinuousSSM(A, B, C)


def damped_oscillator(sigma: float, omega: float, dtype=torch.float64) -> ContinuousSSM:
    """The 2-state system whose poles are exactly -sigma ± i omega.

    A = [[-sigma, omega], [-omega, -sigma]] rotates the state at omega rad per unit time while
    shrinking it by exp(-sigma t); B = (1, 0)ᵀ, C = (1, 0). Its impulse response is
    h(t) = exp(-sigma t) cos(omega t). (sigma < 0 makes it grow: an unstable pole pair.)
    """
    sigma, omega = _example_args(dtype, sigma=sigma, omega=omega).values()
    A = torch.tensor([[-sigma, omega], [-omega, -sigma]], dtype=dtype)
    B = torch.tensor([[1.0], [0.0]], dtype=dtype)
    C = torch.tensor([[1.0, 0.0]], dtype=dtype)
    return ContinuousSSM(A, B, C)


def oscillating_and_decaying(sigma: float = 0.3, omega: float = 4.0, lam: float = 1.0,
                             dtype=torch.float64) -> ContinuousSSM:
    """A 3-state system with one oscillating mode (poles -sigma ± i omega) and one purely
    decaying mode (pole -lam), both driven by the input and summed in the output:

        h(t) = exp(-sigma t) cos(omega t) + exp(-lam t).
    """
    sigma, omega, lam = _example_args(dtype, sigma=sigma, omega=omega, lam=lam).values()
    A = torch.tensor([[-sigma, omega, 0.0], [-omega, -sigma, 0.0], [0.0, 0.0, -lam]], dtype=dtype)
    B = torch.tensor([[1.0], [0.0], [1.0]], dtype=dtype)
    C = torch.tensor([[1.0, 0.0, 1.0]], dtype=dtype)
    return ContinuousSSM(A, B, C)
