"""Time the stage-6 Triton selective scan on a CUDA GPU against its peers, in one process.

    python benchmarks/bench_triton_gpu.py                 # batch 8, d 2048, n 16, L 512/2048/8192, bf16+fp32
    python benchmarks/bench_triton_gpu.py --lengths 2048 --dtypes bf16 --chunk 64 --block-d 4
    python benchmarks/bench_triton_gpu.py --cpu-check     # no GPU: tiny shapes under the Triton interpreter
    python benchmarks/bench_triton_gpu.py --compile-check 90   # no GPU: compile for sm_90, print registers

Peers: ``selective_scan_ref`` (stage 4, materialises (b, d, l, n)) and, when installed, the official
CUDA kernel ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``. Repetitions are interleaved
(A, B, C, A, B, C, ...) and the median is reported. For every run it prints the effective bandwidth,
i.e. the traffic model's *minimum* bytes (what the fused kernel must move, ``ssm_tutor.kernels.traffic``)
divided by the measured time, and that as a percentage of the GPU's peak bandwidth; and the roofline
model's predicted lower bound (``ssm_tutor.kernels.roofline``: the largest of the memory,
special-function, shuffle and launch ceilings), so that a GPU run tests the model.
Before timing anything on a GPU it checks the compiled kernel's values and gradients against
``selective_scan_ref`` on the device, with the state in one program and split over two (the
compiled reverse scan of the backward is not covered by the CPU tests, which run the interpreter).
Goals (stage 6): forward within 1.5x of the official kernel, and >= 60 % of the bound.

    python benchmarks/bench_triton_gpu.py --batch 1 --dim 1536 --n-split 1    # the state split
    python benchmarks/bench_triton_gpu.py --batch 1 --dim 1536 --n-split 2    # ... measured both ways
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

DTYPES = ("bf16", "fp16", "fp32")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=2048, help="channels d")
    p.add_argument("--dstate", type=int, default=16, help="state size n")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=DTYPES)
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per implementation")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--ref-max-length", type=int, default=2048,
                   help="skip selective_scan_ref above this L (it materialises (b, d, l, n) tensors)")
    p.add_argument("--block-d", type=int, default=None, help="override the kernel's BLOCK_D (power of 2)")
    p.add_argument("--chunk", type=int, default=None, help="override the kernel's CHUNK (power of 2)")
    p.add_argument("--num-warps", type=int, default=None)
    p.add_argument("--n-split", type=int, default=None,
                   help="override how many programs share the state indices of a block of channels")
    p.add_argument("--gpu", choices=["H100", "A100", "auto"], default="auto",
                   help="whose peak bandwidth the bound uses (auto: from the device name, else H100)")
    p.add_argument("--cpu-check", "--dry-run", dest="cpu_check", action="store_true",
                   help="no GPU needed: run every code path once on tiny shapes under the Triton interpreter, "
                        "check the values, and print the traffic figures of the requested shapes")
    p.add_argument("--compile-check", type=int, metavar="SM", default=None,
                   help="no GPU needed: compile the forward and backward kernels for CUDA compute capability SM "
                        "(e.g. 90 for H100, 80 for A100) at the benchmark's tile sizes and dtypes, and print "
                        "ptxas's register and spill counts")
    args = p.parse_args(argv)
    for name in ("batch", "dim", "dstate", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n_split is not None and not 1 <= args.n_split <= args.dstate:
        p.error(f"--n-split must be between 1 and --dstate = {args.dstate}, got {args.n_split}")
    if any(L < 1 for L in args.lengths):
        p.error(f"--lengths must be positive, got {args.lengths}")
    for name in ("block_d", "chunk"):
        v = getattr(args, name)
        if v is not None and (v < 1 or v & (v - 1)):
            p.error(f"--{name.replace('_', '-')} must be a power of two, got {v}")
    return args


def torch_dtype(name):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def make_inputs(b, d, l, n, dtype, device, requires_grad):
    """Mamba-like inputs: A = -exp(A_log) as float32, Δ before softplus, D and delta_bias float32."""
    import torch
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dt)

    t = dict(u=rnd(b, d, l), delta=rnd(b, d, l, scale=0.5, shift=-2.0),
             A=-torch.exp(rnd(d, n, dt=torch.float32, scale=0.5)),
             B=rnd(b, n, l), C=rnd(b, n, l), D=rnd(d, dt=torch.float32), z=rnd(b, d, l),
             delta_bias=rnd(d, dt=torch.float32, scale=0.1))
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def implementations(args):
    """name -> callable(**inputs) with the standard signature (softplus on)."""
    from ssm_tutor.kernels import selective_scan_triton
    from ssm_tutor.selective import selective_scan_ref
    tiles = dict(block_d=args.block_d, chunk=args.chunk, num_warps=args.num_warps, n_split=args.n_split)
    impls = {"triton": lambda **kw: selective_scan_triton(**kw, delta_softplus=True, check_finite=False, **tiles),
             "reference": lambda **kw: selective_scan_ref(**kw, delta_softplus=True)}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        impls["mamba_ssm"] = lambda **kw: selective_scan_fn(**kw, delta_softplus=True)
    except Exception as err:  # not installed, or built for another CUDA
        print(f"mamba_ssm: not available ({type(err).__name__}: {err}); comparing without it")
    return impls


def timer(device):
    """Return a function timing one call in seconds: CUDA events on a GPU, perf_counter on a CPU."""
    import torch
    if device == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def bench_shape(args, impls, b, d, l, n, dtype_name, device, backward, reps, warmup):
    """Median seconds per implementation (interleaved), or an error string."""
    import torch
    dtype = torch_dtype(dtype_name)
    x = make_inputs(b, d, l, n, dtype, device, requires_grad=backward)
    tick = timer(device)
    todo = {k: f for k, f in impls.items() if not (k == "reference" and l > args.ref_max_length)}
    results = {k: "skipped (L > --ref-max-length)" for k in impls if k not in todo}

    def call(fn):
        if backward:
            y = fn(**x)
            grads = torch.autograd.grad(y, list(x.values()), torch.ones_like(y), allow_unused=True)
            return grads
        with torch.no_grad():
            return fn(**x)

    times = {k: [] for k in todo}
    for k in list(todo):
        try:
            for _ in range(warmup):
                call(todo[k])
        except Exception as err:   # e.g. the reference running out of memory at long L
            results[k] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            del todo[k], times[k]
            if device == "cuda":
                torch.cuda.empty_cache()
    for _ in range(reps):                                  # interleaved repetitions
        for k, fn in todo.items():
            times[k].append(tick(lambda: call(fn)))
    for k, ts in times.items():
        results[k] = statistics.median(ts)
    return results


#: the traffic/roofline model's name for each timed implementation (the official kernel is fused too)
MODEL_OF = {"triton": "fused", "mamba_ssm": "fused", "reference": "reference"}


def report(args, impls, device, gpu, shapes, reps, warmup):
    from ssm_tutor.kernels import roofline
    from ssm_tutor.kernels import traffic as T
    modes = [False] if args.no_backward else [False, True]
    rows = []
    for backward in modes:
        what = "forward+backward" if backward else "forward"
        dims = ", ".join(sorted({f"batch {b} d {d} n {n}" for b, d, _, n, _ in shapes}))
        print(f"\n== {what}: {dims}; "
              f"bound = traffic model's minimum bytes at {gpu}'s {T.GPU_BANDWIDTH[gpu] / 1e12:.2f} TB/s ==")
        print(f"{'L':>6} {'dtype':>5} {'impl':>10} {'ms':>10} {'eff. GB/s':>10} {'% bound':>8} {'vs mamba_ssm':>13} "
              f"{'model >= ms (bound)':>30}")
        for (b, d, l, n, dt) in shapes:
            res = bench_shape(args, impls, b, d, l, n, dt, device, backward, reps, warmup)
            tiles = dict(chunk=args.chunk, n_split=args.n_split)
            minimum = T.traffic("fused", b, d, l, n, dt, backward=backward, gpu=gpu, **tiles)
            official = res.get("mamba_ssm")
            for k, v in res.items():
                if isinstance(v, str):
                    print(f"{l:>6} {dt:>5} {k:>10} {v}")
                    continue
                gbs = minimum.total / v / 1e9
                pct = 100 * minimum.total / v / T.GPU_BANDWIDTH[gpu]
                rel = f"{v / official:.2f}x" if isinstance(official, float) else "-"
                model = roofline.ceilings(MODEL_OF[k], b, d, l, n, dt, gpu=gpu, backward=backward,
                                          **(tiles if k == "triton" else {}))
                print(f"{l:>6} {dt:>5} {k:>10} {v * 1e3:>10.3f} {gbs:>10.1f} {pct:>7.1f}% {rel:>13} "
                      f"{model.time * 1e3:>10.3f} ({model.bound})")
                rows.append((what, l, dt, k, v, pct, v / official if isinstance(official, float) else None))
    return rows


def summarize_goals(rows):
    print("\n== stage-6 goals (forward) ==")
    for what, l, dt, k, t, pct, rel in rows:
        if what != "forward" or k != "triton":
            continue
        parts = [f"L={l} {dt}: {pct:.0f}% of the bound ({'met' if pct >= 60 else 'NOT met'}: >= 60%)"]
        if rel is not None:
            parts.append(f"{rel:.2f}x the official kernel's time ({'met' if rel <= 1.5 else 'NOT met'}: <= 1.5x)")
        print("  " + "; ".join(parts))


def print_traffic(shapes, gpu, args=None):
    from ssm_tutor.kernels import roofline
    from ssm_tutor.kernels import traffic as T
    print(f"\n== traffic model (forward; implied time at {gpu} peak bandwidth) ==")
    for (b, d, l, n, dt) in shapes:
        r = T.compare(b, d, l, n, dt, gpu=gpu)
        cells = "  ".join(f"{k} {v[0] / 1e6:>9.1f} MB {v[1] * 1e3:>8.3f} ms" for k, v in r.items())
        print(f"  b={b} d={d} L={l:>5} n={n} {dt:>4}: {cells}  (reference/fused {r['reference'][0] / r['fused'][0]:.0f}x)")
    print(f"\n== roofline model (forward; the largest ceiling is a lower bound on the time, {gpu}) ==")
    for (b, d, l, n, dt) in shapes:
        print(f"  b={b} d={d} L={l} n={n} {dt}:")
        for impl in T.IMPLEMENTATIONS:
            print("    " + roofline.ceilings(impl, b, d, l, n, dt, gpu=gpu).row())


def check_on_device(device, shape=(2, 8, 77, 16), n_splits=(1, 2)):
    """Values and gradients of the kernel against selective_scan_ref on ``device`` (float32, small
    shapes, every option on, a length that is not a multiple of the chunk), with the state in one
    program and split. Returns the names of what differs (empty when everything agrees)."""
    import torch
    from ssm_tutor.kernels import selective_scan_triton
    from ssm_tutor.selective import selective_scan_ref
    x = make_inputs(*shape, torch.float32, device, requires_grad=True)
    y_ref = selective_scan_ref(**x, delta_softplus=True)
    w = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    g_ref = torch.autograd.grad((y_ref * w).sum(), list(x.values()))
    failures = []
    for n_split in n_splits:
        y = selective_scan_triton(**x, delta_softplus=True, n_split=n_split)
        g = torch.autograd.grad((y * w).sum(), list(x.values()))
        for name, a, r in [("y", y, y_ref)] + list(zip([f"grad {k}" for k in x], g, g_ref)):
            if not torch.allclose(a, r, atol=1e-3, rtol=1e-3):
                failures.append(f"{name} (n_split={n_split}): max |difference| {(a - r).abs().max().item():.3g}")
    return failures


def cpu_check(args):
    """Exercise every code path on tiny shapes under the interpreter; check values; print figures."""
    os.environ.setdefault("TRITON_INTERPRET", "1")        # before ssm_tutor.kernels defines its kernels
    gpu = "H100" if args.gpu == "auto" else args.gpu
    print_traffic([(args.batch, args.dim, l, args.dstate, dt) for l in args.lengths for dt in args.dtypes], gpu)
    failures = check_on_device("cpu", shape=(1, 4, 21, 4))     # the interpreter is slow: tiny shapes
    if failures:
        print("\ncpu-check: the kernel DIFFERS from selective_scan_ref: " + "; ".join(failures))
        return 1
    print("\ncpu-check: Triton kernel (interpreter) matches selective_scan_ref, values and gradients, "
          "n_split 1 and 2")
    impls = implementations(args)
    shapes = [(1, 4, 24, 4, dt) for dt in args.dtypes]
    report(args, impls, "cpu", gpu, shapes, reps=1, warmup=0)
    print("\ncpu-check done: interpreter timings above are meaningless; run on a CUDA GPU for real figures.")
    return 0


def compile_check(args):
    """Compile both kernels for a CUDA architecture on a machine without a GPU (Triton + ptxas)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile-check: unset TRITON_INTERPRET (the interpreter replaces compilation)")
        return 2
    import subprocess
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from ssm_tutor.kernels.config import launch_config
    from ssm_tutor.kernels.selective_scan_bwd import selective_scan_bwd_kernel
    from ssm_tutor.kernels.selective_scan_fwd import selective_scan_fwd_kernel
    from ssm_tutor.kernels.traffic import element_size

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = GPUTarget("cuda", args.compile_check, 32)
    ok = True
    for dt in args.dtypes:
        io = dt
        cfg = launch_config(args.dim, args.dstate, batch=args.batch, elem_size=element_size(dt),
                            block_d=args.block_d, chunk=args.chunk, num_warps=args.num_warps,
                            n_split=args.n_split, interpreted=False)
        flags = dict(BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CHUNK=cfg.chunk, HAS_D=True, HAS_Z=True,
                     HAS_BIAS=True, SOFTPLUS=True)
        split = dict(SPLIT=cfg.n_split > 1)
        for kernel, extra in ((selective_scan_fwd_kernel, dict(SAVE_STATES=True, **split)),
                              (selective_scan_bwd_kernel, dict(HAS_DLAST=False, **split))):
            consts = dict(flags, **extra)
            sig, attrs = {}, {}
            for i, name in enumerate(kernel.arg_names):
                if name in consts:
                    sig[name] = "constexpr"
                elif name.endswith("_ptr"):
                    # io tensors in the input dtype; A, D, bias, states and gradient buffers in fp32
                    fp32 = name.split("_")[0] in ("A", "D", "bias", "states", "last", "dlast", "dB", "dC") \
                        or name.endswith("part_ptr")
                    sig[name] = "*fp32" if fp32 else f"*{io}"
                    attrs[(i,)] = [["tt.divisibility", 16]]
                else:
                    sig[name] = "i32"
                    if name in ("dim", "length", "dstate"):
                        attrs[(i,)] = [["tt.divisibility", 16]]
            src = ASTSource(kernel, sig, {(kernel.arg_names.index(k),): v for k, v in consts.items()}, attrs=attrs)
            compiled = triton.compile(src, target=target, options={"num_warps": cfg.num_warps})
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(compiled.asm["ptx"])
            arch = f"sm_{args.compile_check}" + ("a" if args.compile_check >= 90 else "")
            res = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                                 capture_output=True, text=True)
            os.unlink(f.name)
            info = " ".join(line.split(":", 1)[-1].strip() for line in res.stderr.splitlines()
                            if "registers" in line or "spill" in line)
            ok &= res.returncode == 0
            print(f"{kernel.fn.__name__:<28} {dt:>4} BLOCK_D={cfg.block_d:<3} BLOCK_N={cfg.block_n:<3} "
                  f"n_split={cfg.n_split} CHUNK={cfg.chunk:<4} "
                  f"warps={cfg.num_warps}: {'compiled' if res.returncode == 0 else 'ptxas FAILED'}; {info}")
    return 0 if ok else 1


def main(argv=None):
    args = parse_args(argv)
    if args.cpu_check:
        return cpu_check(args)
    if args.compile_check is not None:
        return compile_check(args)
    import torch
    if not torch.cuda.is_available():
        print("skipped: no CUDA device. This benchmark times compiled Triton kernels on a GPU; "
              "use --cpu-check to exercise it on a CPU under the Triton interpreter.")
        return 0
    name = torch.cuda.get_device_name()
    gpu = args.gpu if args.gpu != "auto" else ("A100" if "A100" in name else "H100")
    print(f"device: {name}; torch {torch.__version__}")
    failures = check_on_device("cuda")
    if failures:
        print("the compiled kernel DIFFERS from selective_scan_ref on this GPU; not timing it: " + "; ".join(failures))
        return 1
    print("compiled kernel matches selective_scan_ref on this GPU: values and gradients, n_split 1 and 2")
    impls = implementations(args)
    shapes = [(args.batch, args.dim, l, args.dstate, dt) for l in args.lengths for dt in args.dtypes]
    print_traffic(shapes, gpu)
    rows = report(args, impls, "cuda", gpu, shapes, reps=args.reps, warmup=args.warmup)
    summarize_goals(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
