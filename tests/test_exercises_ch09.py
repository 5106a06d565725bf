"""The exercises of chapter 9: the package's answers pass, each typical mistake fails with its hint,
a stub is NOT ATTEMPTED; and the real-model cards' expected bytes agree with ssm_tutor.costs."""

import pytest

from ssm_tutor import costs
from ssm_tutor.exercises import check_exercise
from ssm_tutor.exercises.ch09 import CARDS, card_bytes
from exercise_answers import answer_tests


def transformer_flops(length, d_model, n_layers, vocab_size):
    return sum(costs.transformer_forward_flops(length, d_model, n_layers, vocab_size).values())


def cache_bytes(card, context, batch):
    if card["family"] == "transformer":
        return costs.kv_cache_bytes(card["n_layers"], card["n_kv_heads"], card["head_dim"], context, card["bytes"], batch)
    return costs.ssm_state_bytes(card["n_layers"], card["d_inner"], card["d_state"], card["d_conv"] - 1,
                                 card["bytes"], batch)


def ceiling(memory, bandwidth, weights, per_seq):
    b = costs.max_batch(memory, weights, per_seq)
    return b, (costs.bandwidth_bound_throughput(weights, per_seq, b, bandwidth) if b else 0.0)


ANSWERS = {"09.1": transformer_flops, "09.2": cache_bytes, "09.3": ceiling}


test_answer_passes, test_stub_is_not_attempted = answer_tests(ANSWERS)


def _half(f):
    return lambda *a: f(*a) // 2


def _kv_with_all_heads(card, context, batch):
    if card["family"] != "transformer":
        return cache_bytes(card, context, batch)
    return costs.kv_cache_bytes(card["n_layers"], card["n_heads"], card["head_dim"], context, card["bytes"], batch)


def _state_without_conv(card, context, batch):
    if card["family"] == "transformer":
        return cache_bytes(card, context, batch)
    return card["n_layers"] * card["d_inner"] * card["d_state"] * card["bytes"] * batch


def _state_per_token(card, context, batch):
    return cache_bytes(card, context, batch) * (context if card["family"] == "mamba" else 1)


@pytest.mark.parametrize("exercise_id, wrong, hint", [
    ("09.1", _half(transformer_flops), "multiply-add is 2 FLOPs"),
    ("09.1", lambda L, d, n, V: sum(costs.transformer_forward_flops(L, d, n, V, causal=True).values()),
     "every query-key pair"),
    ("09.1", lambda L, d, n, V: transformer_flops(L, d, n, V) - 2 * L * d * V, "LM head"),
    ("09.1", lambda L, d, n, V: transformer_flops(L, d, n, V) - n * 2 * L * L * d, "two L×L products"),
    ("09.2", _kv_with_all_heads, "grouped-query attention"),
    ("09.2", lambda card, c, b: cache_bytes(card, c, b) // (2 if card["family"] == "transformer" else 1),
     "a key AND a value"),
    ("09.2", _state_without_conv, "d_conv - 1 inputs"),
    ("09.2", _state_per_token, "does not grow with the context"),
    ("09.3", lambda M, bw, W, c: (M // c, ceiling(M, bw, W, c)[1]), "the weights take memory too"),
    ("09.3", lambda M, bw, W, c: (ceiling(M, bw, W, c)[0], ceiling(M, bw, W, c)[0] * bw
                                  / (ceiling(M, bw, W, c)[0] * (W + c)) if ceiling(M, bw, W, c)[0] else 0.0),
     "reads the weights once for the whole batch"),
])
def test_typical_mistake_fails_with_its_hint(exercise_id, wrong, hint):
    result = check_exercise(exercise_id, wrong, verbose=False)
    assert result.status == "FAIL", result
    assert hint in result.message, result.message


def test_real_model_cards():
    # Llama-2-7B (multi-head), fp16, 128k tokens: 2 · 32 layers · 32 heads · 128 · 131072 · 2 bytes = 64 GiB
    assert card_bytes(CARDS["Llama-2-7B"], 131072) == 64 * 2 ** 30
    assert card_bytes(CARDS["Llama-3-8B"], 131072) == 16 * 2 ** 30          # 8 K/V heads: 4x less
    # Falcon-Mamba-7B: 64 layers · 8192 · (16 + 3) · 4 bytes, whatever the context
    assert card_bytes(CARDS["Falcon-Mamba-7B"], 131072) == card_bytes(CARDS["Falcon-Mamba-7B"], 1) == 39_845_888
