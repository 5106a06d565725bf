"""Stage 2 specification: discretization against scipy.signal.cont2discrete and dlsim."""

import math

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings, strategies as st

from stable_systems import random_stable_AB
from ssm_tutor.continuous import mass_spring_damper
from ssm_tutor.discretize import (
    DIAG_METHODS, METHODS, bilinear, convergence_order, euler, euler_diag, mamba_diag,
    recurrence, recurrence_diag, zoh, zoh_diag,
)

SIZES = [(1, 1), (3, 1), (5, 2), (8, 3)]  # (n, p)
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-8), torch.float32: dict(atol=1e-5, rtol=1e-4)}



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dt", [0.01, 0.3, 1.5])
@pytest.mark.parametrize("n,p", SIZES)
@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_dense_discretization_matches_scipy_cont2discrete(method, n, p, dt, dtype):
    A, B = random_stable_AB(n, p, seed=n * 31 + p)
    C, D = np.ones((1, n)), np.zeros((1, p))
    Ad_ref, Bd_ref, *_ = scipy.signal.cont2discrete((A, B, C, D), dt, method=method)
    Ad, Bd = METHODS[method](torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype), dt)
    assert Ad.shape == (n, n) and Bd.shape == (n, p) and Ad.dtype == dtype
    np.testing.assert_allclose(Ad.double().numpy(), Ad_ref, **TOL[dtype])
    np.testing.assert_allclose(Bd.double().numpy(), Bd_ref, **TOL[dtype])


def test_zoh_handles_a_singular_A():
    # a pure integrator x' = u: Ā = 1, B̄ = dt
    Ad, Bd = zoh(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), 0.25)
    assert abs(Ad.item() - 1.0) < 1e-14 and abs(Bd.item() - 0.25) < 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_diagonal_forms_match_scipy_channel_by_channel(method, dtype):
    rng = np.random.default_rng(1)
    d, n = 4, 6
    A = -rng.uniform(0.1, 5.0, (d, n))
    B = rng.standard_normal((d, n))
    dt = rng.uniform(0.01, 0.5, d)
    Ad, Bd = DIAG_METHODS[method](torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype), torch.tensor(dt, dtype=dtype))
    assert Ad.shape == (d, n) and Bd.shape == (d, n)
    for c in range(d):
        Ad_ref, Bd_ref, *_ = scipy.signal.cont2discrete(
            (np.diag(A[c]), np.diag(B[c]), np.eye(n), np.zeros((n, n))), dt[c], method=method)
        np.testing.assert_allclose(Ad[c].double().numpy(), np.diag(Ad_ref), **TOL[dtype])
        np.testing.assert_allclose(Bd[c].double().numpy(), np.diag(Bd_ref), **TOL[dtype])


def test_complex_diagonal_zoh_matches_scipy_expm_of_the_augmented_matrix():
    import scipy.linalg
    rng = np.random.default_rng(0)
    A = -rng.uniform(0.1, 1.0, (2, 3)) + 5j * rng.standard_normal((2, 3))
    B = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    dts = [0.1, 0.7]
    Ad, Bd = zoh_diag(torch.tensor(A), torch.tensor(B), torch.tensor(dts))
    for c, dt in enumerate(dts):
        M = np.zeros((4, 4), dtype=complex)
        M[:3, :3], M[:3, 3] = np.diag(A[c]), B[c]
        E = scipy.linalg.expm(dt * M)  # exp(dt [[A, B], [0, 0]]) = [[Ā, B̄], [0, 1]]
        np.testing.assert_allclose(Ad[c].numpy(), np.diag(E[:3, :3]), atol=1e-12)
        np.testing.assert_allclose(Bd[c].numpy(), E[:3, 3], atol=1e-12)


def test_zoh_diag_takes_the_limit_where_A_is_zero_and_a_scalar_dt():
    Ad, Bd = zoh_diag(torch.tensor([[0.0, -1.0]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), 0.5)
    np.testing.assert_allclose(Ad.numpy(), [[1.0, math.exp(-0.5)]], rtol=1e-14)
    np.testing.assert_allclose(Bd.numpy(), [[0.5, 1 - math.exp(-0.5)]], rtol=1e-14)


def test_mamba_discretization_is_zoh_for_A_and_euler_for_B():
    A = -torch.rand(3, 4, dtype=torch.float64) * 3
    B = torch.randn(3, 4, dtype=torch.float64)
    dt = torch.tensor([0.001, 0.01, 0.1], dtype=torch.float64)
    Ad, Bd = mamba_diag(A, B, dt)
    Ad_zoh, Bd_zoh = zoh_diag(A, B, dt)
    torch.testing.assert_close(Ad, Ad_zoh)
    torch.testing.assert_close(Bd, euler_diag(A, B, dt)[1])
    # B̄ = Δ B is ZOH's B̄ to first order: relative gap ≈ Δ|A|/2
    gap = ((Bd - Bd_zoh) / Bd_zoh).abs().amax(-1)
    bound = dt * A.abs().amax(-1)
    assert torch.all(gap <= bound)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000), dt=st.floats(0.01, 2.0))
def test_zoh_is_a_semigroup(n, seed, dt):
    # two steps of dt are one step of 2 dt: Ā(2dt) = Ā(dt)², B̄(2dt) = Ā(dt) B̄(dt) + B̄(dt)
    A, B = (torch.tensor(m) for m in random_stable_AB(n, 2, seed))
    Ad1, Bd1 = zoh(A, B, dt)
    Ad2, Bd2 = zoh(A, B, 2 * dt)
    torch.testing.assert_close(Ad2, Ad1 @ Ad1, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(Bd2, Ad1 @ Bd1 + Bd1, atol=1e-10, rtol=1e-8)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000), dt=st.floats(0.01, 100.0))
def test_zoh_and_bilinear_keep_a_stable_system_stable_at_any_step(n, seed, dt):
    A, B = (torch.tensor(m) for m in random_stable_AB(n, 1, seed))
    for method in (zoh, bilinear):
        Ad, _ = method(A, B, dt)
        assert torch.linalg.eigvals(Ad).abs().max() < 1


def test_euler_turns_a_stable_system_unstable_when_dt_is_too_large():
    A = torch.tensor([[-4.0]], dtype=torch.float64)
    B = torch.ones(1, 1, dtype=torch.float64)
    assert abs(euler(A, B, 0.4)[0].item()) < 1       # |1 - 4 dt| < 1 needs dt < 0.5
    assert abs(euler(A, B, 0.6)[0].item()) > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,p,q", [(1, 1, 1), (4, 2, 3), (6, 1, 2)])
def test_recurrence_matches_scipy_dlsim(n, p, q, dtype):
    # ours: x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k; in dlsim's form (state x_{k-1}):
    # x'_{k+1} = Ā x'_k + B̄ u_k, y_k = (C Ā) x'_k + (C B̄ + D) u_k
    A, B = random_stable_AB(n, p, seed=n)
    Ad, Bd = zoh(torch.tensor(A), torch.tensor(B), 0.2)
    Ad, Bd = Ad.numpy(), Bd.numpy()
    rng = np.random.default_rng(2)
    C, D, u = rng.standard_normal((q, n)), rng.standard_normal((q, p)), rng.standard_normal((50, p))
    _, y_ref, _ = scipy.signal.dlsim((Ad, Bd, C @ Ad, C @ Bd + D, 0.2), u)
    y = recurrence(*(torch.tensor(m, dtype=dtype) for m in (Ad, Bd, C, D, u)))
    assert y.shape == (50, q) and y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), y_ref, **TOL[dtype])
    # a batch of inputs gives the rows one by one
    ub = torch.tensor(np.stack([u, 2 * u, -u]), dtype=dtype)
    yb = recurrence(*(torch.tensor(m, dtype=dtype) for m in (Ad, Bd, C, D)), ub)
    assert yb.shape == (3, 50, q)
    torch.testing.assert_close(yb[1], 2 * y, **({"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recurrence_diag_matches_the_dense_recurrence_per_channel(dtype):
    g = torch.Generator().manual_seed(0)
    d, n, b, L = 3, 4, 2, 25
    A = -torch.rand(d, n, generator=g, dtype=dtype) * 2
    B, C = torch.randn(d, n, generator=g, dtype=dtype), torch.randn(d, n, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    Ad, Bd = zoh_diag(A, B, torch.tensor([0.1, 0.2, 0.3], dtype=dtype))
    y, h = recurrence_diag(Ad, Bd, C, D, u, return_last_state=True)
    assert y.shape == (b, d, L) and h.shape == (b, d, n)
    for c in range(d):
        y_ref, X = recurrence(torch.diag(Ad[c]), Bd[c][:, None], C[c][None], D[c].reshape(1, 1),
                              u[:, c, :, None], return_states=True)
        torch.testing.assert_close(y[:, c], y_ref[..., 0])
        torch.testing.assert_close(h[:, c], X[:, -1])


def test_convergence_order_zoh_exact_bilinear_second_euler_first():
    # a step input is constant between samples, so ZOH is exact; the others show their order
    ssm = mass_spring_damper(1.0, 4.0, 0.5)
    step = lambda t: torch.ones(t.shape[0], 1, dtype=t.dtype)  # noqa: E731
    dts = [0.02, 0.01, 0.005]
    err_zoh, _ = convergence_order(ssm, step, 1.0, dts, "zoh")
    assert err_zoh.max() < 1e-10
    _, order_bil = convergence_order(ssm, step, 1.0, dts, "bilinear")
    assert 1.9 < order_bil < 2.1
    _, order_eul = convergence_order(ssm, step, 1.0, dts, "euler")
    assert 0.9 < order_eul < 1.2


# ---------------------------------------------------------------------------- bad input
GOOD_A, GOOD_B = torch.eye(3, dtype=torch.float64) * -1, torch.ones(3, 2, dtype=torch.float64)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("A,B,dt,err,match", [
    (torch.ones(3, 2), torch.ones(3, 1), 0.1, ValueError, r"A must be a square matrix \(n, n\), got shape \(3, 2\)"),
    (torch.ones(3), torch.ones(3, 1), 0.1, ValueError, r"A must be a square matrix"),
    (GOOD_A, torch.ones(2, 2, dtype=torch.float64), 0.1, ValueError, r"B must have shape \(n, p\) with n = 3 like A, got shape \(2, 2\)"),
    (GOOD_A, torch.ones(3, dtype=torch.float64), 0.1, ValueError, r"B must have shape \(n, p\)"),
    (GOOD_A, GOOD_B, 0.0, ValueError, r"dt must be > 0"),
    (GOOD_A, GOOD_B, -0.1, ValueError, r"dt must be > 0"),
    (GOOD_A, GOOD_B, float("nan"), ValueError, r"dt must be > 0"),
    (GOOD_A, GOOD_B, torch.ones(3), ValueError, r"dt must be a single positive number"),
    (GOOD_A, GOOD_B, "0.1", TypeError, r"dt must be a positive number"),
    (GOOD_A, GOOD_B.float(), 0.1, ValueError, r"B must have A's dtype"),
    (torch.eye(3, dtype=torch.int64), GOOD_B, 0.1, TypeError, r"A must be a floating-point"),
])
def test_dense_bad_input_raises_naming_the_argument(method, A, B, dt, err, match):
    with pytest.raises(err, match=match):
        METHODS[method](A, B, dt)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler", "mamba"])
def test_diag_bad_input_raises_naming_the_argument(method):
    f = DIAG_METHODS[method]
    A, B = -torch.ones(4, 3), torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"B must have shape \(d, n\) = \(4, 3\) like A, got shape \(3,\)"):
        f(A, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match=r"dt must have shape \(d,\) = \(4,\).*got shape \(3,\)"):
        f(A, B, torch.ones(3))
    with pytest.raises(ValueError, match=r"dt must be > 0 in every channel"):
        f(A, B, torch.tensor([0.1, 0.1, 0.0, 0.1]))
    with pytest.raises(ValueError, match=r"A must hold the diagonals of d systems, shape \(d, n\)"):
        f(-torch.ones(3), torch.ones(3), 0.1)


def test_recurrence_bad_input_raises():
    Ad, Bd = zoh(GOOD_A, GOOD_B, 0.1)
    C = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"u must have shape \(L, p\) or \(batch, L, p\) with p = 2, got shape \(10,\)"):
        recurrence(Ad, Bd, C, None, torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"u must have shape .* got shape \(1, 2, 10, 2\)"):
        recurrence(Ad, Bd, C, None, torch.ones(1, 2, 10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"C must have shape \(q, n\) with n = 3"):
        recurrence(Ad, Bd, torch.ones(1, 2), None, torch.ones(10, 2))
    with pytest.raises(ValueError, match=r"D must have shape \(q, p\) = \(1, 2\)"):
        recurrence(Ad, Bd, C, torch.ones(2, 2), torch.ones(10, 2))
    with pytest.raises(ValueError, match=r"u contains NaN"):
        recurrence(Ad, Bd, C, None, torch.full((10, 2), float("nan")))
    Ad, Bd = zoh_diag(-torch.ones(4, 3), torch.ones(4, 3), 0.1)
    with pytest.raises(ValueError, match=r"u must have shape \(batch, d, length\) with d = 4, got shape \(4, 10\)"):
        recurrence_diag(Ad, Bd, torch.ones(4, 3), None, torch.ones(4, 10))
    with pytest.raises(ValueError, match=r"C must have shape \(d, n\) = \(4, 3\)"):
        recurrence_diag(Ad, Bd, torch.ones(4, 2), None, torch.ones(1, 4, 10))
    with pytest.raises(ValueError, match=r"D must have shape \(d,\) = \(4,\)"):
        recurrence_diag(Ad, Bd, torch.ones(4, 3), torch.ones(3), torch.ones(1, 4, 10))


# ---------------------------------------------------------------------------- no silent wrong results
@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_half_precision_system_is_discretized_in_float32(method, half):
    """zoh used to return NaN (float16) or inf (bfloat16) and bilinear to crash inside LAPACK;
    the system's half values are now discretized in float32 and match SciPy on those values."""
    A = torch.tensor([[-1.0, 0.0], [0.5, -2.0]], dtype=half)
    B = torch.tensor([[1.0], [0.5]], dtype=half)
    Ad, Bd = METHODS[method](A, B, 0.1)
    assert Ad.dtype == Bd.dtype == torch.float32
    ref = scipy.signal.cont2discrete((A.double().numpy(), B.double().numpy(), np.eye(2), np.zeros((2, 1))),
                                     0.1, method={"zoh": "zoh", "bilinear": "bilinear", "euler": "euler"}[method])
    np.testing.assert_allclose(Ad.numpy(), ref[0], atol=1e-6, rtol=1e-5)
    if method != "bilinear":       # SciPy's bilinear B̄ has another scaling (see the module docstring)
        np.testing.assert_allclose(Bd.numpy(), ref[1], atol=1e-6, rtol=1e-5)


def test_recurrence_keeps_a_complex_initial_state_and_feedthrough():
    """A complex x0 or D used to be cast to the real dtype of Ā and u (imaginary part dropped).
    By linearity, the complex run equals real run + i · (run of the imaginary parts)."""
    Ad, Bd = zoh(GOOD_A, GOOD_B, 0.1)
    C = torch.ones(1, 3, dtype=torch.float64)
    u = torch.randn(6, 2, dtype=torch.float64)
    x_re, x_im = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    y = recurrence(Ad, Bd, C, None, u, x0=torch.complex(x_re, x_im))
    expected = recurrence(Ad, Bd, C, None, u, x0=x_re) + 1j * recurrence(Ad, Bd, C, None, torch.zeros_like(u), x0=x_im)
    torch.testing.assert_close(y, expected)
    D = torch.tensor([[0.5 + 2j, -1j]], dtype=torch.complex128)
    y = recurrence(Ad, Bd, C, D, u)
    torch.testing.assert_close(y, recurrence(Ad, Bd, C, D.real.contiguous(), u) + 1j * (u @ D.imag.T))


def test_convergence_order_needs_two_steps_a_real_input_and_a_measurable_error():
    ssm = mass_spring_damper(1.0, 4.0, 0.5)
    smooth = lambda t: torch.sin(2 * t)[:, None]  # noqa: E731
    for dts in ([0.01], [0.01, 0.01], []):          # one slope from one point used to come out as ≈ 12
        with pytest.raises(ValueError, match="at least two different steps"):
            convergence_order(ssm, smooth, 1.0, dts, "euler")
    with pytest.raises(TypeError, match="u_fn must return real inputs"):
        convergence_order(ssm, lambda t: torch.ones(t.shape[0], 1, dtype=torch.complex128), 1.0, [0.02, 0.01])
    step = lambda t: torch.ones(t.shape[0], 1, dtype=t.dtype)  # noqa: E731
    errors, order = convergence_order(ssm, step, 1.0, [0.02, 0.01], "zoh")     # exact: rounding only
    assert errors.max() < 1e-9 and order is None
    _, order = convergence_order(ssm, smooth, 1.0, [np.float64(0.02), 0.01], "euler")   # numpy steps are numbers
    assert 0.9 < order < 1.2
