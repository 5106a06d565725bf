"""Specification of ssm_tutor.costs (stage 9): FLOPs counted as PyTorch counts them, bytes as the
allocator and transformers allocate them, curve fitting on exact power laws, and the one-pass
long-context evaluation equal to the per-length recurrent one. No timing is asserted."""

import math
import os

import pytest
import torch

from ssm_tutor import costs, tasks
from ssm_tutor.baselines import TransformerLM, cache_nbytes
from ssm_tutor.mamba import MambaConfig, MambaLM

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tiny_mamba(seed=0, **sizes):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=16, hidden_size=32, num_hidden_layers=2, state_size=8)
    cfg.update(sizes)
    return MambaLM(MambaConfig(**cfg)).eval()


def counted_flops(model, ids, math_attention=False):
    """FLOPs per aten operator, as torch.utils.flop_counter.FlopCounterMode counts them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        if math_attention:
            with sdpa_kernel(SDPBackend.MATH):
                model(ids)
        else:
            model(ids)
    return {str(k).removeprefix("aten."): v for k, v in counter.get_flop_counts()["Global"].items()}


# ---------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("length, batch", [(37, 1), (128, 2)])
def test_mamba_matrix_products_and_conv_are_what_flop_counter_mode_counts(length, batch):
    model = tiny_mamba(hidden_size=48, state_size=4)
    ids = torch.randint(0, 16, (batch, length))
    got = counted_flops(model, ids)
    ours = costs.forward_flops(model, length, batch)
    products = ours["in_proj"] + ours["x_proj"] + ours["dt_proj"] + ours["out_proj"] + ours["lm_head"]
    # The scan's read-out y_t = C_t·h_t (2·E·N per token and layer, in ours["scan"]) is a matrix product
    # too when the fused scan batches it (batch > 1); at batch 1 it runs as matrix-vector products,
    # which FlopCounterMode does not count.
    E, N, layers = model.config.intermediate_size, model.config.state_size, model.config.num_hidden_layers
    readout = 2 * E * N * batch * length * layers
    extra = got.get("mm", 0) + got.get("bmm", 0) + got.get("addmm", 0) - products
    assert extra in (0, readout)
    K = model.config.conv_kernel                 # the convolution is run padded: l + K - 1 outputs, l kept
    assert got["convolution"] == ours["conv"] * (length + K - 1) // length
    assert set(got) <= {"mm", "bmm", "addmm", "convolution"}      # the scan is elementwise: not counted there


def test_transformer_flops_equal_flop_counter_mode_with_dense_attention():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=16, d_model=48, n_layers=2, n_heads=4).eval()
    for length, batch in [(50, 1), (96, 3)]:
        got = counted_flops(model, torch.randint(0, 16, (batch, length)), math_attention=True)
        assert sum(got.values()) == sum(costs.forward_flops(model, length, batch).values())


def test_flop_parts_scale_as_the_docstrings_say():
    m = costs.mamba_forward_flops(1000, 64, 2, 100)
    m2 = costs.mamba_forward_flops(2000, 64, 2, 100)
    assert all(m2[k] == 2 * m[k] for k in m)                                     # all linear in L
    t = costs.transformer_forward_flops(1000, 64, 2, 100)
    t2 = costs.transformer_forward_flops(2000, 64, 2, 100)
    assert t2["scores"] == 4 * t["scores"] and t2["qkv"] == 2 * t["qkv"]          # attention quadratic
    causal = costs.transformer_forward_flops(1000, 64, 2, 100, causal=True)
    assert causal["scores"] == t["scores"] * 1001 // 2000                       # L(L+1)/2 of L² pairs
    with pytest.raises(TypeError, match="MambaLM or a TransformerLM"):
        costs.forward_flops(torch.nn.Linear(2, 2), 10)


# --------------------------------------------------------------------------------- matched sizes
def test_matched_transformer_is_the_closest_width():
    mamba = tiny_mamba(hidden_size=64, num_hidden_layers=4)
    t = costs.matched_transformer(mamba, n_layers=2, n_heads=4)
    target, got = costs.parameter_count(mamba), costs.parameter_count(t)
    d = t.config["d_model"]
    for other in (d - 8, d + 8):
        assert abs(costs.parameter_count(TransformerLM(16, other, 2, 4)) - target) >= abs(got - target)
    assert t.config["vocab_size"] == 16 and t.config["pos_encoding"] == "rope"
    assert costs.parameter_count(t) == sum(p.numel() for n, p in t.named_parameters())   # tied: named once


# ---------------------------------------------------------------------------------------- bytes
def test_allocated_bytes_counts_storages_once_and_reserved_room():
    base = torch.zeros(10, 100)                                   # 4000 bytes
    assert costs.allocated_bytes([base, base[:3], base.t()]) == 4000              # views share a storage
    assert costs.allocated_bytes({"a": base, "b": [torch.zeros(5, dtype=torch.float64)]}) == 4040
    with pytest.raises(TypeError, match="no tensors"):
        costs.allocated_bytes([1, 2])

    torch.manual_seed(0)
    t = TransformerLM(vocab_size=16, d_model=16, n_layers=2, n_heads=2, max_len=4).eval()
    cache = t.init_cache(1)
    for _ in range(5):                                              # the 5th token doubles the room to 8
        t.step(torch.tensor([1]), cache)
    assert costs.allocated_bytes(cache) == 2 * 2 * 8 * 16 * 4       # k and v, 2 layers, 8 slots, d=16, fp32
    assert cache_nbytes(cache) == 2 * 2 * 5 * 16 * 4                # the filled slots only


def test_peak_allocated_bytes_follows_allocations_and_frees():
    def work():
        a = torch.ones(250_000)                   # 1 MB
        b = torch.ones(500_000)                   # 2 MB: 3 MB held
        del a
        c = torch.ones(250_000)                   # back to 3 MB
        return (b.sum() + c.sum()).item()

    value, peak = costs.peak_allocated_bytes(work)
    assert value == 750_000.0
    assert 3_000_000 <= peak < 3_000_000 + 4096                  # + a scalar or two

    held = torch.ones(1_000_000)                  # allocated before the call: not part of its peak
    _, peak = costs.peak_allocated_bytes(lambda: held.add_(1))
    assert peak < 4096


def profiler_peak(fn):
    """The peak from PyTorch's profiler: every allocation and free the CPU allocator reports, in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        held += nbytes
        peak = max(peak, held)
    return peak


def test_peak_allocated_bytes_agrees_with_pytorchs_profiler():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
    torch.manual_seed(0)
    mamba, transformer = tiny_mamba(), TransformerLM(vocab_size=16, d_model=32, n_layers=2, n_heads=4).eval()
    ids = torch.randint(0, 16, (2, 300))
    with torch.inference_mode():
        assert costs.peak_allocated_bytes(mamba, ids)[1] == profiler_peak(lambda: mamba(ids))
        ours, theirs = costs.peak_allocated_bytes(transformer, ids)[1], profiler_peak(lambda: transformer(ids))
        assert 0.9 * theirs <= ours <= theirs       # the flash kernel's own scratch is not seen (often none)
        with sdpa_kernel(SDPBackend.MATH):      # naive attention: one (L, L) buffer stays inside softmax's kernel
            ours, theirs = costs.peak_allocated_bytes(transformer, ids)[1], profiler_peak(lambda: transformer(ids))
    assert 0.8 * theirs <= ours <= theirs
    assert ours > 2 * 2 * 4 * 300 * 300 * 4         # at least the scores and their softmax, (b, h, L, L) each


def test_kv_cache_after_is_the_cache_that_stepping_leaves():
    torch.manual_seed(0)
    t = TransformerLM(vocab_size=16, d_model=16, n_layers=2, n_heads=2, max_len=4).eval()
    for context in (1, 4, 5, 9):
        stepped = t.init_cache(2)
        for _ in range(context):
            t.step(torch.tensor([1, 2]), stepped)
        made = costs.kv_cache_after(t, 2, context)
        assert made.length == stepped.length == context
        assert [k.shape for k in made.k] == [k.shape for k in stepped.k]
        assert costs.allocated_bytes(made) == costs.allocated_bytes(stepped)


def test_peak_rss_sees_touched_memory():
    # 64 MiB: above glibc's largest mmap threshold (32 MiB), so it gets fresh pages. A smaller block
    # can come from memory an earlier test freed but the C library kept resident: no rise (seen at 16 MiB)
    with costs.PeakRSS() as rss:
        x = torch.ones(64 * 2 ** 20 // 4)          # 64 MiB, written
    assert x[0] == 1
    assert rss.rise >= 56 * 2 ** 20


def test_cache_formulas_match_the_caches_transformers_and_ssm_tutor_allocate():
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=8, num_key_value_heads=2)       # grouped-query
    with torch.no_grad():
        pkv = transformers.LlamaForCausalLM(cfg).eval()(torch.randint(0, 32, (2, 11)), use_cache=True).past_key_values
    kv = [t for layer in pkv.layers for t in (layer.keys, layer.values)]
    assert costs.allocated_bytes(kv) == costs.kv_cache_bytes(3, 2, 8, 11, bytes_per_number=4, batch=2)

    mcfg = transformers.MambaConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, state_size=8)
    with torch.no_grad():
        cp = transformers.MambaForCausalLM(mcfg).eval()(torch.randint(0, 32, (2, 11)), use_cache=True).cache_params
    states = [list(layer.conv_states.values()) + list(layer.recurrent_states.values()) for layer in cp.layers]
    assert costs.allocated_bytes(states) == costs.ssm_state_bytes(2, 64, 8, conv_inputs=4, batch=2)   # keeps K

    ours = tiny_mamba()
    cache = ours.init_cache(3)
    kept = cache.conv_states[0].shape[-1]
    assert costs.allocated_bytes(cache) == costs.ssm_state_bytes(2, 64, 8, conv_inputs=kept, batch=3)


def test_traffic_model():
    assert costs.decode_step_bytes(1000, 10, 4) == 1040
    assert costs.bandwidth_bound_throughput(1000, 10, 4, bandwidth=1040.0) == 4.0
    assert costs.max_batch(1000, 100, 300) == 3 and costs.max_batch(50, 100, 300) == 0


# -------------------------------------------------------------------------------------- seconds
def test_interleaved_times_alternates_the_order():
    calls = []
    times = costs.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(s >= 0 for v in times.values() for s in v)


def test_loglog_slope_and_crossover_on_power_laws():
    x = [2.0 ** k for k in range(4, 12)]
    assert costs.loglog_slope(x, [3 * v for v in x]) == pytest.approx(1.0)
    assert costs.loglog_slope(x, [0.5 * v ** 2 for v in x]) == pytest.approx(2.0)
    linear, quadratic = [100 * v for v in x], [v * v for v in x]
    assert costs.crossover(x, linear, quadratic) == pytest.approx(100.0)   # exact: log(b/a) is linear in log x
    assert costs.crossover(x, quadratic, linear) == x[0]                     # b cheaper nowhere
    assert costs.crossover(x, [10 ** 9] * len(x), linear) is None
    with pytest.raises(ValueError, match="two points"):
        costs.loglog_slope([1.0], [1.0])
    assert all(isinstance(v, float) for v in costs.load_average())


# ------------------------------------------------------------------------------ one-pass long context
def test_one_pass_equals_the_per_length_recurrent_evaluation():
    model = tiny_mamba(seed=3)
    lengths, n, seed = [5, 9, 16], 6, 11
    res = costs.induction_accuracy_one_pass(model, lengths, n, 16, seed=seed)
    reference = tasks.induction_accuracy_by_length(model, lengths, n, 16, seed=seed, batch_size=n, recurrent=True)
    assert res["accuracy"] == reference
    for L in lengths:
        batch = tasks.induction_heads(n, L, 16, seed=seed + L)
        expected = tasks.last_position_logits(model, batch.inputs, recurrent=True).argmax(-1)
        assert torch.equal(res["predictions"][L], expected)
    assert res["steps"] == 16 and res["batch"] == 18
    assert res["cache_bytes"] == costs.allocated_bytes(model.init_cache(18))
    assert not model.training


# ------------------------------------------------------------------------------ chunked long context
def test_chunked_reading_equals_the_per_length_recurrent_evaluation():
    """Read in chunks of 4 (not dividing the lengths), the answers are those of stepping token by token."""
    model = tiny_mamba(seed=3)
    lengths, seed = [5, 9, 16], 11
    res = costs.induction_accuracy_chunked(model, lengths, [6, 6, 3], 16, seed=seed, chunk=4, step_probe=3)
    for L, n in zip(lengths, [6, 6, 3]):
        batch = tasks.induction_heads(n, L, 16, seed=seed + L)
        expected = tasks.last_position_logits(model, batch.inputs, recurrent=True).argmax(-1)
        assert torch.equal(res["predictions"][L], expected)
        assert res["correct"][L] == int((expected == batch.targets[:, -1]).sum())
        assert res["accuracy"][L] == res["correct"][L] / n and res["tokens"][L] == n * L
    assert res["accuracy"] == tasks.induction_accuracy_by_length(model, lengths[:2], 6, 16, seed=seed, batch_size=6,
                                                                 recurrent=True) | {16: res["accuracy"][16]}
    assert res["cache_bytes"] == costs.allocated_bytes(model.init_cache(1)) and res["chunk"] == 4
    with pytest.raises(ValueError, match="one count per length"):
        costs.induction_accuracy_chunked(model, lengths, [6, 6], 16)


def test_wilson_interval():
    from scipy.stats import binomtest                                      # the reference
    for correct, total in ((8, 10), (1, 4), (3, 8), (0, 5), (7, 7)):
        ci = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
        assert costs.wilson_interval(correct, total) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert costs.wilson_interval(0, 4)[0] == 0.0 and costs.wilson_interval(4, 4)[1] == 1.0
    assert 0 < costs.wilson_interval(0, 4)[1] < 1                         # not zero-width at 0 of few
    with pytest.raises(ValueError, match="total must be at least 1"):
        costs.wilson_interval(0, 0)
