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
import torch.nn.functional as F

from ssm_tutor.discretize import DIAG_METHODS, _check_dense, _tensor, recurrence_diag
from ssm_tutor.validate import check_choice, check_layer_input, check_positive, positive_int

__all__ = [
    "ssm_kernel", "s4d_kernel", "causal_conv", "causal_conv_direct",
    "hippo_legs", "s4d_real", "s4d_lin", "legendre_reconstruct", "hippo_legs_memory",
    "LTISSM", "dt_bias_init", "inverse_softplus", "compute_dtype",
]


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------

def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the layers compute in: float64 stays float64; float32, float16 and
    bfloat16 become float32 (the FFT has no half-precision CPU kernel, and a long sum in half
    precision drifts). Every later stage uses the same rule."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    L = positive_int("L", L)
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
    L = positive_int("L", L)
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
    wide = compute_dtype(dtype)                                     # half precision: FFT in float32
    U = torch.fft.rfft(u.to(wide), n=n)                             # (..., n//2 + 1)
    Kf = torch.fft.rfft(K.to(wide), n=n)
    return torch.fft.irfft(U * Kf, n=n)[..., :L].to(dtype)          # (..., L)


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
    positive_int("n", n)
    q = torch.sqrt(2 * torch.arange(n, dtype=dtype) + 1)          # sqrt(2i+1): (n,)
    i = torch.arange(n)
    A = torch.where(i[:, None] > i[None, :], -q[:, None] * q[None, :], torch.zeros((), dtype=dtype))  # (n, n)
    A = A - torch.diag(torch.arange(1, n + 1, dtype=dtype))
    return A, q[:, None].clone()


def s4d_real(n: int, dtype=torch.float64) -> torch.Tensor:
    """S4D-Real (S4D paper, Section 4.1; also Mamba's default): A_k = −(k+1), k = 0 … n−1.
    Returns the diagonal, shape (n,): real, decaying at rates 1, 2, …, n."""
    positive_int("n", n)
    return -torch.arange(1, n + 1, dtype=dtype)


def s4d_lin(n: int, dtype=torch.complex128) -> torch.Tensor:
    """S4D-Lin (S4D paper, Section 4.1): A_k = −1/2 + iπk, k = 0 … n−1. Returns the diagonal,
    shape (n,), complex: every mode decays at rate 1/2 and oscillates at frequency k/2
    (cycles per unit time). Each complex mode stands for a conjugate pair of real states,
    so a real system uses y = 2 Re(Σ C h) (see :class:`LTISSM`)."""
    positive_int("n", n)
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
# the LTI layer: d independent diagonal SSMs, run as a convolution or as a recurrence
# ----------------------------------------------------------------------------------------

def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """The y with softplus(y) = log(1 + e^y) = x, for x > 0: y = x + log(1 - e^{-x})."""
    return x + torch.log(-torch.expm1(-x))


def dt_bias_init(d: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The dt bias of shape (d,): Δ = softplus(bias) is log-uniform in [dt_min, dt_max] at init
    (floored at ``dt_init_floor``), so each channel starts with its own time scale (Mamba's
    parameterisation of Δ, used by both the LTI layer here and stage 4's selective layer)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    r = torch.rand(d, generator=generator)                                     # (d,) uniform in [0, 1)
    dt = torch.exp(r * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=dt_init_floor))                       # (d,)


class LTISSM(nn.Module):
    """d independent time-invariant diagonal SSMs (an S4D layer without its mixing MLP): the
    LTI twin of stage 4's :class:`ssm_tutor.selective.SelectiveSSM`, with its layout.

    x (batch, length, d) -> y (batch, length, d). Per channel c, with m modes:

        Δ_c = softplus(dt_bias_c)                       one fixed step size (Mamba's parameterisation)
        A = -exp(A_log) [+ i A_imag]  (d, m)            S4D-Real, or S4D-Lin (complex)
        Ā, B̄ = discretize(A, B, Δ)                     "zoh" (default), "bilinear", "euler" or "mamba"
        h_t = Ā ⊙ h_{t-1} + B̄ u_t,   y_t = C · h_t + D u_t      (2 Re(C · h_t) for complex modes)

    Nothing depends on t, so y = K * u + D u with K_c[k] = Σ_n C_cn B̄_cn Ā_cn^k: ``forward``
    computes it as a convolution (``mode="convolution"``: the kernel by a Vandermonde product,
    then an FFT, parallel over time -- how an LTI layer trains) or as a recurrence
    (``mode="recurrence"``, the step-by-step loop); both give the same y. :meth:`step` advances
    one token from a state (:meth:`init_state`) -- how it generates.

    Args:
        d: channels. n: state size per channel (real numbers).
        init: ``"s4d_real"`` (A_k = −(k+1), n real modes) or ``"s4d_lin"`` (A_k = −1/2 + iπk:
            n even, n/2 complex modes each standing for a conjugate pair, y = 2 Re …).
        dt_min, dt_max, dt_init_floor: Δ = softplus(dt_bias) starts log-uniform in [dt_min, dt_max].
        mode: the default mode of :meth:`forward`.
        discretization: ``"zoh"``, ``"bilinear"``, ``"euler"`` or ``"mamba"`` (ZOH for A, Euler
            for B: with it and real A the layer is stage 4's selective scan with Δ, B, C held constant).

    Parameters: ``dt_bias`` (d,), ``A_log`` (d, m) with Re A = −exp(A_log), ``A_imag`` (d, m)
    for S4D-Lin, ``B`` and ``C`` (d, m) (stored as (d, m, 2) real pairs for S4D-Lin), ``D`` (d,),
    where m = n (real) or n/2 (complex). Init: B = 1, C ~ N(0, 1/m), D = 1.

    Half-precision inputs are computed in float32 (the FFT has no half-precision CPU kernel,
    and a long convolution would lose precision) and returned in their own dtype.
    """

    MODES = ("convolution", "recurrence")

    def __init__(self, d: int, n: int = 16, *, init: str = "s4d_real", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_init_floor: float = 1e-4, mode: str = "convolution",
                 discretization: str = "zoh"):
        super().__init__()
        check_positive(d=d, n=n)
        check_choice("init", init, ("s4d_real", "s4d_lin"))
        check_choice("mode", mode, self.MODES)
        check_choice("discretization", discretization, tuple(DIAG_METHODS))
        self.d, self.n, self.init, self.mode, self.discretization = d, n, init, mode, discretization
        self.complex = init == "s4d_lin"
        if self.complex and n % 2:
            raise ValueError(f"init='s4d_lin' needs an even n (n/2 conjugate pairs), got n={n}")
        m = self.modes = n // 2 if self.complex else n
        self.dt_bias = nn.Parameter(dt_bias_init(d, dt_min, dt_max, dt_init_floor))   # (d,)
        A0 = s4d_lin(m) if self.complex else s4d_real(m)                               # (m,)
        self.A_log = nn.Parameter(torch.log(-A0.real).float().repeat(d, 1))             # (d, m)
        if self.complex:
            self.A_imag = nn.Parameter(A0.imag.float().repeat(d, 1))                     # (d, m)
            self.B = nn.Parameter(torch.stack([torch.ones(d, m), torch.zeros(d, m)], -1))   # (d, m, 2): 1 + 0i
            self.C = nn.Parameter(torch.randn(d, m, 2) * math.sqrt(0.5 / m))             # (d, m, 2)
        else:
            self.B = nn.Parameter(torch.ones(d, m))                                      # (d, m)
            self.C = nn.Parameter(torch.randn(d, m) / math.sqrt(m))                      # (d, m)
        self.D = nn.Parameter(torch.ones(d))                                             # (d,)

    def extra_repr(self) -> str:
        return f"d={self.d}, n={self.n}, init={self.init!r}, mode={self.mode!r}, discretization={self.discretization!r}"

    @property
    def delta(self) -> torch.Tensor:
        """Δ = softplus(dt_bias), shape (d,): one fixed step size per channel."""
        return F.softplus(self.dt_bias)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log) (+ i A_imag for S4D-Lin), shape (d, m)."""
        return self.continuous()[0]

    def continuous(self, dtype: torch.dtype | None = None):
        """The continuous diagonal parameters (A, B, C), each (d, m), complex for S4D-Lin;
        in ``dtype`` (a real dtype; complex64/128 for S4D-Lin) when given."""
        p = dtype or self.A_log.dtype
        A = -torch.exp(self.A_log.to(p))
        if self.complex:
            return (torch.complex(A, self.A_imag.to(p)), torch.view_as_complex(self.B.to(p)),
                    torch.view_as_complex(self.C.to(p)))
        return A, self.B.to(p), self.C.to(p)

    def discrete(self, dtype: torch.dtype | None = None):
        """(Ā, B̄, C), each (d, m), from the chosen discretization with Δ = softplus(dt_bias)."""
        A, B, C = self.continuous(dtype)
        Ad, Bd = DIAG_METHODS[self.discretization](A, B, self.delta.to(dtype or self.dt_bias.dtype))
        return Ad, Bd, C

    def kernel(self, L: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real convolution kernel of every channel, K (d, L): K_c[k] = Σ_n C B̄ Ā^k
        (2 Re … for complex modes), by stage 3's Vandermonde product."""
        K = s4d_kernel(*self.discrete(dtype), L)                                # (d, L)
        return 2 * K.real if self.complex else K

    def forward(self, x: torch.Tensor, mode: str | None = None, return_last_state: bool = False):
        """x (batch, length, d) -> y (batch, length, d) by ``mode`` (default ``self.mode``);
        with ``return_last_state`` also the state after the last token, (batch, d, m), ready
        for :meth:`step` (complex for S4D-Lin)."""
        mode = self.mode if mode is None else mode
        check_choice("mode", mode, self.MODES)
        check_layer_input(x, self.d, "LTISSM")
        p = compute_dtype(x.dtype)                                              # float32 or float64
        u = x.transpose(1, 2).to(p)                                             # (b, d, L)
        h = None
        if mode == "convolution":
            y = causal_conv(u, self.kernel(u.shape[-1], p))                     # y = K * u: (b, d, L)
            if return_last_state:
                h = self.last_state(u)
        else:
            y, h = recurrence_diag(*self.discrete(p), None, u, return_last_state=True)   # (b, d, L)
            y = 2 * y.real if self.complex else y
        y = (y + self.D.to(p)[:, None] * u).to(x.dtype).transpose(1, 2)        # + D u: (b, L, d)
        return (y, h) if return_last_state else y

    def last_state(self, u: torch.Tensor) -> torch.Tensor:
        """The state after the last input, without running the recurrence: unrolled,
        h_L = Σ_k Ā^{L-1-k} B̄ u_k -- one more Vandermonde product. u (b, d, L) -> (b, d, m)."""
        Ad, Bd, _ = self.discrete(u.dtype)                                      # (d, m) each
        powers = torch.arange(u.shape[-1] - 1, -1, -1, dtype=u.dtype, device=u.device)   # L-1, …, 0
        V = Ad[..., None] ** powers                                             # Ā^{L-1-k}: (d, m, L)
        return torch.einsum("dmk,dm,bdk->bdm", V, Bd, u.to(V.dtype))

    # ---- recurrent form: generation, one token at a time ---------------------------------------
    def init_state(self, batch: int) -> torch.Tensor:
        """h_0 = 0 for ``batch`` sequences: (batch, d, m), complex for S4D-Lin."""
        positive_int("batch", batch)
        p = compute_dtype(self.A_log.dtype)
        return torch.zeros(batch, self.d, self.modes, dtype=p.to_complex() if self.complex else p,
                           device=self.A_log.device)

    def step(self, u_t: torch.Tensor, h: torch.Tensor):
        """One token: u_t (b, d), h (b, d, m) -> (y_t (b, d), h), h updated in place:
        h_t = Ā ⊙ h_{t-1} + B̄ u_t, y_t = C · h_t + D u_t (2 Re(C · h_t) for complex modes)."""
        p = h.real.dtype if h.is_complex() else h.dtype
        Ad, Bd, C = self.discrete(p)                                            # (d, m) each
        u = u_t.to(p)                                                           # (b, d)
        h.mul_(Ad).add_(Bd * u[..., None])                                      # h_t = Ā h_{t-1} + B̄ u_t
        y = (C * h).sum(-1)                                                     # C · h_t: (b, d)
        y = 2 * y.real if self.complex else y
        return (y + self.D.to(p) * u).to(u_t.dtype), h
