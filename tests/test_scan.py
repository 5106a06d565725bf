"""Stage 5 specification: every scan equals the plain recurrence, the reference selective scan,
and the trivial cases torch already knows (cumsum, cumprod); gradients equal autograd's on the
reference; the cost model counts what the code does."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_tutor.scan import (LINEAR_SCAN_METHODS, ScanCost, auto_method, blelloch_down_sweep, blelloch_up_sweep,
                            chunked_scan, combine, hillis_steele_scan, linear_scan, scan_cost, selective_scan,
                            sequential_scan)
from ssm_tutor.selective import selective_scan_ref

from scan_cases import OPTIONS, assert_scans_agree, call_scan, complex_inputs, scan_inputs

SELECTIVE_METHODS = ("auto", "fused") + LINEAR_SCAN_METHODS
LENGTHS = [1, 2, 3, 7, 16, 33, 100]


def loop_scan(a, b, h0=None):
    """The recurrence written out with Python floats, the plainest possible reference."""
    out = []
    for row_a, row_b, h in zip(a.reshape(-1, a.shape[-1]).tolist(), b.reshape(-1, b.shape[-1]).tolist(),
                               (h0.reshape(-1).tolist() if h0 is not None else [0.0] * (a.numel() // a.shape[-1]))):
        hs = []
        for at, bt in zip(row_a, row_b):
            h = at * h + bt
            hs.append(h)
        out.append(hs)
    return torch.tensor(out, dtype=torch.float64).reshape(a.shape)


# ---------------------------------------------------------------------------------------------
# linear_scan
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("L", LENGTHS)
def test_linear_scan_with_unit_decay_is_cumsum(method, L):
    b = torch.randn(3, 2, L, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(torch.ones_like(b), b, method), torch.cumsum(b, -1))


@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("L", LENGTHS)
def test_linear_scan_without_input_is_cumprod(method, L):
    a = torch.rand(4, L, dtype=torch.float64) + 0.5
    h0 = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, torch.zeros_like(a), method, h0=h0), torch.cumprod(a, -1))


@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_scan_equals_sequential(method, L, dtype):
    a = torch.rand(2, 3, L, dtype=dtype) * 1.8 - 0.9
    b = torch.randn(2, 3, L, dtype=dtype)
    h0 = torch.randn(2, 3, dtype=dtype)
    expected = linear_scan(a, b, "sequential", h0=h0)
    torch.testing.assert_close(expected.double(), loop_scan(a.double(), b.double(), h0.double()),
                               atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(linear_scan(a, b, method, h0=h0), expected, **tol)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 16, 64])
def test_chunked_scan_any_chunk_size(chunk_size):
    a, b = torch.rand(3, 37, dtype=torch.float64), torch.randn(3, 37, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b, "chunked", chunk_size=chunk_size), loop_scan(a, b))


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 70), method=st.sampled_from(LINEAR_SCAN_METHODS), seed=st.integers(0, 2**31 - 1))
def test_linear_scan_property_matches_loop(L, method, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, L, generator=g, dtype=torch.float64) * 2.2 - 1.1
    b = torch.randn(2, L, generator=g, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b, method), loop_scan(a, b), atol=1e-9, rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-2, 2, allow_nan=False), min_size=6, max_size=6))
def test_combine_is_associative_and_not_commutative(x):
    a1, b1, a2, b2, a3, b3 = (torch.tensor(v, dtype=torch.float64) for v in x)
    left = combine(*combine(a1, b1, a2, b2), a3, b3)
    right = combine(a1, b1, *combine(a2, b2, a3, b3))
    torch.testing.assert_close(left, right)
    # composing the maps h -> a h + b: apply step 1 then step 2
    h = torch.tensor(0.37, dtype=torch.float64)
    a12, b12 = combine(a1, b1, a2, b2)
    torch.testing.assert_close(a12 * h + b12, a2 * (a1 * h + b1) + b2)


def test_combine_order_matters():
    assert combine(2.0, 1.0, 3.0, 0.0) != combine(3.0, 0.0, 2.0, 1.0)


@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("L", [1, 6, 13])
def test_linear_scan_gradients_equal_sequential(method, L):
    a = (torch.rand(2, L, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    b = torch.randn(2, L, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, L, dtype=torch.float64)
    grads = torch.autograd.grad((linear_scan(a, b, method, h0=h0) * w).sum(), (a, b, h0))
    expected = torch.autograd.grad((linear_scan(a, b, "sequential", h0=h0) * w).sum(), (a, b, h0))
    torch.testing.assert_close(grads, expected)


@pytest.mark.parametrize("N", [1, 2, 8, 32])
def test_blelloch_up_sweep_levels_hold_block_products(N):
    """Level k of the tree holds, for every block of 2^k consecutive steps, their composition:
    the product of the block's a, and the state the block produces from h = 0."""
    a = torch.rand(3, N, dtype=torch.float64) * 1.8 - 0.9
    b = torch.randn(3, N, dtype=torch.float64)
    tree = blelloch_up_sweep(a, b)
    assert len(tree) == int(math.log2(N)) + 1 and tree[-1][0].shape == (3, 1)
    for k, (a_k, b_k) in enumerate(tree):
        blocks_a, blocks_b = a.unflatten(-1, (N >> k, 1 << k)), b.unflatten(-1, (N >> k, 1 << k))
        torch.testing.assert_close(a_k, blocks_a.prod(-1))
        torch.testing.assert_close(b_k, loop_scan(blocks_a, blocks_b)[..., -1])


@pytest.mark.parametrize("N", [1, 2, 8, 32])
def test_blelloch_down_sweep_gives_the_exclusive_prefixes(N):
    """P_t = step_0 ∘ … ∘ step_{t-1}: the identity at t = 0, then (prod of a before t, h_{t-1})."""
    a = torch.rand(2, N, dtype=torch.float64) * 1.8 - 0.9
    b = torch.randn(2, N, dtype=torch.float64)
    a_P, b_P = blelloch_down_sweep(blelloch_up_sweep(a, b))
    ones, zeros = torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    torch.testing.assert_close(a_P, torch.cat([ones, torch.cumprod(a, -1)[:, :-1]], -1))
    torch.testing.assert_close(b_P, torch.cat([zeros, loop_scan(a, b)[:, :-1]], -1))


def test_each_scan_function_is_linear_scan_of_its_method():
    a, b = torch.rand(2, 21, dtype=torch.float64), torch.randn(2, 21, dtype=torch.float64)
    expected = loop_scan(a, b)
    for fn in (sequential_scan, hillis_steele_scan, chunked_scan):
        torch.testing.assert_close(fn(a, b), expected)
    torch.testing.assert_close(chunked_scan(a, b, 4), expected)


@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
def test_linear_scan_complex(method):
    """Complex decays (S4D-Lin's conjugate-pair modes) scan like real ones."""
    g = torch.Generator().manual_seed(3)
    a = torch.polar(torch.rand(2, 19, generator=g, dtype=torch.float64), torch.randn(2, 19, generator=g, dtype=torch.float64))
    b = torch.randn(2, 19, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, generator=g, dtype=torch.complex128)
    expected, h = [], h0
    for t in range(19):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan(a, b, method, h0=h0), torch.stack(expected, -1))


def test_linear_scan_errors_name_the_argument():
    a = torch.rand(2, 5)
    with pytest.raises(ValueError, match=r"a must have the shape of b"):
        linear_scan(a, torch.rand(2, 6))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2,\)"):
        linear_scan(a, a, h0=torch.zeros(3))
    with pytest.raises(ValueError, match=r"method must be one of"):
        linear_scan(a, a, "bogus")
    with pytest.raises(TypeError, match=r"a has dtype torch.float32 but b has torch.float64"):
        linear_scan(a, a.double())
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        linear_scan(a, a, "chunked", chunk_size=0)


# ---------------------------------------------------------------------------------------------
# cost model: counted by running the code
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 5, 8, 31, 64, 100, 1000])
def test_cost_model_counts(L):
    lg = math.ceil(math.log2(L)) if L > 1 else 0
    N = 2 ** lg
    seq = scan_cost("sequential", L)
    assert (seq.work, seq.depth) == (L - 1, L - 1)
    hs = scan_cost("hillis_steele", L)
    assert hs.depth == lg
    assert hs.work == sum(L - 2 ** k for k in range(lg))
    bl = scan_cost("blelloch", L)
    if L > 1:
        assert bl.depth == 2 * lg + 1                                    # up, down, then the inclusive step
        assert bl.work == 2 * (N - 1) + L
    ch = scan_cost("chunked", L)
    T = max(1, math.isqrt(L))
    assert ch.depth <= (T - 1) + (math.ceil(L / T) - 1) + 1
    assert ch.work <= 2 * L


def test_cost_model_growth_rates():
    """Sequential work and depth grow like L; Hillis-Steele's work like L log L at depth log L;
    Blelloch's work like L at depth 2 log L."""
    for L in (256, 4096):
        assert scan_cost("hillis_steele", L).work == L * math.log2(L) - L + 1     # Σ_k (L − 2^k)
        assert scan_cost("blelloch", L).work / L == pytest.approx(3, abs=0.01)
        assert scan_cost("blelloch", L).depth == 2 * int(math.log2(L)) + 1
        assert scan_cost("chunked", L).depth <= 2 * math.isqrt(L)


def test_scan_cost_accumulates():
    cost = ScanCost()
    x = torch.ones(10)
    linear_scan(x, x, "sequential", cost=cost)
    linear_scan(x, x, "sequential", cost=cost)
    assert (cost.work, cost.depth) == (18, 18)


# ---------------------------------------------------------------------------------------------
# selective_scan against the reference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", SELECTIVE_METHODS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selective_scan_equals_reference(method, option, dtype):
    opt = OPTIONS[option]
    x = scan_inputs(groups=opt["groups"], dtype=dtype)
    expected = call_scan(selective_scan_ref, x, opt)
    got = call_scan(selective_scan, x, opt, method=method)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(got, expected, **tol)


def test_default_method_matches_transformers():
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    x = scan_inputs(b=1, d=8, l=40, n=4, dtype=torch.float32)
    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(selective_scan(*args, **kw), mamba_selective_scan(*args, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", SELECTIVE_METHODS)
@pytest.mark.parametrize("option", ["D+z", "all, grouped B/C"])
def test_selective_scan_gradients_equal_reference(method, option):
    opt = dict(OPTIONS[option], last=True)
    extra = dict(chunk_size=5) if method == "fused" else {}
    assert_scans_agree(partial(selective_scan, method=method, **extra), selective_scan_ref,
                       scan_inputs(groups=opt["groups"], l=13), opt, ["u", "delta", "A", "B", "C"] + list(opt["keep"]))


# ---------------------------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, bad, message", [
    ("delta", torch.zeros(2, 4, 18), r"delta must have shape"),
    ("A", torch.zeros(5, 3), r"A must have shape"),
    ("B", torch.zeros(2, 3, 18), r"B must have shape"),
    ("C", torch.zeros(2, 4, 19), r"C must have shape"),
    ("D", torch.zeros(3), r"D must have shape"),
    ("z", torch.zeros(2, 4), r"z must have shape"),
    ("delta_bias", torch.zeros(4, 1), r"delta_bias must have shape"),
    ("u", torch.zeros(2, 4, 19, dtype=torch.int64), r"u must be a floating-point tensor"),
    ("D", torch.zeros(4, device="meta"), r"D is on device meta"),
])
@pytest.mark.parametrize("method", ["auto", "fused", "blelloch"])
def test_bad_arguments_raise_naming_them(name, bad, message, method):
    x = scan_inputs(l=19, dtype=torch.float32)
    x[name] = bad
    with pytest.raises((ValueError, TypeError), match=message):
        selective_scan(**x, method=method)


def test_bad_method_and_chunk_size():
    x = scan_inputs()
    with pytest.raises(ValueError, match=r"method must be 'auto' or one of"):
        selective_scan(**x, method="magic")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        selective_scan(**x, method="fused", chunk_size=0)


@pytest.mark.parametrize("method", SELECTIVE_METHODS)
def test_length_one(method):
    x = scan_inputs(l=1)
    torch.testing.assert_close(selective_scan(**x, delta_softplus=True, method=method),
                               selective_scan_ref(**x, delta_softplus=True))


@pytest.mark.parametrize("method", ["fused", "chunked"])
def test_length_100k_is_finite(method):
    x = scan_inputs(b=1, d=2, l=100_000, n=2, dtype=torch.float32)
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, method=method)
    assert y.shape == (1, 2, 100_000) and torch.isfinite(y).all() and torch.isfinite(h).all()
    # all 100 000 steps, the end included, equal the plain sequential loop: no drift over chunks
    y_seq, h_seq = selective_scan(**x, delta_softplus=True, return_last_state=True, method="sequential")
    torch.testing.assert_close(y, y_seq)
    torch.testing.assert_close(h, h_seq)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["auto", "chunked"])
def test_half_precision_accumulates_in_float32(dtype, method):
    x = {k: v.to(dtype) for k, v in scan_inputs(l=300, dtype=torch.float32).items()}
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, method=method)
    assert y.dtype == dtype and h.dtype == torch.float32
    y32, h32 = selective_scan_ref(**{k: v.float() for k, v in x.items()}, delta_softplus=True,
                                  return_last_state=True)
    torch.testing.assert_close(h, h32, atol=1e-5, rtol=1e-5)          # the state never left float32
    torch.testing.assert_close(y, y32.to(dtype))                        # only the output is rounded


def test_auto_picks_fused_on_cpu_and_triton_is_explicit():
    assert auto_method("cpu") == "fused"
    x = scan_inputs(b=1, d=4, l=9, n=3, dtype=torch.float32)
    try:
        from ssm_tutor.kernels import selective_scan_triton  # noqa: F401  (stage 6; needs Triton)
        available = True
    except ImportError:
        available = False
    if available:   # the dispatch reaches stage 6's kernel (interpreted on a CPU) with the same meaning
        torch.testing.assert_close(selective_scan(**x, delta_softplus=True, method="triton"),
                                   selective_scan_ref(**x, delta_softplus=True), atol=1e-5, rtol=1e-5)
    else:
        with pytest.raises(RuntimeError, match=r"ssm_tutor.kernels"):
            selective_scan(**x, method="triton")


def test_no_grad_and_inference_mode():
    x = scan_inputs(dtype=torch.float32)
    x["delta"], x["delta_bias"] = x["delta"].abs(), x["delta_bias"].abs()      # no softplus: Δ ≥ 0
    expected = selective_scan_ref(**x)
    with torch.no_grad():
        torch.testing.assert_close(selective_scan(**x), expected)
    with torch.inference_mode():
        torch.testing.assert_close(selective_scan(**x), expected)


@pytest.mark.parametrize("method", LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("L", [2, 6, 8, 13])
def test_recorded_schedule_agrees_with_counts(method, L):
    cost = scan_cost(method, L, record=True)
    assert len(cost.steps) == cost.depth
    assert sum(len(pairs) for _, pairs in cost.steps) == cost.work
    for _, pairs in cost.steps:                       # every combine reads an earlier (or the same) position
        assert all(src <= dst for src, dst in pairs)


def test_hillis_steele_schedule_is_the_textbook_one():
    steps = scan_cost("hillis_steele", 8, record=True).steps
    assert [phase for phase, _ in steps] == ["offset 1", "offset 2", "offset 4"]
    assert steps[2][1] == [(0, 4), (1, 5), (2, 6), (3, 7)]


@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"])
@pytest.mark.parametrize("method", ["fused", "chunked"])
def test_nan_input_raises_naming_it(name, method):
    x = scan_inputs(dtype=torch.float32)
    x[name] = x[name].clone()
    x[name].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} contains 1 NaN or infinite value"):
        selective_scan(**x, delta_softplus=True, method=method)


# ---------------------------------------------------------------------------------------------
# what mamba_ssm's selective_scan_fn takes beyond the real, time-varying layout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", SELECTIVE_METHODS + ("reference", "triton"))
@pytest.mark.parametrize("which", ["B", "C", "both"])
def test_time_invariant_B_C_equal_the_same_values_repeated_in_time(method, which):
    """B, C of shape (d, n) mean the same B, C at every step: the scan equals the one given
    (b, g = d, n, l) copies of them, one group per channel."""
    x = scan_inputs(b=2, d=4, l=11, n=3)
    const = {k: torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
             for i, k in enumerate("BC")}
    given, repeated = dict(x), dict(x)
    for k in ("B", "C") if which == "both" else (which,):
        given[k] = const[k]
        repeated[k] = const[k][None, :, :, None].expand(2, 4, 3, 11)                  # (b, g = d, n, l)
    if which != "both":                                     # the other one, grouped the same way
        other = "C" if which == "B" else "B"
        repeated[other] = x[other][:, None].expand(2, 4, 3, 11)
    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    got = selective_scan(given["u"], given["delta"], given["A"], given["B"], given["C"], method=method, **kw)
    expected = selective_scan_ref(repeated["u"], repeated["delta"], repeated["A"], repeated["B"], repeated["C"], **kw)
    torch.testing.assert_close(got, expected, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("method", ("auto", "reference") + LINEAR_SCAN_METHODS)
def test_complex_A_every_method_that_takes_it_equals_the_reference(method):
    x = complex_inputs()
    expected = selective_scan_ref(**x, return_last_state=True)
    got = selective_scan(**x, return_last_state=True, method=method)
    assert got[1].is_complex()
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method", ["fused", "triton"])
def test_complex_A_where_a_method_cannot_take_it_the_error_names_those_that_can(method):
    with pytest.raises(TypeError, match=rf"selective_scan\(method='{method}'\) takes a real A only.*"
                                        r"'sequential', 'hillis_steele', 'blelloch', 'chunked', 'reference'"):
        selective_scan(**complex_inputs(), method=method)


@pytest.mark.parametrize("method", ("reference",) + LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("layout", ["complex (b, n, l)", "interleaved (b, n, 2l)", "grouped interleaved",
                                    "time-invariant (d, n)"])
def test_complex_A_every_layout_of_B_C_equals_the_reference(method, layout):
    """Complex A with each B/C layout mamba_ssm takes, with every option on, values and gradients."""
    x = complex_inputs(b=2, d=4, l=7, n=3, seed=1)
    g = torch.Generator().manual_seed(2)
    if layout == "complex (b, n, l)":
        x["C"] = torch.randn(2, 3, 7, generator=g, dtype=torch.complex128)
    elif layout == "interleaved (b, n, 2l)":
        x["B"] = torch.randn(2, 3, 14, generator=g, dtype=torch.float64)
    elif layout == "grouped interleaved":
        x["B"], x["C"] = (torch.randn(2, 2, 3, 14, generator=g, dtype=torch.float64) for _ in "BC")
    else:
        x["B"], x["C"] = (torch.randn(4, 3, generator=g, dtype=torch.complex128) for _ in "BC")
    x.update(D=torch.randn(4, dtype=torch.float64, generator=g), z=torch.randn(2, 4, 7, dtype=torch.float64, generator=g),
             delta_bias=torch.randn(4, dtype=torch.float64, generator=g))
    opt = dict(keep=("D", "z", "delta_bias"), softplus=True, last=True)
    y, h = assert_scans_agree(partial(selective_scan, method=method), selective_scan_ref, x, opt, list(x), atol=1e-12)
    assert h.is_complex() and not y.is_complex()


@pytest.mark.parametrize("method", SELECTIVE_METHODS + ("reference",))
def test_negative_step_without_softplus_is_refused(method):
    x = scan_inputs()
    x["delta"], x["delta_bias"] = x["delta"].abs(), x["delta_bias"].abs()
    x["delta"][0, 1, 2] = -x["delta_bias"][1] - 0.25
    with pytest.raises(ValueError, match=r"has 1 negative step size\(s\) \(smallest -0.25\).*grows without bound"):
        selective_scan(**x, method=method)
    selective_scan(**x, delta_softplus=True, method=method)      # with softplus any delta is fine
