"""Stage 3, second half: S4 itself, between HiPPO-LegS and the diagonal S4D.

Notebook: ``notebooks/03_convolution_view.ipynb`` (section "S4: structured state spaces"). Papers:
Gu, Goel & Ré, *Efficiently Modeling Long Sequences with Structured State Spaces* (S4, ICLR 2022),
Sections 3.1–3.3, Lemma 3.2, Theorem 1 and Algorithm 1; Gupta, Gu & Berant, *Diagonal State Spaces
are as Effective as Structured State Spaces* (DSS, 2022); Gu, Gupta, Goel & Ré, *On the
Parameterization and Initialization of Diagonal State Space Models* (S4D, 2022).

The story in four steps:

1. **Diagonalising HiPPO naively fails.** HiPPO-LegS's A is lower triangular with eigenvalues
   −1, …, −N, so it *is* diagonalisable, but by a matrix whose entries grow like 2^{4N/3}
   (Lemma 3.2: V_ij = binom(i+j, i−j) up to a diagonal scaling): :func:`legs_eigenvectors`,
   :func:`eigenvector_condition`.
2. **Normal plus low rank.** A + P Pᵀ, with P_n = sqrt(n + 1/2), is −½ I plus a skew-symmetric
   matrix, hence normal, hence diagonalised by a *unitary* V (condition number 1). So
   A = V (Λ − P̃ P̃*) V*, a diagonal plus rank-1 (DPLR) matrix in a well-conditioned basis
   (Theorem 1): :func:`legs_nplr`, :func:`legs_dplr`.
3. **The kernel without powers of Ā** (Algorithm 1, bilinear discretisation): evaluate the truncated
   generating function K̂(z) = Σ_{j<L} K_j z^j at the L-th roots of unity, where it equals
   (2/(1+z)) C̃ (g(z) − A)⁻¹ B with g(z) = (2/Δ)(1 − z)/(1 + z) and C̃ = C (I − Ā^L); the Woodbury
   identity turns the DPLR inverse into four Cauchy sums Σ_n a_n / (g − λ_n); an inverse FFT gives
   K: :func:`generating_function_C`, :func:`cauchy`, :func:`dplr_kernel`.
4. **The diagonal approximation that works** (DSS, S4D-LegS): keep Λ, drop the rank-1 term, halve B.
   The kernels differ pointwise, but as filters of smooth inputs they converge as N grows:
   :func:`legs_diagonal`.

Conventions: a kernel reads K_j = C Ā^j B̄ with C a row (N,) and B a column (N,) (no conjugation on
C); all computations in float64 / complex128.
"""

from __future__ import annotations

import math

import torch

from ssm_tutor.convolution import hippo_legs

__all__ = [
    "legs_eigenvectors", "eigenvector_condition",
    "legs_nplr", "legs_dplr",
    "generating_function_C", "cauchy", "dplr_kernel",
    "legs_diagonal",
]


def _check_n(N) -> int:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be a positive integer (the state size), got {N!r}")
    return N


# ----------------------------------------------------------------------------------------------
# 1. why the naive diagonalisation fails
# ----------------------------------------------------------------------------------------------

def legs_eigenvectors(N: int) -> torch.Tensor:
    """The exact eigenvectors of HiPPO-LegS (S4 paper, Lemma 3.2), float64 (N, N).

    Lemma 3.2: the LegS matrix, rescaled by the diagonal D S (D = diag(sqrt(2i+1)), S = diag((−1)^i)),
    is diagonalised by V_ij = binom(i + j, i − j) (zero above the diagonal). So W = D S V satisfies
    A W = W diag(−1, −2, …, −N). Its entries reach binom(4i, 2i) ≈ 2^{4i} at (3i, i): any basis that
    diagonalises A must have exponentially large entries.
    """
    N = _check_n(N)
    V = torch.tensor([[float(math.comb(i + j, i - j)) if i >= j else 0.0 for j in range(N)] for i in range(N)],
                     dtype=torch.float64)                                    # (N, N), exact integers
    i = torch.arange(N, dtype=torch.float64)
    DS = torch.sqrt(2 * i + 1) * (-1.0) ** i                                # the diagonal D S: (N,)
    return DS[:, None] * V                                                  # W = D S V: (N, N)


def eigenvector_condition(A) -> float:
    """The 2-norm condition number of the eigenvector matrix LAPACK computes for A (unit-norm
    columns, ``torch.linalg.eig``). For a normal A it is 1; for HiPPO-LegS it grows exponentially
    with N until it saturates near 1/eps, where the computed eigenvectors are no longer a basis."""
    A = torch.as_tensor(A)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix (N, N), got shape {tuple(A.shape)}")
    _, W = torch.linalg.eig(A.to(torch.float64))                            # (N, N) complex
    return float(torch.linalg.cond(W))


# ----------------------------------------------------------------------------------------------
# 2. normal plus low rank, and its diagonal-plus-low-rank conjugate
# ----------------------------------------------------------------------------------------------

def legs_nplr(N: int):
    """HiPPO-LegS as normal plus low rank (S4 Theorem 1): returns (A, P, B).

    A (N, N) and B (N,) are :func:`ssm_tutor.convolution.hippo_legs`'s; P (N,) has P_n = sqrt(n + 1/2).
    Then A + P Pᵀ = −½ I + (a skew-symmetric matrix): its entries are −½ sqrt(2n+1) sqrt(2k+1) below
    the diagonal, +½ sqrt(2n+1) sqrt(2k+1) above it and −½ on it. A normal matrix.
    """
    A, B = hippo_legs(_check_n(N))                                         # (N, N), (N, 1)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)             # (N,)
    return A, P, B[:, 0]


def legs_dplr(N: int):
    """HiPPO-LegS in a unitary basis where it is diagonal plus rank 1 (S4 Section 3.2):
    returns (Lambda (N,), P̃ (N,), B̃ (N,), V (N, N)), complex128, with

        A = V (diag(Λ) − P̃ P̃*) V*,    P̃ = V* P,   B̃ = V* B,   V* V = I.

    V diagonalises the normal part S = A + P Pᵀ = −½ I + K (K skew-symmetric): −iK is Hermitian, so
    ``eigh`` gives real μ and unitary V with K V = V diag(iμ), and Λ = −½ + iμ.
    """
    A, P, B = legs_nplr(N)
    S = A + P[:, None] * P[None, :]                                        # normal part: (N, N)
    K = S + 0.5 * torch.eye(N, dtype=torch.float64)                        # skew-symmetric: Kᵀ = −K
    mu, V = torch.linalg.eigh(-1j * K.to(torch.complex128))                # -iK Hermitian: real μ, unitary V
    Lambda = -0.5 + 1j * mu.to(torch.complex128)                           # (N,)
    Vh = V.conj().T
    return Lambda, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


# ----------------------------------------------------------------------------------------------
# 3. the kernel by the generating function, the Woodbury identity and Cauchy sums (Algorithm 1)
# ----------------------------------------------------------------------------------------------

def generating_function_C(C, Ad, L: int) -> torch.Tensor:
    """C̃ = C (I − Ā^L): the C that makes the generating function of the length-L kernel exact at the
    L-th roots of unity (S4 Algorithm 1, line 1). C (N,), Ā (N, N) -> (N,). S4 learns C̃ directly;
    computing it from C costs one dense matrix power, which is what a check can afford."""
    C, Ad = torch.as_tensor(C), torch.as_tensor(Ad)
    if Ad.dim() != 2 or Ad.shape[0] != Ad.shape[1] or C.shape != (Ad.shape[0],):
        raise ValueError(f"need C (N,) and Ad (N, N), got shapes {tuple(C.shape)} and {tuple(Ad.shape)}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive integer, got {L!r}")
    I = torch.eye(Ad.shape[0], dtype=Ad.dtype, device=Ad.device)
    return C.to(Ad.dtype) @ (I - torch.linalg.matrix_power(Ad, L))


def cauchy(v, z, w) -> torch.Tensor:
    """The Cauchy matrix-vector product k_l = Σ_n v_n / (z_l − w_n): v, w (N,), z (L,) -> (L,).
    Naive O(N L) work (fast algorithms exist, S4 Section 3.3; this one is for reading)."""
    v, z, w = (torch.as_tensor(x).to(torch.complex128) for x in (v, z, w))
    if v.shape != w.shape or v.dim() != 1 or z.dim() != 1:
        raise ValueError(f"need v, w (N,) and z (L,), got shapes {tuple(v.shape)}, {tuple(w.shape)}, {tuple(z.shape)}")
    return (v[None, :] / (z[:, None] - w[None, :])).sum(-1)               # (L, N) summed over n


def dplr_kernel(Lambda, P, Q, B, C_tilde, dt: float, L: int) -> torch.Tensor:
    """The length-L kernel K_j = C Ā^j B̄ of the DPLR system A = diag(Λ) − P Q*, bilinear step Δ,
    without forming Ā (S4 Algorithm 1). All of Λ, P, Q, B, C̃ (N,), complex; returns K (L,) real.

        z_l   = exp(−2πi l / L)                        the L-th roots of unity
        g_l   = (2/Δ) (1 − z_l) / (1 + z_l)            where bilinear sends z back to s
        k_ab  = Σ_n a_n b_n / (g_l − Λ_n)              four Cauchy sums, a ∈ {C̃, Q*}, b ∈ {B, P}
        K̂(z_l) = 2/(1 + z_l) · [k_00 − k_01 k_10 / (1 + k_11)]        the Woodbury identity
        K     = inverse FFT of K̂                        since K̂(z_l) = Σ_j K_j z_l^j
    """
    Lambda, P, Q, B, C_tilde = (torch.as_tensor(x).to(torch.complex128) for x in (Lambda, P, Q, B, C_tilde))
    if not all(x.shape == Lambda.shape and x.dim() == 1 for x in (P, Q, B, C_tilde)):
        raise ValueError("Lambda, P, Q, B and C_tilde must all have the same shape (N,)")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive integer, got {L!r}")
    z = torch.exp(-2j * math.pi * torch.arange(L, dtype=torch.float64) / L)  # (L,)
    g = (2.0 / dt) * (1 - z) / (1 + z)                                       # (L,)
    k00 = cauchy(C_tilde * B, g, Lambda)
    k01 = cauchy(C_tilde * P, g, Lambda)
    k10 = cauchy(Q.conj() * B, g, Lambda)
    k11 = cauchy(Q.conj() * P, g, Lambda)
    K_hat = 2 / (1 + z) * (k00 - k01 * k10 / (1 + k11))                     # (L,)
    return torch.fft.ifft(K_hat).real                                        # (L,)


# ----------------------------------------------------------------------------------------------
# 4. the diagonal approximation: S4D-LegS (DSS's initialisation)
# ----------------------------------------------------------------------------------------------

def legs_diagonal(N: int):
    """S4D-LegS: the diagonal system that approximates HiPPO-LegS (DSS; S4D Section 4). Returns
    (Lambda (N,), B̃ (N,), V (N, N)): the normal part's eigenvalues, ½ V* B, and the basis.

    Drop the rank-1 term of :func:`legs_dplr` and halve B: (diag Λ, ½ V* B, C V) is a diagonal SSM
    whose outputs on smooth inputs approach those of (A, B, C) as N grows. Its kernel does not
    converge pointwise (at t = 0 it is exactly half of LegS's, the midpoint of LegS's jump from 0
    to B, as a Fourier series is at a jump); the notebook measures both.
    """
    Lambda, _, B_tilde, V = legs_dplr(N)
    return Lambda, 0.5 * B_tilde, V
