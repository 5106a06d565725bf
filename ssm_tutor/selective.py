"""Stage 4: selection. Mamba's selective SSM (S6) and its reference scan.

Notebook: ``notebooks/04_selection.ipynb``. Paper: Gu & Dao, *Mamba: Linear-Time
Sequence Modeling with Selective State Spaces* (2023), Section 3.2 and Algorithm 2.

For every channel d and state index n the selective SSM runs the recurrence

    Ā_t = exp(Δ_t · A)               (zero-order hold for A)
    B̄_t = Δ_t · B_t                  (simplified Euler step for B)
    h_t = Ā_t · h_{t-1} + B̄_t · u_t
    y_t = C_t · h_t + D · u_t

where Δ_t, B_t and C_t depend on the input (that is the selection), and optionally
gates the output with SiLU(z_t).

What is here (the teaching layer; stage 5's ``ssm_tutor.scan`` makes the scan fast):

* :func:`selective_scan_loop` -- the recurrence above as a plain loop over time, ten lines;
* :func:`selective_scan_ref` -- the same with the options of the official ``selective_scan_fn``
  (bias and softplus of Δ, gate z, grouped / time-invariant B and C, complex A, last state);
* :func:`selective_ssm_step` -- one time step, for recurrent generation (stage 7);
* :func:`ssm_operator_matrix` -- the (l × l) matrix M with y = M u: Toeplitz (a convolution)
  only when the system is time-invariant;
* :class:`SelectiveSSM` -- the S6 layer: x_proj -> (Δ, B, C), dt_proj, A = -exp(A_log), D.

Its time-invariant twin (Δ, B, C fixed per channel) is stage 3's
:class:`ssm_tutor.convolution.LTISSM`, with the same (batch, length, d) layout.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.convolution import compute_dtype, dt_bias_init, inverse_softplus, s4d_real
from ssm_tutor.validate import (check_layer_input, check_positive, check_shape, check_step_sizes, positive_int,
                                validate_scan_args)

__all__ = ["selective_scan_loop", "selective_scan_ref", "step_size", "per_channel", "selective_ssm_step",
           "ssm_operator_matrix", "SelectiveSSM", "s4d_real_A_log", "dt_bias_init", "inverse_softplus",
           "compute_dtype"]


# ----------------------------------------------------------------------------------------------
# the scan: the loop, then the official options around it
# ----------------------------------------------------------------------------------------------

def selective_scan_loop(u, delta, A, B, C, D=None):
    """The selective scan as a loop over time (Mamba paper, Algorithm 2), h_0 = 0:

        h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t        y_t = C_t · h_t + D u_t

    Shapes: u, delta (b, d, l) with Δ already final (bias and softplus applied); A (d, n);
    B, C (b, d, l, n) -- every channel's own B_t, C_t (see :func:`per_channel`); D (d,) or None.
    Returns y (b, d, l) and the last state h (b, d, n).

    A complex A (S4D-Lin: each complex mode stands for a conjugate pair of real states) gives
    a complex state, and the output of the pair is y_t = 2 Re(C_t · h_t).
    """
    b, d, l = u.shape
    deltaA = torch.exp(delta[..., None] * A[:, None, :])    # Ā_t = exp(Δ_t A): (b, d, l, n)
    deltaB_u = (delta * u)[..., None] * B                    # B̄_t u_t = Δ_t B_t u_t: (b, d, l, n)
    h = deltaA.new_zeros(b, d, A.shape[1])                   # h_0 = 0: (b, d, n)
    ys = []
    for t in range(l):
        h = deltaA[:, :, t] * h + deltaB_u[:, :, t]          # h_t = Ā_t h_{t-1} + B̄_t u_t: (b, d, n)
        ys.append((h * C[:, :, t]).sum(-1))                  # y_t = C_t · h_t: (b, d)
    y = torch.stack(ys, dim=2)                               # (b, d, l)
    if y.is_complex():
        y = 2 * y.real                                       # a conjugate pair: y = 2 Re(C h)
    if D is not None:
        y = y + D[:, None] * u                               # the skip connection D u
    return y, h


def step_size(delta, delta_bias=None, delta_softplus=False):
    """Δ = softplus(delta + delta_bias) (each part optional), shape (b, d, l) like delta.

    Without softplus Δ must not be negative (:func:`ssm_tutor.validate.check_step_sizes`):
    exp(Δ A) > 1 would make the state grow without bound."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]                  # (b, d, l)
    if delta_softplus:
        return F.softplus(delta)
    check_step_sizes(delta)
    return delta


def per_channel(X, batch, d, length, dtype=None):
    """B or C in any layout the official scan takes, as every channel's own (b, d, l, n):

        (b, n, l)      shared by all channels            -> a view, no copy
        (b, g, n, l)   channel c reads group c // (d/g)
        (d, n)         time-invariant (an LTI system)    -> a view, no copy
        (…, n, 2l)     real, with complex A: real and imaginary parts interleaved along time

    ``dtype`` converts first (e.g. to the scan's compute dtype)."""
    if dtype is not None:
        if dtype.is_complex and not X.is_complex() and X.dim() > 2 and X.shape[-1] == 2 * length:
            X = torch.view_as_complex(X.to(dtype.to_real()).unflatten(-1, (length, 2)).contiguous())
        X = X.to(dtype)
    if X.dim() == 2:                                          # (d, n)
        return X[None, :, None, :].expand(batch, d, length, X.shape[1])
    if X.dim() == 3:                                          # (b, n, l)
        return X.transpose(1, 2)[:, None].expand(batch, d, length, X.shape[1])
    return X.transpose(2, 3).repeat_interleave(d // X.shape[1], dim=1)      # (b, g, n, l) -> (b, d, l, n)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """The selective scan with the signature and meaning of the official ``selective_scan_fn``:
    :func:`selective_scan_loop` plus the options.

        Δ_t = softplus(delta_t + delta_bias)      (each part optional)
        h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t
        y_t = (C_t · h_t + D u_t) · SiLU(z_t)     (D and z optional)

    Args (the official layout):
        u, delta, z:  (b, d, l)
        A:            (d, n) real (Mamba: A = -exp(A_log)), or complex (S4D-Lin; y = 2 Re(C h))
        B, C:         (b, n, l); grouped (b, g, n, l); time-invariant (d, n); with complex A
                      complex, or real with (re, im) interleaved along time, (…, n, 2l)
        D, delta_bias: (d,)
        return_last_state: also return h_l, (b, d, n), complex for complex A
        initial_state: h_0 (b, d, n) to start from (default 0): the state an earlier chunk of the
                      same sequence ended in, so a long sequence can be read in pieces. The loop
                      starts from 0; h_0's part is added after it, exact because the recurrence is
                      linear in h: h_0 reaches step t as (Ā_t ⋯ Ā_1) h_0 = exp(A Σ_{s≤t} Δ_s) ⊙ h_0,
                      which adds C_t · that to y_t, and its value at t = l to h_l

    Returns y (b, d, l) in u's dtype [and h_l in the compute dtype]. Arithmetic runs in float32
    (float64 for float64 inputs) whatever the input dtype. Bad arguments raise, naming the
    argument (:func:`ssm_tutor.validate.validate_scan_args`), and so does a negative Δ without
    softplus. Materialises (b, d, l, n) tensors: clear, differentiable by autograd, memory-hungry.
    """
    b, d, l, n, _ = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, allow_complex=True,
                                       allow_constant_BC=True)
    real = compute_dtype(u.dtype)                                 # float32, or float64
    state = real.to_complex() if A.is_complex() else real         # the state's dtype
    delta = step_size(delta.to(real), None if delta_bias is None else delta_bias.to(real), delta_softplus)
    check_shape("initial_state", initial_state, "(b, d, n)", (b, d, A.shape[1]))
    C_t = per_channel(C, b, d, l, state)                          # (b, d, l, n)
    y, h = selective_scan_loop(u.to(real), delta, A.to(state), per_channel(B, b, d, l, state), C_t,
                               None if D is None else D.to(real))
    if initial_state is not None:                                 # the part of h_0, added (linear in h)
        decay = torch.exp(torch.cumsum(delta, dim=-1)[..., None] * A.to(state)[:, None, :])   # Ā_t⋯Ā_1: (b, d, l, n)
        carried = decay * initial_state.to(state)[:, :, None, :]  # what h_0 has become at step t: (b, d, l, n)
        y_h0 = (carried * C_t).sum(-1)                            # C_t · that: (b, d, l)
        y = y + (2 * y_h0.real if y_h0.is_complex() else y_h0)
        h = h + carried[:, :, -1]                                 # h_l
    if z is not None:
        y = y * F.silu(z.to(real))                                # the gate
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def selective_ssm_step(h: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                       B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """One step of the selective SSM (paper Algorithm 2, one t), updating h in place:

        h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_t        y_t = C_t · h_t + D ⊙ x_t

    h (b, E, N) (its dtype is the compute dtype), x and delta (b, E) (Δ already softplus-ed),
    A (E, N), B and C (b, N), D (E,). Returns y_t (b, E) in h's dtype.
    """
    h.mul_(torch.exp(delta.unsqueeze(-1) * A))                     # Ā_t h_{t-1}: (b, E, N)
    h.addcmul_((delta * x).unsqueeze(-1), B.unsqueeze(1).to(h.dtype))   # + B̄_t x_t
    y = torch.bmm(h, C.unsqueeze(-1).to(h.dtype)).squeeze(-1)      # C_t · h_t: (b, E)
    return y if D is None else torch.addcmul(y, x, D)


def ssm_operator_matrix(delta, A, B, C):
    """The matrix M with y = M u of the scan (no D, no gate): M[b, d, t, s] for s ≤ t is

        M_ts = C_t · (Ā_t Ā_{t-1} … Ā_{s+1}) B̄_s = Σ_n C_t[n] exp(A[d, n] (S_t - S_s)) Δ_s B_s[n],

    with S_t = Δ_1 + … + Δ_t (the products of Ā add up their exponents) and M_ts = 0 for s > t.

    Args: delta (b, d, l) *after* bias and softplus; A (d, n) real; B, C (b, n, l), (b, g, n, l)
    or (d, n). Returns: M of shape (b, d, l, l), lower triangular.

    For a time-invariant system (Δ, B, C constant in t) M_ts depends on t - s only: M is
    Toeplitz and y = M u is a convolution with the kernel K_k = C Ā^k B̄. A selective system
    gives a matrix that is not Toeplitz, so there is no single kernel to convolve with.
    Memory O(b d l² n): for small illustrations only.
    """
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3:
        raise ValueError(f"delta must be a tensor of shape (batch, d, length), got "
                         f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
    b, d, l, n, _ = validate_scan_args(delta, delta, A, B, C, allow_constant_BC=True)   # delta plays u's part
    real = compute_dtype(delta.dtype)
    delta, A = delta.to(real), A.to(real)
    B, C = per_channel(B, b, d, l, real), per_channel(C, b, d, l, real)   # (b, d, l, n)
    S = torch.cumsum(delta, dim=-1)                               # (b, d, l)
    gap = S[..., :, None] - S[..., None, :]                       # S_t - S_s: (b, d, l, l)
    causal = torch.ones(l, l, dtype=torch.bool, device=delta.device).tril()
    gap = torch.where(causal, gap, torch.zeros_like(gap))         # avoid exp of positive numbers above the diagonal
    decay = torch.exp(torch.einsum("bdts,dn->bdtsn", gap, A))     # (b, d, l, l, n)
    M = torch.einsum("bdtn,bdtsn,bds,bdsn->bdts", C, decay, delta, B)
    return M * causal                                             # (b, d, l, l)


# ----------------------------------------------------------------------------------------------
# initialisation (Mamba paper, Section 3.6 and Appendix; the official code's defaults)
# ----------------------------------------------------------------------------------------------

def s4d_real_A_log(d: int, n: int) -> torch.Tensor:
    """A_log of shape (d, n) with A = -exp(A_log) = -(1, 2, …, n) in every channel (stage 3's
    S4D-Real). Δ's bias starts from stage 3's :func:`~ssm_tutor.convolution.dt_bias_init`."""
    return torch.log(-s4d_real(n, torch.float32)).repeat(d, 1)                  # (d, n)


ScanFn = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------------

class SelectiveSSM(nn.Module):
    """The S6 layer (Mamba paper, Algorithm 2): an SSM whose Δ, B and C are functions of the input.

    Input and output: x, y of shape (batch, length, d) -- the model's layout. Internally the
    scan runs in the official (batch, d, length) layout.

        (Δ_low, B, C) = x_proj(x)                         Δ_low (b, l, R), B, C (b, l, n)
        Δ             = softplus(dt_proj(Δ_low))          (b, l, d), dt_proj: R -> d with bias
        A             = -exp(A_log)                       (d, n), fixed: does not depend on x
        y             = scan(x, Δ, A, B, C, D)            the selective scan, D a skip (d,)

    Parameters carry the names of the official and Hugging Face checkpoints (``x_proj.weight``,
    ``dt_proj.weight``, ``dt_proj.bias``, ``A_log``, ``D``). Initialisation as in the paper:
    A = -(1, …, n) per channel (S4D-Real), D = 1, dt_proj.weight uniform in ±dt_scale·R^{-1/2}
    (or that constant, ``dt_init="constant"``), and dt_proj.bias such that Δ = softplus(bias) is
    log-uniform in [dt_min, dt_max].

    Args:
        d: channels; n: state size per channel; dt_rank: R, the rank of Δ's projection
        ("auto" = ceil(d / 16), as in Mamba); scan: any function with the signature of
        :func:`selective_scan_ref` (e.g. stage 5's ``ssm_tutor.scan.selective_scan``).

    Recurrent form: :meth:`init_state` and :meth:`step`, one token at a time.
    """

    def __init__(self, d: int, n: int = 16, dt_rank: int | str = "auto", dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan: ScanFn | None = None, *,
                 dt_scale: float = 1.0, dt_init: str = "random"):
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(positive_int("d", d) / 16)
        check_positive(d=d, n=n, dt_rank=dt_rank)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d, self.n, self.dt_rank = d, n, dt_rank
        self.dt_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_scale=dt_scale,
                            dt_init=dt_init)
        self.scan = scan or selective_scan_ref
        self.x_proj = nn.Linear(d, dt_rank + 2 * n, bias=False)          # x -> (Δ_low, B, C)
        self.dt_proj = nn.Linear(dt_rank, d, bias=True)                  # Δ_low -> Δ (before softplus)
        self.A_log = nn.Parameter(torch.empty(d, n))                     # (d, n)
        self.D = nn.Parameter(torch.empty(d))                            # (d,)
        SelectiveSSM.reset_parameters(self)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (Section 3.6 and the official code)."""
        self.x_proj.reset_parameters()                                   # PyTorch's kaiming-uniform
        s = self.dt_rank ** -0.5 * self.dt_init["dt_scale"]
        if self.dt_init["dt_init"] == "constant":
            self.dt_proj.weight.fill_(s)                                 # (d, R)
        else:
            self.dt_proj.weight.uniform_(-s, s)
        self.dt_proj.bias.copy_(dt_bias_init(self.d, self.dt_init["dt_min"], self.dt_init["dt_max"],
                                             self.dt_init["dt_init_floor"]))
        self.A_log.copy_(s4d_real_A_log(self.d, self.n))                 # A = -(1, …, n)
        self.D.fill_(1.0)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log), shape (d, n): negative, so every Ā = exp(Δ A) lies in (0, 1)."""
        return -torch.exp(self.A_log.to(compute_dtype(self.A_log.dtype)))

    def selection(self, x: torch.Tensor):
        """The input-dependent parameters, for inspection: Δ (b, l, d) after bias and softplus,
        B (b, l, n) and C (b, l, n)."""
        check_layer_input(x, self.d, type(self).__name__)
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.n, self.n], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def forward(self, x: torch.Tensor, return_last_state: bool = False, initial_state: torch.Tensor | None = None):
        """x (batch, length, d) -> y (batch, length, d) [, last state (batch, d, n)], starting
        from ``initial_state`` (batch, d, n) (the state after an earlier chunk) or from 0."""
        check_layer_input(x, self.d, type(self).__name__)
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.n, self.n], dim=-1)   # (b, l, R), (b, l, n) ×2
        delta = F.linear(dt_low, self.dt_proj.weight)                  # Δ before bias and softplus: (b, l, d)
        p = compute_dtype(x.dtype)                                      # the scan's precision
        out = self.scan(x.transpose(1, 2), delta.transpose(1, 2), self.A.to(p), B.transpose(1, 2),
                        C.transpose(1, 2), D=self.D.to(p), delta_bias=self.dt_proj.bias.to(p),
                        delta_softplus=True, return_last_state=return_last_state,
                        **({} if initial_state is None else {"initial_state": initial_state}))
        if return_last_state:
            y, h = out
            return y.transpose(1, 2), h
        return out.transpose(1, 2)                                      # (b, l, d)

    # ---- recurrent form ------------------------------------------------------------------------
    def init_state(self, batch: int) -> torch.Tensor:
        """h_0 = 0 for ``batch`` sequences: (batch, d, n), float32 (float64 for a float64 layer)."""
        positive_int("batch", batch)
        return torch.zeros(batch, self.d, self.n, dtype=compute_dtype(self.A_log.dtype), device=self.A_log.device)

    def step(self, x_t: torch.Tensor, h: torch.Tensor, A: torch.Tensor | None = None):
        """One token: x_t (b, d), h (b, d, n) -> (y_t (b, d), h), h updated in place.

        ``A`` (d, n) in h's dtype may be passed to skip recomputing -exp(A_log) every token."""
        dt_low, B, C = self.x_proj(x_t).split([self.dt_rank, self.n, self.n], dim=-1)  # (b, R), (b, n), (b, n)
        delta = F.softplus(self.dt_proj(dt_low).to(h.dtype))           # Δ_t: (b, d)
        A = self.A.to(h.dtype) if A is None else A                      # (d, n)
        y = selective_ssm_step(h, x_t.to(h.dtype), delta, A, B, C, self.D.to(h.dtype))
        return y.to(x_t.dtype), h
