"""Stage 3: the convolution view of an LTI SSM, HiPPO and S4D initialisations, and a layer.

Notebook: ``notebooks/03_convolution_view.ipynb``. Papers: S4 (Gu et al. 2022) Section 2.4,
eqs. (4)–(5) (the SSM kernel); HiPPO (Gu et al. 2020) Section 2 and Appendix D (LegS);
S4D (Gu et al. 2022) Section 3 (diagonal kernel as a Vandermonde product, S4D-Real/-Lin).

Unrolling x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k from x_{-1} = 0 gives

    y_k = Σ_{j=0}^{k} C Ā^j B̄ u_{k-j} = (K * u)_k,    K = (C B̄, C Ā B̄, C Ā² B̄, …, C Ā^{L-1} B̄),

one causal convolution with a kernel K computed once. An FFT does it in O(L log L).
For a diagonal Ā the kernel is a Vandermonde product: K_l = Σ_n C_n B̄_n Ā_n^l.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ssm_tutor.discretize import DIAG_METHODS, _check_dense, _tensor, recurrence_diag

__all__ = [
    "ssm_kernel", "s4d_kernel", "causal_conv", "causal_conv_direct",
    "hippo_legs", "s4d_real", "s4d_lin", "legendre_reconstruct", "hippo_legs_memory",
    "LTISSM",
]


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------

def _check_length(L) -> int:
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive integer (the kernel length), got {L!r}")
    return L


def ssm_kernel(Ad, Bd, C, L: int) -> torch.Tensor:
    """The SSM convolution kernel K_l = C Ā^l B̄ for l = 0 … L-1 (S4 eq. 5).

    Shapes: Ā (n, n), B̄ (n, p), C (q, n). Returns K of shape (L, q, p), time first like
    ``ssm_tutor.continuous.impulse_response``; for one input and one output take
    ``K[:, 0, 0]``. Computed by repeated multiplication, O(L n² p): the slow, clear way.
    """
    Ad, Bd = _check_dense(Ad, Bd)
    C = _tensor("C", C)
    n = Ad.shape[0]
    if C.dim() != 2 or C.shape[1] != n:
        raise ValueError(f"C must have shape (q, n) with n = {n}, got shape {tuple(C.shape)}")
    L = _check_length(L)
    terms = []
    AkB = Bd                                                       # Ā^l B̄: (n, p)
    for _ in range(L):
        terms.append(C @ AkB)                                      # (q, p)
        AkB = Ad @ AkB
    return torch.stack(terms)                                      # (L, q, p)


def s4d_kernel(Ad, Bd, C, L: int) -> torch.Tensor:
    """Kernel of d diagonal systems, S4D's Vandermonde product (S4D paper, Section 3.1):

        K[c, l] = Σ_n C[c, n] B̄[c, n] Ā[c, n]^l,     i.e. K = (C ⊙ B̄) · V,  V[n, l] = Ā_n^l.

    Shapes: Ā, B̄, C (d, n), real or complex. Returns K (d, L), complex if any input is.
    Materialises the Vandermonde matrix V (d, n, L): O(d n L) work and memory.
    """
    Ad, Bd, C = _tensor("Ad", Ad), _tensor("Bd", Bd), _tensor("C", C)
    if Ad.dim() != 2:
        raise ValueError(f"Ad must have shape (d, n), got shape {tuple(Ad.shape)}")
    for name, t in (("Bd", Bd), ("C", C)):
        if t.shape != Ad.shape:
            raise ValueError(f"{name} must have shape (d, n) = {tuple(Ad.shape)} like Ad, got shape {tuple(t.shape)}")
    L = _check_length(L)
    real = Ad.real.dtype if Ad.is_complex() else Ad.dtype
    powers = torch.arange(L, dtype=real, device=Ad.device)        # (L,)
    V = Ad[..., None] ** powers                                    # Vandermonde: (d, n, L)
    return torch.einsum("dn,dnl->dl", C * Bd, V)                   # (d, L)


# ----------------------------------------------------------------------------------------
# causal convolution
# ----------------------------------------------------------------------------------------

def _check_conv(u, K):
    u, K = _tensor("u", u), _tensor("K", K)
    if u.is_complex() or K.is_complex():
        raise TypeError(f"u and K must be real (take the real part of a complex kernel first), "
                        f"got {u.dtype} and {K.dtype}")
    if u.dim() < 1 or K.dim() < 1:
        raise ValueError(f"u (..., L) and K (..., L_K) need a time axis, got shapes {tuple(u.shape)} and {tuple(K.shape)}")
    if K.dim() > u.dim() or (K.dim() > 1 and K.shape[:-1] != u.shape[u.dim() - K.dim():-1]):
        raise ValueError(f"K must have shape (L_K,) or (..., L_K) whose leading dims equal u's trailing "
                         f"non-time dims: u has shape {tuple(u.shape)}, K has shape {tuple(K.shape)}")
    return u, K


def causal_conv(u, K) -> torch.Tensor:
    """y_t = Σ_{j=0}^{t} K_j u_{t-j} along the last axis, by FFT in O(L log L).

    Shapes: u (..., L); K (L_K,) shared by every row, or (..., L_K) whose leading dims equal
    u's trailing non-time dims (e.g. u (batch, d, L) with K (d, L): one kernel per channel,
    shared across the batch). Returns y with u's shape. Zero padding to ≥ L + L_K − 1 points
    makes the FFT's circular convolution equal the linear (causal) one.
    """
    u, K = _check_conv(u, K)
    L, LK = u.shape[-1], K.shape[-1]
    n = 1 << math.ceil(math.log2(max(L + LK - 1, 1)))              # FFT size, a power of two
    dtype = torch.promote_types(u.dtype, K.dtype)
    U = torch.fft.rfft(u.to(dtype), n=n)                            # (..., n//2 + 1)
    Kf = torch.fft.rfft(K.to(dtype), n=n)
    return torch.fft.irfft(U * Kf, n=n)[..., :L]                    # (..., L)


def causal_conv_direct(u, K) -> torch.Tensor:
    """The same causal convolution as :func:`causal_conv`, summed term by term in O(L·L_K):
    y = Σ_j K_j · (u shifted right by j). Slow and obviously right: the check for the FFT."""
    u, K = _check_conv(u, K)
    L, LK = u.shape[-1], K.shape[-1]
    dtype = torch.promote_types(u.dtype, K.dtype)
    u = u.to(dtype)
    y = torch.zeros_like(u)
    for j in range(min(L, LK)):
        y[..., j:] += K[..., j, None].to(dtype) * u[..., :L - j]
    return y


# ----------------------------------------------------------------------------------------
# initialisations
# ----------------------------------------------------------------------------------------

def hippo_legs(n: int, dtype=torch.float64):
    """The HiPPO-LegS matrices (HiPPO paper, Section 2 / Appendix D.3; S4 eq. 2):

        A[i, k] = −sqrt(2i+1) sqrt(2k+1) if i > k,  −(i+1) if i = k,  0 if i < k,
        B[i]    = sqrt(2i+1).

    Returns A (n, n) and B (n, 1). With x' = (1/t)(A x + B u) the state x(t) holds the
    coefficients of u on [0, t] in the scaled Legendre basis (see :func:`hippo_legs_memory`);
    S4 uses the same A as a time-invariant system with a learned step.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    q = torch.sqrt(2 * torch.arange(n, dtype=dtype) + 1)          # sqrt(2i+1): (n,)
    i = torch.arange(n)
    A = torch.where(i[:, None] > i[None, :], -q[:, None] * q[None, :], torch.zeros((), dtype=dtype))  # (n, n)
    A = A - torch.diag(torch.arange(1, n + 1, dtype=dtype))
    return A, q[:, None].clone()


def s4d_real(n: int, dtype=torch.float64) -> torch.Tensor:
    """S4D-Real (S4D paper, Section 4.1; also Mamba's default): A_k = −(k+1), k = 0 … n−1.
    Returns the diagonal, shape (n,): real, decaying at rates 1, 2, …, n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return -torch.arange(1, n + 1, dtype=dtype)


def s4d_lin(n: int, dtype=torch.complex128) -> torch.Tensor:
    """S4D-Lin (S4D paper, Section 4.1): A_k = −1/2 + iπk, k = 0 … n−1. Returns the diagonal,
    shape (n,), complex: every mode decays at rate 1/2 and oscillates at frequency k/2
    (cycles per unit time). Each complex mode stands for a conjugate pair of real states,
    so a real system uses y = 2 Re(Σ C h) (see :class:`LTISSM`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    k = torch.arange(n, dtype=torch.float64)
    return torch.complex(torch.full_like(k, -0.5), math.pi * k).to(dtype)


# ----------------------------------------------------------------------------------------
# what HiPPO's state means: a compressed memory of the whole past
# ----------------------------------------------------------------------------------------

def legendre_reconstruct(c, s) -> torch.Tensor:
    """Evaluate Σ_i c_i sqrt(2i+1) P_i(2 s − 1) for s ∈ [0, 1] (0 = oldest, 1 = now).

    c: (..., n) LegS coefficients; s: (M,) points. Returns (..., M). P_i is the Legendre
    polynomial of degree i, from Bonnet's recursion (i+1) P_{i+1} = (2i+1) x P_i − i P_{i−1}.
    """
    c, s = _tensor("c", c), _tensor("s", s)
    if s.dim() != 1:
        raise ValueError(f"s must be 1-D (M,), got shape {tuple(s.shape)}")
    n = c.shape[-1]
    x = (2 * s - 1).to(c.dtype)
    P = [torch.ones_like(x), x]
    for i in range(1, n - 1):
        P.append(((2 * i + 1) * x * P[i] - i * P[i - 1]) / (i + 1))
    basis = torch.stack(P[:n]) * torch.sqrt(2 * torch.arange(n, dtype=c.dtype) + 1)[:, None]  # (n, M)
    return c @ basis


def hippo_legs_memory(u, n: int) -> torch.Tensor:
    """Run HiPPO-LegS on a sequence: after step k the state c_k (n,) summarises *all* of
    u_0 … u_k as Legendre coefficients over [0, k] (HiPPO paper, Theorem 2 and eq. (19)).

    The time-varying system c' = (1/t)(A c + B u) is stepped with the bilinear rule,
    t = k + 1 at step k:  c_k = (I − A/(2t))⁻¹ ((I + A/(2t)) c_{k−1} + B u_k / t).

    u: (L,) real. Returns (L, n): row k are the coefficients of the history up to step k;
    ``legendre_reconstruct(c[k], s)`` draws that history back out, s = 0 oldest, s = 1 now.
    """
    u = _tensor("u", u)
    if u.dim() != 1:
        raise ValueError(f"u must be 1-D (L,), got shape {tuple(u.shape)}")
    A, B = hippo_legs(n, dtype=u.dtype)
    I = torch.eye(n, dtype=u.dtype)
    c = torch.zeros(n, dtype=u.dtype)
    out = []
    for k in range(u.shape[0]):
        t = k + 1.0
        c = torch.linalg.solve(I - A / (2 * t), (I + A / (2 * t)) @ c + B[:, 0] * u[k] / t)
        out.append(c)
    return torch.stack(out)                                        # (L, n)


# ----------------------------------------------------------------------------------------
# a layer: d independent diagonal SSMs, run as a convolution or as a recurrence
# ----------------------------------------------------------------------------------------

class LTISSM(nn.Module):
    """d independent time-invariant diagonal SSMs (an S4D layer without its mixing MLP).

    Forward: u (batch, d, length) -> y (batch, d, length), the layout of Mamba's scan, so the
    selective layer of stage 4 can replace it one for one. Per channel c:

        Ā, B̄ = zoh(A_c, B_c, Δ_c),   y = K_c * u + D_c u,   K_c[l] = Σ_n C_cn B̄_cn Ā_cn^l

    computed either as a convolution (``mode="convolution"``, the kernel by a Vandermonde
    product then an FFT: parallel over time) or as a recurrence (``mode="recurrence"``, the
    step-by-step loop); both give the same y.

    Args:
        d: channels. n: state size per channel.
        init: ``"s4d_real"`` (A_k = −(k+1), real, n modes) or ``"s4d_lin"`` (A_k = −1/2 + iπk:
            n must be even, n/2 complex modes each standing for a conjugate pair, y = 2 Re …).
        dt_min, dt_max: log Δ is drawn uniformly in [log dt_min, log dt_max] per channel.
        mode: the default mode of :meth:`forward`.
        discretization: ``"zoh"`` (default), ``"bilinear"``, ``"euler"`` or ``"mamba"``.

    Parameters: ``log_dt`` (d,), ``A_log`` (d, m) with Re A = −exp(A_log), ``A_imag`` (d, m)
    for complex inits, ``B`` and ``C`` (d, m) (stored as (d, m, 2) real pairs for complex
    inits), ``D`` (d,), where m = n (real) or n/2 (complex).
    """

    MODES = ("convolution", "recurrence")

    def __init__(self, d: int, n: int = 16, *, init: str = "s4d_real", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, mode: str = "convolution", discretization: str = "zoh",
                 dtype=torch.float32):
        super().__init__()
        for name, v in (("d", d), ("n", n)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if init not in ("s4d_real", "s4d_lin"):
            raise ValueError(f"init must be 's4d_real' or 's4d_lin', got {init!r}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if discretization not in DIAG_METHODS:
            raise ValueError(f"discretization must be one of {sorted(DIAG_METHODS)}, got {discretization!r}")
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d, self.n, self.init, self.mode, self.discretization = d, n, init, mode, discretization
        self.complex = init == "s4d_lin"
        if self.complex and n % 2:
            raise ValueError(f"init='s4d_lin' needs an even n (n/2 conjugate pairs), got n={n}")
        m = n // 2 if self.complex else n
        log_dt = torch.rand(d, dtype=dtype) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)                                      # (d,)
        A0 = s4d_lin(m) if self.complex else s4d_real(m)                       # (m,)
        self.A_log = nn.Parameter(torch.log(-A0.real).to(dtype).repeat(d, 1))   # (d, m)
        if self.complex:
            self.A_imag = nn.Parameter(A0.imag.to(dtype).repeat(d, 1))          # (d, m)
            self.B = nn.Parameter(torch.stack([torch.ones(d, m), torch.zeros(d, m)], -1).to(dtype))  # (d, m, 2)
            self.C = nn.Parameter(torch.randn(d, m, 2, dtype=dtype) * math.sqrt(0.5))                # (d, m, 2)
        else:
            self.B = nn.Parameter(torch.ones(d, m, dtype=dtype))                # (d, m)
            self.C = nn.Parameter(torch.randn(d, m, dtype=dtype))               # (d, m)
        self.D = nn.Parameter(torch.randn(d, dtype=dtype))                      # (d,)

    def extra_repr(self) -> str:
        return f"d={self.d}, n={self.n}, init={self.init!r}, mode={self.mode!r}, discretization={self.discretization!r}"

    def continuous(self):
        """The continuous diagonal parameters (A, B, C), each (d, m), complex for S4D-Lin."""
        A = -torch.exp(self.A_log)
        if self.complex:
            return (torch.complex(A, self.A_imag), torch.view_as_complex(self.B),
                    torch.view_as_complex(self.C))
        return A, self.B, self.C

    def discrete(self):
        """(Ā, B̄, C), each (d, m), from the chosen discretization with Δ = exp(log_dt)."""
        A, B, C = self.continuous()
        Ad, Bd = DIAG_METHODS[self.discretization](A, B, torch.exp(self.log_dt))
        return Ad, Bd, C

    def kernel(self, L: int) -> torch.Tensor:
        """The real convolution kernel of every channel, (d, L) (2 Re … for complex modes)."""
        K = s4d_kernel(*self.discrete(), L)                                     # (d, L)
        return 2 * K.real if self.complex else K

    def forward(self, u: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """u (batch, d, length) -> y (batch, d, length), by ``mode`` (default ``self.mode``)."""
        mode = self.mode if mode is None else mode
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if not isinstance(u, torch.Tensor) or not u.is_floating_point():
            raise TypeError(f"u must be a floating-point tensor, got {getattr(u, 'dtype', type(u).__name__)}")
        if u.dim() != 3 or u.shape[1] != self.d:
            raise ValueError(f"u must have shape (batch, d, length) with d = {self.d}, got shape {tuple(u.shape)}")
        if u.device != self.D.device:
            raise ValueError(f"u is on {u.device} but the layer is on {self.D.device}")
        if mode == "convolution":
            y = causal_conv(u, self.kernel(u.shape[-1]).to(u.dtype))            # (b, d, L)
        else:
            y = recurrence_diag(*self.discrete(), None, u)                     # (b, d, L)
            y = 2 * y.real if self.complex else y
        return (y + self.D[:, None] * u).to(u.dtype)
