"""Exercises of chapter 7 (``notebooks/07_mamba_model.ipynb``): the full Mamba, run as a recurrence.

07.1  the bytes of a model's whole inference state, derived from its config, for any batch and
      weight dtype: expected values are *measured*, the storage the package's own cache
      allocates (``MambaMixer.init_states``, one layer, times the layers);
07.2  the conv window as a ring buffer (write one slot per token instead of shifting K-1; the
      ``cache_seqlens`` option of the official ``causal_conv1d_update``): expected values from
      ``numpy.convolve`` over the whole input sequence;
07.3  greedy generation for a batch of prompts of different lengths with ``step`` alone, no
      padding: expected values from ``MambaLM.generate`` on each prompt alone (which
      ``tests/test_mamba.py`` holds to ``transformers.MambaForCausalLM``), on float64 models
      whose greedy choices are far from ties.

Each checker names the output that differs and gives a hint for each typical mistake.
"""

from __future__ import annotations

import numpy as np
import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, compare_answer
from ssm_tutor.mamba import MambaConfig, MambaLM, MambaMixer


# ----------------------------------------------------------------------------------------------
# 07.1 the inference state in bytes
# ----------------------------------------------------------------------------------------------

def _allocated(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _state_formula(c: MambaConfig, batch: int, dtype: torch.dtype, *, window: int | None = None,
                   width: int | None = None, ssm_dtype: torch.dtype | None = None,
                   conv_dtype: torch.dtype | None = None, layers: bool = True, per_batch: bool = True) -> int:
    """The cache size with one ingredient changed: how each typical mistake counts."""
    E = c.intermediate_size if width is None else width
    K1 = c.conv_kernel - 1 if window is None else window
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    conv_size = (conv_dtype or dtype).itemsize
    ssm_size = (ssm_dtype or wide).itemsize
    copies = (c.num_hidden_layers if layers else 1) * (batch if per_batch else 1)
    return copies * E * (K1 * conv_size + c.state_size * ssm_size)


@exercise("07.1", "the inference state in bytes, from the config", atol=0, rtol=0, compare=compare_answer)
def cache_bytes_cases():
    cases = [("mamba-130m, float32, batch 1", dict(hidden_size=768, num_hidden_layers=24), 1, torch.float32),
             ("mamba-370m, bfloat16, batch 8", dict(hidden_size=1024, num_hidden_layers=48), 8, torch.bfloat16),
             ("mamba-130m, float16, batch 2", dict(hidden_size=768, num_hidden_layers=24), 2, torch.float16),
             ("D=40, E=96 (not 2D), K=2, N=5, 3 layers, float64, batch 3",
              dict(hidden_size=40, intermediate_size=96, conv_kernel=2, state_size=5, num_hidden_layers=3), 3,
              torch.float64)]
    for name, sizes, batch, dtype in cases:
        config = MambaConfig(vocab_size=16, **sizes)
        one_layer = MambaMixer(config, fast=False).to(dtype)                  # the package's own cache, measured
        measured = config.num_hidden_layers * _allocated(one_layer.init_states(batch))
        assert measured == _state_formula(config, batch, dtype)
        f = _state_formula
        mistakes = (
            Mistake("the conv window holds K−1 inputs: the newest, x_t, arrives with the step (transformers' "
                    "cache keeps K, one input no later output needs)",
                    gives=f(config, batch, dtype, window=config.conv_kernel)),
            Mistake("the states live in the E = intermediate_size channels of the SSM branch, not in the D = "
                    "hidden_size of the residual stream", gives=f(config, batch, dtype, width=config.hidden_size)),
            Mistake("the SSM state h is kept in float32 even when the weights are half precision (float64 in a "
                    "float64 model): see the dtype of init_state's zeros; only the conv window takes the weights' "
                    "dtype",
                    gives=f(config, batch, dtype, ssm_dtype=dtype)),
            Mistake("the conv window is stored in the weights' dtype (2 bytes for bfloat16 / float16, 8 for float64), "
                    "not always 4 bytes", gives=f(config, batch, dtype, conv_dtype=torch.float32,
                                                  ssm_dtype=torch.float32)),
            Mistake("every layer keeps its own conv window and SSM state: multiply by the number of layers",
                    gives=f(config, batch, dtype, layers=False)),
            Mistake("each sequence of the batch has its own state: multiply by the batch size",
                    gives=f(config, batch, dtype, per_batch=False)),
        )
        yield name, (config, batch, dtype), {}, Answer(
            measured, names=("bytes",), mistakes=mistakes,
            hint="per layer and sequence: a conv window of (K−1)·E numbers in the weights' dtype and an SSM state "
                 "of N·E numbers in float32 (float64 for a float64 model)")


# ----------------------------------------------------------------------------------------------
# 07.2 the conv window as a ring buffer
# ----------------------------------------------------------------------------------------------

def _ring_at(seq: np.ndarray, t: int, K: int) -> np.ndarray:
    """The ring before token t: slot s mod (K−1) holds x_s for s = t−K+1 … t−1 (zero before the start)."""
    b, E, _ = seq.shape
    ring = np.zeros((b, E, K - 1))
    for s in range(t - K + 1, t):
        if s >= 0:
            ring[:, :, s % (K - 1)] = seq[:, :, s]
    return ring


def _ring_step(ring, t, x, weight, bias, *, order="right", write_first=False, slot_shift=0, flip=False):
    """The right step, or a typical mistake when an option is changed."""
    K1 = ring.shape[-1]
    ring = ring.clone()
    if write_first:
        ring[:, :, t % K1] = x
    slots = {"right": (t + torch.arange(K1)) % K1, "storage": torch.arange(K1),
             "backward": (t - torch.arange(K1)) % K1}[order]
    window = torch.cat([ring[:, :, slots], x[:, :, None]], dim=-1)        # (b, E, K), oldest first
    w = weight.flip(-1) if flip else weight
    y = (window * w).sum(-1) + (0 if bias is None else bias)
    ring[:, :, (t + slot_shift) % K1] = x
    return y, ring


@exercise("07.2", "the conv window as a ring buffer", atol=1e-10, rtol=1e-8, compare=compare_answer)
def ring_conv_step_cases():
    rng = np.random.default_rng(72)
    for b, E, K, t, bias in [(1, 1, 2, 0, False), (2, 3, 4, 0, True), (2, 3, 4, 5, True), (2, 3, 4, 6, False),
                             (2, 3, 4, 7, True), (1, 4, 5, 9, True), (3, 2, 3, 4, True)]:
        seq = rng.standard_normal((b, E, t + 1))                               # x_0 … x_t
        weight, bb = rng.standard_normal((E, K)), (rng.standard_normal(E) if bias else None)
        y = np.array([[np.convolve(seq[i, e], weight[e, ::-1])[t] for e in range(E)] for i in range(b)])
        if bias:
            y = y + bb                                                         # PyTorch's conv1d, from numpy.convolve
        ring_after = _ring_at(np.concatenate([seq, np.zeros((b, E, 1))], -1), t + 1, K)
        T = dict(ring=torch.tensor(_ring_at(seq, t, K)), x=torch.tensor(seq[:, :, t]), weight=torch.tensor(weight),
                 bias=None if bb is None else torch.tensor(bb))
        args = (T["ring"], t, T["x"], T["weight"], T["bias"])
        mistakes = (
            Mistake("slot t mod (K−1) holds x_{t−K+1}, the oldest input, which y_t still needs: read the window "
                    "first, then write x_t over that slot", gives=_ring_step(*args, write_first=True)),
            Mistake("the slots are not in time order: slot s mod (K−1) holds x_s, so the window, oldest first, "
                    "is slots (t + j) mod (K−1) for j = 0 … K−2, then x_t",
                    gives=_ring_step(*args, order="storage")),
            Mistake("the window runs forward in time: x_{t−K+1+j} is in slot (t + j) mod (K−1), not (t − j)",
                    gives=_ring_step(*args, order="backward")),
            Mistake("weight[:, k] multiplies x_{t−K+1+k}, so weight[:, K−1] is for the newest input x_t "
                    "(PyTorch's conv1d is a cross-correlation: no flip)", gives=_ring_step(*args, flip=True)),
            Mistake("x_t goes into slot t mod (K−1), replacing x_{t−K+1}, the one input no later output needs",
                    looks=lambda got, args=args: torch.allclose(got[0], _ring_step(*args)[0])),
        )
        yield f"b={b}, E={E}, K={K}, t={t}, bias={bias}", args, {}, Answer(
            (torch.tensor(y), torch.tensor(ring_after)), names=("y_t (b, E)", "ring (b, E, K−1)"),
            mistakes=mistakes,
            hint="y_t = Σ_k weight[:, k] · x_{t−K+1+k} (+ bias), with x_s read from slot s mod (K−1) for s < t")


# ----------------------------------------------------------------------------------------------
# 07.3 greedy generation for prompts of different lengths, by step alone
# ----------------------------------------------------------------------------------------------

def _tiny_model(seed: int, vocab: int) -> MambaLM:
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(vocab_size=vocab, hidden_size=16, state_size=4, num_hidden_layers=2,
                                conv_kernel=3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _greedy_by_step(model, prompt, n_new, *, step_last_twice=False):
    """One prompt alone, by step: the right answer, or the off-by-one mistake. Returns (tokens, smallest gap
    between the two best logits over the choices made)."""
    cache, seq, gap = model.init_cache(1), prompt.tolist(), float("inf")
    for token in seq:
        logits, cache = model.step(torch.tensor([token]), cache)
    if step_last_twice:
        logits, cache = model.step(torch.tensor([seq[-1]]), cache)
    for i in range(n_new):
        top = torch.topk(logits[0], 2).values
        gap = min(gap, float(top[0] - top[1]))
        seq.append(int(logits[0].argmax()))
        if i + 1 < n_new:
            logits, cache = model.step(torch.tensor([seq[-1]]), cache)
    return torch.tensor(seq), gap


def _padded_batch(model, prompts, n_new, *, left: bool):
    """The padding mistake: pad with token 0 to one length, read the batch together, then generate."""
    longest = max(len(p) for p in prompts)
    rows = [[0] * (longest - len(p)) + p.tolist() if left else p.tolist() + [0] * (longest - len(p)) for p in prompts]
    cache, seqs = model.init_cache(len(prompts)), [list(p.tolist()) for p in prompts]
    for i in range(longest):
        logits, cache = model.step(torch.tensor([r[i] for r in rows]), cache)
    for j in range(n_new):
        for s, row_logits in zip(seqs, logits):
            s.append(int(row_logits.argmax()))
        if j + 1 < n_new:
            logits, cache = model.step(torch.tensor([s[-1] for s in seqs]), cache)
    return tuple(torch.tensor(s) for s in seqs)


@exercise("07.3", "greedy generation for prompts of different lengths, by step alone", atol=0, rtol=0,
          compare=compare_answer)
def ragged_generation_cases():
    g = torch.Generator().manual_seed(73)
    for seed, lengths, n_new in [(0, [5], 6), (1, [1, 4, 7], 6), (2, [3, 3], 4), (3, [6, 2], 1), (4, [2, 8, 1, 4], 5)]:
        vocab = 23
        model = _tiny_model(seed, vocab)
        prompts = [torch.randint(1, vocab, (n,), generator=g) for n in lengths]
        with torch.no_grad():
            expected = tuple(model.generate(p[None], n_new)[0] for p in prompts)     # each prompt alone
            alone = [_greedy_by_step(model, p, n_new) for p in prompts]
            assert all(torch.equal(a, e) for (a, _), e in zip(alone, expected))
            assert min(gap for _, gap in alone) > 1e-6, "a near tie: pick another seed"
            mistakes = (
                Mistake("a padding token is still read into the state, so it changes what follows: a recurrent "
                        "batch needs no padding. Feed each row its own next prompt token until its prompt ends, "
                        "then its own last choice", gives=_padded_batch(model, prompts, n_new, left=False)),
                Mistake("left padding changes the state too (without an attention mask the pads are read like "
                        "tokens): feed each row its own prompt, no padding", gives=_padded_batch(model, prompts, n_new,
                                                                                             left=True)),
                Mistake("the first new token is the argmax of the logits of the step that read the prompt's last "
                        "token: that token must not be read twice",
                        gives=tuple(_greedy_by_step(model, p, n_new, step_last_twice=True)[0] for p in prompts)),
            )
        names = tuple(f"row {i} (a prompt of {n} token{'s' if n != 1 else ''}, then {n_new} new)"
                      for i, n in enumerate(lengths))
        args = (model, [p.clone() for p in prompts], n_new)
        yield f"{len(lengths)} prompt(s) of lengths {lengths}, {n_new} new tokens", args, {}, Answer(
            expected, names=names, mistakes=mistakes,
            hint="return, per prompt, the prompt followed by its n_new greedy tokens (a list of 1-D tensors); "
                 "use model.init_cache(len(prompts)) and model.step only")
