"""Stage 9: what a sequence model costs — FLOPs, bytes and seconds, counted and measured.

Notebook: ``notebooks/09_scaling_claims.ipynb``; benchmark: ``benchmarks/bench_scaling.py``.
Paper: Gu & Dao (2023), Section 3.3 (the hardware-aware scan: linear time, no (b, l, d, n) tensor in
main memory), Section 4.5 and Figure 8 (speed and memory: "5× higher inference throughput than
a Transformer of similar size"), and Section 4.1.2 (induction heads extrapolated to 2^20 tokens).

Four kinds of tool, each used by both the notebook and the benchmark:

* **FLOP counts** (:func:`forward_flops`): the floating-point operations of a forward pass, part by
  part, for :class:`~ssm_tutor.mamba.MambaLM` and :class:`~ssm_tutor.baselines.TransformerLM`. A
  multiply-add counts 2 (the convention of Kaplan et al. 2020 and of PyTorch's ``FlopCounterMode``,
  against which ``tests/test_costs.py`` checks every matrix product). The attention is counted dense
  (all L² query-key pairs, as ``FlopCounterMode`` counts it); a causal kernel may skip the masked half.
* **Bytes** (:func:`allocated_bytes`, :func:`peak_allocated_bytes`, :class:`PeakRSS`): memory that was
  actually allocated, measured, not summed from shapes: a cache's storages, the peak of the storage
  that a call's operations held (every operation watched as it runs), or the process's peak resident
  set for calls too long to watch.
* **Seconds** (:func:`interleaved_times`, :func:`loglog_slope`, :func:`crossover`): timings of two or more
  models taken in turns, so that a busy machine slows them alike, and what to read off the curves.
* **Memory traffic** (:func:`decode_step_bytes`, :func:`bandwidth_bound_throughput`, :func:`max_batch`):
  generating one token reads every weight once and every sequence's cache once; on a GPU that
  traffic, not arithmetic, sets the speed. Figures from this model are *derived*, not measured.

Plus the long-context evaluations: :func:`induction_accuracy_chunked` reads each sequence in chunks
with the state carried across (chunked prefill, ``MambaLM.forward(..., cache=, return_cache=True)``),
:func:`induction_accuracy_one_pass` reads sequences of several lengths in a single recurrent pass,
one token per step; both in memory that does not grow with the length. :func:`wilson_interval` gives
an accuracy's 95 % interval.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["mamba_forward_flops", "transformer_forward_flops", "forward_flops", "parameter_count",
           "matched_transformer", "allocated_bytes", "peak_allocated_bytes", "PeakRSS",
           "interleaved_times", "loglog_slope", "crossover", "load_average",
           "decode_step_bytes", "bandwidth_bound_throughput", "max_batch", "kv_cache_bytes", "kv_cache_after",
           "ssm_state_bytes", "induction_accuracy_one_pass", "induction_accuracy_chunked", "wilson_interval"]


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------
def mamba_forward_flops(length: int, d_model: int, n_layers: int, vocab_size: int, d_state: int = 16,
                        expand: int = 2, d_conv: int = 4, dt_rank: int | None = None, batch: int = 1) -> dict:
    """FLOPs of one Mamba forward pass over ``batch`` sequences of ``length`` tokens, by part.

    Per token and layer, with D = d_model, E = expand·D, N = d_state, K = d_conv, R = dt_rank:

        in_proj   2·D·2E            x -> [x, z]
        conv      2·E·K             the causal depthwise convolution
        x_proj    2·E·(R + 2N)      x -> [Δ_low_rank, B, C]
        dt_proj   2·R·E             Δ_low_rank -> Δ
        scan      E·(7N + 3)        per channel and state: ΔA, exp, (Δx)·B, Ā h + B̄x (2), C·h (2);
                                    per channel: Δ·x, D·x (2)   (an exp counts as one FLOP)
        out_proj  2·E·D
    and once per token the LM head, 2·D·V. Every part is linear in the length. The matrix products and
    the convolution are what ``FlopCounterMode`` counts; the scan is elementwise work it ignores (small:
    ~7N/(6D) of the projections). Norms, SiLU, softplus and the gate are left out (a few per channel).
    """
    D, E, N, K = d_model, expand * d_model, d_state, d_conv
    R = math.ceil(D / 16) if dt_rank is None else dt_rank
    tokens = batch * length
    per_layer = {"in_proj": 2 * D * 2 * E, "conv": 2 * E * K, "x_proj": 2 * E * (R + 2 * N),
                 "dt_proj": 2 * R * E, "scan": E * (7 * N + 3), "out_proj": 2 * E * D}
    parts = {name: tokens * n_layers * f for name, f in per_layer.items()}
    parts["lm_head"] = tokens * 2 * D * vocab_size
    return parts


def transformer_forward_flops(length: int, d_model: int, n_layers: int, vocab_size: int, mlp_ratio: int = 4,
                              causal: bool = False, batch: int = 1) -> dict:
    """FLOPs of one Transformer forward pass (``TransformerLM``'s pre-norm blocks), by part.

    Per layer, for L tokens of width d (the heads split d, so their sizes cancel):

        qkv        2·L·d·3d       the three projections
        scores     2·L·L·d        q·kᵀ for every pair of positions          (quadratic)
        mix        2·L·L·d        softmax(scores)·v                         (quadratic)
        out        2·L·d·d
        mlp        2·L·d·(4d)·2   two linear layers
    and the LM head 2·L·d·V. ``causal=True`` counts only the L(L+1)/2 pairs a causal mask keeps (what
    a kernel that skips masked blocks can save, at best); the default counts all L², as
    ``FlopCounterMode`` does for PyTorch's attention.
    """
    d, L = d_model, length
    pairs = L * (L + 1) // 2 if causal else L * L
    per_layer = {"qkv": 2 * L * d * 3 * d, "scores": 2 * pairs * d, "mix": 2 * pairs * d,
                 "out": 2 * L * d * d, "mlp": 2 * 2 * L * d * mlp_ratio * d}
    parts = {name: batch * n_layers * f for name, f in per_layer.items()}
    parts["lm_head"] = batch * 2 * L * d * vocab_size
    return parts


def forward_flops(model, length: int, batch: int = 1, causal: bool = False) -> dict:
    """:func:`mamba_forward_flops` or :func:`transformer_forward_flops` with ``model``'s sizes."""
    from ssm_tutor.baselines import TransformerLM
    from ssm_tutor.mamba import MambaLM

    if isinstance(model, MambaLM):
        c = model.config
        return mamba_forward_flops(length, c.hidden_size, c.num_hidden_layers, c.vocab_size, c.state_size,
                                   c.expand, c.conv_kernel, c.time_step_rank, batch)
    if isinstance(model, TransformerLM):
        c = model.config
        return transformer_forward_flops(length, c["d_model"], c["n_layers"], c["vocab_size"], causal=causal,
                                         batch=batch)
    raise TypeError(f"forward_flops counts a MambaLM or a TransformerLM, got {type(model).__name__}")


# ----------------------------------------------------------------------------------------------
# matched sizes
# ----------------------------------------------------------------------------------------------
def parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters, a tied matrix counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matched_transformer(mamba, n_layers: int, n_heads: int = 4):
    """The RoPE ``TransformerLM`` with ``n_layers`` layers, ``n_heads`` heads and mamba's vocabulary whose
    parameter count is closest to ``mamba``'s: its width is searched over multiples of 2·n_heads (RoPE
    needs an even head size). Candidates are built on the "meta" device: no memory, no initialisation."""
    from ssm_tutor.baselines import TransformerLM

    target, step = parameter_count(mamba), 2 * n_heads
    vocab = mamba.config.vocab_size

    def count(d):
        with torch.device("meta"):
            return parameter_count(TransformerLM(vocab, d, n_layers, n_heads))

    # start near the root of 12·layers·d² + vocab·d = target (a block has ~12 d² weights), then walk
    # to the two widths around the target (the count grows with d)
    d = max(step, int((-vocab + math.sqrt(vocab ** 2 + 48 * n_layers * target)) / (24 * n_layers)) // step * step)
    while d > step and count(d) > target:
        d -= step
    while count(d + step) < target:
        d += step
    best = min((d, d + step), key=lambda w: abs(count(w) - target))
    return TransformerLM(vocab, best, n_layers, n_heads)


# ----------------------------------------------------------------------------------------------
# bytes
# ----------------------------------------------------------------------------------------------
def _tensors(obj):
    """Every tensor in obj: a tensor, a list/tuple/dict of them, or an object whose attributes hold them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for item in vars(obj).values():
            yield from _tensors(item)


def allocated_bytes(obj) -> int:
    """Bytes of memory allocated for the tensors in ``obj`` (a cache, a list, a tensor), measured as
    the size of each distinct storage they live in: a view is not counted twice, and room reserved
    but not yet filled (a KV cache doubles its capacity when full) is counted, because it is
    memory the process holds. Summing ``numel · element_size`` of the shapes sees neither."""
    storages = {}
    for t in _tensors(obj):
        s = t.untyped_storage()
        storages[(s.data_ptr(), t.device)] = s.nbytes()
    if not storages:
        raise TypeError(f"allocated_bytes: found no tensors in a {type(obj).__name__}")
    return sum(storages.values())


def peak_allocated_bytes(fn: Callable, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; return ``(result, peak)``, peak being the most bytes of tensor
    storage that the call's operations held at any moment (memory held before the call not counted).

    Every PyTorch operation the call runs passes through :class:`_LiveBytes`, which adds the storage
    of each tensor an operation *creates* (an output that is not a view of one of its inputs) and takes
    it off when the last tensor using that storage dies. It sees every tensor, including those the
    model drops at once, but not the scratch memory a kernel uses inside itself. Checked against
    PyTorch's profiler, which logs the allocator's every allocation and free (``tests/test_costs.py``):
    the same peak for MambaLM and for TransformerLM's flash attention, ~90 % of it for naive attention
    (softmax keeps an (L, L) buffer inside). The profiler takes ~10 s to start on this machine, this
    nothing; it costs a few microseconds per operation: measure memory and time in separate calls.
    """
    with _LiveBytes() as tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak


class _LiveBytes(TorchDispatchMode):
    """A dispatch mode that keeps the running total of the storage bytes created under it, and its peak."""

    def __init__(self):
        super().__init__()
        self.live, self.held, self.peak = {}, 0, 0          # storage address -> [bytes, tensors using it]
        self.inside_attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Attention reaches a dispatch mode as one operation: run it as its parts (and their parts), to
        # see the math path's (L, L) scores or the flash kernel's output as they are allocated.
        if func is torch.ops.aten.scaled_dot_product_attention.default or self.inside_attention:
            self.inside_attention += 1
            try:
                with self:
                    out = func.decompose(*args, **kwargs)
            finally:
                self.inside_attention -= 1
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t, inputs)
        return out

    def _track(self, t, inputs):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.live:                                 # a new view of a storage made here
            self.live[key][1] += 1
        elif key in inputs or storage.nbytes() == 0:         # a view of an input, or in place: not new memory
            return
        else:
            self.live[key] = [storage.nbytes(), 1]
            self.held += storage.nbytes()
            self.peak = max(self.peak, self.held)
        weakref.finalize(t, self._release, key)

    def _release(self, key):
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:                                # the last tensor on this storage is gone
                self.held -= entry[0]
                del self.live[key]


class PeakRSS:
    """The rise of the process's peak resident set size (VmHWM) over a ``with`` block, in bytes.

    For calls too long to profile (millions of operations). Linux: the peak is reset on entry by
    writing 5 to ``/proc/self/clear_refs``; elsewhere (no reset) the figure is the rise of the
    lifetime peak, a lower bound. It sees all memory, PyTorch's or not, but page granularity and
    memory the C library keeps after a free blur it by a few MiB::

        with PeakRSS() as rss:
            run()
        print(rss.rise)
    """

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start = _peak_rss()
        self.rise = 0
        return self

    def __exit__(self, *exc):
        self.rise = max(0, _peak_rss() - self.start)


def _peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (VmHWM, or ru_maxrss without /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------
# seconds
# ----------------------------------------------------------------------------------------------
def interleaved_times(candidates: dict, repeats: int = 3, warmup: int = 1) -> dict:
    """Time each zero-argument callable in ``candidates`` ({name: fn}) ``repeats`` times, in turns:
    round r runs them in order, round r+1 in reverse order, so a machine that slows down (other jobs,
    heat) slows every candidate alike. ``warmup`` untimed rounds first. Returns {name: [seconds, ...]};
    take the median (``statistics.median``) or the minimum of each list."""
    if not candidates:
        raise ValueError("interleaved_times needs at least one candidate")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def loglog_slope(x, y) -> float:
    """The exponent p of a power law y ≈ c·x^p fitted by least squares to (log x, log y).
    Slope 1: cost grows linearly with x; slope 2: quadratically."""
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    if len(lx) < 2:
        raise ValueError(f"loglog_slope needs at least two points, got {len(lx)}")
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def crossover(x, cost_a, cost_b) -> float | None:
    """The first x at which curve b stops being cheaper than curve a (b ≥ a), interpolated linearly
    in (log x, log b/a) between the two measured points around the crossing. x increasing.
    Returns x[0] when b ≥ a from the start, None when b < a everywhere."""
    logs = [math.log(b / a) for a, b in zip(cost_a, cost_b)]
    if logs[0] >= 0:
        return float(x[0])
    for i in range(1, len(logs)):
        if logs[i] >= 0:
            lx0, lx1 = math.log(x[i - 1]), math.log(x[i])
            frac = -logs[i - 1] / (logs[i] - logs[i - 1])
            return math.exp(lx0 + frac * (lx1 - lx0))
    return None


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (runnable processes per core count): to record
    how busy the machine was while it was measured. [] where the OS does not say."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------
# memory traffic of generation (the traffic model; its figures are derived, not measured)
# ----------------------------------------------------------------------------------------------
def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int, bytes_per_number: int = 2,
                   batch: int = 1) -> int:
    """Bytes of a Transformer's KV cache: a key and a value of n_kv_heads·head_dim numbers per layer,
    per token read, per sequence. (Grouped-query attention shares a K/V head among several query heads,
    so n_kv_heads may be smaller than the number of heads.)"""
    return 2 * n_layers * n_kv_heads * head_dim * context * bytes_per_number * batch


def ssm_state_bytes(n_layers: int, d_inner: int, d_state: int, conv_inputs: int = 3, bytes_per_number: int = 4,
                    batch: int = 1) -> int:
    """Bytes of a Mamba's recurrent state: per layer an (E, N) SSM state and the last ``conv_inputs``
    inputs of the causal convolution, (E, conv_inputs), whatever the context. A kernel of width K needs
    K-1 past inputs (``MambaLM`` keeps those); ``mamba_ssm`` and ``transformers`` keep K. The SSM state
    stays in float32 even for a half-precision model, hence the default of 4 bytes per number."""
    return n_layers * d_inner * (d_state + conv_inputs) * bytes_per_number * batch


def decode_step_bytes(weight_bytes: int, cache_bytes_per_sequence: int, batch: int) -> int:
    """Bytes one generation step reads from memory: every weight once (shared by the whole batch),
    and every sequence's cache once (read, and for a KV cache one token's worth appended)."""
    return weight_bytes + batch * cache_bytes_per_sequence


def bandwidth_bound_throughput(weight_bytes: int, cache_bytes_per_sequence: int, batch: int,
                               bandwidth: float) -> float:
    """Tokens per second if a step takes as long as reading its bytes at ``bandwidth`` bytes/s: the
    ceiling for memory-bound generation (arithmetic and kernel launches ignored)."""
    return batch * bandwidth / decode_step_bytes(weight_bytes, cache_bytes_per_sequence, batch)


def max_batch(memory_bytes: int, weight_bytes: int, cache_bytes_per_sequence: int) -> int:
    """The most sequences whose caches fit in ``memory_bytes`` beside the weights (0 if none)."""
    return max(0, (memory_bytes - weight_bytes) // cache_bytes_per_sequence)


def kv_cache_after(transformer, batch: int, context: int):
    """A ``TransformerLM`` KV cache as ``step`` leaves it after reading ``context`` tokens, without running
    ``context`` steps (whose attention would cost O(context²)): the cache's own growth rule runs (we
    present ``step`` a full cache until the capacity reaches ``context``: it doubles it each time),
    then the first ``context`` slots hold random keys and values. A step's cost and the cache's
    memory do not depend on those values."""
    cache = transformer.init_cache(batch)
    token = torch.zeros(batch, dtype=torch.long)
    with torch.inference_mode():
        while cache.k[0].shape[2] < context:
            cache.length = cache.k[0].shape[2]               # full: the next step doubles the capacity
            transformer.step(token, cache)
        for t in cache.k + cache.v:
            t[:, :, :context].normal_()
    cache.length = context
    return cache


# ----------------------------------------------------------------------------------------------
# long contexts in one constant-memory pass
# ----------------------------------------------------------------------------------------------
@torch.inference_mode()
def induction_accuracy_one_pass(model, lengths, num_examples: int, vocab_size: int, seed: int = 0,
                                progress: bool = False) -> dict:
    """Induction-heads accuracy at every length in ``lengths``, in ONE recurrent pass of max(lengths) steps.

    The examples are those of ``ssm_tutor.tasks.induction_accuracy_by_length`` (seed + length per
    length), so the answers agree with it. All ``len(lengths) · num_examples`` sequences form one batch,
    right-aligned: a sequence of length L joins at step max(lengths) - L, its rows of the state set
    to zero at that moment (the state a fresh ``init_cache`` has), so every sequence ends at the last
    step, where its answer is read. Memory: the model's fixed-size cache, the tokens (one byte each
    when the vocabulary allows) and nothing that grows with the length.

    Returns {"accuracy": {L: fraction}, "predictions": {L: (num_examples,) tokens}, "seconds": wall time
    of the pass, "steps": max(lengths), "batch": rows, "cache_bytes": allocated bytes of the cache,
    "peak_rss_rise": bytes (:class:`PeakRSS` over the pass)}.
    """
    from ssm_tutor.tasks import induction_heads

    lengths = sorted(int(L) for L in lengths)
    longest, rows = lengths[-1], len(lengths) * num_examples
    dtype = torch.uint8 if vocab_size <= 256 else torch.int32
    tokens = torch.zeros(longest, rows, dtype=dtype)                 # time-major: (steps, rows)
    answers, starts = torch.empty(rows, dtype=torch.long), {}
    for i, L in enumerate(lengths):
        batch = induction_heads(num_examples, L, vocab_size, seed=seed + L)
        block = slice(i * num_examples, (i + 1) * num_examples)
        tokens[longest - L:, block] = batch.inputs.t().to(dtype)     # right-aligned
        answers[block] = batch.targets[:, -1]
        starts[longest - L] = block
        del batch
    was_training = model.training
    model.eval()
    cache = model.init_cache(rows)
    steps = range(longest)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"{rows} sequences, one recurrent pass", unit="tok", mininterval=10,
                     smoothing=0.1)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        for t in steps:
            if t in starts:                                          # these sequences begin now
                for state in (*cache.conv_states, *cache.ssm_states):
                    state[starts[t]] = 0
            logits, cache = model.step(tokens[t].long(), cache)      # (rows, V)
        seconds = time.perf_counter() - t0
    model.train(was_training)
    predicted = logits.argmax(-1)                                    # (rows,)
    blocks = {L: slice(i * num_examples, (i + 1) * num_examples) for i, L in enumerate(lengths)}
    accuracy = {L: float((predicted[b] == answers[b]).float().mean()) for L, b in blocks.items()}
    return {"accuracy": accuracy, "predictions": {L: predicted[b] for L, b in blocks.items()}, "seconds": seconds, "steps": longest, "batch": rows,
            "cache_bytes": allocated_bytes(cache), "peak_rss_rise": rss.rise}


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for z = 1.96) of a fraction ``correct / total``: the range of true
    accuracies with which ``correct`` of ``total`` is not surprising. Unlike p ± z·sqrt(p(1-p)/n) it stays
    inside [0, 1] and is not zero-width at 0 or 1 of few examples."""
    if total < 1:
        raise ValueError(f"total must be at least 1, got {total}")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.inference_mode()
def induction_accuracy_chunked(model, lengths, num_examples, vocab_size: int, seed: int = 0, chunk: int = 4096,
                               step_probe: int = 256, progress: bool = False) -> dict:
    """Induction-heads accuracy at every length, each length's sequences read in chunks of ``chunk``
    tokens with the state carried from chunk to chunk (chunked prefill): ``model(ids, cache=cache,
    return_cache=True)`` per chunk, the answer read from the last chunk's last logits.

    The examples are those of ``ssm_tutor.tasks.induction_accuracy_by_length`` (seed + length per
    length), so the answers agree with it. ``num_examples``: an int, or one count per length (fewer
    at the longest lengths). Memory: the fixed-size cache, one chunk's activations and the tokens (one
    byte each when the vocabulary allows); nothing grows with the length but the tokens themselves.
    After each length, ``step_probe`` tokens are read one at a time with ``model.step`` at the same
    batch: the token-by-token speed to compare with, measured at the same moment.

    Returns {"accuracy": {L: fraction}, "correct": {L: count}, "num_examples": {L: count},
    "predictions": {L: tokens}, "seconds": {L: wall time of reading the chunks}, "tokens": {L: tokens
    read}, "peak_rss_rise": {L: bytes, :class:`PeakRSS` over the reading}, "stepped_seconds_per_token":
    {L: seconds}, "cache_bytes": bytes of one example's cache, "chunk": chunk}. One chunk is read
    before each length's measurement (warm-up: the allocator's pools, the kernels' first calls).
    """
    from ssm_tutor.tasks import induction_heads

    lengths = sorted(int(L) for L in lengths)
    counts = [num_examples] * len(lengths) if isinstance(num_examples, int) else [int(n) for n in num_examples]
    if len(counts) != len(lengths):
        raise ValueError(f"num_examples must be an int or one count per length ({len(lengths)}), got {len(counts)}")
    dtype = torch.uint8 if vocab_size <= 256 else torch.int32
    was_training = model.training
    model.eval()
    out = {k: {} for k in ("accuracy", "correct", "num_examples", "predictions", "seconds", "tokens",
                           "peak_rss_rise", "stepped_seconds_per_token")}
    for L, n in zip(lengths, counts):
        batch = induction_heads(n, L, vocab_size, seed=seed + L)
        tokens, answers = batch.inputs.to(dtype), batch.targets[:, -1]          # (n, L), (n,)
        del batch
        starts = range(0, L, chunk)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"length {L}, {n} sequences, chunks of {chunk}", unit="chunk", mininterval=10)
        model(tokens[:, :chunk].long(), cache=model.init_cache(n))              # warm-up (allocator, kernels): not measured
        cache = model.init_cache(n)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            for s in starts:
                logits, cache = model(tokens[:, s:s + chunk].long(), cache=cache, return_cache=True)   # (n, ≤chunk, V)
            seconds = time.perf_counter() - t0
        predicted = logits[:, -1].argmax(-1)                                    # (n,)
        correct = int((predicted == answers).sum())
        probe = model.init_cache(n)
        t0 = time.perf_counter()
        for t in range(min(step_probe, L)):
            model.step(tokens[:, t].long(), probe)
        stepped = (time.perf_counter() - t0) / (min(step_probe, L) * n)
        for key, value in (("accuracy", correct / n), ("correct", correct), ("num_examples", n),
                           ("predictions", predicted), ("seconds", seconds), ("tokens", n * L),
                           ("peak_rss_rise", rss.rise), ("stepped_seconds_per_token", stepped)):
            out[key][L] = value
        if progress:
            print(f"length {L}: {correct}/{n} correct, {n * L / seconds:,.0f} tokens/s in chunks, "
                  f"{1 / stepped:,.0f} tokens/s stepped, peak RSS rise {rss.rise / 2**20:.1f} MiB", flush=True)
        del tokens
    model.train(was_training)
    out["cache_bytes"] = allocated_bytes(model.init_cache(1))
    out["chunk"] = chunk
    return out
