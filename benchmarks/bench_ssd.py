"""Benchmark: the SSD scan and the Mamba-2 model against their peers, measured in one run.

Three comparisons, each timed with interleaved repetitions (ours, peer, ours, peer, …) so that a
change in the machine's load hits both sides; the ratios printed are of the medians (the best
times are printed beside them). Every pair's outputs are compared before its times count.

1. ``ssm_tutor.ssd.ssd_scan`` against transformers' ``mamba2_chunk_scan`` (the pure-PyTorch chunked
   scan that ``Mamba2Mixer.torch_forward`` falls back to without ``mamba_ssm``): batch 1, L = 2048,
   24 heads of 64, n = 128, one group, chunk 256, with dt bias, softplus and D.
2. ``ssm_tutor.mamba2.Mamba2LM`` forward against ``transformers.Mamba2ForCausalLM`` on the same
   weights: hidden 768 (24 heads of 64), 2 layers, n = 128, L = 2048; the backbones alone too, and
   the LM head alone (the same matrix product on both sides).
3. SSD against the course's own Mamba-1 scan (``ssm_tutor.scan.selective_scan``, method "auto") on
   the *same map at the same state size*: Mamba-2's heads are a special case of Mamba-1's channels
   (d = h·p channels, A[d, :] = the head's scalar, Δ shared by a head's p channels, B and C grouped),
   so the Mamba-1 scan with d = 1536, N = 128 computes exactly what the SSD scan computes, with the
   same 196 608 state numbers. The printout gives each side's FLOPs, its achieved FLOP rate, and the
   arithmetic intensity (FLOPs per byte) of its inner operation, which explain the ratio.

Usage::

    python benchmarks/bench_ssd.py                 # the sizes above (a few minutes on 2 cores)
    python benchmarks/bench_ssd.py --threads 1     # one intra-op thread for both sides
    python benchmarks/bench_ssd.py --vocab 1024    # a small vocabulary: the LM head costs less
    python benchmarks/bench_ssd.py --quick         # toy sizes: checks that everything runs and agrees
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def interleaved(ours, theirs, reps):
    """Warm both up, then time ours, theirs, ours, theirs, … ``reps`` times each (wall clock)."""
    ours(), theirs()
    t_ours, t_theirs = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        out_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out_theirs = theirs()
        t_theirs.append(time.perf_counter() - t0)
    return t_ours, t_theirs, out_ours, out_theirs


def close(a, b, tol=1e-4):
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    return err <= tol * max(1.0, scale), f"max |diff| {err:.2e}, max |value| {scale:.3g}"


def ssd_inputs(b, l, h, p, g, n, seed=0):
    """Inputs shaped as a Mamba-2 layer makes them: Δ = softplus(dt + dt_bias) around 0.001-0.1,
    A = -(1 … 16)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen)                                      # (b, l, h, p)
    dt = torch.randn(b, l, h, generator=gen)                                        # (b, l, h)
    A = -torch.empty(h).uniform_(1, 16, generator=gen)                              # (h,)
    B = torch.randn(b, l, g, n, generator=gen)                                      # (b, l, g, n)
    C = torch.randn(b, l, g, n, generator=gen)
    D = torch.ones(h)
    step = torch.exp(torch.empty(h).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
    dt_bias = step + torch.log(-torch.expm1(-step))                                 # inverse softplus: (h,)
    return x, dt, A, B, C, D, dt_bias


def ssd_flops(b, l, h, p, g, n, Q):
    """Matrix-multiply FLOPs of the fast chunked scan (multiply-add = 2): C Bᵀ per group, the
    masked scores times x̄ per head, the entering state's output and the leaving state per head."""
    c = math.ceil(l / Q)
    return 2 * b * (g * c * Q * Q * n + h * c * Q * Q * p + 2 * h * l * p * n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--state", type=int, default=128)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--hidden", type=int, default=768, help="model width (heads · head_dim = 2 · hidden)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=50280)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    p.add_argument("--quick", action="store_true", help="toy sizes, one repetition: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.length, args.heads, args.head_dim, args.state, args.chunk = 50, 4, 8, 16, 16
        args.hidden, args.layers, args.vocab, args.reps = 16, 2, 50, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
    transformers.logging.set_verbosity_error()
    from ssm_tutor.mamba2 import Mamba2LM
    from ssm_tutor.scan import selective_scan
    from ssm_tutor.ssd import ssd_scan

    b, L, H, P, G, N, Q = 1, args.length, args.heads, args.head_dim, args.groups, args.state, args.chunk
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the start; float32, batch 1; "
          f"times are wall-clock, interleaved, {args.reps} repetitions each")
    ok, ratios = True, {}

    def report(name, t_ours, t_theirs, agree, peer="transformers"):
        nonlocal ok
        same, detail = agree
        ok &= same
        ratio = statistics.median(t_theirs) / statistics.median(t_ours)
        print(f"{name}: ours {statistics.median(t_ours) * 1e3:.1f} ms, {peer} {statistics.median(t_theirs) * 1e3:.1f} ms "
              f"(medians; best {min(t_ours) * 1e3:.1f} / {min(t_theirs) * 1e3:.1f} ms) -> {ratio:.2f}x   "
              f"({detail}, {'OK' if same else 'MISMATCH'})")
        return ratio

    # ---- 1. the scans ---------------------------------------------------------------------------
    x, dt, A, B, C, D, dt_bias = ssd_inputs(b, L, H, P, G, N)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True)

    def scan_ours():
        with torch.inference_mode():
            return ssd_scan(x, dt, A, B, C, Q, **kw)

    def scan_theirs():
        with torch.inference_mode():
            return mamba2_chunk_scan(x, dt, A, B, C, Q, **kw)

    t_o, t_t, y_o, y_t = interleaved(scan_ours, scan_theirs, args.reps)
    ratios["scan"] = report(f"SSD scan L={L}, {H} heads x {P}, n={N}, g={G}, chunk {Q}", t_o, t_t, close(y_o, y_t))

    # ---- 2. the models --------------------------------------------------------------------------
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=2 * args.hidden // P,
                                    head_dim=P, n_groups=G, state_size=N, vocab_size=args.vocab, chunk_size=Q)
    theirs = transformers.Mamba2ForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:                 # the same weights, through a checkpoint
        theirs.save_pretrained(tmp)
        ours = Mamba2LM.from_pretrained(tmp).eval()
    ids = torch.randint(0, args.vocab, (1, L), generator=torch.Generator().manual_seed(1))
    print(f"model: hidden {args.hidden}, {args.layers} layers, {cfg.num_heads} heads x {P}, n={N}, vocab {args.vocab}")

    def run(fn):
        def timed():
            with torch.inference_mode():
                return fn()
        return timed

    t_o, t_t, o, t = interleaved(run(lambda: ours.backbone(ids)),
                                 run(lambda: theirs.backbone(ids, use_cache=False).last_hidden_state), args.reps)
    ratios["backbone"] = report(f"backbone only (no LM head) L={L}", t_o, t_t, close(o, t))
    t_t_backbone = t_t
    hidden = torch.randn(1, L, args.hidden, generator=torch.Generator().manual_seed(2))
    t_o, t_t, o, t = interleaved(run(lambda: F.linear(hidden, ours.lm_head.weight)),
                                 run(lambda: F.linear(hidden, theirs.lm_head.weight)), args.reps)
    report(f"LM head alone, ({L}, {args.hidden}) x ({args.hidden}, {args.vocab})", t_o, t_t, close(o, t))
    t_o, t_t, o, t = interleaved(run(lambda: ours(ids)), run(lambda: theirs(ids, use_cache=False).logits), args.reps)
    ratios["forward"] = report(f"forward L={L}", t_o, t_t, close(o, t))
    # The blocks' input and output projections are the same matrix products on both sides: the
    # backbone cannot get faster than transformers' time over theirs (Amdahl), however fast the rest.
    E = 2 * args.hidden
    acts = [torch.randn(1, L, args.hidden), torch.randn(1, L, E)]
    mixers = [layer.mixer for layer in ours.backbone.layers]
    t_proj = min(interleaved(run(lambda: [(F.linear(acts[0], m.in_proj.weight), F.linear(acts[1], m.out_proj.weight))
                                          for m in mixers]), lambda: None, args.reps)[0])
    print(f"  the projections alone (in_proj + out_proj, {args.layers} layers): {t_proj * 1e3:.1f} ms (best) -> "
          f"at most {min(t_t_backbone) / t_proj:.1f}x for the backbone if everything else were free")

    # ---- 3. SSD against the Mamba-1 scan, the same map at the same state size --------------------
    d = H * P
    delta = F.softplus(dt + dt_bias)                                                # Δ: (b, l, h)
    u1 = x.reshape(b, L, d).transpose(1, 2)                                         # (b, d, l), time-major view
    delta1 = delta.repeat_interleave(P, dim=2).transpose(1, 2)                      # Δ per channel: (b, d, l)
    A1 = A.repeat_interleave(P)[:, None].expand(d, N).contiguous()                  # (d, n): the head's scalar
    B1, C1 = B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1)                           # grouped (b, g, n, l) views
    D1 = D.repeat_interleave(P)                                                     # (d,)

    def ssd_same_map():
        with torch.inference_mode():
            return ssd_scan(x, delta, A, B, C, Q, D=D)

    def mamba1_same_map():
        with torch.inference_mode():
            return selective_scan(u1, delta1, A1, B1, C1, D1, method="auto").transpose(1, 2).reshape(b, L, H, P)

    t_o, t_t, y_o, y_t = interleaved(ssd_same_map, mamba1_same_map, args.reps)
    ratios["ssd_vs_mamba1"] = report(f"same map, state {d} x {N} = {d * N:,} numbers: SSD scan vs Mamba-1 fused scan",
                                     t_o, t_t, close(y_o, y_t), peer="Mamba-1 scan")
    f_ssd = ssd_flops(b, L, H, P, G, N, Q)
    f_m1 = 6 * b * L * d * N                        # per (t, d, n): ΔA, B̄u, h = Āh + B̄u (2), y += C h (2)
    print(f"  SSD: {f_ssd / 1e9:.2f} GFLOP in matrix products ({f_ssd / statistics.median(t_o) / 1e9:.1f} GFLOP/s) "
          f"+ {b * H * math.ceil(L / Q) * Q * Q / 1e6:.1f} M exponentials; its largest product, "
          f"(Q x Q)(Q x p) per head, does 2Q²p = {2 * Q * Q * P:,} FLOPs on {4 * (Q * Q + 2 * Q * P):,} bytes: "
          f"{2 * Q * Q * P / (4 * (Q * Q + 2 * Q * P)):.0f} FLOPs per byte")
    print(f"  Mamba-1 scan: {f_m1 / 1e9:.2f} GFLOP elementwise ({f_m1 / statistics.median(t_t) / 1e9:.1f} GFLOP/s) "
          f"+ {b * L * d * N / 1e6:.0f} M exponentials; its step h = Āh + B̄u does 2 FLOPs per 16 bytes "
          f"(read Ā, B̄u, h; write h): 0.125 FLOPs per byte")

    goals = {"scan": 3.0, "forward": 3.0}
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("RATIOS " + ", ".join(f"{k} {v:.2f}x" + (f" (goal >= {goals[k]:g})" if k in goals else "")
                                for k, v in ratios.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
