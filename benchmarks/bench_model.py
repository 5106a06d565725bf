"""Benchmark: ssm_tutor's MambaLM against transformers' MambaForCausalLM on the same weights.

One process, the two models measured in interleaved repetitions (ours, theirs, ours, theirs, …)
so that a busy machine slows both alike. The ratio of the best (minimum) times is the headline,
the ratio of the medians is printed beside it; on a quiet machine they agree.

  * forward: logits of one sequence, batch 1, L = 2048 (float32, no grad);
  * generation: greedy, 256 new tokens after a short prompt, tokens per second;
  * the backbones alone (everything but the LM head), and the two LM heads alone: the head is
    the same matrix product on both sides (ours stores the matrix input-major, see
    ``ssm_tutor.mamba.store_input_major_``) and at a 50k vocabulary most of either side's time.

The outputs are compared too (logits within a tolerance, generated tokens identical).
transformers runs its PyTorch fallback (no ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels on a CPU).

``--busy``: a second PyTorch process multiplies matrices on its own threads for the whole
measurement (``benchmarks/busy.py``), as a learner's second notebook kernel would.

Usage::

    python benchmarks/bench_model.py                # hidden 768, 2 layers, vocab 50280 (GPT-NeoX)
    python benchmarks/bench_model.py --vocab 1024   # a small vocabulary: the head costs less
    python benchmarks/bench_model.py --busy         # the same while another process computes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=50280)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=["forward", "generate"], default=None, help="run one of the two measurements")
    p.add_argument("--busy", action="store_true", help="measure while a competing process multiplies matrices")
    p.add_argument("--busy-threads", type=int, default=None, help="the competing process's threads (default: ours)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from ssm_tutor.mamba import MambaLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers)
    theirs = transformers.MambaForCausalLM(cfg).eval()
    theirs.generation_config.eos_token_id = None              # generate every token, never stop early
    theirs.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:                 # the same weights, through a checkpoint
        theirs.save_pretrained(tmp)
        ours = MambaLM.from_pretrained(tmp).eval()
    theirs.to(device)
    ours.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"model: hidden {args.hidden}, {args.layers} layers, E={cfg.intermediate_size}, N={cfg.state_size}, "
          f"vocab {args.vocab}; float32, batch 1; device {device}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    # ---- forward ----------------------------------------------------------------------------
    ids = torch.randint(0, args.vocab, (1, args.length), generator=torch.Generator().manual_seed(1)).to(device)

    def fwd_ours():
        with torch.inference_mode():
            out = ours(ids)
        sync()
        return out

    def fwd_theirs():
        with torch.inference_mode():
            out = theirs(ids, use_cache=False).logits
        sync()
        return out

    # ---- greedy generation --------------------------------------------------------------------
    prompt = ids[:, :args.prompt]
    n = args.new_tokens

    def gen_ours():
        out = ours.generate(prompt, n)
        sync()
        return out

    def gen_theirs():
        with torch.inference_mode():
            out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False)
        sync()
        return out

    # ---- the two models without the LM head ---------------------------------------------------
    # The head (D -> V, the tied embedding matrix) is the same product in both models: at
    # V = 50280 it is ~79 G multiply-adds per forward and a 154 MB weight read per generated token,
    # most of either side's time. We also compare the backbones (embedding, blocks, final norm),
    # where the two implementations differ most, and time the two heads alone: ours keeps the
    # matrix input-major (``store_input_major_``), theirs in PyTorch's default order.
    def bb_ours():
        with torch.inference_mode():
            out = ours.backbone(ids)
        sync()
        return out

    def bb_theirs():
        with torch.inference_mode():
            out = theirs.backbone(ids, use_cache=False).last_hidden_state
        sync()
        return out

    hidden = torch.randn(1, args.length, args.hidden, generator=torch.Generator().manual_seed(2)).to(device)

    def head(weight, rows):
        def run():
            with torch.inference_mode():
                out = torch.nn.functional.linear(hidden[:, -rows:], weight)
            sync()
            return out
        return run

    ok, ratios = True, {}

    def compare(name, fn_ours, fn_theirs, reps, outputs_agree, per_unit=None):
        """Time both interleaved, print best and median times and the ratio; return it."""
        nonlocal ok
        t_ours, t_theirs, o, t = interleaved(fn_ours, fn_theirs, reps)
        same, detail = outputs_agree(o, t)
        ok &= same
        ratio = min(t_theirs) / min(t_ours)
        shown = (lambda s: f"{per_unit[0] / s:.0f} {per_unit[1]}") if per_unit else (lambda s: f"{s * 1e3:.2f} ms")
        print(f"{name}: ours {shown(min(t_ours))}, transformers {shown(min(t_theirs))} (best of {reps}) -> "
              f"{ratio:.2f}x faster (medians: {statistics.median(t_theirs) / statistics.median(t_ours):.2f}x)   "
              f"({detail}, {'OK' if same else 'MISMATCH'})")
        return ratio

    def close(o, t):
        err, scale = (o - t).abs().max().item(), t.abs().max().item()
        return err <= 1e-4 * max(1.0, scale), f"max |diff| {err:.2e}, max |value| {scale:.2f}"

    def equal(o, t):
        return torch.equal(o, t), "tokens identical" if torch.equal(o, t) else "tokens differ"

    from busy import competitor

    load = competitor(args.busy_threads) if args.busy else contextlib.nullcontext(lambda: "no competing process")
    with load as report:
        if args.only != "generate":
            ratios["backbone"] = compare(f"backbone only (no LM head) L={args.length}", bb_ours, bb_theirs,
                                         args.reps, close)
            compare(f"LM head alone, ({args.length}, {args.hidden}) x ({args.hidden}, {args.vocab})",
                    head(ours.lm_head.weight, args.length), head(theirs.lm_head.weight, args.length), args.reps, close)
            ratios["forward"] = compare(f"forward L={args.length}", fwd_ours, fwd_theirs, args.reps, close)
        if args.only != "forward":
            compare(f"LM head alone, one token, ({args.hidden}) x ({args.hidden}, {args.vocab})",
                    head(ours.lm_head.weight, 1), head(theirs.lm_head.weight, 1), max(20, args.reps), close)
            ratios["generation"] = compare(f"greedy generation, {n} new tokens", gen_ours, gen_theirs, args.reps,
                                           equal, per_unit=(n, "tok/s"))
    print(report())
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    goals = {"forward": 1.5 if args.busy else 3.0, "generation": 1.5}
    print(("RATIOS (busy) " if args.busy else "RATIOS ")
          + ", ".join(f"{k} {v:.2f}x" + (f" (goal >= {goals[k]:g})" if k in goals else " (no LM head)")
                      for k, v in ratios.items()))
    return 0 if ok else 1


def interleaved(ours, theirs, reps):
    """Warm both up, then time ours, theirs, ours, theirs, … ``reps`` times each."""
    ours(), theirs()
    t_ours, t_theirs = [], []
    for _ in range(reps):
        t, out_ours = timed(ours)
        t_ours.append(t)
        t, out_theirs = timed(theirs)
        t_theirs.append(t)
    return t_ours, t_theirs, out_ours, out_theirs


if __name__ == "__main__":
    raise SystemExit(main())
