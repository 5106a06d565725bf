"""Stage 4: selection. Mamba's selective SSM (S6), its readable reference scan, and its LTI twin.

Notebook: ``notebooks/04_selection.ipynb``. Paper: Gu & Dao, *Mamba: Linear-Time
Sequence Modeling with Selective State Spaces* (2023), Section 3.2 and Algorithm 2.

For every channel d and state index n the selective SSM runs the recurrence

    Ā_t = exp(Δ_t · A)               (zero-order hold for A)
    B̄_t = Δ_t · B_t                  (simplified Euler step for B)
    h_t = Ā_t · h_{t-1} + B̄_t · u_t
    y_t = C_t · h_t + D · u_t

where Δ_t, B_t and C_t depend on the input (that is the selection), and optionally
gates the output with SiLU(z_t).

What is here:

* :func:`validate_scan_args` -- the shape/dtype/device/finiteness checks every scan shares;
* :func:`selective_scan_ref` -- the plain loop over time (the reference for stages 5 and 6);
* :func:`ssm_operator_matrix` -- the (l × l) matrix M with y = M u: Toeplitz (a convolution)
  only when the system is time-invariant;
* :class:`SelectiveSSM` -- the S6 layer: x_proj -> (Δ, B, C), dt_proj, A = -exp(A_log), D;
* :class:`TimeInvariantSSM` -- the same layer with Δ, B, C fixed per channel (an LTI system,
  so it also runs as a convolution with the kernel K_k = C Ā^k B̄).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.convolution import causal_conv, s4d_kernel
from ssm_tutor.discretize import mamba_diag
from ssm_tutor.validate import check_layer_input, validate_scan_args

__all__ = ["selective_scan_ref", "validate_scan_args", "expand_groups", "ssm_operator_matrix",
           "SelectiveSSM", "TimeInvariantSSM", "s4d_real_A_log", "dt_bias_init", "inverse_softplus"]


def expand_groups(B: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, l) -> (b, d, n, l), or grouped (b, g, n, l) -> (b, d, n, l): channel c uses group c // (d // g).

    The ungrouped case is a view (no copy)."""
    if B.dim() == 3:
        return B.unsqueeze(1).expand(-1, d, -1, -1)
    return B.repeat_interleave(d // B.shape[1], dim=1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 all accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------
# the reference scan
# ----------------------------------------------------------------------------------------------

def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The selective scan, written as the plain loop over time (Mamba paper, Algorithm 2).

    Args (the official ``selective_scan_fn`` layout):
        u:      (b, d, l) input
        delta:  (b, d, l) step sizes Δ before bias and softplus
        A:      (d, n) real, usually negative (A = -exp(A_log))
        B, C:   (b, n, l), or (b, g, n, l) shared by d/g channels per group
        D:      (d,) skip connection, optional
        z:      (b, d, l) gate, optional: the output is multiplied by SiLU(z)
        delta_bias: (d,) added to Δ before the softplus, optional
        delta_softplus: apply softplus to Δ (+ bias)
        return_last_state: also return h_L of shape (b, d, n)

    Computes, for t = 1 … l (h_0 = 0):

        Δ_t = softplus(delta_t + delta_bias)      (or delta_t + delta_bias without softplus)
        h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t
        y_t = (C_t · h_t + D u_t) · SiLU(z_t)

    Returns:
        y of shape (b, d, l) in u's dtype, and, when asked, the last state h_l of shape (b, d, n)
        in the compute dtype (float32, or float64 for float64 inputs).

    All arithmetic runs in float32 (float64 if the inputs are float64), whatever the input dtype,
    so float16/bfloat16 inputs do not lose precision along the sequence. Bad arguments raise
    (see :func:`validate_scan_args`). This version materialises the (b, d, l, n) tensors Ā and
    B̄u: clear, differentiable by autograd, and memory-hungry. Stage 5 (``ssm_tutor.scan``) makes
    it fast.
    """
    b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    compute = _compute_dtype(dtype_in)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]            # (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)
    B = expand_groups(B.to(compute), d).transpose(2, 3)          # (b, d, l, n), a view when not grouped
    C = expand_groups(C.to(compute), d).transpose(2, 3)          # (b, d, l, n)

    deltaA = torch.exp(delta[..., None] * A[:, None, :])         # Ā_t = exp(Δ_t A): (b, d, l, n)
    deltaB_u = (delta * u)[..., None] * B                         # B̄_t u_t = Δ_t B_t u_t: (b, d, l, n)

    h = u.new_zeros(b, d, n)                                      # state h_0: (b, d, n)
    states = []
    for A_t, Bu_t in zip(deltaA.unbind(2), deltaB_u.unbind(2)):  # each (b, d, n)
        h = A_t * h + Bu_t                                        # h_t = Ā_t h_{t-1} + B̄_t u_t
        states.append(h)
    hs = torch.stack(states, dim=2)                               # (b, d, l, n)
    y = (hs * C).sum(-1)                                          # y_t = C_t · h_t: (b, d, l)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def ssm_operator_matrix(delta, A, B, C):
    """The matrix M with y = M u of the scan (no D, no gate): M[b, d, t, s] for s ≤ t is

        M_ts = C_t · (Ā_t Ā_{t-1} … Ā_{s+1}) B̄_s = Σ_n C_t[n] exp(A[d, n] (S_t - S_s)) Δ_s B_s[n],

    with S_t = Δ_1 + … + Δ_t (the products of Ā add up their exponents) and M_ts = 0 for s > t.

    Args: delta (b, d, l) *after* bias and softplus; A (d, n); B, C (b, n, l) or (b, g, n, l).
    Returns: M of shape (b, d, l, l), lower triangular.

    For a time-invariant system (Δ, B, C constant in t) M_ts depends on t - s only: M is
    Toeplitz and y = M u is a convolution with the kernel K_k = C Ā^k B̄. A selective system
    gives a matrix that is not Toeplitz, so there is no single kernel to convolve with.
    Memory O(b d l² n): for small illustrations only.
    """
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3:
        raise ValueError(f"delta must be a tensor of shape (batch, d, length), got "
                         f"{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}")
    b, d, l, n, _ = validate_scan_args(delta, delta, A, B, C)    # delta plays u's part in the checks
    compute = _compute_dtype(delta.dtype)
    delta, A = delta.to(compute), A.to(compute)
    B = expand_groups(B.to(compute), d)                           # (b, d, n, l)
    C = expand_groups(C.to(compute), d)                           # (b, d, n, l)
    S = torch.cumsum(delta, dim=-1)                               # (b, d, l)
    gap = S[..., :, None] - S[..., None, :]                       # S_t - S_s: (b, d, l, l)
    causal = torch.ones(l, l, dtype=torch.bool, device=delta.device).tril()
    gap = torch.where(causal, gap, torch.zeros_like(gap))         # avoid exp of positive numbers above the diagonal
    decay = torch.exp(torch.einsum("bdts,dn->bdtsn", gap, A))     # (b, d, l, l, n)
    M = torch.einsum("bdnt,bdtsn,bds,bdns->bdts", C, decay, delta, B)
    return M * causal                                             # (b, d, l, l)


# ----------------------------------------------------------------------------------------------
# initialisation (Mamba paper, Section 3.6 and Appendix; the official code's defaults)
# ----------------------------------------------------------------------------------------------

def s4d_real_A_log(d: int, n: int) -> torch.Tensor:
    """A_log of shape (d, n) with A = -exp(A_log) = -(1, 2, …, n) in every channel (S4D-Real)."""
    return torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)   # (d, n)


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = log(1 + e^y) = x, for x > 0: y = x + log(1 - e^{-x})."""
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(d: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The dt bias of shape (d,): Δ = softplus(bias) is log-uniform in [dt_min, dt_max] at init
    (floored at ``dt_init_floor``), so each channel starts with its own time scale."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    r = torch.rand(d, generator=generator)                                     # (d,) uniform in [0, 1)
    dt = torch.exp(r * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=dt_init_floor))                       # (d,)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged."""
    return t.to(_compute_dtype(t.dtype))


def _param_dtype(x: torch.Tensor) -> torch.dtype:
    """Parameters enter the scan in float64 for float64 inputs, else in float32 (the scan's rule)."""
    return _compute_dtype(x.dtype)


ScanFn = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------------------------
# the layers
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
    A = -(1, …, n) per channel (S4D-Real), D = 1, dt_proj.weight uniform in ±R^{-1/2}, and
    dt_proj.bias such that Δ = softplus(bias) is log-uniform in [dt_min, dt_max].

    Args:
        d: channels; n: state size per channel; dt_rank: R, the rank of Δ's projection
        ("auto" = ceil(d / 16), as in Mamba); scan: any function with the signature of
        :func:`selective_scan_ref` (e.g. stage 5's ``ssm_tutor.scan.selective_scan``).
    """

    def __init__(self, d: int, n: int = 16, dt_rank: int | str = "auto", dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan: ScanFn | None = None):
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(d / 16)
        for name, value in (("d", d), ("n", n), ("dt_rank", dt_rank)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.d, self.n, self.dt_rank = d, n, dt_rank
        self.scan = scan or selective_scan_ref
        self.x_proj = nn.Linear(d, dt_rank + 2 * n, bias=False)          # x -> (Δ_low, B, C)
        self.dt_proj = nn.Linear(dt_rank, d, bias=True)                  # Δ_low -> Δ (before softplus)
        with torch.no_grad():
            bound = dt_rank ** -0.5
            self.dt_proj.weight.uniform_(-bound, bound)                  # (d, R)
            self.dt_proj.bias.copy_(dt_bias_init(d, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(s4d_real_A_log(d, n))                  # (d, n)
        self.D = nn.Parameter(torch.ones(d))                             # (d,)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log), shape (d, n): negative, so every Ā = exp(Δ A) lies in (0, 1)."""
        return -torch.exp(_at_least_float32(self.A_log))

    def _project(self, x: torch.Tensor):
        """x (b, l, d) -> Δ before bias (b, l, d), B (b, l, n), C (b, l, n)."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.n, self.n], dim=-1)
        return F.linear(dt_low, self.dt_proj.weight), B, C              # bias is added by the scan

    def selection(self, x: torch.Tensor):
        """The input-dependent parameters, for inspection: Δ (b, l, d) after bias and softplus,
        B (b, l, n) and C (b, l, n)."""
        check_layer_input(x, self.d, "SelectiveSSM")
        dt, B, C = self._project(x)
        return F.softplus(dt + self.dt_proj.bias), B, C

    def forward(self, x: torch.Tensor, return_last_state: bool = False):
        """x (batch, length, d) -> y (batch, length, d) [, last state (batch, d, n)]."""
        check_layer_input(x, self.d, "SelectiveSSM")
        dt, B, C = self._project(x)
        p = _param_dtype(x)
        out = self.scan(x.transpose(1, 2), dt.transpose(1, 2), self.A.to(p), B.transpose(1, 2), C.transpose(1, 2),
                        D=self.D.to(p), delta_bias=self.dt_proj.bias.to(p), delta_softplus=True,
                        return_last_state=return_last_state)
        if return_last_state:
            y, h = out
            return y.transpose(1, 2), h
        return out.transpose(1, 2)                                      # (b, l, d)


class TimeInvariantSSM(nn.Module):
    """The LTI counterpart of :class:`SelectiveSSM`: Δ, B and C are parameters, one per channel,
    the same for every token. Same layout ((batch, length, d) in and out), same A and Δ init.

        Δ = softplus(dt_bias)   (d,)        B, C  (d, n)        A = -exp(A_log)  (d, n)
        h_t = exp(Δ A) ⊙ h_{t-1} + Δ B u_t,   y_t = C · h_t + D u_t

    Because nothing depends on t, the layer is a convolution: y = K * u + D u with the kernel
    K_k = Σ_n C_n exp(Δ A_n)^k Δ B_n (:meth:`kernel`). ``forward(x, mode="scan")`` runs the
    selective scan with B, C grouped per channel; ``mode="convolution"`` uses the kernel and
    an FFT. Both give the same y.
    """

    def __init__(self, d: int, n: int = 16, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, scan: ScanFn | None = None):
        super().__init__()
        for name, value in (("d", d), ("n", n)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.d, self.n = d, n
        self.scan = scan or selective_scan_ref
        self.dt_bias = nn.Parameter(dt_bias_init(d, dt_min, dt_max, dt_init_floor))  # (d,)
        self.A_log = nn.Parameter(s4d_real_A_log(d, n))                             # (d, n)
        self.B = nn.Parameter(torch.ones(d, n))                                     # (d, n)
        self.C = nn.Parameter(torch.randn(d, n) * n ** -0.5)                        # (d, n)
        self.D = nn.Parameter(torch.ones(d))                                        # (d,)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log), shape (d, n)."""
        return -torch.exp(_at_least_float32(self.A_log))

    @property
    def delta(self) -> torch.Tensor:
        """Δ = softplus(dt_bias), shape (d,): one fixed step size per channel."""
        return F.softplus(_at_least_float32(self.dt_bias))

    def kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """K of shape (d, length): K_k = Σ_n C_n Ā_n^k B̄_n with Ā = exp(Δ A), B̄ = Δ B."""
        A_bar, B_bar = mamba_diag(self.A.to(dtype), self.B.to(dtype), self.delta.to(dtype))   # (d, n) each
        return s4d_kernel(A_bar, B_bar, self.C.to(dtype), length)                  # stage 3's Vandermonde kernel

    def forward(self, x: torch.Tensor, return_last_state: bool = False, mode: str = "scan"):
        """x (batch, length, d) -> y (batch, length, d) [, last state (batch, d, n), scan mode only]."""
        check_layer_input(x, self.d, "TimeInvariantSSM")
        b, l, d = x.shape
        if mode == "convolution":
            if return_last_state:
                raise ValueError("return_last_state needs mode='scan': the convolution never forms the state")
            p = _param_dtype(x)
            u = x.transpose(1, 2).to(p)                                             # (b, d, l)
            K = self.kernel(l, p)                                                     # (d, l)
            y = causal_conv(u, K) + u * self.D.to(p)[:, None]                      # stage 3's FFT convolution
            return y.to(x.dtype).transpose(1, 2)                                    # (b, l, d)
        if mode != "scan":
            raise ValueError(f"mode must be 'scan' or 'convolution', got {mode!r}")
        p = _param_dtype(x)
        u = x.transpose(1, 2)                                                       # (b, d, l)
        delta = torch.zeros_like(u)                                                 # (b, d, l): Δ = softplus(0 + dt_bias)
        B = self.B.to(p)[None, :, :, None].expand(b, d, self.n, l)                  # (b, g=d, n, l): one group per channel
        C = self.C.to(p)[None, :, :, None].expand(b, d, self.n, l)                  # (b, g=d, n, l)
        out = self.scan(u, delta, self.A.to(p), B, C, D=self.D.to(p), delta_bias=self.dt_bias.to(p),
                        delta_softplus=True, return_last_state=return_last_state)
        if return_last_state:
            y, h = out
            return y.transpose(1, 2), h
        return out.transpose(1, 2)                                                  # (b, l, d)
