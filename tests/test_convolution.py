"""Stage 3 specification: the convolution view equals the recurrence; kernels against SciPy."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch
from hypothesis import given, settings, strategies as st

from stable_systems import random_stable_AB
from ssm_tutor.convolution import (
    LTISSM, causal_conv, causal_conv_direct, hippo_legs, hippo_legs_memory, legendre_reconstruct,
    s4d_kernel, s4d_lin, s4d_real, ssm_kernel,
)
from ssm_tutor.discretize import recurrence, recurrence_diag, zoh, zoh_diag

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=1e-4, rtol=1e-4)}



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,p,q", [(1, 1, 1), (4, 1, 1), (5, 2, 3)])
def test_ssm_kernel_matches_scipy_dimpulse(n, p, q, dtype):
    # dimpulse of (Ā, B̄, C, 0) gives y[0] = 0, y[l+1] = C Ā^l B̄: our K_l, one column per input
    A, B = random_stable_AB(n, p, seed=n)
    Ad, Bd = (m.numpy() for m in zoh(torch.tensor(A), torch.tensor(B), 0.3))
    C = np.random.default_rng(1).standard_normal((q, n))
    L = 40
    _, ys = scipy.signal.dimpulse((Ad, Bd, C, np.zeros((q, p)), 0.3), n=L + 2)
    expected = np.stack([y[1:L + 1] for y in ys], axis=-1)  # (L, q, p)
    K = ssm_kernel(*(torch.tensor(m, dtype=dtype) for m in (Ad, Bd, C)), L)
    assert K.shape == (L, q, p) and K.dtype == dtype
    np.testing.assert_allclose(K.double().numpy(), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convolution_with_the_kernel_equals_the_recurrence_dense_siso(dtype):
    A, B = random_stable_AB(6, 1, seed=3)
    Ad, Bd = zoh(torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype), 0.1)
    C = torch.randn(1, 6, dtype=dtype)
    u = torch.randn(200, dtype=dtype)
    y_rec = recurrence(Ad, Bd, C, None, u[:, None])[:, 0]
    y_conv = causal_conv(u, ssm_kernel(Ad, Bd, C, 200)[:, 0, 0])
    torch.testing.assert_close(y_conv, y_rec, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kshape", [((50,), (50,)), ((3, 64), (64,)), ((2, 4, 33), (4, 33)), ((2, 4, 33), (4, 10))])
def test_fft_causal_conv_matches_numpy_convolve(shape, kshape, dtype):
    g = torch.Generator().manual_seed(0)
    u, K = torch.randn(shape, generator=g, dtype=dtype), torch.randn(kshape, generator=g, dtype=dtype)
    y = causal_conv(u, K)
    assert y.shape == u.shape and y.dtype == dtype
    un = u.double().numpy().reshape(-1, shape[-1])
    Kn = np.broadcast_to(K.double().numpy(), shape[:-1] + kshape[-1:]).reshape(-1, kshape[-1])
    expected = np.stack([np.convolve(a, k)[: shape[-1]] for a, k in zip(un, Kn)]).reshape(shape)
    np.testing.assert_allclose(y.double().numpy(), expected, **TOL[dtype])


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 300), LK=st.integers(1, 300), batch=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_fft_conv_equals_direct_conv(L, LK, batch, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, 2, L, generator=g, dtype=torch.float64)
    K = torch.randn(2, LK, generator=g, dtype=torch.float64)
    torch.testing.assert_close(causal_conv(u, K), causal_conv_direct(u, K), atol=1e-10, rtol=1e-9)


def test_direct_conv_matches_scipy_lfilter():
    # an FIR filter with taps K is exactly a causal convolution
    rng = np.random.default_rng(4)
    u, K = rng.standard_normal(80), rng.standard_normal(15)
    np.testing.assert_allclose(causal_conv_direct(torch.tensor(u), torch.tensor(K)).numpy(),
                               scipy.signal.lfilter(K, [1.0], u), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
def test_s4d_vandermonde_kernel_equals_dense_kernel(dtype):
    g = torch.Generator().manual_seed(1)
    d, n, L = 3, 5, 30
    real = torch.float32 if dtype == torch.float32 else torch.float64
    A = -torch.rand(d, n, generator=g, dtype=real) - 0.1
    if dtype.is_complex:
        A = torch.complex(A, 3 * torch.randn(d, n, generator=g, dtype=real))
    B, C = torch.randn(d, n, generator=g, dtype=real).to(dtype), torch.randn(d, n, generator=g, dtype=real).to(dtype)
    Ad, Bd = zoh_diag(A, B, 0.2)
    K = s4d_kernel(Ad, Bd, C, L)
    assert K.shape == (d, L) and K.dtype == Ad.dtype
    for c in range(d):
        K_dense = ssm_kernel(torch.diag(Ad[c]), Bd[c][:, None], C[c][None], L)[:, 0, 0]
        tol = TOL[torch.float32] if dtype == torch.float32 else TOL[torch.float64]
        torch.testing.assert_close(K[c], K_dense, **tol)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 4), n=st.integers(1, 8), L=st.integers(1, 120), seed=st.integers(0, 10_000),
       log_dt=st.floats(-4, 0))
def test_convolution_equals_recurrence_for_random_stable_diagonal_systems(d, n, L, seed, log_dt):
    g = torch.Generator().manual_seed(seed)
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=torch.float64))      # stable: Re A < 0
    B, C = torch.randn(d, n, generator=g, dtype=torch.float64), torch.randn(d, n, generator=g, dtype=torch.float64)
    D = torch.randn(d, generator=g, dtype=torch.float64)
    u = torch.randn(2, d, L, generator=g, dtype=torch.float64)
    Ad, Bd = zoh_diag(A, B, math.exp(log_dt))
    y_rec = recurrence_diag(Ad, Bd, C, D, u)
    y_conv = causal_conv(u, s4d_kernel(Ad, Bd, C, L)) + D[:, None] * u
    torch.testing.assert_close(y_conv, y_rec, atol=1e-9, rtol=1e-8)


# ---------------------------------------------------------------------------- initialisations
def test_hippo_legs_matches_its_definition():
    A, B = hippo_legs(5)
    for i in range(5):
        assert B[i, 0].item() == pytest.approx(math.sqrt(2 * i + 1))
        for k in range(5):
            expected = -math.sqrt((2 * i + 1) * (2 * k + 1)) if i > k else (-(i + 1) if i == k else 0.0)
            assert A[i, k].item() == pytest.approx(expected)
    assert A.shape == (5, 5) and B.shape == (5, 1)


def test_hippo_legs_state_reconstructs_the_history():
    # the state after the whole sequence holds its Legendre coefficients: a smooth signal comes back
    L = 400
    s = torch.linspace(0, 1, L, dtype=torch.float64)
    u = torch.sin(6 * s) + s ** 2
    c = hippo_legs_memory(u, 32)
    assert c.shape == (L, 32)
    recon = legendre_reconstruct(c[-1], s)
    assert (recon - u).abs().mean() < 0.02
    # and a polynomial of low degree is reconstructed by its first coefficients alone
    ramp = hippo_legs_memory(s, 8)[-1]
    assert ramp[3:].abs().max() < 0.02


def test_legendre_reconstruct_matches_numpy_legendre():
    c = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    scaled = c.numpy() * np.sqrt(2 * np.arange(4) + 1)
    expected = np.polynomial.legendre.legval(2 * s.numpy() - 1, scaled)
    np.testing.assert_allclose(legendre_reconstruct(c, s).numpy(), expected, atol=1e-12)


def test_s4d_initialisations():
    np.testing.assert_allclose(s4d_real(4).numpy(), [-1, -2, -3, -4])
    lin = s4d_lin(3)
    assert lin.dtype == torch.complex128
    np.testing.assert_allclose(lin.numpy(), [-0.5, -0.5 + 1j * math.pi, -0.5 + 2j * math.pi])
    for f in (hippo_legs, s4d_real, s4d_lin):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            f(0)


# ---------------------------------------------------------------------------- the layer
TOL64 = dict(atol=1e-10, rtol=1e-8)


def _layer(init="s4d_real", discretization="zoh", d=3, n=8, dtype=torch.float64, seed=0):
    """An LTI layer whose every parameter is perturbed off its initial value (nothing special left)."""
    torch.manual_seed(seed)
    layer = LTISSM(d, n, init=init, discretization=discretization).to(dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", ["s4d_real", "s4d_lin"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear", "euler", "mamba"])
def test_ltissm_convolution_equals_recurrence_equals_step_by_step(init, discretization, dtype):
    layer = _layer(init, discretization, dtype=dtype)
    x = torch.randn(2, 64, 3, dtype=dtype)                                       # (b, l, d)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else TOL64
    with torch.no_grad():
        y_conv, h_conv = layer(x, mode="convolution", return_last_state=True)
        y_rec, h_rec = layer(x, mode="recurrence", return_last_state=True)
        h = layer.init_state(2)
        y_step = torch.stack([layer.step(x[:, t], h)[0] for t in range(64)], dim=1)
    assert y_conv.shape == (2, 64, 3) and y_conv.dtype == dtype
    assert h.shape == (2, 3, 4 if init == "s4d_lin" else 8) and h.is_complex() == (init == "s4d_lin")
    for y, what in ((y_rec, "recurrence"), (y_step, "step by step")):
        torch.testing.assert_close(y_conv, y, **tol, msg=lambda m, what=what: f"convolution vs {what}: {m}")
    torch.testing.assert_close(h_conv, h_rec, **tol)
    torch.testing.assert_close(h, h_rec, **tol)


def test_ltissm_equals_the_selective_scan_with_constant_parameters():
    """With Mamba's discretization (Ā = exp(ΔA), B̄ = ΔB) the LTI layer is stage 4's reference
    scan with Δ, B, C held constant: Δ = softplus(dt_bias) every step, B, C of shape (d, n)."""
    from ssm_tutor.selective import selective_scan_ref

    for init in ("s4d_real", "s4d_lin"):
        layer = _layer(init, "mamba", d=4, n=6)
        x = torch.randn(2, 30, 4, dtype=torch.float64)
        A, B, C = layer.continuous()
        u = x.transpose(1, 2)                                                     # (b, d, l)
        with torch.no_grad():                                  # Δ = softplus(0 + dt_bias) at every step
            y_ref, h_ref = selective_scan_ref(u, torch.zeros_like(u), A, B, C, D=layer.D, delta_bias=layer.dt_bias,
                                              delta_softplus=True, return_last_state=True)
            y, h = layer(x, return_last_state=True)
        torch.testing.assert_close(y, y_ref.transpose(1, 2), **TOL64)
        torch.testing.assert_close(h, h_ref, **TOL64)


def test_ltissm_gradients_agree_between_modes():
    layer = _layer("s4d_lin", d=2, n=4)
    x = torch.randn(1, 40, 2, dtype=torch.float64)
    grads = []
    for mode in ("convolution", "recurrence"):
        layer.zero_grad()
        layer(x, mode=mode).pow(2).sum().backward()
        grads.append({k: p.grad.clone() for k, p in layer.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-9, rtol=1e-7)


def test_ltissm_complex_kernel_matches_scipy_on_the_real_two_by_two_form():
    # a complex mode λ = a + ib with y = 2 Re(C h) is the real system with A = [[a, -b], [b, a]],
    # B = (Re B, Im B), C = (2 Re C, -2 Im C): discretize that with SciPy and compare kernels
    layer = _layer("s4d_lin", d=2, n=6)
    A, B, C = (t.detach().numpy() for t in layer.continuous())
    dt = layer.delta.detach().numpy()                                             # Δ = softplus(dt_bias)
    L = 50
    K = layer.kernel(L).detach().numpy()
    for c in range(2):
        blocks_A, Bs, Cs = [], [], []
        for lam, b, cc in zip(A[c], B[c], C[c]):
            blocks_A.append(np.array([[lam.real, -lam.imag], [lam.imag, lam.real]]))
            Bs += [b.real, b.imag]
            Cs += [2 * cc.real, -2 * cc.imag]
        Ar = scipy.linalg.block_diag(*blocks_A)
        Ad, Bd, Cd, Dd, _ = scipy.signal.cont2discrete((Ar, np.array(Bs)[:, None], np.array(Cs)[None], np.zeros((1, 1))),
                                                       dt[c], method="zoh")
        _, (y,) = scipy.signal.dimpulse((Ad, Bd, Cd, Dd, dt[c]), n=L + 2)
        np.testing.assert_allclose(K[c], y[1:L + 1, 0], atol=1e-10)


def test_ltissm_initialisation():
    layer = LTISSM(64, 8)
    delta = layer.delta.detach()                                                  # Δ = softplus(dt_bias)
    assert delta.shape == (64,) and delta.min() >= 1e-3 * (1 - 1e-5) and delta.max() <= 0.1 * (1 + 1e-5)
    torch.testing.assert_close(layer.continuous()[0], s4d_real(8, torch.float32).expand(64, 8))
    A = LTISSM(2, 8, init="s4d_lin").continuous()[0]                               # (2, 4) complex
    torch.testing.assert_close(A, s4d_lin(4).to(torch.complex64).expand(2, 4))
    assert {k for k, _ in LTISSM(2, 8, init="s4d_lin").named_parameters()} == {"dt_bias", "A_log", "A_imag", "B", "C", "D"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ltissm_half_precision_computes_in_float32(dtype):
    """The FFT has no half-precision CPU kernel: the layer computes in float32 and rounds once."""
    layer = _layer(dtype=torch.float32)
    x = torch.randn(2, 50, 3).to(dtype)
    with torch.no_grad():
        y = layer.to(dtype)(x)
        expected = layer.float()(x.float())
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, atol=2e-2, rtol=2e-2)
    assert causal_conv(x.transpose(1, 2), torch.randn(3, 50).to(dtype)).dtype == dtype


def test_ltissm_bad_input_raises():
    layer = LTISSM(3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, length, d\) with d = 3, got shape \(2, 10, 4\)"):
        layer(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, length, d\) with d = 3, got shape \(10, 3\)"):
        layer(torch.randn(10, 3))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        layer(torch.ones(1, 10, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mode must be one of"):
        layer(torch.randn(1, 10, 3), mode="fft")
    with pytest.raises(ValueError, match="needs an even n"):
        LTISSM(3, 5, init="s4d_lin")
    with pytest.raises(ValueError, match="init must be"):
        LTISSM(3, 4, init="hippo")
    with pytest.raises(ValueError, match="d must be a positive integer"):
        LTISSM(0, 4)


def test_conv_and_kernel_bad_input_raises():
    with pytest.raises(ValueError, match=r"K must have shape \(L_K,\) or \(\.\.\., L_K\)"):
        causal_conv(torch.randn(2, 4, 10), torch.randn(3, 10))
    with pytest.raises(TypeError, match="u and K must be real"):
        causal_conv(torch.randn(10), torch.randn(10, dtype=torch.complex64))
    with pytest.raises(ValueError, match="L must be a positive integer"):
        ssm_kernel(torch.eye(2), torch.ones(2, 1), torch.ones(1, 2), 0)
    with pytest.raises(ValueError, match=r"C must have shape \(q, n\) with n = 2"):
        ssm_kernel(torch.eye(2), torch.ones(2, 1), torch.ones(1, 3), 5)
    with pytest.raises(ValueError, match=r"Bd must have shape \(d, n\) = \(2, 3\) like Ad"):
        s4d_kernel(torch.ones(2, 3), torch.ones(3, 2), torch.ones(2, 3), 5)
