"""Benchmark: ``ssm_tutor.scan.selective_scan`` (default method) against transformers' ``mamba_selective_scan``.

Both run in this one process on the same inputs, with interleaved repetitions (ours, theirs,
theirs, ours, ...) so that a change in the machine's load hits both; the figures are medians.
Shape of one layer of Mamba-130M (hidden 768, so the scan's width is 2 · 768): batch 1, d = 1536, n = 16, L = 2048, float32, with D,
z, delta_bias and softplus. The outputs must agree to 1e-4 before anything is timed.

Peak memory: every implementation is run once more in a fresh subprocess that imports only
it, builds the inputs, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, so the
imports' own peaks are forgotten), makes one call and reads the peak resident set size
(``VmHWM``; ``ru_maxrss`` where /proc is missing). The rise is how much memory that call needed
at its worst. This sees every allocation torch makes (tracemalloc would not), but it is a
whole-process figure: allocator caching and page granularity blur it by a few MiB.

``--busy``: a second PyTorch process multiplies matrices on its own threads (as many as torch
uses here, or ``--busy-threads``) for the whole measurement, as a learner's second notebook kernel
would (``benchmarks/busy.py``); the printout says how much CPU it took.

Run:  python benchmarks/bench_scan.py [--repeats 5] [--threads N] [--length 2048] [--busy]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def make_inputs(batch=1, d=1536, n=16, length=2048, seed=0):
    """Inputs as a Mamba layer makes them: A = -exp(A_log) with A_log = log(1..n) (S4D-real),
    Δ's bias the inverse softplus of a step in [0.001, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d, length, generator=gen)                            # (b, d, l)
    delta = torch.randn(batch, d, length, generator=gen)                        # (b, d, l)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)               # (d, n)
    B = torch.randn(batch, n, length, generator=gen)                            # (b, n, l)
    C = torch.randn(batch, n, length, generator=gen)                            # (b, n, l)
    D = torch.ones(d)                                                           # (d,)
    z = torch.randn(batch, d, length, generator=gen)                            # (b, d, l)
    dt = torch.exp(torch.rand(d, generator=gen) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(0.001)))
                   + torch.log(torch.tensor(0.001)))
    delta_bias = dt + torch.log(-torch.expm1(-dt))                              # inverse softplus: (d,)
    return (u, delta, A, B, C), dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=True)


def implementations(only: str | None = None):
    impls = {}
    if only in (None, "ssm_tutor"):
        from ssm_tutor.scan import selective_scan
        impls["ssm_tutor"] = selective_scan
    if only in (None, "transformers"):
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
        impls["transformers"] = mamba_selective_scan
    return impls


def _peak_rss_kib() -> int:
    """The process's peak resident set size so far (VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_child(name: str, length: int, threads: int | None) -> None:
    """Subprocess body: report how far one call raises the peak RSS (KiB on Linux)."""
    if threads:
        torch.set_num_threads(threads)
    fn = implementations(name)[name]
    args, kwargs = make_inputs(length=length)
    reset = _reset_peak_rss()              # forget the peaks of the imports; now peak == current RSS
    before = _peak_rss_kib()
    with torch.no_grad():
        y = fn(*args, **kwargs)
    after = _peak_rss_kib()
    print(json.dumps({"name": name, "before_kib": before, "after_kib": after, "reset": reset,
                      "finite": bool(torch.isfinite(y).all())}))


def peak_memory(name: str, length: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--peak-child", name, "--length", str(length)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--busy", action="store_true", help="measure while a competing process multiplies matrices")
    p.add_argument("--busy-threads", type=int, default=None, help="the competing process's threads (default: ours)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.peak_child:
        _peak_child(opts.peak_child, opts.length, opts.threads)
        return
    if opts.threads:
        torch.set_num_threads(opts.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    impls = implementations()
    args, kwargs = make_inputs(length=opts.length)
    u = args[0]
    print(f"selective scan, batch {u.shape[0]}, d {u.shape[1]}, n {args[2].shape[1]}, L {u.shape[2]}, "
          f"float32, D + z + delta_bias + softplus; torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    from busy import competitor

    with torch.no_grad():
        outs = {name: fn(*args, **kwargs) for name, fn in impls.items()}       # also the warm-up
        err = (outs["ssm_tutor"] - outs["transformers"]).abs().max().item()
        scale = outs["transformers"].abs().max().item()
        if not torch.allclose(outs["ssm_tutor"], outs["transformers"], atol=1e-4, rtol=1e-4):
            raise SystemExit(f"outputs differ: max |error| {err:.3g} (output scale {scale:.3g})")
        print(f"outputs agree: max |error| {err:.2e} (atol 1e-4, rtol 1e-4; largest |y| {scale:.3g})")

        times = {name: [] for name in impls}
        order = list(impls)
        load = competitor(opts.busy_threads) if opts.busy else contextlib.nullcontext(lambda: "no competing process")
        with load as report:
            for r in range(opts.repeats):
                for name in (order if r % 2 == 0 else order[::-1]):             # interleave: ABBA...
                    t = time.perf_counter()
                    impls[name](*args, **kwargs)
                    times[name].append(time.perf_counter() - t)
        print(report())

    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"  {name:13s} median {med[name] * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}, "
              f"{len(ts)} runs)")
    ratio = med["transformers"] / med["ssm_tutor"]
    paired = statistics.median(t / o for t, o in zip(times["transformers"], times["ssm_tutor"]))
    print(f"speed-up of ssm_tutor over transformers{' (busy)' if opts.busy else ''}: {ratio:.2f}x (ratio of medians); "
          f"{paired:.2f}x (median of paired ratios)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if opts.no_memory:
        return

    print("peak memory, one call in a fresh subprocess (rise of the peak RSS over the inputs' baseline):")
    for name in impls:
        m = peak_memory(name, opts.length, opts.threads)
        print(f"  {name:13s} +{(m['after_kib'] - m['before_kib']) / 1024:8.1f} MiB "
              f"(baseline {m['before_kib'] / 1024:.0f} MiB{'' if m['reset'] else ', peak not resettable: upper bound'}, "
              f"output finite: {m['finite']})")


if __name__ == "__main__":
    main()
