"""Stage 11 specification: the SSD scan.

References: a plain loop over (batch, head, time) written here, in float64, that nobody else
wrote; transformers' pure-PyTorch ``mamba2_chunk_scan`` (the fallback of Mamba2Mixer.torch_forward)
on the same inputs; autograd's numerical gradients (gradcheck). The three teaching forms
(recurrent, quadratic, chunked) and the fast CPU version must all agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import transformers  # noqa: F401  (the reference; a pinned test requirement, so a missing install fails)
from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

from ssm_tutor.ssd import (SSD_METHODS, chunk_diagonal_blocks, chunk_off_diagonal_blocks, chunk_states,
                           pass_states, segsum, ssd_chunked, ssd_matrix, ssd_quadratic, ssd_recurrent, ssd_scan)

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny problems: see tests/conftest.py

# (batch, length, heads, head_dim, groups, state, chunk): lengths that are and are not multiples of
# the chunk, one chunk longer than the sequence, chunk 1, groups 1 < g < h and g = h
SHAPES = [(2, 13, 4, 3, 2, 5, 4), (1, 16, 2, 2, 1, 3, 16), (3, 7, 6, 2, 3, 4, 3), (1, 1, 1, 1, 1, 1, 5),
          (2, 10, 4, 2, 4, 2, 1), (1, 9, 2, 3, 1, 2, 32)]
IDS = [f"b{b}-l{l}-h{h}-p{p}-g{g}-n{n}-Q{Q}" for b, l, h, p, g, n, Q in SHAPES]


def make_inputs(b, l, h, p, g, n, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(x=randn(b, l, h, p), dt=randn(b, l, h) - 1.0, A=-torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.1,
                B=randn(b, l, g, n), C=randn(b, l, g, n), D=randn(h), dt_bias=randn(h) * 0.5,
                z=randn(b, l, h, p), initial_states=randn(b, h, p, n))


def loop_reference(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
                   dt_limit=(0.0, math.inf)):
    """The recurrence, one batch, head and time step at a time, with the official options:

    Δ = clamp(softplus(dt + dt_bias)); h_t = exp(Δ A) h_{t-1} + Δ x_t B_tᵀ; y_t = h_t C_t + D x_t; y *= SiLU(z).
    """
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    y = torch.zeros(b, l, h, p, dtype=x.dtype)
    finals = torch.zeros(b, h, p, n, dtype=x.dtype)
    for i in range(b):
        for j in range(h):
            grp = j // (h // g)
            state = initial_states[i, j].clone() if initial_states is not None else torch.zeros(p, n, dtype=x.dtype)
            for t in range(l):
                delta = dt[i, t, j] + (dt_bias[j] if dt_bias is not None else 0.0)
                if dt_softplus:
                    delta = F.softplus(delta)
                delta = delta.clamp(dt_limit[0], dt_limit[1])
                state = torch.exp(delta * A[j]) * state + delta * torch.outer(x[i, t, j], B[i, t, grp])
                out = state @ C[i, t, grp]
                if D is not None:
                    out = out + (D[j] if D.dim() == 1 else D[j]) * x[i, t, j]
                if z is not None:
                    out = out * F.silu(z[i, t, j])
                y[i, t, j] = out
            finals[i, j] = state
    return y, finals


# ---------------------------------------------------------------------------------------------
# segsum
# ---------------------------------------------------------------------------------------------

def test_segsum_is_the_sum_over_each_segment_and_minus_inf_above_the_diagonal():
    a = torch.randn(3, 6, dtype=torch.float64)
    S = segsum(a)
    assert S.shape == (3, 6, 6)
    for t in range(6):
        for s in range(6):
            expected = a[:, s + 1:t + 1].sum(-1) if s <= t else torch.full((3,), -math.inf, dtype=torch.float64)
            torch.testing.assert_close(S[:, t, s], expected)


def test_segsum_is_exact_where_differences_of_cumulative_sums_fail():
    """A huge decay (a state reset) at the start of a chunk: cumsum differences lose every digit in
    float32, or give (-inf) - (-inf) = NaN; the segment sums stay exact."""
    a = torch.tensor([-1e7, -0.1, -0.3, -0.7, -0.2])
    exact = -1.2                                                       # -0.3 - 0.7 - 0.2
    torch.testing.assert_close(segsum(a)[4, 1].item(), exact, atol=0, rtol=1e-6)
    cs = a.cumsum(0)
    assert abs((cs[4] - cs[1]).item() - exact) > 0.1                   # the naive formula: digits lost
    with_inf = segsum(torch.tensor([-math.inf, -0.5, -0.25]))
    assert torch.isfinite(with_inf[2, 1]) and with_inf[2, 1].item() == -0.25
    assert with_inf[1, 0].item() == -0.5 and with_inf[2, 0].item() == -0.75
    cs = torch.tensor([-math.inf, -0.5, -0.25]).cumsum(0)
    assert torch.isnan(cs[2] - cs[1])


# ---------------------------------------------------------------------------------------------
# the forms agree, with each other and with the loop
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_recurrent_quadratic_and_chunked_forms_agree_with_the_loop(shape):
    b, l, h, p, g, n, Q = shape
    inp = make_inputs(b, l, h, p, g, n)
    dt = F.softplus(inp["dt"])
    args = (inp["x"], dt, inp["A"], inp["B"], inp["C"])
    expected, final = loop_reference(*args)
    y_rec, f_rec = ssd_recurrent(*args)
    y_chunk, f_chunk = ssd_chunked(*args, Q)
    torch.testing.assert_close(y_rec, expected)
    torch.testing.assert_close(f_rec, final)
    torch.testing.assert_close(ssd_quadratic(*args), expected)
    torch.testing.assert_close(y_chunk, expected)
    torch.testing.assert_close(f_chunk, final)


@pytest.mark.parametrize("method", SSD_METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_ssd_scan_with_every_option_matches_the_loop(shape, method):
    b, l, h, p, g, n, Q = shape
    inp = make_inputs(b, l, h, p, g, n, seed=1)
    kw = dict(dt_softplus=True, dt_limit=(0.05, 2.0))
    expected, final = loop_reference(**inp, **kw)
    y, f = ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, D=inp["D"], z=inp["z"],
                    dt_bias=inp["dt_bias"], initial_states=inp["initial_states"], return_final_states=True,
                    method=method, **kw)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(f, final)


def test_D_per_head_and_channel_and_no_softplus():
    inp = make_inputs(2, 9, 4, 3, 2, 5, seed=2)
    D = torch.randn(4, 3, dtype=torch.float64)
    dt = F.softplus(inp["dt"])                                         # positive: used as it is
    expected, _ = loop_reference(inp["x"], dt, inp["A"], inp["B"], inp["C"], D=D)
    for method in SSD_METHODS:
        torch.testing.assert_close(ssd_scan(inp["x"], dt, inp["A"], inp["B"], inp["C"], 4, D=D, method=method),
                                   expected)


def test_the_result_does_not_depend_on_the_chunk_size():
    inp = make_inputs(2, 37, 4, 3, 2, 5, seed=3)
    runs = [ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, D=inp["D"], dt_softplus=True,
                     initial_states=inp["initial_states"], return_final_states=True) for Q in (1, 2, 5, 16, 37, 64)]
    for y, f in runs[1:]:
        torch.testing.assert_close(y, runs[0][0])
        torch.testing.assert_close(f, runs[0][1])


def test_the_four_steps_of_the_chunked_algorithm_rebuild_the_matrix_form():
    """Diagonal blocks + (C-factor · passed state) = y; the passed states equal the loop's states
    at the chunk boundaries."""
    b, l, h, p, n, Q = 1, 12, 2, 3, 4, 4
    inp = make_inputs(b, l, h, p, h, n, seed=4)
    dt = F.softplus(inp["dt"])
    x, A, B, C = inp["x"], inp["A"], inp["B"], inp["C"]
    c = l // Q
    xbar = (x * dt[..., None]).reshape(b, c, Q, h, p)
    dA = (dt * A).reshape(b, c, Q, h).permute(0, 3, 1, 2)
    Bc, Cc = B.reshape(b, c, Q, h, n), C.reshape(b, c, Q, h, n)
    entering, final = pass_states(chunk_states(xbar, dA, Bc), dA)
    for k in range(1, c):                                              # state entering chunk k = loop state at k·Q
        _, state = ssd_recurrent(x[:, :k * Q], dt[:, :k * Q], A, B[:, :k * Q], C[:, :k * Q])
        torch.testing.assert_close(entering[:, k], state)
    y = chunk_diagonal_blocks(xbar, dA, Bc, Cc) + chunk_off_diagonal_blocks(Cc, dA, entering)
    torch.testing.assert_close(y.reshape(b, l, h, p), loop_reference(x, dt, A, B, C)[0])


def test_matrix_is_masked_attention_and_semiseparable():
    """M = (C Bᵀ) ∘ L ∘ Δ_s with L = exp(segsum(ΔA)) lower triangular, and every block below the
    diagonal has rank at most n (1-semiseparable structure times rank-n scores)."""
    b, l, h, p, n = 1, 16, 2, 2, 3
    inp = make_inputs(b, l, h, p, 1, n, seed=5)
    dt = F.softplus(inp["dt"])
    M = ssd_matrix(dt, inp["A"], inp["B"], inp["C"])
    assert M.shape == (b, h, l, l)
    assert torch.all(M.triu(1) == 0)
    scores = torch.einsum("btn,bsn->bts", inp["C"][:, :, 0], inp["B"][:, :, 0])
    cs = (dt * inp["A"]).cumsum(1)                                    # (b, l, h)
    for head in range(h):
        L = torch.exp(cs[0, :, head, None] - cs[0, None, :, head]).tril()
        torch.testing.assert_close(M[0, head], scores[0] * L * dt[0, None, :, head])
        for cut in (4, 8, 12):
            assert torch.linalg.matrix_rank(M[0, head, cut:, :cut]).item() <= n


def test_strong_decays_stay_accurate_and_finite():
    """Δ A as low as -1e4 at some steps (resets) and decays below float32's smallest normal: the fast
    float32 scan matches the float64 loop."""
    inp = make_inputs(1, 40, 2, 2, 1, 3, seed=6)
    dt = F.softplus(inp["dt"]).clone()
    dt[0, [0, 17, 30], 0] = 5e3
    A = torch.tensor([-2.0, -30.0], dtype=torch.float64)
    expected, final = loop_reference(inp["x"], dt, A, inp["B"], inp["C"])
    f32 = {k: v.float() for k, v in dict(x=inp["x"], dt=dt, A=A, B=inp["B"], C=inp["C"]).items()}
    for method in SSD_METHODS:
        y, f = ssd_scan(**f32, chunk_size=16, return_final_states=True, method=method)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, expected.float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f, final.float(), atol=1e-4, rtol=1e-4)


def test_outputs_are_causal():
    inp = {k: v.float() for k, v in make_inputs(1, 30, 2, 2, 1, 3, seed=7).items()}
    y = ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 8, dt_softplus=True)
    x2, B2 = inp["x"].clone(), inp["B"].clone()
    x2[:, 19:] += 1.0
    B2[:, 19:] *= -3.0
    y2 = ssd_scan(x2, inp["dt"], inp["A"], B2, inp["C"], 8, dt_softplus=True)
    assert torch.equal(y[:, :19], y2[:, :19])
    assert not torch.equal(y[:, 19:], y2[:, 19:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    inp = make_inputs(1, 33, 2, 4, 1, 8, dtype=torch.float32, seed=8)
    args = {k: inp[k].to(dtype) for k in ("x", "dt", "B", "C")}
    y, f = ssd_scan(args["x"], args["dt"], inp["A"], args["B"], args["C"], 8, D=inp["D"], dt_softplus=True,
                    return_final_states=True)
    assert y.dtype == dtype and f.dtype == torch.float32
    y32 = ssd_scan(*(args[k].float() for k in ("x", "dt")), inp["A"], args["B"].float(), args["C"].float(), 8,
                   D=inp["D"], dt_softplus=True)
    torch.testing.assert_close(y.float(), y32, atol=0.02, rtol=0.02)


# ---------------------------------------------------------------------------------------------
# transformers' mamba2_chunk_scan on the same inputs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_matches_transformers_mamba2_chunk_scan(shape):
    """transformers computes in float32 whatever the inputs, so the comparison is in float32."""
    b, l, h, p, g, n, Q = shape
    inp = {k: v.float() for k, v in make_inputs(b, l, h, p, g, n, seed=9).items()}
    kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], initial_states=inp["initial_states"], dt_softplus=True,
              dt_limit=(0.0, 3.0), return_final_states=True)
    y_ref, f_ref = mamba2_chunk_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, **kw)
    for method in SSD_METHODS:
        y, f = ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, method=method, **kw)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(f, f_ref, atol=2e-5, rtol=2e-5)


def test_matches_transformers_at_a_mamba2_layer_shape():
    """24 heads of 64, n = 128, one group, 300 steps in chunks of 128 (the shape of the benchmark,
    shorter)."""
    inp = {k: v.float() for k, v in make_inputs(1, 300, 24, 64, 1, 128, seed=10).items()}
    kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True)
    with torch.no_grad():
        y_ref = mamba2_chunk_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 128, **kw)
        y = ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 128, **kw)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _grads(fn, inp):
    leaves = {k: inp[k].clone().requires_grad_() for k in NAMES}
    y, f = fn(leaves)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(11), dtype=y.dtype)
    ((y * weights).sum() + f.pow(2).sum()).backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("method", SSD_METHODS)
def test_gradients_equal_those_of_the_loop(method):
    inp = make_inputs(2, 11, 4, 2, 2, 3, seed=12)
    kw = dict(dt_softplus=True, dt_limit=(0.0, 4.0))
    expected = _grads(lambda t: loop_reference(**t, **kw), inp)
    got = _grads(lambda t: ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 4, D=t["D"], z=t["z"],
                                    dt_bias=t["dt_bias"], initial_states=t["initial_states"],
                                    return_final_states=True, method=method, **kw), inp)
    for name in NAMES:
        torch.testing.assert_close(got[name], expected[name], msg=lambda m, name=name: f"d/d{name}: {m}")


def test_fast_scan_passes_gradcheck():
    inp = make_inputs(1, 5, 2, 2, 1, 2, seed=13)
    names = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")
    leaves = tuple(inp[k].clone().requires_grad_() for k in names)

    def fn(x, dt, A, B, C, D, dt_bias, h0):
        return ssd_scan(x, dt, A, B, C, 2, D=D, dt_bias=dt_bias, initial_states=h0, dt_softplus=True,
                        return_final_states=True)

    assert torch.autograd.gradcheck(fn, leaves)


# ---------------------------------------------------------------------------------------------
# bad arguments are named
# ---------------------------------------------------------------------------------------------

def _ok():
    return {k: v.float() for k, v in make_inputs(2, 6, 4, 3, 2, 5, seed=14).items()}


@pytest.mark.parametrize("name,value,error,match", [
    ("x", torch.zeros(2, 6, 12), ValueError, r"x must have shape \(batch, length, heads, head_dim\)"),
    ("x", torch.zeros(2, 0, 4, 3), ValueError, "length 0"),
    ("dt", torch.zeros(2, 6, 3), ValueError, r"dt must have shape \(batch, length, heads\) = \(2, 6, 4\), got shape \(2, 6, 3\)"),
    ("A", torch.zeros(4, 1), ValueError, r"A must have shape \(heads,\) = \(4,\)"),
    ("B", torch.zeros(2, 6, 3, 5), ValueError, "g dividing heads = 4"),
    ("C", torch.zeros(2, 6, 2, 4), ValueError, r"C must have shape .* = \(2, 6, 2, 5\), got shape \(2, 6, 2, 4\)"),
    ("D", torch.zeros(3), ValueError, r"D must have shape \(heads,\) = \(4,\) or \(heads, head_dim\) = \(4, 3\)"),
    ("z", torch.zeros(2, 6, 4, 2), ValueError, "z must have shape"),
    ("dt_bias", torch.zeros(2), ValueError, "dt_bias must have shape"),
    ("initial_states", torch.zeros(2, 4, 5, 3), ValueError, r"initial_states must have shape .* = \(2, 4, 3, 5\)"),
    ("x", torch.zeros(2, 6, 4, 3, dtype=torch.long), TypeError, "x must be a floating-point tensor, got dtype torch.int64"),
    ("B", torch.zeros(2, 6, 2, 5, dtype=torch.complex64), TypeError, "B must be a floating-point tensor, got dtype torch.complex64"),
    ("A", [1.0, 2.0, 3.0, 4.0], TypeError, "A must be a torch.Tensor, got list"),
    ("A", torch.zeros(4, dtype=torch.float64), TypeError, "float64 must be used for all arguments or none: A"),
    ("D", torch.zeros(4, device="meta"), ValueError, "D is on device meta but x is on cpu"),
])
def test_bad_arguments_raise_named_errors(name, value, error, match):
    inp = _ok()
    inp[name] = value
    with pytest.raises(error, match=match):
        ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 4, D=inp["D"], z=inp["z"],
                 dt_bias=inp["dt_bias"], initial_states=inp["initial_states"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(chunk_size=0), "chunk_size must be a positive integer, got 0"),
    (dict(chunk_size=True), "chunk_size must be a positive integer, got True"),
    (dict(chunk_size=4, dt_limit=(1.0, 0.5)), r"dt_limit must be a pair \(low, high\) with 0 <= low <= high"),
    (dict(chunk_size=4, dt_limit=(0.0,)), "dt_limit must be a pair"),
    (dict(chunk_size=4, method="triton"), r"method must be one of \('fast', 'chunked', 'recurrent'\)"),
])
def test_bad_options_raise_named_errors(kwargs, match):
    inp = _ok()
    with pytest.raises(ValueError, match=match):
        ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], **kwargs)


@pytest.mark.parametrize("name", ["x", "dt", "B", "C", "D", "initial_states"])
def test_a_nan_input_is_named(name):
    inp = _ok()
    inp[name] = inp[name].clone()
    inp[name].view(-1)[3] = math.nan
    with pytest.raises(ValueError, match=rf"^{name} contains 1 NaN or infinite value"):
        ssd_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 4, D=inp["D"],
                 initial_states=inp["initial_states"], dt_softplus=True)


def test_a_missing_required_argument_is_named():
    inp = _ok()
    with pytest.raises(TypeError, match="B is required, got None"):
        ssd_scan(inp["x"], inp["dt"], inp["A"], None, inp["C"], 4)
