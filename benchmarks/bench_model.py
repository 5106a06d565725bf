"""Benchmark: ssm_tutor's MambaLM against transformers' MambaForCausalLM on the same weights.

One process, the two models measured in interleaved repetitions (ours, theirs, ours, theirs, …)
so that a busy machine slows both alike. The ratio of the best (minimum) times is the headline,
the ratio of the medians is printed beside it; on a quiet machine they agree.

  * forward: logits of one sequence, batch 1, L = 2048 (float32, no grad);
  * generation: greedy, 256 new tokens after a short prompt, tokens per second;
  * the backbones alone (everything but the LM head), and the LM head's shared GEMM / GEMV alone:
    the head is the same matrix product on both sides, so its time bounds the whole-model ratios.

The outputs are compared too (logits within a tolerance, generated tokens identical).
transformers runs its PyTorch fallback (no ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels on a CPU).

Usage::

    python benchmarks/bench_model.py                # hidden 768, 2 layers, vocab 50280 (GPT-NeoX)
    python benchmarks/bench_model.py --vocab 1024   # a small vocabulary: the head costs less
"""

from __future__ import annotations

import argparse
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
          f"vocab {args.vocab}; float32, batch 1; device {device}; torch threads {torch.get_num_threads()}")

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
    # The head (D -> V, the tied embedding matrix) is the same GEMM / GEMV in both models: at
    # V = 50280 it is ~79 G multiply-adds per forward and a 154 MB weight read per generated token.
    # Its time is common to both sides, so it caps the whole-model ratio (Amdahl): we measure it
    # alone and also compare the backbones (embedding, blocks, final norm), the part that differs.
    def bb_ours():
        with torch.inference_mode():
            x = ours.backbone.embeddings(ids)
            for layer in ours.backbone.layers:
                x = layer(x)
            out = ours.backbone.norm_f(x)
        sync()
        return out

    def bb_theirs():
        with torch.inference_mode():
            out = theirs.backbone(ids, use_cache=False).last_hidden_state
        sync()
        return out

    head_w = ours.lm_head.weight
    hidden = torch.randn(1, args.length, args.hidden, generator=torch.Generator().manual_seed(2)).to(device)

    def head_forward():
        with torch.inference_mode():
            out = torch.nn.functional.linear(hidden, head_w)
        sync()
        return out

    def head_token():
        with torch.inference_mode():
            out = torch.nn.functional.linear(hidden[:, -1], head_w)
        sync()
        return out

    ok, ratios = True, {}
    if args.only != "generate":
        t_ours, t_theirs, bo, bt = interleaved(bb_ours, bb_theirs, args.reps)
        err, scale = (bo - bt).abs().max().item(), bt.abs().max().item()
        same = err <= 1e-4 * max(1.0, scale)
        ok &= same
        ratios["backbone"] = min(t_theirs) / min(t_ours)
        print(f"backbone only (no LM head) L={args.length}: ours {min(t_ours) * 1e3:.0f} ms, transformers "
              f"{min(t_theirs) * 1e3:.0f} ms (best of {args.reps}) -> {ratios['backbone']:.2f}x faster "
              f"(medians: {statistics.median(t_theirs) / statistics.median(t_ours):.2f}x)   "
              f"(max |hidden diff| {err:.2e}, {'OK' if same else 'MISMATCH'})")
        head_fwd = min(timed(head_forward)[0] for _ in range(args.reps))
        print(f"the shared LM head alone, (L={args.length}, {args.hidden}) x ({args.hidden}, {args.vocab}) GEMM: "
              f"{head_fwd * 1e3:.0f} ms (best of {args.reps}); so even a backbone taking no time at all would make "
              f"the forward at most {(head_fwd + min(t_theirs)) / head_fwd:.2f}x faster")
        t_ours, t_theirs, lo, lt = interleaved(fwd_ours, fwd_theirs, args.reps)
        err, scale = (lo - lt).abs().max().item(), lt.abs().max().item()
        same = err <= 1e-4 * max(1.0, scale)
        ok &= same
        ratios["forward"] = min(t_theirs) / min(t_ours)
        print(f"forward L={args.length}: ours {min(t_ours) * 1e3:.0f} ms, transformers {min(t_theirs) * 1e3:.0f} ms "
              f"(best of {args.reps}) -> {ratios['forward']:.2f}x faster "
              f"(medians: {statistics.median(t_theirs) / statistics.median(t_ours):.2f}x)   "
              f"(max |logit diff| {err:.2e}, max |logit| {scale:.2f}, {'OK' if same else 'MISMATCH'})")
    if args.only != "forward":
        g_ours, g_theirs, go, gt = interleaved(gen_ours, gen_theirs, args.reps)
        same = torch.equal(go, gt)
        ok &= same
        ratios["generation"] = min(g_theirs) / min(g_ours)
        print(f"greedy generation, {n} new tokens: ours {n / min(g_ours):.0f} tok/s, transformers "
              f"{n / min(g_theirs):.0f} tok/s (best of {args.reps}) -> {ratios['generation']:.2f}x faster "
              f"(medians: {statistics.median(g_theirs) / statistics.median(g_ours):.2f}x)   (tokens identical: {same})")
    if args.only != "forward":
        head_tok = sorted(timed(head_token)[0] for _ in range(max(20, args.reps)))[0]
        print(f"the shared LM head alone, one token ({args.hidden}) x ({args.hidden}, {args.vocab}) GEMV: "
              f"{head_tok * 1e3:.2f} ms (best of {max(20, args.reps)}); x {n} tokens = {head_tok * n * 1e3:.0f} ms "
              f"of each side's generation time; bound on the generation ratio: "
              f"{min(g_theirs) / (head_tok * n):.2f}x")
    goals = {"forward": 3.0, "generation": 1.5}
    print("RATIOS " + ", ".join(f"{k} {v:.2f}x" + (f" (goal >= {goals[k]:g})" if k in goals else " (no LM head)")
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
