"""Exercises of chapter 9 (notebooks/09_scaling_claims.ipynb): the costs, counted before measured.

Expected answers:
  09.1 from PyTorch's ``FlopCounterMode`` run on a real ``TransformerLM`` with the "math" attention
       backend (which multiplies every query-key pair), for the small cases; the long case from
       ``ssm_tutor.costs.transformer_forward_flops``, which ``tests/test_costs.py`` checks against it.
  09.2 from caches that exist, measured with ``costs.allocated_bytes``: ``TransformerLM.init_cache`` and
       ``MambaLM.init_cache``; the real-model cards from ``costs.kv_cache_bytes`` / ``costs.ssm_state_bytes``,
       which ``tests/test_costs.py`` checks against transformers' Llama (grouped-query) and Mamba caches.
  09.3 from the traffic model's two formulas written out here with plain arithmetic.
Each checker recognises the typical mistakes and says which one it looks like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssm_tutor import costs
from ssm_tutor.exercises import exercise


@dataclass(frozen=True)
class Expected:
    """A case's right answer and the arguments it was computed for (the hints need them)."""
    value: Any
    args: tuple


def _with_hint(message_for):
    """A compare function for :class:`Expected` answers: None when got equals the value (within the
    exercise's tolerance), else what differs and, when the output looks like a typical mistake, the hint
    ``message_for(got, expected_value, *args)`` returns for it."""

    def compare(expected, got, atol, rtol):
        want = expected.value
        pair = isinstance(want, tuple)
        if pair:
            ok = isinstance(got, (tuple, list)) and len(got) == 2 and all(
                _number(g) and abs(g - e) <= atol + rtol * abs(e) for g, e in zip(got, want))
        else:
            ok = _number(got) and abs(got - want) <= atol + rtol * abs(want)
        if ok:
            return None
        text = (lambda v: "(" + ", ".join(_shown(x) for x in v) + ")") if pair else _shown
        got_text = text(got) if (not pair or isinstance(got, (tuple, list))) else _shown(got)
        hint = message_for(got, want, *expected.args)
        return f"expected {text(want)}, got {got_text}" + (f". Hint: {hint}" if hint else "")

    return compare


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:,.6g}" if isinstance(v, float) else repr(v)


def _close(a, b) -> bool:
    return _number(a) and abs(a - b) <= 1e-9 * max(1.0, abs(b))


# ---------------------------------------------------------------------------------------------- 09.1
def _flop_cases_args():
    return [(16, 16, 1, 8), (50, 32, 2, 16), (7, 24, 3, 100), (65536, 4096, 32, 32000)]


def _flops_measured(length, d_model, n_layers, vocab):
    """FlopCounterMode on a real TransformerLM, attention by the math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ssm_tutor.baselines import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(vocab, d_model, n_layers, n_heads=4).eval()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        model(torch.zeros(1, length, dtype=torch.long))
    return counter.get_total_flops()


def _flops_hint(got, expected, length, d, layers, vocab):
    parts = costs.transformer_forward_flops(length, d, layers, vocab)
    if not _number(got):
        return "return one number, the total FLOPs (a Python int)"
    if _close(2 * got, expected):
        return "a multiply-add is 2 FLOPs: an (m×k)·(k×n) product costs 2·m·k·n"
    causal = costs.transformer_forward_flops(length, d, layers, vocab, causal=True)
    if _close(got, sum(causal.values())):
        return ("count every query-key pair, L², as PyTorch's attention computes them (a causal mask "
                "discards half the results but not the multiplications)")
    if _close(got, expected - parts["lm_head"]):
        return "the LM head is a (d × V) product for every token: 2·L·d·V"
    if _close(got, expected - parts["mix"]):
        return "attention has two L×L products per layer: scores = q·kᵀ, then softmax(scores)·v"
    if _close(got, expected - parts["mlp"] / 2):
        return "the MLP has two linear layers, d -> 4d and 4d -> d"
    if _close(got, expected + 3 * (parts["scores"] + parts["mix"])):
        return "the heads split the width: h heads of size d/h cost what one head of size d costs"
    return "sum, per layer: qkv 2·L·d·3d, q·kᵀ 2·L²·d, ·v 2·L²·d, out 2·L·d², MLP 2·2·L·d·4d; then the head"


@exercise("09.1", "the FLOPs of a Transformer's forward pass", atol=0, rtol=1e-12,
          compare=_with_hint(_flops_hint))
def transformer_flop_cases():
    for args in _flop_cases_args():
        length, d, layers, vocab = args
        big = length * d > 10 ** 6
        expected = (sum(costs.transformer_forward_flops(*args).values()) if big else _flops_measured(*args))
        yield (f"L={length}, d_model={d}, {layers} layers, vocab {vocab}"
               + (" (counted by ssm_tutor.costs)" if big else " (counted by FlopCounterMode)"), args, {},
               Expected(expected, args))


# ---------------------------------------------------------------------------------------------- 09.2
LLAMA_2_7B = {"family": "transformer", "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "head_dim": 128, "bytes": 2}
LLAMA_3_8B = {"family": "transformer", "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "bytes": 2}
FALCON_MAMBA_7B = {"family": "mamba", "n_layers": 64, "d_inner": 8192, "d_state": 16, "d_conv": 4, "bytes": 4}
MAMBA_2_8B = {"family": "mamba", "n_layers": 64, "d_inner": 5120, "d_state": 16, "d_conv": 4, "bytes": 4}
CARDS = {"Llama-2-7B": LLAMA_2_7B, "Llama-3-8B": LLAMA_3_8B, "Falcon-Mamba-7B": FALCON_MAMBA_7B,
         "Mamba-2.8B": MAMBA_2_8B}


def card_bytes(card: dict, context: int, batch: int = 1) -> int:
    """The reference answer, from ssm_tutor.costs (checked in tests against real caches)."""
    if card["family"] == "transformer":
        return costs.kv_cache_bytes(card["n_layers"], card["n_kv_heads"], card["head_dim"], context,
                                    card["bytes"], batch)
    return costs.ssm_state_bytes(card["n_layers"], card["d_inner"], card["d_state"], card["d_conv"] - 1,
                                 card["bytes"], batch)


def _measured_cache_cases():
    """Tiny models whose caches exist, float32: ssm_tutor's TransformerLM with room for the context
    (multi-head: n_kv_heads = n_heads) and MambaLM. (Grouped-query attention: tests/test_costs.py
    checks ``costs.kv_cache_bytes`` against transformers' Llama cache.)"""
    from ssm_tutor.baselines import TransformerLM
    from ssm_tutor.mamba import MambaConfig, MambaLM

    torch.manual_seed(0)
    transformer = TransformerLM(16, d_model=48, n_layers=3, n_heads=6)
    card = {"family": "transformer", "n_layers": 3, "n_heads": 6, "n_kv_heads": 6, "head_dim": 8, "bytes": 4}
    yield "a tiny TransformerLM (ssm_tutor), room for 11 tokens, batch 2", card, 11, 2, \
        costs.allocated_bytes(transformer.init_cache(2, capacity=11))
    mamba = MambaLM(MambaConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, state_size=8))
    conv_kept = mamba.init_cache(1).conv_states[0].shape[-1]
    if conv_kept == mamba.config.conv_kernel - 1:                  # the layout the exercise describes
        card = {"family": "mamba", "n_layers": 2, "d_inner": 64, "d_state": 8, "d_conv": 4, "bytes": 4}
        for context in (1, 5000):
            yield f"a tiny MambaLM (ssm_tutor), after {context} tokens, batch 3", card, context, 3, \
                costs.allocated_bytes(mamba.init_cache(3))


def _cache_hint(got, expected, card, context, batch):
    if not _number(got):
        return "return one number of bytes (a Python int)"
    if card["family"] == "transformer":
        per = lambda heads: 2 * card["n_layers"] * heads * card["head_dim"] * context * card["bytes"] * batch
        if _close(got, per(card["n_heads"])):
            return ("grouped-query attention stores keys and values for n_kv_heads heads only; several query "
                    "heads share each of them")
        if _close(2 * got, expected):
            return "a KV cache holds a key AND a value per head, per layer, per token"
        if _close(got * batch, expected):
            return "every sequence of the batch has its own cache"
        return "bytes = 2 (K and V) · layers · n_kv_heads · head_dim · context · bytes per number · batch"
    state_only = card["n_layers"] * card["d_inner"] * card["d_state"] * card["bytes"] * batch
    if _close(got, state_only):
        return "the cache also keeps the last d_conv - 1 inputs of each layer's causal convolution, (d_inner, d_conv - 1)"
    if _close(got / context, expected) or _close(got / context, state_only):
        return "a Mamba's state does not grow with the context: the same bytes after 1 token or a million"
    if _close(got, expected * card["d_conv"] // (card["d_conv"] - 1)) or _close(
            got, card["n_layers"] * card["d_inner"] * (card["d_state"] + card["d_conv"]) * card["bytes"] * batch):
        return "a kernel of width d_conv needs only the d_conv - 1 previous inputs (the current one is new)"
    return "bytes = layers · d_inner · (d_state + d_conv - 1) · bytes per number · batch"


@exercise("09.2", "cache memory: a KV cache against a Mamba state", atol=0, rtol=0,
          compare=_with_hint(_cache_hint))
def cache_cases():
    for description, card, context, batch, expected in _measured_cache_cases():
        yield description, (card, context, batch), {}, Expected(expected, (card, context, batch))
    for name, context, batch in [("Llama-2-7B", 131072, 1), ("Llama-3-8B", 131072, 1), ("Llama-3-8B", 8192, 16),
                                 ("Falcon-Mamba-7B", 131072, 1), ("Mamba-2.8B", 2048, 16)]:
        args = (CARDS[name], context, batch)
        yield f"{name} after {context:,} tokens, batch {batch}", args, {}, Expected(card_bytes(*args), args)


# ---------------------------------------------------------------------------------------------- 09.3
def _traffic_expected(memory, bandwidth, weights, per_seq):
    b = max(0, (memory - weights) // per_seq)                     # whole sequences beside the weights
    return b, (b * bandwidth / (weights + b * per_seq) if b else 0.0)


def _traffic_hint(got, expected, memory, bandwidth, weights, per_seq):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "return a pair (max_batch, tokens_per_second)"
    b = expected[0]
    if got[0] == memory // per_seq:
        return "the weights take memory too: only memory - weight_bytes is left for the caches"
    if isinstance(got[0], float) and not float(got[0]).is_integer():
        return "a batch is a whole number of sequences: round down"
    if got[0] == b and b and _close(got[1], bandwidth / (weights + b * per_seq)):
        return "each step produces one token per sequence: batch tokens, not one"
    if got[0] == b and b and _close(got[1], bandwidth / (weights + per_seq)):   # b·bw / (b·W + b·c)
        return "a step reads the weights once for the whole batch, not once per sequence"
    return "step bytes = weights + batch · cache per sequence; tokens/s = batch · bandwidth / step bytes"


@exercise("09.3", "the bandwidth-bound ceiling of batched generation", atol=0, rtol=1e-9,
          compare=_with_hint(_traffic_hint))
def traffic_cases():
    for desc, args in [
        ("a 1.3B Transformer in fp16 at 2176 tokens on an 80 GB GPU at 2 TB/s",
         (80 * 10 ** 9, 2.0e12, 2_600_000_000, costs.kv_cache_bytes(24, 16, 128, 2176))),
        ("a 1.4B Mamba, state in fp32, same GPU",
         (80 * 10 ** 9, 2.0e12, 2_800_000_000, costs.ssm_state_bytes(48, 4096, 16, 4))),
        ("a small model on a laptop: 16 GB at 50 GB/s", (16 * 10 ** 9, 5.0e10, 1_000_000_000, 300_000_000)),
        ("weights alone do not fit", (10 ** 9, 1.0e12, 2 * 10 ** 9, 1000)),
    ]:
        yield desc, args, {}, Expected(_traffic_expected(*args), args)
