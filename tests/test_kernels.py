"""Stage 6: the Triton selective-scan kernels, checked against ``selective_scan_ref`` + autograd.

Runs on a CPU through the Triton interpreter (conftest.py sets TRITON_INTERPRET=1 when there is
no CUDA device). The interpreter executes each program in Python, so shapes stay tiny; float64
lets the gradients be compared at gradcheck-level tolerances.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ssm_tutor.selective import selective_scan_ref
from ssm_tutor.kernels import launch_config, selective_scan_triton, traffic as T
from ssm_tutor.kernels.config import H100_SMS, MIN_STATES_PER_PROGRAM, WARP_SCHEDULERS_PER_SM, grid_size

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, l, n, *, groups=0, has_D=True, has_z=True, has_bias=True, dtype=torch.float64,
                requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(DEVICE, dtype)

    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    args = dict(
        u=rnd(b, d, l),                                   # (b, d, l)
        # (b, d, l) before softplus; without a bias the tests run without softplus, and Δ must be ≥ 0
        delta=rnd(b, d, l, scale=0.5, shift=-0.5) if has_bias else rnd(b, d, l, scale=0.5).abs(),
        A=-torch.exp(rnd(d, n, scale=0.5)),               # (d, n) negative, like -exp(A_log)
        B=rnd(*bc_shape), C=rnd(*bc_shape),               # (b, n, l) or (b, g, n, l)
        D=rnd(d) if has_D else None,                      # (d,)
        z=rnd(b, d, l) if has_z else None,                # (b, d, l)
        delta_bias=rnd(d, scale=0.3) if has_bias else None,
    )
    if requires_grad:
        for t in args.values():
            if t is not None:
                t.requires_grad_(True)
    return args


def grads_of(fn, args, softplus, with_last_state):
    """Run fn, contract y (and the last state) with fixed random weights, and return everything."""
    out = fn(**args, delta_softplus=softplus, return_last_state=with_last_state)
    y, last = out if with_last_state else (out, None)
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)).sum()
    if last is not None:
        loss = loss + (last * torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)).sum()
    inputs = [args[k] for k in ARG_NAMES if args[k] is not None]
    grads = torch.autograd.grad(loss, inputs)
    names = [k for k in ARG_NAMES if args[k] is not None]
    return y, last, dict(zip(names, grads))


CASES = {
    # name: (b, d, l, n, options, kernel tile overrides)
    "all-options-ragged-L": (2, 4, 37, 4, dict(), dict(chunk=16)),
    "n=1": (1, 4, 20, 1, dict(), dict(chunk=8)),
    "d=1": (2, 1, 21, 4, dict(), dict(chunk=8)),
    "plain-L-multiple-of-chunk": (1, 4, 32, 4, dict(has_D=False, has_z=False, has_bias=False), dict(chunk=16)),
    "grouped-g2": (1, 4, 19, 4, dict(groups=2), dict(chunk=8)),
    "ragged-d-and-n": (1, 5, 13, 3, dict(has_z=False), dict(chunk=8, block_d=2)),
    "grouped-g3-odd-channels": (1, 3, 11, 2, dict(groups=3, has_bias=False), dict(chunk=8)),
    # the state split: programs share a block of channels, each scanning a slice of the n states
    "state-split-2": (2, 4, 19, 4, dict(groups=2), dict(chunk=8, n_split=2)),
    "state-split-ragged-slices": (1, 3, 13, 5, dict(has_bias=False), dict(chunk=8, n_split=3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_reference_autograd_float64(case):
    b, d, l, n, options, tiles = CASES[case]
    softplus = options.get("has_bias", True)      # cover both softplus settings
    args_ref = make_inputs(b, d, l, n, **options)
    args_tri = {k: (v.detach().clone().requires_grad_(True) if v is not None else None) for k, v in args_ref.items()}
    y_ref, last_ref, g_ref = grads_of(selective_scan_ref, args_ref, softplus, True)
    y_tri, last_tri, g_tri = grads_of(lambda **kw: selective_scan_triton(**kw, **tiles), args_tri, softplus, True)
    torch.testing.assert_close(y_tri, y_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(last_tri, last_ref, atol=1e-12, rtol=1e-10)
    assert set(g_tri) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g_tri[name], g_ref[name], atol=1e-11, rtol=1e-9, msg=lambda m: f"grad of {name}: {m}")


def test_gradient_without_last_state_and_float32_tolerances():
    args_ref = make_inputs(1, 4, 24, 4, dtype=torch.float32)
    args_tri = {k: v.detach().clone().requires_grad_(True) for k, v in args_ref.items()}
    y_ref, _, g_ref = grads_of(selective_scan_ref, args_ref, True, False)
    y_tri, _, g_tri = grads_of(lambda **kw: selective_scan_triton(**kw, chunk=8), args_tri, True, False)
    assert y_tri.dtype == torch.float32
    torch.testing.assert_close(y_tri, y_ref, atol=1e-5, rtol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g_tri[name], g_ref[name], atol=1e-4, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")


def test_non_contiguous_inputs_like_a_transposed_mamba_activation():
    # In a Mamba block u, Δ and z come from a (b, l, d) activation, transposed to (b, d, l).
    base = make_inputs(1, 4, 12, 2, requires_grad=False)

    def strided(name, v):
        if name in ("u", "delta", "z"):
            return v.transpose(1, 2).contiguous().transpose(1, 2)          # (b, d, l) view of (b, l, d)
        if name == "D":
            return torch.stack([v, v], dim=1)[:, 0]                        # (d,) with stride 2
        return v.clone()

    args_ref = {k: strided(k, v).requires_grad_(True) for k, v in base.items()}
    args_tri = {k: strided(k, v).requires_grad_(True) for k, v in base.items()}
    assert not args_tri["u"].is_contiguous() and not args_tri["D"].is_contiguous()
    y_ref, _, g_ref = grads_of(selective_scan_ref, args_ref, True, False)
    y_tri, _, g_tri = grads_of(lambda **kw: selective_scan_triton(**kw, chunk=8), args_tri, True, False)
    torch.testing.assert_close(y_tri, y_ref, atol=1e-12, rtol=1e-10)
    for name in g_ref:
        torch.testing.assert_close(g_tri[name], g_ref[name], atol=1e-11, rtol=1e-9, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    args = make_inputs(1, 4, 20, 4, dtype=dtype, requires_grad=False)
    y_ref, last_ref = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
    y, last = selective_scan_triton(**args, delta_softplus=True, return_last_state=True, chunk=8)
    assert y.dtype == dtype and last.dtype == torch.float32
    # both accumulate in float32, so only the final rounding to 8/11 mantissa bits differs
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(last, last_ref, atol=1e-5, rtol=1e-5)


def test_inference_forward_without_grad_equals_training_forward():
    args = make_inputs(1, 2, 18, 2)
    with torch.no_grad():
        y_nograd = selective_scan_triton(**args, delta_softplus=True, chunk=8)
    y_grad = selective_scan_triton(**args, delta_softplus=True, chunk=8)
    assert not y_nograd.requires_grad and y_grad.requires_grad
    torch.testing.assert_close(y_nograd, y_grad.detach(), atol=0, rtol=0)


def test_stage5_dispatch_method_triton_calls_the_kernel():
    scan = pytest.importorskip("ssm_tutor.scan")
    args = make_inputs(1, 2, 10, 2, requires_grad=False)
    y_disp = scan.selective_scan(*[args[k] for k in ARG_NAMES], True, True, method="triton")
    y_kern = selective_scan_triton(*[args[k] for k in ARG_NAMES], True, True)
    torch.testing.assert_close(y_disp, y_kern, atol=0, rtol=0)


def test_bad_inputs_raise_errors_naming_the_argument():
    args = make_inputs(1, 2, 8, 2, requires_grad=False)
    bad = dict(args, B=args["B"][:, :1])
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_triton(**bad)
    nan = dict(args, delta=args["delta"].clone())
    nan["delta"][0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="delta contains 1 NaN"):
        selective_scan_triton(**nan)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        selective_scan_triton(**args, chunk=12)


def test_launch_config_keeps_blocks_inside_one_group_and_tiles_16_bytes_per_thread():
    cfg = launch_config(d=12, n=5, groups=2, batch=64, interpreted=False)     # 6 channels per group
    assert cfg.block_n == 8 and 6 % cfg.block_d == 0
    # on a GPU a chunk is 8 threads × 16 bytes of consecutive time steps, a warp 4 channels
    assert launch_config(d=2048, n=16, elem_size=2, interpreted=False).chunk == 64
    assert launch_config(d=2048, n=16, elem_size=4, interpreted=False).chunk == 32
    assert launch_config(d=3, n=16, interpreted=False).block_d == 4          # no wider than d needs
    for block_d in (4, 8, 16):
        assert launch_config(d=2048, n=16, batch=8, block_d=block_d, interpreted=False).num_warps == block_d // 4


def test_launch_config_fills_an_h100_at_batch_1():
    """Mamba-130M's inner width d = 1536 at batch 1: 96 programs (384 warps) with one program per
    16 channels, for 132 SMs and 528 warp schedulers; the state split makes it 192 programs."""
    programs = lambda b, d, cfg: math.prod(grid_size(b, d, cfg))
    cfg = launch_config(d=1536, n=16, batch=1, elem_size=2, interpreted=False)
    assert cfg.n_split == 2 and cfg.block_n == 8 and cfg.states_per_program(16) == 8
    assert programs(1, 1536, cfg) == 192 >= H100_SMS
    assert programs(1, 1536, cfg) * cfg.num_warps == 768 >= WARP_SCHEDULERS_PER_SM * H100_SMS
    unsplit = launch_config(d=1536, n=16, batch=1, elem_size=2, n_split=1, interpreted=False)
    assert programs(1, 1536, unsplit) == 96 < H100_SMS                     # what the grid was before
    # a large batch fills the GPU by itself: no split, no partial outputs to add
    assert launch_config(d=2048, n=16, batch=8, elem_size=2, interpreted=False).n_split == 1
    # never fewer than MIN_STATES_PER_PROGRAM states per program, and a smaller GPU needs less
    assert launch_config(d=64, n=16, batch=1, interpreted=False).n_split == 16 // MIN_STATES_PER_PROGRAM
    assert launch_config(d=1536, n=16, batch=1, sm_count=16, interpreted=False).n_split == 1
    with pytest.raises(ValueError, match="n_split must be an integer from 1 to n = 16"):
        launch_config(d=8, n=16, n_split=17)


def test_the_kernel_launches_the_grid_launch_config_chooses(monkeypatch):
    """Wire-up: the wrapper passes the batch and the GPU's SM count to launch_config and launches
    its grid. Here a pretend 2-SM GPU asks for a 4-way state split of a single block of channels."""
    import ssm_tutor.kernels.selective_scan as wrapper

    real_config, real_kernel = wrapper.launch_config, wrapper.selective_scan_fwd_kernel
    monkeypatch.setattr(wrapper, "launch_config", lambda *a, **kw: real_config(
        *a, **{**kw, "interpreted": False, "sm_count": 2, "chunk": 8}))
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return real_kernel[grid]

    monkeypatch.setattr(wrapper, "selective_scan_fwd_kernel", Recorder())
    args = make_inputs(1, 8, 11, 16, requires_grad=False)
    y = selective_scan_triton(**args, delta_softplus=True)
    assert grids == [(1, 1, 4)]                    # batch 1 × one block of 8 channels × 4 slices of n
    torch.testing.assert_close(y, selective_scan_ref(**args, delta_softplus=True), atol=1e-12, rtol=1e-10)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter switch only matters on a CPU")
def test_without_interpreter_cpu_tensors_raise_a_clear_error_and_import_is_light():
    code = textwrap.dedent("""
        import sys
        import torch
        from ssm_tutor.kernels import launch_config, traffic
        print("light import:", "triton" not in sys.modules)      # the package imports Triton lazily
        from ssm_tutor.kernels import selective_scan_triton
        u = torch.randn(1, 2, 4)
        try:
            selective_scan_triton(u, u.clone(), -torch.ones(2, 3), torch.randn(1, 3, 4), torch.randn(1, 3, 4))
        except RuntimeError as err:
            print("ERROR:", err)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "light import: True" in out.stdout, out.stdout + out.stderr
    assert "ERROR:" in out.stdout, out.stderr
    assert "TRITON_INTERPRET" in out.stdout and "before" in out.stdout


# ---- the memory-traffic model -------------------------------------------------------------

def test_fused_traffic_is_inputs_once_and_output_once():
    b, d, l, n = 2, 3, 5, 4
    tr = T.traffic("fused", b, d, l, n, "fp32")
    # reads: u, Δ, z (3·30) and B, C (2·40) elements, A (12) D (3) delta_bias (3); 4 bytes each
    assert tr.read == (3 * 30 + 2 * 40 + 12 + 3 + 3) * 4 == 752
    # writes: y (30) and the last state (24)
    assert tr.written == (30 + 24) * 4 == 216
    bf16 = T.traffic("fused", b, d, l, n, torch.bfloat16)
    assert bf16.read == (3 * 30 + 2 * 40) * 2 + (12 + 3 + 3) * 4
    assert bf16.written == 30 * 2 + 24 * 4


def test_fused_training_traffic_counts_chunk_states():
    b, d, l, n = 1, 2, 10, 3
    fwd = T.traffic("fused", b, d, l, n, "fp32", has_D=False, has_z=False, has_bias=False, chunk=4)
    train = T.traffic("fused", b, d, l, n, "fp32", has_D=False, has_z=False, has_bias=False, chunk=4,
                      backward=True)
    states = b * d * 3 * n * 4          # ceil(10 / 4) = 3 checkpoints of (b, d, n)
    passes = {label: (r, w) for label, r, w, _ in train.passes}
    assert passes["write chunk states (b, d, l/T, n)"] == (0, states)
    assert train.total > 2 * fwd.total


def test_fused_traffic_with_a_state_split_adds_the_partial_outputs():
    b, d, l, n = 1, 8, 64, 16
    one = T.traffic("fused", b, d, l, n, "bf16", n_split=1)
    four = T.traffic("fused", b, d, l, n, "bf16", n_split=4)
    E = b * d * l
    # 4 float32 partial y written and read back, then y (bf16) written by the sum instead of the kernel
    assert four.total - one.total == 2 * 4 * E * 4
    assert four.launches == one.launches + 2                 # the sum and the cast


@pytest.fixture
def no_finite_check(monkeypatch):
    """Stage 4 and 5 check their inputs for NaN first (a pass per input); the model counts the scan."""
    import ssm_tutor.scan as scan
    import ssm_tutor.selective as selective

    check = selective.validate_scan_args
    quiet = lambda *a, **kw: check(*a, **{**kw, "check_finite": False})
    monkeypatch.setattr(selective, "validate_scan_args", quiet)
    monkeypatch.setattr(scan, "validate_scan_args", quiet)


@pytest.mark.parametrize("implementation", ["reference", "parallel"])
@pytest.mark.parametrize("options", [dict(), dict(has_D=False, has_z=False, has_bias=False, softplus=False),
                                     dict(groups=2, dtype="bf16")], ids=["all-options", "bare", "bf16-grouped"])
def test_pytorch_traffic_model_is_the_ops_the_code_runs(implementation, options, no_finite_check):
    """With no cache (l2_bytes=0), the model's passes are exactly the ops that stage 4's reference and
    stage 5's Hillis–Steele scan dispatch: bytes read and written, and one launch per op. (bf16: the
    casts to float32; A, D and delta_bias are float32, as in a Mamba layer.)"""
    from ssm_tutor.scan import selective_scan
    b, d, l, n = 2, 4, 7, 4
    options = dict(options)
    softplus, dtype = options.pop("softplus", True), options.pop("dtype", "fp32")
    x = make_inputs(b, d, l, n, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                    requires_grad=False, **options)
    x = {k: (v.float() if k in ("A", "D", "delta_bias") else v) for k, v in x.items() if v is not None}
    fn = selective_scan_ref if implementation == "reference" else (
        lambda **kw: selective_scan(**kw, method="hillis_steele"))
    measured = T.measure_op_traffic(fn, **x, delta_softplus=softplus)
    model = T.traffic(implementation, b, d, l, n, dtype, l2_bytes=0, softplus=softplus, **options)
    assert (model.read, model.written, model.launches) == (measured.read, measured.written, measured.launches)


def test_step_tensors_that_fit_in_l2_cost_no_hbm_traffic():
    b, d, l, n = 8, 2048, 2048, 16
    in_l2 = T.traffic("reference", b, d, l, n, "fp32")                    # H100: 3 × 1 MB ≤ 50 MB
    no_l2 = T.traffic("reference", b, d, l, n, "fp32", l2_bytes=0)
    step = b * d * n * 4
    # per step, on chip: h_{t-1} read, Ā_t h written and read back, h_t written and read back,
    # h · C_t written and read back by the sum: 4 reads and 3 writes of a (b, d, n) step tensor
    assert no_l2.total - in_l2.total == 7 * l * step
    assert T.step_tensors_in_l2(b, d, n, 4, 50e6) and not T.step_tensors_in_l2(64, 8192, 16, 4, 50e6)
    huge = dict(b=64, d=8192, l=64, n=16)                                 # 3 × 32 MB > 50 MB: no help
    assert T.traffic("reference", **huge).total == T.traffic("reference", **huge, l2_bytes=0).total
    seq = T.traffic("sequential", b, d, l, n, "fp32")
    assert seq.total < in_l2.total / 5     # a loop in L2 that builds no (b, d, l, n) tensor moves few bytes ...
    assert 6 * l < seq.launches < 6 * l + 10                              # ... in 6 launches per step


def test_traffic_ratio_grows_with_state_size_and_time_uses_bandwidth():
    small = T.compare(8, 2048, 2048, 4, "fp32")
    big = T.compare(8, 2048, 2048, 16, "fp32")
    ratio = lambda r: r["reference"][0] / r["fused"][0]
    assert ratio(big) > 2 * ratio(small) > 6       # the (b, d, l, n) passes grow with n, the fused kernel's bytes do not
    assert big["sequential"][0] < big["reference"][0] < big["parallel"][0]
    tr = T.traffic("fused", 8, 2048, 2048, 16, "bf16")
    assert tr.time("H100") == pytest.approx(tr.total / 3.35e12)
    assert tr.time("A100") == pytest.approx(tr.total / 2.0e12)
    with pytest.raises(ValueError, match="gpu must be one of"):
        tr.time("V100")
    with pytest.raises(ValueError, match="implementation must be one of"):
        T.traffic("cuda", 1, 1, 1, 1)


# ---- what bounds the time ------------------------------------------------------------------

def test_special_function_count_follows_the_kernels_code():
    from ssm_tutor.kernels.roofline import special_ops
    # forward: n exp for Ā, softplus (exp, log), SiLU (exp, reciprocal) per (b, d, l) position
    assert special_ops(1, 1, 1, 16) == 16 + 2 + 2
    assert special_ops(2, 3, 5, 16, has_z=False, softplus=False) == 2 * 3 * 5 * 16
    # backward adds Ā_t and Ā_{t+1} (2n), two softplus (4), softplus' (2), σ(z) (2)
    assert special_ops(1, 1, 1, 16, backward=True) == 20 + 32 + 8


def test_roofline_ceilings_at_the_benchmark_shape():
    from ssm_tutor.kernels.gpus import GPUS
    from ssm_tutor.kernels.roofline import ceilings
    h100 = GPUS["H100"]
    assert h100.special_rate == pytest.approx(132 * 16 * 1.98e9)
    c = {impl: ceilings(impl, 8, 2048, 2048, 16, "bf16") for impl in T.IMPLEMENTATIONS}
    # the fused kernel asks more of the exponential units than of HBM: bytes alone understate its time
    assert c["fused"].special > 1.5 * c["fused"].memory and c["fused"].bound == "special functions"
    assert c["fused"].memory == pytest.approx(T.traffic("fused", 8, 2048, 2048, 16, "bf16").total / 3.35e12)
    # the reference's 4 ops per step cost more than its bytes (at the assumed 5 µs per launch)
    assert c["reference"].bound == "launches" and c["reference"].launch == pytest.approx(8210 * 5e-6)
    assert c["parallel"].bound == "memory"
    assert c["fused"].time < c["reference"].time < c["parallel"].time
