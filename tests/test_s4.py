"""Specification of ssm_tutor.s4: S4's structured HiPPO (S4 paper Sections 3.1–3.3, Algorithm 1) and
the diagonal approximation S4D-LegS. References: SciPy (`cont2discrete` for the bilinear step,
`dimpulse` for the dense kernel C Ā^j B̄), dense linear algebra, exact binomial coefficients."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from ssm_tutor.convolution import causal_conv, hippo_legs, s4d_kernel, ssm_kernel
from ssm_tutor.discretize import bilinear, bilinear_diag
from ssm_tutor.s4 import (cauchy, dplr_kernel, eigenvector_condition, generating_function_C, legs_diagonal,
                          legs_dplr, legs_eigenvectors, legs_nplr)


def _dense_kernel_scipy(A, B, C, dt, L):
    """K_j = C Ā^j B̄ (bilinear Ā, B̄ from SciPy) from scipy.signal.dimpulse: h[j+1] = C Ā^j B̄."""
    Ad, Bd, *_ = scipy.signal.cont2discrete((A, B[:, None], C[None, :], np.zeros((1, 1))), dt, method="bilinear")
    _, (h,) = scipy.signal.dimpulse((Ad, Bd, C[None, :], np.zeros((1, 1)), dt), n=L + 1)
    return torch.tensor(h[1:, 0].copy())


# ------------------------------------------------------------------------------ 1. naive diagonalisation
@pytest.mark.parametrize("N", [1, 2, 5, 10])
def test_lemma_3_2_eigenvectors_diagonalise_legs(N):
    A, _ = hippo_legs(N)
    W = legs_eigenvectors(N)
    lam = -torch.arange(1, N + 1, dtype=torch.float64)
    residual = A @ W - W * lam[None, :]
    assert residual.abs().max() <= 1e-12 * W.abs().max() * N


def test_lemma_3_2_entries_grow_like_2_to_the_4N_over_3():
    for i in (2, 5, 10):
        W = legs_eigenvectors(3 * i + 1)
        binom = W[3 * i, i].abs() / math.sqrt(6 * i + 1)          # undo the D scaling
        assert binom == math.comb(4 * i, 2 * i)
        assert math.log2(binom) > 4 * i - math.log2(4 * i)       # ≈ 2^{4i} / sqrt(π 2i)


def test_naive_eigenvector_condition_grows_exponentially():
    conds = [eigenvector_condition(hippo_legs(N)[0]) for N in (4, 8, 12, 16)]
    assert conds[0] < 1e3 and conds[-1] > 1e9
    assert all(b > 30 * a for a, b in zip(conds, conds[1:]))   # more than an order of magnitude per 4 states


def test_naive_diagonalisation_ruins_the_kernel_but_dplr_does_not():
    dt, L = 0.01, 200
    rng = np.random.default_rng(0)
    errors = {}
    for N in (4, 24):
        A, B = hippo_legs(N)
        C = torch.tensor(rng.standard_normal(N))
        ref = _dense_kernel_scipy(A.numpy(), B[:, 0].numpy(), C.numpy(), dt, L)
        lam, W = torch.linalg.eig(A)
        Ad, Bd = bilinear_diag(lam[None], torch.linalg.solve(W, B[:, 0].to(W.dtype))[None], dt)
        naive = s4d_kernel(Ad, Bd, (C.to(W.dtype) @ W)[None], L)[0].real
        errors[N] = float((naive - ref).abs().max() / ref.abs().max())
    assert errors[4] < 1e-12 and errors[24] > 1e-3


# ------------------------------------------------------------------------------ 2. NPLR and DPLR
@pytest.mark.parametrize("N", [1, 4, 64])
def test_normal_part_is_minus_half_plus_skew(N):
    A, P, B = legs_nplr(N)
    S = A + P[:, None] * P[None, :]
    assert torch.allclose(S + S.T, -torch.eye(N, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(S @ S.T, S.T @ S, atol=1e-9 * N)          # normal


@pytest.mark.parametrize("N", [2, 16, 64])
def test_dplr_form_reconstructs_legs_in_a_unitary_basis(N):
    A, P, B = legs_nplr(N)
    Lambda, Pt, Bt, V = legs_dplr(N)
    I = torch.eye(N, dtype=torch.complex128)
    assert torch.allclose(V.conj().T @ V, I, atol=1e-12)
    assert torch.allclose(Lambda.real, torch.full((N,), -0.5, dtype=torch.float64), atol=1e-12)
    A_rebuilt = V @ (torch.diag(Lambda) - Pt[:, None] * Pt.conj()[None, :]) @ V.conj().T
    assert (A_rebuilt - A).abs().max() < 1e-11 * N
    assert torch.allclose(V @ Bt, B.to(torch.complex128), atol=1e-12)
    assert eigenvector_condition(A + P[:, None] * P[None, :]) < 1 + 1e-8


# ------------------------------------------------------------------------------ 3. Algorithm 1
def test_bilinear_discretisation_of_hippo_matches_scipy():
    A, B = hippo_legs(64)
    Ad_ref, Bd_ref, *_ = scipy.signal.cont2discrete((A.numpy(), B.numpy(), np.eye(64), np.zeros((64, 1))), 0.01,
                                                    method="bilinear")
    Ad, Bd = bilinear(A, B, 0.01)
    assert np.allclose(Ad.numpy(), Ad_ref, rtol=0, atol=1e-13) and np.allclose(Bd.numpy(), Bd_ref, rtol=0, atol=1e-14)


def test_cauchy_equals_the_dense_cauchy_matrix():
    g = torch.Generator().manual_seed(3)
    v, w = torch.randn(5, dtype=torch.complex128, generator=g), torch.randn(5, dtype=torch.complex128, generator=g)
    z = torch.randn(7, dtype=torch.complex128, generator=g) + 3
    M = 1 / (z[:, None] - w[None, :])
    assert torch.allclose(cauchy(v, z, w), M @ v, atol=1e-13)


def test_generating_function_at_roots_of_unity_is_the_resolvent():
    # K̂(z) = Σ_j K_j z^j = 2/(1+z) · C̃ (g(z) I − A)⁻¹ B at z^L = 1 (bilinear), with C̃ = C (I − Ā^L)
    N, L, dt = 8, 32, 0.1
    A, B = hippo_legs(N)
    C = torch.linspace(-1, 1, N, dtype=torch.float64)
    Ad, Bd = bilinear(A, B, dt)
    K = ssm_kernel(Ad, Bd, C[None], L)[:, 0, 0]
    z = torch.exp(-2j * math.pi * torch.arange(L) / L)
    C_t = generating_function_C(C, Ad, L)
    for l in (0, 3, L // 2 - 1):
        g = (2 / dt) * (1 - z[l]) / (1 + z[l])
        resolvent = torch.linalg.solve(g * torch.eye(N, dtype=torch.complex128) - A.to(torch.complex128),
                                       B[:, 0].to(torch.complex128))
        assert torch.allclose((K.to(torch.complex128) * z[l] ** torch.arange(L)).sum(),
                              2 / (1 + z[l]) * (C_t.to(torch.complex128) @ resolvent), atol=1e-10)


@pytest.mark.parametrize("N,L,dt", [(16, 256, 0.05), (64, 1024, 0.01)])
def test_dplr_kernel_equals_the_dense_kernel_in_float64(N, L, dt):
    A, P, B = legs_nplr(N)
    Lambda, Pt, Bt, V = legs_dplr(N)
    C = torch.tensor(np.random.default_rng(N).standard_normal(N))
    Ad, _ = bilinear(A, B[:, None], dt)
    C_t = generating_function_C(C, Ad, L).to(torch.complex128) @ V          # C̃ in the DPLR basis
    K = dplr_kernel(Lambda, Pt, Pt, Bt, C_t, dt, L)
    ref = _dense_kernel_scipy(A.numpy(), B.numpy(), C.numpy(), dt, L)
    assert K.dtype == torch.float64 and K.shape == (L,)
    assert (K - ref).abs().max() < 1e-10 * ref.abs().max()


def test_dplr_kernel_refuses_bad_arguments():
    x = torch.ones(4, dtype=torch.complex128)
    with pytest.raises(ValueError, match="same shape"):
        dplr_kernel(x, x, x, x, torch.ones(5, dtype=torch.complex128), 0.1, 8)
    with pytest.raises(ValueError, match="dt"):
        dplr_kernel(x, x, x, x, x, 0.0, 8)
    with pytest.raises(ValueError, match="L"):
        dplr_kernel(x, x, x, x, x, 0.1, 0)
    with pytest.raises(ValueError, match="N"):
        legs_dplr(0)


# ------------------------------------------------------------------------------ 4. S4D-LegS
def _diagonal_vs_legs_error(N, dt=0.01, L=1000, halve=True):
    """Relative error of the diagonal system's output on a smooth input, against LegS's, reading state 0."""
    A, B = hippo_legs(N)
    Lambda, Bt, V = legs_diagonal(N)
    if not halve:
        Bt = 2 * Bt
    C = torch.zeros(N, dtype=torch.float64)
    C[0] = 1.0
    t = dt * torch.arange(L, dtype=torch.float64)
    u = torch.sin(2 * t) + 0.5 * torch.cos(5 * t + 1)
    K_legs = ssm_kernel(*bilinear(A, B, dt), C[None], L)[:, 0, 0]
    K_diag = s4d_kernel(*bilinear_diag(Lambda[None], Bt[None], dt), (C.to(torch.complex128) @ V)[None], L)[0].real
    y_legs, y_diag = causal_conv(u, K_legs), causal_conv(u, K_diag)
    return float((y_diag - y_legs).abs().max() / y_legs.abs().max())


def test_s4d_legs_outputs_converge_to_legs_as_N_grows():
    errors = [_diagonal_vs_legs_error(N) for N in (16, 64, 128)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03


def test_s4d_legs_needs_the_half():
    assert _diagonal_vs_legs_error(128, halve=False) > 0.5


def test_s4d_legs_kernel_is_half_of_legs_at_t_zero():
    N = 32
    _, B = hippo_legs(N)
    _, Bt, V = legs_diagonal(N)
    assert torch.allclose((V @ Bt).real, 0.5 * B[:, 0], atol=1e-12)
