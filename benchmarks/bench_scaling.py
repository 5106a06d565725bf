"""Benchmark: the scaling claims of the Mamba paper, measured — Mamba against a Transformer of the
same parameter count, on this machine (notebook 09 plots what this prints).

Models: ``MambaLM`` (fast path) and the RoPE ``TransformerLM`` of ``ssm_tutor.baselines`` with a KV
cache, its width chosen to match Mamba's parameter count (``ssm_tutor.costs.matched_transformer``).
Every timing takes the models in turns (``interleaved_times``: A B, B A, ...), ``--reps`` times,
and reports the median, so that other jobs on the machine slow both alike; the load average is
recorded beside the figures. Nothing here asserts a timing.

Sections (``--only`` picks some; the default runs the first three, the long-context pass is long):

  forward       one forward pass, batch 1, L = 256 … 65536: seconds (median), peak allocated bytes
                (every operation's new storage, ``costs.peak_allocated_bytes``), FLOPs counted; log–log slopes over the longest
                lengths, the crossover length. The Transformer stops when its next forward would take
                longer than ``--max-seconds``. Also the peak memory of *naive* attention (PyTorch's
                "math" backend, which builds the L×L score matrix) up to ``--naive-max``.
  generation    one generated token after a context of 1 … 32768 tokens, batch 1: seconds per token
                and the cache's allocated bytes (its storages, measured), against the bytes its shapes hold.
  throughput    tokens per second of batched generation, batch 1 … 64, after 3072 tokens;
                which batches fit a cache budget of ``--budget-mib``; the ratio of the best throughputs
                within the budget. Plus the same on paper for a GPU (the traffic model: derived).
  long-context  the induction-heads checkpoint ``ih_mamba_256_long`` at 2^16 … 2^20 tokens, each
                sequence read in chunks of ``--chunk`` tokens with the state carried across
                (``costs.induction_accuracy_chunked``): accuracy with its 95 % interval, the time and
                peak memory of reading a million tokens, and token-by-token ``step`` timed beside it.

The committed results (``benchmarks/results/``) hold the exact command that made them::

    nice -n 10 python benchmarks/bench_scaling.py --threads 1 --out benchmarks/results/scaling_sweep.json
    nice -n 10 python benchmarks/bench_scaling.py --only throughput --threads 1 --out benchmarks/results/scaling_throughput.json
    nice -n 10 python benchmarks/bench_scaling.py --only long-context --long-examples 16 16 16 8 8 --threads 1 --out benchmarks/results/scaling_long_context.json

(the sweep's own throughput section predates the 3072-token context; notebook 9 reads the throughput file.)
The long-context section reads each sequence in chunks (one ``forward`` per chunk, the cache carried
across): on the shared 2-core machine 12 000-30 000 tokens/s, 1.4-10x what stepping one token at a
time gave at the same moments, so 2^20 tokens take about a minute per sequence. The committed run has
16 examples at 2^16, 2^17, 2^18 and 8 at 2^19, 2^20 (about 20 million tokens read, 15 minutes).

``--quick`` runs every section at toy sizes in seconds (CI's check that the script still works).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

from ssm_tutor import costs
from ssm_tutor.baselines import TransformerLM, cache_nbytes
from ssm_tutor.mamba import MambaConfig, MambaLM

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("forward", "generation", "throughput", "long-context")
DEFAULT_SECTIONS = SECTIONS[:3]

# (full, quick) sizes
SIZES = {
    "mamba": ({"hidden_size": 128, "num_hidden_layers": 4, "state_size": 16, "vocab_size": 256},
              {"hidden_size": 32, "num_hidden_layers": 2, "state_size": 8, "vocab_size": 64}),
    "transformer_layers": (2, 1),
    "lengths": ([2 ** k for k in range(8, 17)], [32, 64, 128, 256]),
    "naive_max": (8192, 128),
    "contexts": ([1] + [2 ** k for k in range(1, 16)] + [2 ** k + 1 for k in range(8, 15)], [1, 16, 256, 257]),
    "batches": ([1, 2, 4, 8, 16, 32, 64], [1, 2, 4]),
    "context": (3072, 48),          # not a power of two: the KV cache has room to spare, no doubling while timed
    "budget_mib": (64, 1),
    "long_lengths": ([2 ** k for k in range(16, 21)], [64, 128]),
    "long_examples": (16, 2),
    "chunk": (4096, 40),
}

# The Mamba paper's Figure 8 setting, for the traffic model (derived, not measured): an A100 80 GB
# (about 2.0 TB/s of memory bandwidth), a 1.3B-parameter Transformer (24 layers, width 2048, 16 heads)
# and Mamba-1.4B (48 layers, width 2048, E = 4096, N = 16), fp16 weights, a 2048-token prompt and 128
# generated tokens. The Mamba state is float32 (the official code keeps it so).
GPU = {"name": "A100 80GB (paper's Figure 8 setting)", "memory_bytes": 80 * 10 ** 9, "bandwidth": 2.0e12,
       "context": 2048 + 128,
       "transformer": {"params": 1.3e9, "n_layers": 24, "d_model": 2048, "n_heads": 16},
       "mamba": {"params": 1.4e9, "n_layers": 48, "d_inner": 4096, "d_state": 16, "d_conv": 4}}


def pick(name: str, quick: bool):
    return SIZES[name][1 if quick else 0]


def progress(iterable, desc: str, quick: bool):
    if quick:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, mininterval=5, file=sys.stderr)


def build_models(quick: bool):
    torch.manual_seed(0)
    mamba = MambaLM(MambaConfig(**pick("mamba", quick))).eval()
    transformer = costs.matched_transformer(mamba, pick("transformer_layers", quick)).eval()
    return mamba, transformer


def median_ms(times):
    return statistics.median(times) * 1e3


# ------------------------------------------------------------------------------------------------
def run_forward(mamba, transformer, args) -> dict:
    V = mamba.config.vocab_size
    lengths = pick("lengths", args.quick)
    out = {"lengths": [], "mamba": {"seconds": [], "times": [], "peak_bytes": []},
           "transformer": {"lengths": [], "seconds": [], "times": [], "peak_bytes": []},
           "naive_attention": {"lengths": [], "peak_bytes": [], "seconds": []}}
    transformer_on, naive_on = True, True
    gen = torch.Generator().manual_seed(1)
    for i, L in enumerate(progress(lengths, "forward: lengths", args.quick)):
        ids = torch.randint(0, V, (1, L), generator=gen)
        fns = {"mamba": lambda: mamba(ids)}
        if transformer_on:
            fns["transformer"] = lambda: transformer(ids)
        with torch.inference_mode():
            times = costs.interleaved_times(fns, args.reps, warmup=1 if i == 0 else 0)
            peaks = {name: costs.peak_allocated_bytes(fn)[1] for name, fn in fns.items()}
            if naive_on and L <= pick("naive_max", args.quick):
                from torch.nn.attention import SDPBackend, sdpa_kernel
                with sdpa_kernel(SDPBackend.MATH):               # builds the (b, h, L, L) score matrix
                    naive_peak = costs.peak_allocated_bytes(transformer, ids)[1]
                    seconds = costs.interleaved_times({"naive": lambda: transformer(ids)}, 1, 0)["naive"][0]
                out["naive_attention"]["lengths"].append(L)
                out["naive_attention"]["peak_bytes"].append(naive_peak)
                out["naive_attention"]["seconds"].append(seconds)
                naive_on = 4 * naive_peak < available_bytes() / 2    # the next length needs ~4x
        out["lengths"].append(L)
        for name in fns:
            rec = out[name]
            if name == "transformer":
                rec["lengths"].append(L)
            rec["seconds"].append(statistics.median(times[name]))
            rec["times"].append(times[name])
            rec["peak_bytes"].append(peaks[name])
        line = f"L={L:6d}  mamba {median_ms(times['mamba']):10.1f} ms {peaks['mamba'] / 2**20:8.1f} MiB"
        if "transformer" in times:
            t_med = statistics.median(times["transformer"])
            line += (f"   transformer {t_med * 1e3:10.1f} ms {peaks['transformer'] / 2**20:8.1f} MiB"
                     f"   time ratio T/M {t_med / statistics.median(times['mamba']):6.2f}")
            nxt = lengths[i + 1] if i + 1 < len(lengths) else None
            if nxt and t_med * (nxt / L) ** 2 > args.max_seconds:   # attention's time grows as L²
                transformer_on = False
                out["transformer"]["stopped_before"] = nxt
                line += f"   (stops: at L={nxt} a forward would take ~{t_med * (nxt / L) ** 2:.0f} s)"
        print(line, flush=True)
    # FLOPs, slopes and the crossover
    for name, model in (("mamba", mamba), ("transformer", transformer)):
        out[name]["flops"] = [sum(costs.forward_flops(model, L).values()) for L in lengths]
    out["transformer"]["flops_causal"] = [sum(costs.forward_flops(transformer, L, causal=True).values())
                                          for L in lengths]
    out["time_ratio"] = [t / m for t, m in zip(out["transformer"]["seconds"], out["mamba"]["seconds"])]
    out["fits"] = fit_forward(out, mamba, transformer, args.fit_points)
    return out


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2 ** 30


def fit_forward(out, mamba, transformer, k) -> dict:
    """Slopes over each curve's k longest lengths; crossovers measured and predicted by FLOPs."""
    m, t, lengths = out["mamba"], out["transformer"], out["lengths"]
    tl = t["lengths"]
    fits = {"points": k,
            "slope_time_mamba": costs.loglog_slope(lengths[-k:], m["seconds"][-k:]),
            "slope_time_transformer": costs.loglog_slope(tl[-k:], t["seconds"][-k:]),
            "slope_memory_mamba": costs.loglog_slope(lengths[-k:], m["peak_bytes"][-k:]),
            "slope_memory_transformer": costs.loglog_slope(tl[-k:], t["peak_bytes"][-k:]),
            "slope_flops_mamba": costs.loglog_slope(lengths[-k:], m["flops"][-k:]),
            "slope_flops_transformer": costs.loglog_slope(lengths[-k:], t["flops"][-k:]),
            "crossover_time": costs.crossover(tl, m["seconds"][:len(tl)], t["seconds"]),
            "crossover_memory": costs.crossover(tl, m["peak_bytes"][:len(tl)], t["peak_bytes"])}
    fine = [2 ** (i / 16) for i in range(16 * 17 + 1)]            # 1 … 65536, 16 points per octave
    fm = [sum(costs.forward_flops(mamba, round(L)).values()) for L in fine]
    for causal in (False, True):
        ft = [sum(costs.forward_flops(transformer, round(L), causal=causal).values()) for L in fine]
        fits["crossover_flops" + ("_causal" if causal else "")] = costs.crossover(fine, fm, ft)
    n = out["naive_attention"]
    if len(n["lengths"]) >= 2:
        fits["slope_memory_naive_attention"] = costs.loglog_slope(n["lengths"][-k:], n["peak_bytes"][-k:])
    return fits


# ------------------------------------------------------------------------------------------------
def run_generation(mamba, transformer, args) -> dict:
    V = mamba.config.vocab_size
    contexts = sorted(pick("contexts", args.quick))
    out = {"contexts": contexts, "steps_timed": args.steps,
           "mamba": {"seconds_per_token": [], "allocated_bytes": [], "shape_bytes": []},
           "transformer": {"seconds_per_token": [], "allocated_bytes": [], "shape_bytes": []}}
    gen = torch.Generator().manual_seed(2)
    token = torch.ones(1, dtype=torch.long)
    with torch.inference_mode():
        for c in progress(contexts, "generation: contexts", args.quick):
            _, m_cache = mamba(torch.randint(0, V, (1, c), generator=gen), return_cache=True)   # real prefill
            t_cache = costs.kv_cache_after(transformer, 1, c)
            sizes = {"mamba": (costs.allocated_bytes(m_cache), m_cache.nbytes()),
                     "transformer": (costs.allocated_bytes(t_cache), cache_nbytes(t_cache))}
            times = costs.interleaved_times({"mamba": lambda: mamba.step(token, m_cache),
                                             "transformer": lambda: transformer.step(token % V, t_cache)},
                                            args.steps, warmup=1)
            for name in ("mamba", "transformer"):
                out[name]["seconds_per_token"].append(statistics.median(times[name]))
                out[name]["allocated_bytes"].append(sizes[name][0])
                out[name]["shape_bytes"].append(sizes[name][1])
            print(f"context {c:6d}  mamba {median_ms(times['mamba']):8.2f} ms/token, cache {sizes['mamba'][0]:>11,} B"
                  f"   transformer {median_ms(times['transformer']):8.2f} ms/token, KV cache "
                  f"{sizes['transformer'][0]:>11,} B allocated ({sizes['transformer'][1]:,} B in its first "
                  f"{c} slots)", flush=True)
    m, t = out["mamba"], out["transformer"]
    out["latency_ratio"] = [a / b for a, b in zip(t["seconds_per_token"], m["seconds_per_token"])]
    big = [i for i, c in enumerate(contexts) if c >= contexts[-1] / 32]      # the five longest octaves
    out["fits"] = {"slope_latency_transformer": costs.loglog_slope([contexts[i] for i in big],
                                                                   [t["seconds_per_token"][i] for i in big]),
                   "slope_latency_mamba": costs.loglog_slope([contexts[i] for i in big],
                                                             [m["seconds_per_token"][i] for i in big]),
                   "latency_ratio_at_longest": t["seconds_per_token"][-1] / m["seconds_per_token"][-1]
                   if contexts[-1] == max(contexts) else None,
                   "cache_ratio_at_longest": max(t["allocated_bytes"]) / m["allocated_bytes"][-1]}
    return out


def run_throughput(mamba, transformer, args) -> dict:
    c, batches = pick("context", args.quick), pick("batches", args.quick)
    budget = (args.budget_mib if args.budget_mib is not None else pick("budget_mib", args.quick)) * 2 ** 20
    out = {"context": c, "batches": batches, "budget_bytes": budget, "steps_timed": args.steps,
           "mamba": {"tokens_per_second": [], "cache_bytes": []},
           "transformer": {"tokens_per_second": [], "cache_bytes": []}}
    V = transformer.config["vocab_size"]
    with torch.inference_mode():
        for b in progress(batches, "throughput: batches", args.quick):
            m_cache = mamba.init_cache(b)
            for s in m_cache.ssm_states:              # a state as after c tokens: its values don't change the cost
                s.normal_()
            t_cache = costs.kv_cache_after(transformer, b, c)
            sizes = {"mamba": costs.allocated_bytes(m_cache), "transformer": costs.allocated_bytes(t_cache)}
            tokens = torch.arange(b) % V
            times = costs.interleaved_times({"mamba": lambda: mamba.step(tokens, m_cache),
                                             "transformer": lambda: transformer.step(tokens, t_cache)},
                                            args.steps, warmup=1)
            for name in ("mamba", "transformer"):
                out[name]["tokens_per_second"].append(b / statistics.median(times[name]))
                out[name]["cache_bytes"].append(sizes[name])
            print(f"batch {b:3d} after {c} tokens:  mamba {out['mamba']['tokens_per_second'][-1]:9.0f} tok/s "
                  f"(cache {out['mamba']['cache_bytes'][-1] / 2**20:7.2f} MiB)   transformer "
                  f"{out['transformer']['tokens_per_second'][-1]:9.0f} tok/s (KV cache "
                  f"{out['transformer']['cache_bytes'][-1] / 2**20:7.2f} MiB)", flush=True)
    best = {}
    for name in ("mamba", "transformer"):
        fit = [i for i, nbytes in enumerate(out[name]["cache_bytes"]) if nbytes <= budget]
        i = max(fit, key=lambda j: out[name]["tokens_per_second"][j]) if fit else None
        best[name] = {"batch": batches[i] if fit else None,
                      "tokens_per_second": out[name]["tokens_per_second"][i] if fit else None,
                      "largest_batch_in_budget": batches[max(fit)] if fit else None}
    out["best_within_budget"] = best
    out["ratio_within_budget"] = (best["mamba"]["tokens_per_second"] / best["transformer"]["tokens_per_second"]
                                  if best["transformer"]["tokens_per_second"] else None)
    out["ratio_same_batch"] = [m / t for m, t in zip(out["mamba"]["tokens_per_second"],
                                                     out["transformer"]["tokens_per_second"])]
    out["gpu_derived"] = gpu_traffic_model()
    return out


def gpu_traffic_model() -> dict:
    """The paper's Figure 8 setting on paper: bandwidth-bound tokens/s per batch size (DERIVED)."""
    g, T, M = GPU, GPU["transformer"], GPU["mamba"]
    weights = {"transformer": 2 * T["params"], "mamba": 2 * M["params"]}        # fp16
    per_seq = {"transformer": costs.kv_cache_bytes(T["n_layers"], T["n_heads"], T["d_model"] // T["n_heads"],
                                                   g["context"], bytes_per_number=2),
               "mamba": costs.ssm_state_bytes(M["n_layers"], M["d_inner"], M["d_state"], M["d_conv"],
                                              bytes_per_number=4)}      # mamba_ssm keeps K conv inputs
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    out = {"setting": g, "derived": True, "batches": batches, "cache_bytes_per_sequence": per_seq,
           "weight_bytes": weights}
    for name in ("transformer", "mamba"):
        cap = costs.max_batch(g["memory_bytes"], int(weights[name]), per_seq[name])
        out[name] = {"max_batch": cap,
                     "tokens_per_second": [costs.bandwidth_bound_throughput(weights[name], per_seq[name], b,
                                                                            g["bandwidth"]) if b <= cap else None
                                           for b in batches]}
    t_best = max(v for v in out["transformer"]["tokens_per_second"] if v)
    m_best = max(v for v in out["mamba"]["tokens_per_second"] if v)
    out["ratio_best"] = m_best / t_best
    out["ratio_at_batch_128"] = (out["mamba"]["tokens_per_second"][batches.index(128)]
                                 / out["transformer"]["tokens_per_second"][batches.index(128)])
    return out


def run_long_context(args) -> dict:
    from ssm_tutor.train import EVAL_SEED, load_model

    directory = ROOT / "checkpoints" / "ih_mamba_256_long"
    model = load_model(directory)
    lengths = sorted(args.long_lengths or pick("long_lengths", args.quick))
    counts = args.long_examples or [pick("long_examples", args.quick)]
    if len(counts) == 1:
        counts = counts * len(lengths)
    if len(counts) != len(lengths):
        raise SystemExit(f"--long-examples: give one count, or one per length ({len(lengths)}), got {len(counts)}")
    chunk = args.chunk or pick("chunk", args.quick)
    res = costs.induction_accuracy_chunked(model, lengths, counts, model.config.vocab_size, seed=EVAL_SEED,
                                           chunk=chunk, progress=not args.quick)
    per = lambda key: [res[key][L] for L in lengths]                       # noqa: E731
    out = {"checkpoint": "checkpoints/ih_mamba_256_long", "lengths": lengths, "num_examples": counts,
           "seed": EVAL_SEED, "chunk": chunk, "accuracy": per("accuracy"), "correct": per("correct"),
           "interval_95": [list(costs.wilson_interval(c, n)) for c, n in zip(per("correct"), counts)],
           "seconds": per("seconds"), "tokens": per("tokens"),
           "tokens_per_second": [t / s for t, s in zip(per("tokens"), per("seconds"))],
           "stepped_tokens_per_second": [1 / s for s in per("stepped_seconds_per_token")],
           "peak_rss_rise": per("peak_rss_rise"), "cache_bytes_per_sequence": res["cache_bytes"]}
    print(f"induction heads, read in chunks of {chunk} tokens (cache {res['cache_bytes']:,} B per sequence):")
    for i, L in enumerate(lengths):
        lo, hi = out["interval_95"][i]
        print(f"   length {L:8d}: {out['correct'][i]}/{counts[i]} correct ({100 * out['accuracy'][i]:5.1f} %, 95 % "
              f"interval {100 * lo:.0f}-{100 * hi:.0f} %), {out['seconds'][i]:7.1f} s, "
              f"{out['tokens_per_second'][i]:8,.0f} tokens/s in chunks against {out['stepped_tokens_per_second'][i]:6,.0f} "
              f"stepped, peak RSS rise {out['peak_rss_rise'][i] / 2**20:6.1f} MiB")
    return out


# ------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def print_summary(results: dict) -> None:
    f = results.get("forward", {}).get("fits")
    if f:
        print(f"SLOPES (time, {f['points']} longest lengths): mamba {f['slope_time_mamba']:.2f}, "
              f"transformer {f['slope_time_transformer']:.2f};  memory: mamba {f['slope_memory_mamba']:.2f}, "
              f"transformer {f['slope_memory_transformer']:.2f}"
              + (f", naive attention {f['slope_memory_naive_attention']:.2f}" if "slope_memory_naive_attention" in f else "")
              + f";  FLOPs: mamba {f['slope_flops_mamba']:.2f}, transformer {f['slope_flops_transformer']:.2f}")
        fmt = lambda v: "none in range" if v is None else f"L ≈ {v:.0f}"
        print(f"CROSSOVER time {fmt(f['crossover_time'])}, memory {fmt(f['crossover_memory'])}; "
              f"predicted by FLOPs {fmt(f['crossover_flops'])} (dense), {fmt(f['crossover_flops_causal'])} (causal)")
    g = results.get("generation", {}).get("fits")
    if g:
        print(f"GENERATION slopes of ms/token vs context (five longest octaves): transformer {g['slope_latency_transformer']:.2f}, "
              f"mamba {g['slope_latency_mamba']:.2f}; at the longest context the transformer is "
              f"{g['latency_ratio_at_longest']:.1f}x slower per token and its cache {g['cache_ratio_at_longest']:.0f}x larger")
    t = results.get("throughput")
    if t:
        b = t["best_within_budget"]
        print(f"THROUGHPUT within a {t['budget_bytes'] / 2**20:.0f} MiB cache budget after {t['context']} tokens: "
              f"mamba {b['mamba']['tokens_per_second']:.0f} tok/s (batch {b['mamba']['batch']}), transformer "
              f"{b['transformer']['tokens_per_second']:.0f} tok/s (batch {b['transformer']['batch']}, the largest "
              f"that fits: {b['transformer']['largest_batch_in_budget']}) -> ratio {t['ratio_within_budget']:.1f}x "
              f"(measured)")
        d = t["gpu_derived"]
        print(f"GPU (DERIVED from the traffic model, not measured; {d['setting']['name']}): max batch transformer "
              f"{d['transformer']['max_batch']}, mamba {d['mamba']['max_batch']}; best tok/s ratio "
              f"{d['ratio_best']:.1f}x, at batch 128 {d['ratio_at_batch_128']:.1f}x")
    lc = results.get("long_context")
    if lc:
        i = len(lc["lengths"]) - 1
        print(f"MILLION TOKENS, the longest length ({lc['lengths'][i]:,} tokens, {lc['num_examples'][i]} sequences): {lc['seconds'][i]:.0f} s in chunks "
              f"of {lc['chunk']} ({lc['tokens_per_second'][i]:,.0f} tokens/s; stepping {lc['stepped_tokens_per_second'][i]:,.0f}), "
              f"peak RSS rise {lc['peak_rss_rise'][i] / 2**20:.1f} MiB; accuracy "
              + ", ".join(f"{L}: {c}/{n}" for L, c, n in zip(lc["lengths"], lc["correct"], lc["num_examples"])))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: every section in seconds (CI)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help=f"sections to run (default: {' '.join(DEFAULT_SECTIONS)})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed forward passes per model and length (median)")
    p.add_argument("--steps", type=int, default=15, help="timed generation steps per point (median)")
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="stop the Transformer's forward sweep when its next forward would take longer")
    p.add_argument("--fit-points", type=int, default=4, help="longest lengths used for the log-log slopes")
    p.add_argument("--budget-mib", type=float, default=None, help="cache memory budget for the throughput section")
    p.add_argument("--long-examples", type=int, nargs="+", default=None,
                   help="induction-heads examples per length: one count, or one per length")
    p.add_argument("--chunk", type=int, default=None, help="tokens per forward in the long-context section (4096)")
    p.add_argument("--long-lengths", type=int, nargs="+", default=None,
                   help="induction-heads lengths of the long-context pass (default 2^16 ... 2^20)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = args.only or list(DEFAULT_SECTIONS)
    results = {"command": "python " + " ".join(shlex.quote(a) for a in
                                               [str(Path(sys.argv[0]).resolve().relative_to(ROOT))
                                                if argv is None else "benchmarks/bench_scaling.py",
                                                *(sys.argv[1:] if argv is None else argv)]),
               "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "quick": args.quick, "load_average": {"start": costs.load_average()}}
    print(f"{results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs, torch "
          f"{torch.__version__}, {args.threads} thread(s); load average {results['load_average']['start']}")
    if any(s in sections for s in DEFAULT_SECTIONS):
        mamba, transformer = build_models(args.quick)
        results["models"] = {"mamba": {"config": mamba.config.to_dict(), "parameters": costs.parameter_count(mamba)},
                             "transformer": {"config": transformer.config,
                                             "parameters": costs.parameter_count(transformer)}}
        print(f"models: Mamba {results['models']['mamba']['parameters']:,} parameters "
              f"(width {mamba.config.hidden_size}, {mamba.config.num_hidden_layers} layers, N={mamba.config.state_size}); "
              f"Transformer {results['models']['transformer']['parameters']:,} parameters (width "
              f"{transformer.config['d_model']}, {transformer.config['n_layers']} layers, "
              f"{transformer.config['n_heads']} heads, RoPE); vocabulary {mamba.config.vocab_size}")
    for section in sections:
        key = section.replace("-", "_")
        if section == "forward":
            results[key] = run_forward(mamba, transformer, args)
        elif section == "generation":
            results[key] = run_generation(mamba, transformer, args)
        elif section == "throughput":
            results[key] = run_throughput(mamba, transformer, args)
        else:
            results[key] = run_long_context(args)
        results["load_average"][f"after_{key}"] = costs.load_average()
    print_summary(results)
    print(f"load average at the end {costs.load_average()} ({os.cpu_count()} logical CPUs)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
