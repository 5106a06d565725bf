"""The exercises of chapter 8: a correct answer passes, each typical mistake fails with its hint,
a stub is NOT ATTEMPTED. (Expected answers come from math / F.cross_entropy / a real KVCache inside
ssm_tutor.exercises.ch08; the correct answers here are written independently of them.)"""

import math

import torch

from ssm_tutor.train import lr_at, masked_cross_entropy
from exercise_answers import answer_tests, mistake_test


def kv_cache_bytes(n_layers, n_heads, d_model, batch, length):
    return 2 * n_layers * batch * n_heads * length * (d_model // n_heads) * 4


ANSWERS = {"08.1": lr_at, "08.2": masked_cross_entropy, "08.3": kv_cache_bytes}


test_answer_passes, test_stub_is_not_attempted = answer_tests(ANSWERS)


def _lr_to_zero(step, total, lr, warmup, floor):
    if step <= warmup:
        return lr * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _lr_zero_based_warmup(step, total, lr, warmup, floor):
    return lr * (step - 1) / warmup if step <= warmup else lr_at(step, total, lr, warmup, floor)


def _lr_progress_over_total(step, total, lr, warmup, floor):
    if step <= warmup:
        return lr * step / warmup
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))


def _ce_over_all_positions(logits, targets):
    mask = targets != -100
    nll = -torch.log_softmax(logits, -1)[mask].gather(-1, targets[mask][:, None])
    return nll.sum() / targets.numel()


def _ce_on_raw_logits(logits, targets):
    mask = targets != -100
    return -logits[mask].gather(-1, targets[mask][:, None]).mean()


MISTAKES = [
    # (exercise, wrong answer, a phrase of the hint it must get)
    ("08.1", _lr_to_zero, "not at 0"),
    ("08.1", _lr_zero_based_warmup, "1-based"),
    ("08.1", _lr_progress_over_total, "(t − W) / (T − W)"),
    ("08.2", lambda logits, targets: -masked_cross_entropy(logits, targets), "NEGATIVE"),
    ("08.2", _ce_over_all_positions, "SCORED positions"),
    ("08.2", _ce_on_raw_logits, "log_softmax"),
    ("08.3", lambda n_layers, n_heads, d_model, batch, length: kv_cache_bytes(n_layers, n_heads, d_model, batch,
                                                                              length) // 2, "keys AND values"),
    ("08.3", lambda n_layers, n_heads, d_model, batch, length: kv_cache_bytes(n_layers, n_heads, d_model, batch,
                                                                              length) // 4, "4 bytes"),
]


test_typical_mistake_fails_with_its_hint = mistake_test(MISTAKES)
