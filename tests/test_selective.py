"""Stage 4 specification: the reference selective scan and the S6 layer.

The scan is checked against transformers' ``mamba_selective_scan`` (written by others) on every
option, against a naive scalar double loop written here, and against autograd's numerical
gradients; the layers are checked for shapes, initialisation and the two facts the notebook
builds on (Δ -> 0 keeps the state, a large Δ resets it to the current input).
"""

from __future__ import annotations

import cmath
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from ssm_tutor.convolution import causal_conv, s4d_kernel, s4d_lin
from ssm_tutor.discretize import mamba_diag
from ssm_tutor.selective import (SelectiveSSM, dt_bias_init, inverse_softplus, per_channel, selective_scan_loop,
                                 selective_scan_ref, ssm_operator_matrix)
from ssm_tutor.validate import validate_scan_args

# transformers is the reference and a pinned test requirement: a missing install fails here, loudly,
# instead of skipping the whole stage-4 file
from transformers.models.mamba.modeling_mamba import mamba_selective_scan  # noqa: E402

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-10)}


def make_args(b=2, d=3, l=7, n=4, dtype=torch.float32, groups=0, seed=0):
    """Random scan arguments in the official layout; A negative like Mamba's -exp(A_log)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    f32 = lambda *shape: r(*shape).float().to(dtype)  # noqa: E731  (values exact in float32, see below)
    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    # transformers' scan casts u and B to float32 even for float64 inputs; giving them values that
    # float32 holds exactly keeps the float64 comparison exact instead of measuring that rounding.
    return dict(u=f32(b, d, l), delta=r(b, d, l) * 0.5, A=-torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1,
                B=f32(*bc_shape), C=r(*bc_shape), D=r(d), z=r(b, d, l), delta_bias=r(d) * 0.3)


def call(fn, args, use_D, use_z, use_bias, softplus, last):
    delta, bias = args["delta"], args["delta_bias"]
    if not softplus:                       # without softplus Δ = delta + bias must be ≥ 0
        delta, bias = delta.abs(), bias.abs()
    return fn(args["u"], delta, args["A"], args["B"], args["C"],
              D=args["D"] if use_D else None, z=args["z"] if use_z else None,
              delta_bias=bias if use_bias else None,
              delta_softplus=softplus, return_last_state=last)


def assert_close(expected, got, dtype):
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for e, g in zip(expected, got):
            assert_close(e, g, dtype)
        return
    assert got.shape == expected.shape
    torch.testing.assert_close(got.to(expected.dtype), expected, **TOL[dtype])


# --- agreement with transformers -------------------------------------------------------------

OPTIONS = list(itertools.product([False, True], repeat=5))   # D, z, delta_bias, delta_softplus, return_last_state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_D,use_z,use_bias,softplus,last", OPTIONS)
def test_reference_matches_transformers_on_every_option(dtype, use_D, use_z, use_bias, softplus, last):
    args = make_args(dtype=dtype)
    expected = call(mamba_selective_scan, args, use_D, use_z, use_bias, softplus, last)
    got = call(selective_scan_ref, args, use_D, use_z, use_bias, softplus, last)
    assert_close(expected, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,d,l,n", [(1, 1, 1, 1), (1, 5, 2, 16), (3, 2, 33, 3), (2, 16, 64, 8)])
def test_reference_matches_transformers_on_several_shapes(dtype, b, d, l, n):
    args = make_args(b, d, l, n, dtype=dtype, seed=b * 100 + l)
    expected = call(mamba_selective_scan, args, True, True, True, True, True)
    got = call(selective_scan_ref, args, True, True, True, True, True)
    assert_close(expected, got, dtype)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), d=st.integers(1, 4), l=st.integers(1, 9), n=st.integers(1, 4),
       options=st.tuples(*[st.booleans()] * 5), seed=st.integers(0, 2**16))
def test_reference_matches_transformers_property(b, d, l, n, options, seed):
    args = make_args(b, d, l, n, dtype=torch.float64, seed=seed)
    assert_close(call(mamba_selective_scan, args, *options), call(selective_scan_ref, args, *options), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_B_C_equal_each_group_run_on_its_channels(dtype, groups):
    d = 8
    args = make_args(b=2, d=d, l=6, n=3, dtype=dtype, groups=groups, seed=groups)
    y, h = call(selective_scan_ref, args, True, True, True, True, True)
    per = d // groups
    for gi in range(groups):
        ch = slice(gi * per, (gi + 1) * per)   # channels gi*per … (gi+1)*per - 1 read group gi
        y_g, h_g = mamba_selective_scan(args["u"][:, ch], args["delta"][:, ch], args["A"][ch], args["B"][:, gi],
                                        args["C"][:, gi], D=args["D"][ch], z=args["z"][:, ch],
                                        delta_bias=args["delta_bias"][ch], delta_softplus=True,
                                        return_last_state=True)
        assert_close((y_g, h_g), (y[:, ch], h[:, ch]), dtype)


def test_per_channel_maps_every_layout_to_each_channels_own_B():
    B = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)   # (b, g=3, n, l)
    E = per_channel(B, 2, 6, 5)                                                  # (b, d=6, l, n)
    for c in range(6):
        assert torch.equal(E[:, c], B[:, c // 2].transpose(1, 2))               # channel c reads group c // 2
    B3 = B[:, 0]                                                                 # (b, n, l)
    assert torch.equal(per_channel(B3, 2, 4, 5), B3.transpose(1, 2)[:, None].expand(2, 4, 5, 4))
    B2 = B[0, :, :, 0]                                                           # (d=3, n): time-invariant
    assert torch.equal(per_channel(B2, 2, 3, 5), B2[None, :, None, :].expand(2, 3, 5, 4))
    inter = torch.randn(2, 4, 10)                                                # (b, n, 2l): (re, im) pairs
    Z = per_channel(inter, 2, 3, 5, torch.complex64)                             # (b, d, l, n) complex
    assert torch.equal(Z[0, 1, 2, 3], torch.complex(inter[0, 3, 4], inter[0, 3, 5]))


def test_reference_matches_a_naive_scalar_double_loop():
    """Every number computed with Python floats, one channel and one state entry at a time."""
    args = make_args(b=1, d=2, l=4, n=3, dtype=torch.float64, seed=7)
    y, h = call(selective_scan_ref, args, True, True, True, True, True)
    u, dl, A, B, C = (args[k].tolist() for k in ("u", "delta", "A", "B", "C"))
    D, z, bias = args["D"].tolist(), args["z"].tolist(), args["delta_bias"].tolist()
    for c in range(2):
        state = [0.0] * 3
        for t in range(4):
            step = math.log1p(math.exp(dl[0][c][t] + bias[c]))                       # softplus
            acc = 0.0
            for k in range(3):
                state[k] = math.exp(step * A[c][k]) * state[k] + step * B[0][k][t] * u[0][c][t]
                acc += C[0][k][t] * state[k]
            out = (acc + D[c] * u[0][c][t]) * (z[0][c][t] / (1 + math.exp(-z[0][c][t])))
            assert y[0, c, t].item() == pytest.approx(out, rel=1e-12, abs=1e-12)
        assert h[0, c].tolist() == pytest.approx(state, rel=1e-12, abs=1e-12)


def test_reference_gradients_match_finite_differences():
    args = make_args(b=1, d=2, l=3, n=2, dtype=torch.float64, groups=0, seed=3)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    inputs = tuple(args[k].clone().requires_grad_(True) for k in names)

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                  return_last_state=True)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7)


# --- the loop on the page, and what mamba_ssm's selective_scan_fn takes beyond the real layout ---

def test_the_loop_is_the_reference_without_options():
    a = make_args(b=2, d=3, l=6, n=4, dtype=torch.float64, groups=3)
    delta = F.softplus(a["delta"])
    y, h = selective_scan_loop(a["u"], delta, a["A"], per_channel(a["B"], 2, 3, 6), per_channel(a["C"], 2, 3, 6),
                               a["D"])
    torch.testing.assert_close((y, h), selective_scan_ref(a["u"], delta, a["A"], a["B"], a["C"], D=a["D"],
                                                          return_last_state=True))


def _complex_system(b=2, d=3, l=8, m=4, seed=0):
    """u, Δ (b, d, l) > 0, A (d, m) complex with negative real part, B (b, m, l), C (d, m) complex."""
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(-torch.rand(d, m, generator=g, dtype=torch.float64) - 0.2,
                      torch.randn(d, m, generator=g, dtype=torch.float64) * 2)
    return (torch.randn(b, d, l, generator=g, dtype=torch.float64),
            torch.rand(b, d, l, generator=g, dtype=torch.float64) + 0.05, A,
            torch.randn(b, m, l, generator=g, dtype=torch.complex128),
            torch.randn(d, m, generator=g, dtype=torch.complex128))


def test_complex_A_matches_a_scalar_loop_over_conjugate_pairs():
    """Every number with Python complex arithmetic: each complex mode and its conjugate are two
    real states, so the pair contributes C h + conj(C h) = 2 Re(C h) to the output."""
    u, delta, A, B, C = _complex_system()
    D, z = torch.randn(3, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    y, h = selective_scan_ref(u, delta, A, B, C, D=D, z=z, return_last_state=True)
    for bi in range(2):
        for c in range(3):
            state = [0j] * 4
            for t in range(8):
                dt = delta[bi, c, t].item()
                out = 0.0
                for k in range(4):
                    state[k] = cmath.exp(dt * complex(A[c, k])) * state[k] + dt * complex(B[bi, k, t]) * u[bi, c, t].item()
                    out += 2 * (complex(C[c, k]) * state[k]).real
                out += D[c].item() * u[bi, c, t].item()
                out *= z[bi, c, t].item() / (1 + math.exp(-z[bi, c, t].item()))
                assert y[bi, c, t].item() == pytest.approx(out, rel=1e-11, abs=1e-11)
            assert h[bi, c].tolist() == pytest.approx(state, rel=1e-11, abs=1e-11)


def test_complex_lti_scan_equals_the_s4d_lin_convolution_of_stage_3():
    """With Δ, B, C constant in time and A = S4D-Lin, the scan is stage 3's LTI system:
    y = (2 Re K) * u with K_k = Σ_n C_n B̄_n Ā_n^k, Ā = exp(Δ A), B̄ = Δ B."""
    d, m, l = 3, 4, 40
    g = torch.Generator().manual_seed(5)
    A = s4d_lin(m).expand(d, m).clone()                                          # (d, m) complex
    B = torch.randn(d, m, generator=g, dtype=torch.complex128)
    C = torch.randn(d, m, generator=g, dtype=torch.complex128)
    step = torch.rand(d, generator=g, dtype=torch.float64) * 0.2 + 0.01          # Δ per channel: (d,)
    u = torch.randn(2, d, l, generator=g, dtype=torch.float64)
    y = selective_scan_ref(u, step[None, :, None].expand(2, d, l), A, B, C)
    Ad, Bd = mamba_diag(A, B, step)
    K = 2 * s4d_kernel(Ad, Bd, C, l).real                                         # (d, l)
    torch.testing.assert_close(y, causal_conv(u, K), atol=1e-10, rtol=1e-9)


def test_interleaved_real_B_C_equal_complex_B_C():
    """mamba_ssm's layout for complex A: real B, C with (re, im) interleaved along time, (b, n, 2l)."""
    u, delta, A, B, _ = _complex_system()
    C = torch.randn(2, 4, 8, dtype=torch.complex128)                              # (b, m, l) complex
    pairs = lambda X: torch.view_as_real(X).flatten(-2)                           # noqa: E731  (…, 2l)
    expected = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, pairs(B), pairs(C), return_last_state=True), expected)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, pairs(B[:, None]), pairs(C[:, None]),
                                                  return_last_state=True), expected)      # grouped, g = 1


def test_complex_gradients_match_finite_differences():
    u, delta, A, B, C = _complex_system(b=1, d=2, l=3, m=2)
    inputs = tuple(t.clone().requires_grad_(True) for t in (u, delta, A, B, C))
    assert torch.autograd.gradcheck(lambda *a: selective_scan_ref(*a, delta_softplus=True), inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_invariant_B_C_equal_transformers_channel_by_channel(dtype):
    """B, C of shape (d, n) are the same at every step: channel c alone is transformers' scan
    with B[c], C[c] repeated along time."""
    a = make_args(b=2, d=4, l=9, n=3, dtype=dtype)
    g = torch.Generator().manual_seed(9)
    B, C = (torch.randn(4, 3, generator=g, dtype=torch.float64).float().to(dtype) for _ in range(2))   # (d, n)
    got = call(selective_scan_ref, dict(a, B=B, C=C), True, True, True, True, True)
    parts = [mamba_selective_scan(a["u"][:, c:c + 1], a["delta"][:, c:c + 1], a["A"][c:c + 1],
                                  B[c, None, :, None].expand(2, 3, 9), C[c, None, :, None].expand(2, 3, 9),
                                  D=a["D"][c:c + 1], z=a["z"][:, c:c + 1], delta_bias=a["delta_bias"][c:c + 1],
                                  delta_softplus=True, return_last_state=True) for c in range(4)]
    expected = (torch.cat([y for y, _ in parts], 1), torch.cat([h for _, h in parts], 1))
    assert_close(expected, got, dtype)


def test_negative_step_without_softplus_is_a_named_error():
    a = make_args()
    with pytest.raises(ValueError, match="negative step size.*delta_softplus=False.*grows without bound"):
        selective_scan_ref(a["u"], -a["delta"].abs() - 0.1, a["A"], a["B"], a["C"])


# --- precision and lengths -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    args = make_args(b=1, d=4, l=512, n=4, dtype=torch.float32, seed=11)
    low = {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v) for k, v in args.items()}
    y, h = call(selective_scan_ref, low, True, True, True, True, True)
    assert y.dtype == dtype and h.dtype == torch.float32
    # the same (rounded) inputs scanned in float64, then rounded once to the output dtype
    wide = {k: v.double() for k, v in low.items()}
    y64, h64 = call(selective_scan_ref, wide, True, True, True, True, True)
    torch.testing.assert_close(h, h64.float(), atol=1e-5, rtol=1e-5)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), y64, atol=eps, rtol=eps)   # one rounding step, no drift over 512 steps


def test_length_one_is_one_step_from_zero():
    args = make_args(b=2, d=3, l=1, n=4, dtype=torch.float64)
    args["delta"] = args["delta"].abs()                                       # no softplus: Δ ≥ 0
    y, h = selective_scan_ref(args["u"], args["delta"], args["A"], args["B"], args["C"], D=args["D"],
                              return_last_state=True)
    h_expected = args["delta"][:, :, 0, None] * args["B"][:, None, :, 0] * args["u"][:, :, 0, None]  # Δ B u: (b, d, n)
    torch.testing.assert_close(h, h_expected)
    y_expected = (h_expected * args["C"][:, None, :, 0]).sum(-1) + args["D"] * args["u"][:, :, 0]
    torch.testing.assert_close(y[:, :, 0], y_expected)


def test_length_100k_stays_finite():
    args = make_args(b=1, d=1, l=100_000, n=2, dtype=torch.float32, seed=5)
    y, h = call(selective_scan_ref, args, True, True, True, True, True)
    assert y.shape == (1, 1, 100_000) and torch.isfinite(y).all() and torch.isfinite(h).all()


# --- bad input ---------------------------------------------------------------------------------

BAD = [
    ("u", lambda a: a.update(u=a["u"][0]), ValueError, "u must have shape"),
    ("delta", lambda a: a.update(delta=a["delta"][:, :, :-1]), ValueError, "delta must have shape"),
    ("A", lambda a: a.update(A=a["A"][:-1]), ValueError, "A must have shape"),
    ("B", lambda a: a.update(B=a["B"][:, :-1]), ValueError, "B must have shape"),
    ("C", lambda a: a.update(C=a["C"][..., :-1]), ValueError, "C must have shape"),
    ("C groups", lambda a: a.update(C=a["C"][:, None]), ValueError, "both be grouped"),
    ("B groups not dividing d", lambda a: a.update(B=torch.randn(2, 2, 4, 7), C=torch.randn(2, 2, 4, 7)),
     ValueError, "B must have shape"),
    ("D", lambda a: a.update(D=a["D"][:2]), ValueError, "D must have shape"),
    ("z", lambda a: a.update(z=a["z"].transpose(1, 2)), ValueError, "z must have shape"),
    ("delta_bias", lambda a: a.update(delta_bias=a["delta_bias"][None]), ValueError, "delta_bias must have shape"),
    ("integer u", lambda a: a.update(u=a["u"].long()), TypeError, "u must be a floating-point"),
    ("complex u", lambda a: a.update(u=a["u"].to(torch.complex64)), TypeError, "u must be real"),
    ("complex B with real A", lambda a: a.update(B=a["B"].to(torch.complex64), C=a["C"].to(torch.complex64)),
     TypeError, "B is complex"),
    ("delta dtype", lambda a: a.update(delta=a["delta"].half()), TypeError, "delta must have u's dtype"),
    ("C dtype", lambda a: a.update(C=a["C"].bfloat16()), TypeError, "C must have B's dtype"),
    ("float64 D", lambda a: a.update(D=a["D"].double()), TypeError, "float64 must be used for all"),
    ("list B", lambda a: a.update(B=a["B"].tolist()), TypeError, "B must be a torch.Tensor"),
    ("device of C", lambda a: a.update(C=a["C"].to("meta")), ValueError, "C is on device meta"),
    ("NaN in u", lambda a: a["u"].__setitem__((0, 0, 3), float("nan")), ValueError, "u contains 1 NaN"),
    ("inf in delta", lambda a: a["delta"].__setitem__((1, 2, 0), float("inf")), ValueError, "delta contains 1 NaN"),
    ("empty length", lambda a: a.update(u=a["u"][..., :0], delta=a["delta"][..., :0], B=a["B"][..., :0],
                                        C=a["C"][..., :0], z=a["z"][..., :0]), ValueError, "length 0"),
]


@pytest.mark.parametrize("what,mutate,error,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(what, mutate, error, message):
    args = make_args()
    mutate(args)
    with pytest.raises(error, match=message):
        call(selective_scan_ref, args, True, True, True, True, True)


def test_validate_returns_sizes_and_groups():
    assert validate_scan_args(*[make_args(b=2, d=4, l=5, n=3)[k] for k in ("u", "delta", "A", "B", "C")]) == \
        (2, 4, 5, 3, 0)
    a = make_args(b=2, d=4, l=5, n=3, groups=2)
    assert validate_scan_args(a["u"], a["delta"], a["A"], a["B"], a["C"]) == (2, 4, 5, 3, 2)


# --- what Δ does (the notebook's two facts) --------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), l=st.integers(1, 6))
def test_tiny_delta_keeps_the_state(seed, l):
    """Appending a token with Δ ≈ 0 leaves the state where it was, whatever the token."""
    a = make_args(b=1, d=3, l=l + 1, n=4, dtype=torch.float64, seed=seed)
    a["delta"] = F.softplus(a["delta"])
    a["delta"][..., -1] = 1e-9
    _, h_before = selective_scan_ref(a["u"][..., :-1], a["delta"][..., :-1], a["A"], a["B"][..., :-1],
                                     a["C"][..., :-1], return_last_state=True)
    _, h_after = selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"], return_last_state=True)
    torch.testing.assert_close(h_after, h_before, atol=1e-7, rtol=1e-7)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), l=st.integers(1, 6))
def test_large_delta_resets_the_state_to_the_current_input(seed, l):
    """With Δ large, Ā = exp(ΔA) ≈ 0: the past is forgotten and h = Δ B u of the last token alone."""
    a = make_args(b=1, d=3, l=l + 1, n=4, dtype=torch.float64, seed=seed)
    a["delta"] = F.softplus(a["delta"])
    big = 60.0                                            # A ≤ -0.1, so Ā ≤ exp(-6) … here exp(-60·0.1)
    a["delta"][..., -1] = big
    a["A"] = a["A"] - 1.0                                 # A ≤ -1.1: Ā ≤ exp(-66), far below float64 noise
    _, h = selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"], return_last_state=True)
    fresh = big * a["B"][:, None, :, -1] * a["u"][:, :, -1, None]                # Δ B u: (b, d, n)
    torch.testing.assert_close(h, fresh, atol=1e-10, rtol=1e-10)


# --- the operator matrix: Toeplitz only without selection ------------------------------------

def test_operator_matrix_reproduces_the_scan():
    a = make_args(b=2, d=3, l=6, n=4, dtype=torch.float64, groups=3)
    delta = F.softplus(a["delta"])
    M = ssm_operator_matrix(delta, a["A"], a["B"], a["C"])                      # (b, d, l, l)
    y = selective_scan_ref(a["u"], delta, a["A"], a["B"], a["C"])
    torch.testing.assert_close(torch.einsum("bdts,bds->bdt", M, a["u"]), y)
    assert torch.equal(M, M.tril())


def _is_toeplitz(M):
    l = M.shape[-1]
    return all(torch.allclose(M[..., t, s], M[..., t - s, 0], atol=1e-12) for t in range(l) for s in range(t + 1))


def test_operator_matrix_is_toeplitz_only_when_time_invariant():
    a = make_args(b=1, d=2, l=5, n=3, dtype=torch.float64)
    delta = F.softplus(a["delta"])
    assert not _is_toeplitz(ssm_operator_matrix(delta, a["A"], a["B"], a["C"]))
    lti_delta = delta[..., :1].expand_as(delta)
    lti_B, lti_C = a["B"][..., :1].expand_as(a["B"]), a["C"][..., :1].expand_as(a["C"])
    assert _is_toeplitz(ssm_operator_matrix(lti_delta, a["A"], lti_B, lti_C))


# --- the layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("b,l,d,n", [(1, 1, 4, 2), (2, 9, 16, 8), (3, 4, 33, 16)])
def test_selective_layer_shapes(b, l, d, n):
    layer = SelectiveSSM(d, n)
    x = torch.randn(b, l, d)
    y, h = layer(x, return_last_state=True)
    assert y.shape == (b, l, d) and h.shape == (b, d, n)
    delta, B, C = layer.selection(x)
    assert delta.shape == (b, l, d) and B.shape == (b, l, n) and C.shape == (b, l, n)
    assert (delta > 0).all()
    assert dict(layer.named_parameters()).keys() == {"x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"}
    assert layer.x_proj.weight.shape == (math.ceil(d / 16) + 2 * n, d)


def test_selective_layer_is_x_proj_dt_proj_and_the_scan():
    """The layer equals the S6 recipe assembled by hand around transformers' scan."""
    layer = SelectiveSSM(12, 5, dt_rank=3).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)                              # (b, l, d)
    dt_low, B, C = (x @ layer.x_proj.weight.T).split([3, 5, 5], dim=-1)
    dt = dt_low @ layer.dt_proj.weight.T                                         # (b, l, d)
    y_expected = mamba_selective_scan(x.transpose(1, 2), dt.transpose(1, 2), -torch.exp(layer.A_log),
                                      B.transpose(1, 2), C.transpose(1, 2), D=layer.D,
                                      delta_bias=layer.dt_proj.bias, delta_softplus=True)
    torch.testing.assert_close(layer(x), y_expected.transpose(1, 2))


def test_layer_initialisation_follows_the_paper():
    layer = SelectiveSSM(256, 8, dt_min=1e-3, dt_max=0.1)
    delta = F.softplus(layer.dt_proj.bias.detach())
    assert delta.min() >= 1e-3 * (1 - 1e-5) and delta.max() <= 0.1 * (1 + 1e-5)
    logs = delta.log()   # log-uniform: log Δ spread across [log 1e-3, log 0.1]
    assert logs.min() < math.log(3e-3) and logs.max() > math.log(3e-2)
    torch.testing.assert_close(layer.A, -torch.arange(1, 9, dtype=torch.float32).expand(256, 8))
    assert torch.equal(layer.D.detach(), torch.ones(256))
    x = torch.tensor([1e-4, 1e-2, 0.5, 3.0])
    torch.testing.assert_close(F.softplus(inverse_softplus(x)), x)
    with pytest.raises(ValueError, match="dt_min"):
        dt_bias_init(4, dt_min=0.2, dt_max=0.1)


def test_layer_rejects_bad_input():
    layer = SelectiveSSM(8, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, length, d\) with d = 8, got shape \(2, 8, 5\)"):
        layer(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(8, 5))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        layer(torch.ones(2, 5, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="u contains"):
        layer(torch.full((1, 3, 8), float("nan")))


def test_layers_accept_a_different_scan():
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return selective_scan_ref(*args, **kwargs)

    x = torch.randn(1, 4, 8)
    torch.manual_seed(0)
    plain = SelectiveSSM(8, 3)
    torch.manual_seed(0)
    spied = SelectiveSSM(8, 3, scan=spy)
    torch.testing.assert_close(spied(x), plain(x))
    assert len(calls) == 1


# --- the chapter's exercises ----------------------------------------------------------------

def _discretize_step(delta, A, B, u):
    return torch.exp(delta[:, :, None] * A), delta[:, :, None] * B[:, None, :] * u[:, :, None]


def _scan_loop(u, delta, A, B, C, D):
    h, ys = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]), []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def _stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise_id,right,wrong", [
    ("04.1", _discretize_step, lambda delta, A, B, u: (1 + delta[:, :, None] * A, _discretize_step(delta, A, B, u)[1])),
    ("04.2", _scan_loop, lambda u, delta, A, B, C, D: _scan_loop(u, delta, A, B, C, D * 0)),
])
def test_chapter_4_exercises_pass_right_answers_and_fail_wrong_ones(exercise_id, right, wrong):
    from ssm_tutor.exercises import check_exercise
    assert check_exercise(exercise_id, right, verbose=False).status == "PASS"
    assert check_exercise(exercise_id, wrong, verbose=False).status == "FAIL"
    assert check_exercise(exercise_id, _stub, verbose=False).status == "NOT ATTEMPTED"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selective_layer_step_by_step_equals_forward(dtype):
    layer = SelectiveSSM(8, 3).to(dtype)
    x = torch.randn(2, 7, 8, dtype=dtype)
    with torch.no_grad():
        y, h_last = layer(x, return_last_state=True)
        h = layer.init_state(2)
        assert h.shape == (2, 8, 3) and h.dtype == dtype
        steps = [layer.step(x[:, t], h)[0] for t in range(7)]
    torch.testing.assert_close(torch.stack(steps, 1), y, **TOL[dtype])
    torch.testing.assert_close(h, h_last, **TOL[dtype])
