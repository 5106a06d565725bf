"""Stage 1 specification: the continuous SSM against SciPy and closed forms."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.signal
import torch
from hypothesis import given, settings, strategies as st

from ssm_tutor.continuous import (
    ContinuousSSM, damped_oscillator, impulse_response, is_stable, mass_spring_damper,
    oscillating_and_decaying, poles, simulate,
)

SIZES = [(1, 1, 1), (2, 1, 1), (4, 2, 3), (7, 3, 2)]  # (n, p, q)
TOL = {torch.float64: dict(atol=1e-9, rtol=1e-7), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def random_stable(n, p, q, seed, dtype=torch.float64):
    """A random system whose poles all have real part ≤ -0.3."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / math.sqrt(n)
    A -= (np.max(np.linalg.eigvals(A).real) + 0.3) * np.eye(n)
    B, C, D = rng.standard_normal((n, p)), rng.standard_normal((q, n)), rng.standard_normal((q, p))
    return ContinuousSSM(*(torch.tensor(m, dtype=dtype) for m in (A, B, C, D)))


def as_np(ssm):
    return tuple(m.double().numpy() for m in (ssm.A, ssm.B, ssm.C, ssm.D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,p,q", SIZES)
def test_impulse_response_matches_scipy_expm(n, p, q, dtype):
    ssm = random_stable(n, p, q, seed=n + 10 * p, dtype=dtype)
    t = torch.linspace(0, 4, 23, dtype=dtype)
    A, B, C, _ = as_np(ssm)
    expected = np.stack([C @ scipy.linalg.expm(A * tk) @ B for tk in t.double().numpy()])
    got = impulse_response(ssm, t)
    assert got.shape == (23, q, p) and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), expected, **TOL[dtype])


def test_impulse_response_matches_scipy_impulse():
    ssm = random_stable(3, 1, 1, seed=3)
    t = np.linspace(0, 6, 50)
    _, expected = scipy.signal.impulse(as_np(ssm), T=t)
    np.testing.assert_allclose(impulse_response(ssm, torch.tensor(t))[:, 0, 0].numpy(), expected, atol=1e-7)


@pytest.mark.parametrize("sigma,omega", [(0.3, 4.0), (1.0, 0.5), (0.0, 2.0)])
def test_damped_oscillator_impulse_response_closed_form(sigma, omega):
    t = torch.linspace(0, 5, 40, dtype=torch.float64)
    h = impulse_response(damped_oscillator(sigma, omega), t)[:, 0, 0]
    np.testing.assert_allclose(h.numpy(), np.exp(-sigma * t.numpy()) * np.cos(omega * t.numpy()), atol=1e-12)


def test_oscillating_and_decaying_closed_form_and_poles():
    ssm = oscillating_and_decaying(0.3, 4.0, 1.0)
    t = torch.linspace(0, 5, 40, dtype=torch.float64)
    tn = t.numpy()
    np.testing.assert_allclose(impulse_response(ssm, t)[:, 0, 0].numpy(),
                               np.exp(-0.3 * tn) * np.cos(4 * tn) + np.exp(-tn), atol=1e-12)
    got = sorted(poles(ssm).numpy(), key=lambda z: (z.real, z.imag))
    np.testing.assert_allclose(got, [-1.0, -0.3 - 4j, -0.3 + 4j], atol=1e-12)


@pytest.mark.parametrize("m,k,c", [(1.0, 4.0, 0.5), (2.0, 1.0, 3.0), (0.5, 2.0, 0.0)])
def test_mass_spring_damper_poles_closed_form(m, k, c):
    ssm = mass_spring_damper(m, k, c)
    disc = complex(c * c - 4 * m * k) ** 0.5
    expected = sorted([(-c + disc) / (2 * m), (-c - disc) / (2 * m)], key=lambda z: (z.real, z.imag))
    got = sorted(poles(ssm).numpy(), key=lambda z: (z.real, z.imag))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert is_stable(ssm) == (c > 0)


def test_mass_spring_damper_step_settles_at_static_deflection():
    # a constant force F stretches the spring to z = F / k once the motion has died out
    ssm = mass_spring_damper(1.0, 4.0, 2.0)
    t = torch.linspace(0, 20, 400, dtype=torch.float64)
    y = simulate(ssm, torch.full((400, 1), 3.0, dtype=torch.float64), t)
    assert abs(y[-1, 0].item() - 3.0 / 4.0) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hold,interp", [("linear", True), ("zero", False)])
@pytest.mark.parametrize("n,p,q", SIZES)
def test_simulate_matches_scipy_lsim(n, p, q, hold, interp, dtype):
    ssm = random_stable(n, p, q, seed=7 * n + p, dtype=dtype)
    rng = np.random.default_rng(n)
    t = np.linspace(0, 5, 60)
    u = rng.standard_normal((60, p))
    x0 = rng.standard_normal(n)
    _, y_ref, x_ref = scipy.signal.lsim(as_np(ssm), u, t, X0=x0, interp=interp)
    y, x = simulate(ssm, torch.tensor(u, dtype=dtype), torch.tensor(t, dtype=dtype),
                    torch.tensor(x0, dtype=dtype), hold=hold, return_states=True)
    assert y.shape == (60, q) and x.shape == (60, n) and y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), y_ref.reshape(60, q), **TOL[dtype])
    np.testing.assert_allclose(x.double().numpy(), x_ref.reshape(60, n), **TOL[dtype])


def test_simulate_with_uneven_sample_times_matches_lsim_on_the_fine_grid():
    # hold the input between uneven samples; lsim on a fine uniform grid holding the same values agrees
    ssm = random_stable(3, 2, 2, seed=5)
    rng = np.random.default_rng(5)
    fine = np.linspace(0, 4, 401)
    idx = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 401), 40, replace=False))])
    u = rng.standard_normal((len(idx), 2))
    u_fine = u[np.searchsorted(idx, np.arange(401), side="right") - 1]  # piecewise constant
    _, y_ref, _ = scipy.signal.lsim(as_np(ssm), u_fine, fine, interp=False)
    y = simulate(ssm, torch.tensor(u), torch.tensor(fine[idx]), hold="zero")
    np.testing.assert_allclose(y.numpy(), y_ref[idx], atol=1e-9)


def test_simulate_matches_solve_ivp_for_a_smooth_input():
    ssm = oscillating_and_decaying()
    f = lambda s: np.sin(2.0 * s) + 0.5  # noqa: E731
    A, B, C, _ = as_np(ssm)
    t = np.linspace(0, 6, 3001)
    sol = scipy.integrate.solve_ivp(lambda s, x: A @ x + B[:, 0] * f(s), (0, 6), np.zeros(3),
                                    t_eval=t, rtol=1e-11, atol=1e-12, method="DOP853")
    y = simulate(ssm, torch.tensor(f(t))[:, None], torch.tensor(t))[:, 0].numpy()
    # the only error left is the straight-line interpolation of u between samples (O(dt²))
    np.testing.assert_allclose(y, C[0] @ sol.y, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 10_000), scale=st.floats(0.1, 3.0))
def test_simulate_is_linear_in_the_input(n, seed, scale):
    ssm = random_stable(n, 2, 2, seed)
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 3, 30, dtype=torch.float64)
    u1 = torch.randn(30, 2, generator=g, dtype=torch.float64)
    u2 = torch.randn(30, 2, generator=g, dtype=torch.float64)
    lhs = simulate(ssm, u1 + scale * u2, t)
    rhs = simulate(ssm, u1, t) + scale * simulate(ssm, u2, t)
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_poles_are_scipy_eigenvalues_and_decide_stability(n, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    ssm = ContinuousSSM(torch.tensor(A), torch.ones(n, 1, dtype=torch.float64), torch.ones(1, n, dtype=torch.float64))
    expected = np.sort_complex(scipy.linalg.eigvals(A))
    np.testing.assert_allclose(np.sort_complex(poles(ssm).numpy()), expected, atol=1e-8)
    assert ssm.is_stable() == bool(np.all(expected.real < 0))


def test_unstable_system_grows():
    ssm = damped_oscillator(-0.2, 3.0)
    assert not ssm.is_stable()
    h = impulse_response(ssm, torch.tensor([0.0, 20.0], dtype=torch.float64))
    assert abs(h[1, 0, 0].item()) > 10


def test_default_D_is_zero_and_dims():
    ssm = ContinuousSSM(torch.eye(3), torch.ones(3, 2), torch.ones(4, 3))
    assert (ssm.n, ssm.p, ssm.q) == (3, 2, 4) and ssm.D.shape == (4, 2) and torch.all(ssm.D == 0)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(A=torch.ones(2, 3), B=torch.ones(2, 1), C=torch.ones(1, 2)), r"A must be square \(n, n\), got shape \(2, 3\)"),
    (dict(A=torch.ones(3), B=torch.ones(3, 1), C=torch.ones(1, 3)), r"A must be a matrix"),
    (dict(A=torch.eye(2), B=torch.ones(3, 1), C=torch.ones(1, 2)), r"B must have shape \(n, p\) with n = 2"),
    (dict(A=torch.eye(2), B=torch.ones(2, 1), C=torch.ones(1, 3)), r"C must have shape \(q, n\) with n = 2"),
    (dict(A=torch.eye(2), B=torch.ones(2, 1), C=torch.ones(1, 2), D=torch.ones(2, 2)), r"D must have shape \(q, p\) = \(1, 1\)"),
    (dict(A=torch.tensor([[float("nan")]]), B=torch.ones(1, 1), C=torch.ones(1, 1)), r"A contains NaN"),
])
def test_bad_matrices_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContinuousSSM(**kwargs)


def test_complex_matrix_rejected():
    with pytest.raises(TypeError, match="A must be real"):
        ContinuousSSM(torch.eye(2, dtype=torch.complex64), torch.ones(2, 1), torch.ones(1, 2))


def test_simulate_bad_input_raises():
    ssm = mass_spring_damper()
    t = torch.linspace(0, 1, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"u must have shape \(L, p\) = \(10, 1\).*got shape \(10,\)"):
        simulate(ssm, torch.zeros(10, dtype=torch.float64), t)
    with pytest.raises(ValueError, match=r"u must have shape \(L, p\) = \(10, 1\).*got shape \(9, 1\)"):
        simulate(ssm, torch.zeros(9, 1), t)
    with pytest.raises(ValueError, match="strictly increasing"):
        simulate(ssm, torch.zeros(10, 1), t.flip(0))
    with pytest.raises(ValueError, match=r"x0 must have shape \(n,\) = \(2,\)"):
        simulate(ssm, torch.zeros(10, 1), t, x0=torch.zeros(3))
    with pytest.raises(ValueError, match="hold must be"):
        simulate(ssm, torch.zeros(10, 1), t, hold="cubic")
    with pytest.raises(ValueError, match="u contains NaN"):
        simulate(ssm, torch.full((10, 1), float("nan")), t)
    with pytest.raises(ValueError, match="t must be ≥ 0"):
        impulse_response(ssm, torch.tensor([-1.0, 0.0]))
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor"):
        impulse_response(ssm, torch.zeros(2, 2))
    with pytest.raises(TypeError, match="ssm must be a ContinuousSSM"):
        impulse_response((1, 2, 3), t)


@pytest.mark.parametrize("args,match", [((0.0, 1.0, 1.0), "m must be > 0"), ((1.0, -1.0, 1.0), "k must be ≥ 0"),
                                        ((1.0, 1.0, -0.1), "c must be ≥ 0")])
def test_mass_spring_damper_rejects_unphysical_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        mass_spring_damper(*args)


# ---------------------------------------------------------------------------- no silent wrong results
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_half_precision_system_is_computed_in_float32_and_matches_scipy(half):
    """In float16 the matrix exponential overflowed (h(t) ≈ -4e4, then NaN); now A, B, C are
    widened to float32 (their half values exactly) and h matches SciPy's expm of those values."""
    A = torch.tensor([[-1.0, 0.5], [-0.5, -1.0]], dtype=half)
    ssm = ContinuousSSM(A, torch.ones(2, 1, dtype=half), torch.ones(1, 2, dtype=half))
    assert ssm.dtype == torch.float32
    t = torch.linspace(0, 2, 9)
    expected = np.stack([np.ones((1, 2)) @ scipy.linalg.expm(tk * A.double().numpy()) @ np.ones((2, 1))
                         for tk in t.double().numpy()])
    np.testing.assert_allclose(impulse_response(ssm, t).numpy(), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.sort_complex(poles(ssm).numpy()), [-1 - 0.5j, -1 + 0.5j], atol=1e-6)
    y = simulate(ssm, torch.ones(9, 1, dtype=half), t)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_boolean_matrices_are_refused():
    with pytest.raises(TypeError, match="A must hold real numbers, got dtype torch.bool"):
        ContinuousSSM(torch.eye(2, dtype=torch.bool), torch.ones(2, 1), torch.ones(1, 2))
    with pytest.raises(TypeError, match="B must hold real numbers"):
        ContinuousSSM(-torch.eye(2), torch.ones(2, 1, dtype=torch.bool), torch.ones(1, 2))


@pytest.mark.parametrize("build, match", [
    (lambda: mass_spring_damper(dtype=torch.int64), "dtype must be torch.float32 or torch.float64, got torch.int64"),
    (lambda: mass_spring_damper(dtype=torch.bool), "dtype must be torch.float32 or torch.float64"),
    (lambda: mass_spring_damper(dtype=torch.float16), "dtype must be torch.float32 or torch.float64"),
    (lambda: damped_oscillator(0.5, 2.0, dtype=torch.int32), "dtype must be"),
    (lambda: oscillating_and_decaying(dtype=torch.complex64), "dtype must be"),
    (lambda: mass_spring_damper(m=True), "m must be a finite real number, got True"),
    (lambda: mass_spring_damper(c=0.1 + 1j), r"c must be a finite real number, got \(0.1\+1j\)"),
    (lambda: damped_oscillator(1j, 2.0), "sigma must be a finite real number"),
    (lambda: oscillating_and_decaying(lam=float("inf")), "lam must be a finite real number"),
])
def test_worked_examples_refuse_dtypes_and_numbers_that_would_change_them(build, match):
    """mass_spring_damper(dtype=torch.int64) used to build A with c/m = 0.2 truncated to 0: an
    undamped spring, silently."""
    with pytest.raises(TypeError, match=match):
        build()


def test_worked_examples_accept_numpy_numbers():
    ssm = mass_spring_damper(np.float32(2.0), np.int64(4), 0.5, dtype=torch.float32)
    torch.testing.assert_close(ssm.A, torch.tensor([[0.0, 1.0], [-2.0, -0.25]]))


def test_simulate_refuses_complex_signals_instead_of_dropping_their_imaginary_part():
    ssm, t = mass_spring_damper(), torch.linspace(0, 1, 5)
    with pytest.raises(TypeError, match="u must be real .* got complex dtype torch.complex128"):
        simulate(ssm, torch.ones(5, 1, dtype=torch.complex128), t)
    with pytest.raises(TypeError, match="x0 must be real"):
        simulate(ssm, torch.ones(5, 1), t, x0=torch.ones(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="x0 contains NaN or infinite values"):
        simulate(ssm, torch.ones(5, 1), t, x0=[float("nan"), 0.0])
