"""Stage 2: discretization. From x' = A x + B u to the recurrence x_k = Ā x_{k-1} + B̄ u_k.

Notebook: ``notebooks/02_discretization.ipynb``. Papers: S4 (Gu et al. 2022) Section 2.3,
eq. (3) (bilinear); Mamba (Gu & Dao 2023) Section 2, eq. (4) (zero-order hold) and
Section 3.5 / Appendix (ZOH for A, the simplified Euler step B̄ = Δ B).

A sequence u_0, u_1, … is read as samples of a signal taken every Δ (``dt``). Each
method turns the continuous (A, B) into discrete (Ā, B̄):

    zero-order hold (exact when u is constant over each step):
        Ā = exp(Δ A),              B̄ = A⁻¹ (exp(Δ A) − I) B
    bilinear (trapezoid rule, Tustin):
        Ā = (I − Δ/2 A)⁻¹ (I + Δ/2 A),   B̄ = (I − Δ/2 A)⁻¹ Δ B
    forward Euler:
        Ā = I + Δ A,               B̄ = Δ B

and the discrete system runs x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k, from x_{-1} = 0.

Two layouts:
  * dense: A (n, n), B (n, p), dt a positive number; ``recurrence`` takes u (L, p) or
    (batch, L, p) (time first, like SciPy) and returns (L, q) or (batch, L, q);
  * diagonal, Mamba's layout: d independent channels, each with a diagonal A stored as its
    diagonal, so A, B, C are (d, n) and dt is (d,), one step size per channel (or a single
    positive number used by every channel); ``recurrence_diag`` takes u (batch, d, L) and
    returns (batch, d, L). Complex diagonals (S4D-Lin) are allowed.

Note on SciPy: ``scipy.signal.cont2discrete(..., method="bilinear")`` also changes C and D
(C(I − Δ/2 A)⁻¹ and D + Δ/2 C B̄); S4 and this module keep C and D as they are and only
discretize the state equation, so compare Ā and B̄ only.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

__all__ = [
    "zoh", "bilinear", "euler", "METHODS",
    "zoh_diag", "bilinear_diag", "euler_diag", "mamba_diag", "DIAG_METHODS",
    "recurrence", "recurrence_diag",
    "convergence_order",
]


# ----------------------------------------------------------------------------------------
# argument checks: every error names the argument, what was expected and what came
# ----------------------------------------------------------------------------------------

def _tensor(name: str, x, dtype=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=dtype)
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must be a floating-point (or complex) tensor, got dtype {x.dtype}")
    if not torch.all(torch.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_dense(A, B):
    A, B = _tensor("A", A), _tensor("B", B)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix (n, n), got shape {tuple(A.shape)}")
    n = A.shape[0]
    if B.dim() != 2 or B.shape[0] != n:
        raise ValueError(f"B must have shape (n, p) with n = {n} like A, got shape {tuple(B.shape)}")
    if B.dtype != A.dtype or B.device != A.device:
        raise ValueError(f"B must have A's dtype and device ({A.dtype}, {A.device}), got ({B.dtype}, {B.device})")
    return A, B


def _dense_system(A, B):
    """:func:`_check_dense`, with float16/bfloat16 widened to float32 (complex32 to complex64):
    the matrix exponential and the linear solves overflow or are not implemented in half
    precision, so a half-precision system is discretized, and returned, in single precision."""
    A, B = _tensor("A", A), _tensor("B", B)
    widen = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64}
    return _check_dense(A.to(widen.get(A.dtype, A.dtype)), B.to(widen.get(B.dtype, B.dtype)))


def _check_dt_scalar(dt) -> float:
    if isinstance(dt, torch.Tensor):
        if dt.numel() != 1:
            raise ValueError(f"dt must be a single positive number for a dense A, got shape {tuple(dt.shape)}")
        dt = dt.item()
    if not isinstance(dt, numbers.Real) or isinstance(dt, bool):
        raise TypeError(f"dt must be a positive number, got {type(dt).__name__}")
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be > 0 (the step between samples), got {dt}")
    return float(dt)


def _check_diag(A, B, dt):
    """A, B: (d, n); dt: (d,) or a positive number. Returns A, B, dt as a (d, 1) tensor."""
    A, B = _tensor("A", A), _tensor("B", B)
    if A.dim() != 2:
        raise ValueError(f"A must hold the diagonals of d systems, shape (d, n), got shape {tuple(A.shape)}")
    d, n = A.shape
    if B.shape != (d, n):
        raise ValueError(f"B must have shape (d, n) = ({d}, {n}) like A, got shape {tuple(B.shape)}")
    real = A.real.dtype if A.is_complex() else A.dtype
    if isinstance(dt, torch.Tensor) and dt.dim() > 0:
        dt = _tensor("dt", dt)
        if dt.is_complex():
            raise TypeError("dt must be real")
        if dt.shape != (d,):
            raise ValueError(f"dt must have shape (d,) = ({d},) (one step per channel) or be one number, "
                             f"got shape {tuple(dt.shape)}")
        if torch.any(dt <= 0):
            raise ValueError(f"dt must be > 0 in every channel, got minimum {dt.min().item():.3g}")
        dt = dt.to(device=A.device, dtype=real)
    else:
        dt = torch.full((d,), _check_dt_scalar(dt), dtype=real, device=A.device)
    return A, B, dt[:, None]                                       # dt: (d, 1)


# ----------------------------------------------------------------------------------------
# dense A (n, n), B (n, p)
# ----------------------------------------------------------------------------------------

def zoh(A, B, dt):
    """Zero-order hold: Ā = exp(Δ A), B̄ = ∫_0^Δ exp(s A) ds B = A⁻¹(exp(Δ A) − I) B.

    Computed without inverting A (so a singular A is fine) from one matrix exponential:
    exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, I]]. Shapes: A (n, n), B (n, p) -> (n, n), (n, p).
    The dense methods compute float16/bfloat16 systems in float32 and return float32.
    """
    A, B = _dense_system(A, B)
    dt = _check_dt_scalar(dt)
    n, p = B.shape
    M = A.new_zeros(n + p, n + p)
    M[:n, :n], M[:n, n:] = A, B
    E = torch.linalg.matrix_exp(dt * M)
    return E[:n, :n], E[:n, n:]


def bilinear(A, B, dt):
    """Bilinear (Tustin, trapezoid) rule, S4 eq. (3):
    Ā = (I − Δ/2 A)⁻¹(I + Δ/2 A), B̄ = (I − Δ/2 A)⁻¹ Δ B. Shapes as :func:`zoh`."""
    A, B = _dense_system(A, B)
    dt = _check_dt_scalar(dt)
    I = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    left = I - dt / 2 * A
    return torch.linalg.solve(left, I + dt / 2 * A), torch.linalg.solve(left, dt * B)


def euler(A, B, dt):
    """Forward Euler: x_k ≈ x_{k-1} + Δ (A x_{k-1} + B u): Ā = I + Δ A, B̄ = Δ B.
    (``scipy.signal.cont2discrete``'s ``"euler"``, i.e. ``gbt`` with alpha = 0.)"""
    A, B = _dense_system(A, B)
    dt = _check_dt_scalar(dt)
    return torch.eye(A.shape[0], dtype=A.dtype, device=A.device) + dt * A, dt * B


METHODS: dict[str, Callable] = {"zoh": zoh, "bilinear": bilinear, "euler": euler}


# ----------------------------------------------------------------------------------------
# diagonal A in Mamba's layout: A, B (d, n), dt (d,)
# ----------------------------------------------------------------------------------------

def zoh_diag(A, B, dt):
    """ZOH for d diagonal systems: Ā = exp(Δ A), B̄ = (exp(Δ A) − 1)/A · B, elementwise.

    A, B: (d, n) (real or complex); dt: (d,) or one number. Returns Ā, B̄ of shape (d, n).
    Where A = 0 the limit B̄ = Δ B is used.
    """
    A, B, dt = _check_diag(A, B, dt)
    dtA = dt * A                                                   # (d, n)
    Ad = torch.exp(dtA)
    safe = torch.where(A == 0, torch.ones_like(A), A)
    Bd = torch.where(A == 0, dt * B, torch.expm1(dtA) / safe * B)  # (d, n)
    return Ad, Bd


def bilinear_diag(A, B, dt):
    """Bilinear rule for d diagonal systems: Ā = (1 + Δ/2 A)/(1 − Δ/2 A), B̄ = Δ B/(1 − Δ/2 A).
    Shapes as :func:`zoh_diag`."""
    A, B, dt = _check_diag(A, B, dt)
    left = 1 - dt / 2 * A
    return (1 + dt / 2 * A) / left, dt * B / left


def euler_diag(A, B, dt):
    """Forward Euler for d diagonal systems: Ā = 1 + Δ A, B̄ = Δ B. Shapes as :func:`zoh_diag`."""
    A, B, dt = _check_diag(A, B, dt)
    return 1 + dt * A, dt * B


def mamba_diag(A, B, dt):
    """Mamba's choice (paper Section 3.5, Algorithm 2): ZOH for A, Euler for B:
    Ā = exp(Δ A), B̄ = Δ B. Shapes as :func:`zoh_diag`.

    B̄ = Δ B is the first-order term of ZOH's (exp(Δ A) − 1)/A · B = Δ B (1 + Δ A/2 + …), so
    the two agree as Δ A → 0; it is cheaper and needs no division by A.
    """
    A, B, dt = _check_diag(A, B, dt)
    return torch.exp(dt * A), dt * B


DIAG_METHODS: dict[str, Callable] = {"zoh": zoh_diag, "bilinear": bilinear_diag, "euler": euler_diag,
                                     "mamba": mamba_diag}


# ----------------------------------------------------------------------------------------
# running the discrete system
# ----------------------------------------------------------------------------------------

def recurrence(Ad, Bd, C, D, u, x0=None, *, return_states: bool = False):
    """Run x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k over k = 0 … L-1 (x_{-1} = x0 or 0).

    Shapes: Ā (n, n), B̄ (n, p), C (q, n), D (q, p) or None; u (L, p) or (batch, L, p);
    x0 (n,) or (batch, n). Returns y (L, q) or (batch, L, q), and the states (…, L, n) when
    ``return_states``. Everything runs in one dtype, the promotion of all the inputs' (complex
    if any is complex). The plain loop: O(L n²) work, one step after the other.
    """
    Ad, Bd = _check_dense(Ad, Bd)
    n, p = Bd.shape
    C = _tensor("C", C)
    if C.dim() != 2 or C.shape[1] != n:
        raise ValueError(f"C must have shape (q, n) with n = {n}, got shape {tuple(C.shape)}")
    q = C.shape[0]
    if D is not None:
        D = _tensor("D", D)
        if D.shape != (q, p):
            raise ValueError(f"D must have shape (q, p) = ({q}, {p}), got shape {tuple(D.shape)}")
    u = _tensor("u", u)
    if u.dim() not in (2, 3) or u.shape[-1] != p:
        raise ValueError(f"u must have shape (L, p) or (batch, L, p) with p = {p}, got shape {tuple(u.shape)}")
    batched = u.dim() == 3
    if not batched:
        u = u[None]                                                # (1, L, p)
    b, L, _ = u.shape
    x0 = None if x0 is None else _tensor("x0", x0)
    # one dtype for everything: a complex x0, C or D makes the run complex (never cast to real)
    dtype = Ad.dtype
    for t in (Bd, C, D, u, x0):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    x = torch.zeros(b, n, dtype=dtype, device=u.device) if x0 is None else x0.to(dtype)
    if x.shape not in ((n,), (b, n)):
        raise ValueError(f"x0 must have shape (n,) = ({n},) or (batch, n), got shape {tuple(x.shape)}")
    x = x.expand(b, n)
    Ad, Bd, C, u = Ad.to(dtype), Bd.to(dtype), C.to(dtype), u.to(dtype)
    xs = []
    for k in range(L):
        x = x @ Ad.T + u[:, k] @ Bd.T                              # (b, n)
        xs.append(x)
    X = torch.stack(xs, dim=1) if L else u.new_zeros(b, 0, n)     # (b, L, n)
    y = X @ C.T                                                    # (b, L, q)
    if D is not None:
        y = y + u @ D.to(dtype).T
    if not batched:
        y, X = y[0], X[0]
    return (y, X) if return_states else y


def recurrence_diag(Ad, Bd, C, D, u, *, return_last_state: bool = False):
    """Run d diagonal systems side by side, Mamba's layout, time last:

        h_k = Ā ⊙ h_{k-1} + B̄ u_k       h: (batch, d, n)
        y_k = Σ_n C h_k + D u_k          y: (batch, d)

    Shapes: Ā, B̄, C (d, n) (complex allowed); D (d,) or None; u (batch, d, L).
    Returns y (batch, d, L), complex when Ā, B̄ or C is (and the last state (batch, d, n)
    when asked).
    """
    Ad, Bd = _tensor("Ad", Ad), _tensor("Bd", Bd)
    if Ad.dim() != 2:
        raise ValueError(f"Ad must have shape (d, n), got shape {tuple(Ad.shape)}")
    d, n = Ad.shape
    for name, t in (("Bd", Bd), ("C", C)):
        if _tensor(name, t).shape != (d, n):
            raise ValueError(f"{name} must have shape (d, n) = ({d}, {n}) like Ad, got shape {tuple(t.shape)}")
    C = _tensor("C", C)
    if D is not None:
        D = _tensor("D", D)
        if D.shape != (d,):
            raise ValueError(f"D must have shape (d,) = ({d},), got shape {tuple(D.shape)}")
    u = _tensor("u", u)
    if u.dim() != 3 or u.shape[1] != d:
        raise ValueError(f"u must have shape (batch, d, length) with d = {d}, got shape {tuple(u.shape)}")
    dtype = torch.promote_types(torch.promote_types(Ad.dtype, Bd.dtype), torch.promote_types(C.dtype, u.dtype))
    Ad, Bd, C = Ad.to(dtype), Bd.to(dtype), C.to(dtype)
    b, _, L = u.shape
    h = torch.zeros(b, d, n, dtype=dtype, device=u.device)         # (b, d, n)
    ys = []
    for k in range(L):
        h = Ad * h + Bd * u[:, :, k, None]                         # (b, d, n)
        ys.append((C * h).sum(-1))                                 # (b, d)
    y = torch.stack(ys, dim=-1) if L else torch.zeros(b, d, 0, dtype=dtype, device=u.device)
    if D is not None:
        y = y + D[:, None] * u
    return (y, h) if return_last_state else y


# ----------------------------------------------------------------------------------------
# how fast each method converges as dt shrinks
# ----------------------------------------------------------------------------------------

def convergence_order(ssm, u_fn: Callable, T: float, dts, method: str = "zoh") -> tuple[torch.Tensor, float | None]:
    """Measure the error of a discretization against the exact continuous solution.

    For each step dt in ``dts`` (T/dt must be a whole number of steps), sample the input
    ``u_fn`` (a function of a time tensor returning (L, p)) on the grid k·dt, k = 1 … T/dt,
    run the discrete system from rest and compare y at time T with the exact solution
    (``ssm_tutor.continuous.simulate`` on a 4000-step grid with the input interpolated
    linearly). The input is sampled at the *end* of each step (u_k = u(k dt)), the convention
    under which S4/Mamba's recurrence x_k = Ā x_{k-1} + B̄ u_k reads.

    Returns ``(errors, order)``: errors (len(dts),) float64 tensor of |y_discrete(T) − y(T)|
    (max over outputs), and the fitted slope of log(error) against log(dt): the method's
    order of accuracy (error ∝ dt^order). A slope needs at least two different steps (else
    ValueError). When an error is at the level of float64 rounding (the method is exact for this
    input, e.g. ZOH with a constant input) there is no slope to measure: ``order`` is None then,
    never a number fitted to rounding noise.
    """
    from ssm_tutor.continuous import ContinuousSSM, simulate

    if not isinstance(ssm, ContinuousSSM):
        raise TypeError(f"ssm must be a ContinuousSSM, got {type(ssm).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    dts = [_check_dt_scalar(dt) for dt in dts]
    if len(set(dts)) < 2:
        raise ValueError(f"dts must hold at least two different steps to fit an order (a slope), got {dts}")
    A, B, C = ssm.A.double(), ssm.B.double(), ssm.C.double()
    sys64 = ContinuousSSM(A, B, C, ssm.D.double())
    def u_at(t):                                                   # (L,) -> (L, p), real
        u = torch.as_tensor(u_fn(t))
        if u.is_complex():
            raise TypeError(f"u_fn must return real inputs, got complex dtype {u.dtype}")
        return u.reshape(-1, ssm.p)

    fine = torch.linspace(0.0, T, 4001, dtype=torch.float64)
    y_exact = simulate(sys64, u_at(fine), fine)[-1]                # (q,)
    errors = []
    for dt in dts:
        steps = round(T / dt)
        if steps < 1 or abs(steps * dt - T) > 1e-9 * T:
            raise ValueError(f"T / dt must be a whole number of steps, got T={T}, dt={dt}")
        Ad, Bd = METHODS[method](A, B, dt)
        t = dt * torch.arange(1, steps + 1, dtype=torch.float64)  # sample at the end of each step
        y = recurrence(Ad, Bd, C, sys64.D, u_at(t).to(torch.float64))[-1]
        errors.append((y - y_exact).abs().max().item())
    errors = torch.tensor(errors, dtype=torch.float64)
    rounding = 1e3 * torch.finfo(torch.float64).eps * max(1.0, y_exact.abs().max().item())
    if errors.min() <= rounding:
        return errors, None                                        # exact: no order to fit
    logdt = torch.log(torch.as_tensor(list(dts), dtype=torch.float64))
    slope = torch.linalg.lstsq(torch.stack([logdt, torch.ones_like(logdt)], 1), torch.log(errors)[:, None]).solution
    return errors, float(slope[0, 0])
