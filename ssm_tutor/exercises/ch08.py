"""Exercises of chapter 8 (notebooks/08_training.ipynb): training on the paper's synthetic tasks.

Expected answers: 08.1 from the closed form of the warm-up + cosine schedule written out here
with ``math`` (independently of ``ssm_tutor.train.lr_at``); 08.2 from PyTorch's own
``F.cross_entropy(..., ignore_index=-100)``; 08.3 from counting the KV cache's tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssm_tutor.exercises import exercise
from ssm_tutor.tasks import IGNORE


@exercise("08.1", "warm-up + cosine learning-rate schedule", atol=1e-12, rtol=1e-9)
def schedule_cases():
    for step, total, lr, warmup, floor in [(1, 100, 1e-3, 10, 0.1), (10, 100, 1e-3, 10, 0.1),
                                           (11, 100, 1e-3, 10, 0.1), (55, 100, 1e-3, 10, 0.1),
                                           (100, 100, 1e-3, 10, 0.1), (250, 400, 3e-3, 40, 0.0),
                                           (7, 50, 2e-2, 20, 0.5)]:
        if step <= warmup:
            expected = lr * step / warmup
        else:
            expected = lr * (floor + (1 - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2)
        yield f"step {step} of {total}, warm-up {warmup}, floor {floor}", (step, total, lr, warmup, floor), {}, expected


@exercise("08.2", "cross-entropy at the scored positions only", atol=1e-6, rtol=1e-6)
def masked_ce_cases():
    g = torch.Generator().manual_seed(8)
    for n, l, v, scored in [(2, 5, 4, 1), (4, 12, 10, 4), (3, 7, 16, 7)]:
        logits = torch.randn(n, l, v, generator=g)
        targets = torch.full((n, l), IGNORE)
        targets[:, l - scored:] = torch.randint(0, v, (n, scored), generator=g)
        expected = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=IGNORE)
        yield f"logits {tuple(logits.shape)}, {scored} scored position(s) per sequence", (logits, targets), {}, expected


@exercise("08.3", "the size of a KV cache")
def kv_bytes_cases():
    from ssm_tutor.baselines import TransformerLM, cache_nbytes

    for layers, heads, d_model, batch, length in [(2, 4, 32, 1, 256), (2, 4, 32, 8, 16384), (6, 8, 512, 1, 4096)]:
        model = TransformerLM(16, d_model, layers, heads, max_len=4)
        cache = model.init_cache(batch, capacity=1)
        cache.length = length                      # what the cache holds after `length` tokens (float32)
        cache.k = [torch.empty(batch, heads, length, d_model // heads) for _ in range(layers)]
        cache.v = [torch.empty(batch, heads, length, d_model // heads) for _ in range(layers)]
        yield (f"{layers} layers, {heads} heads, d_model {d_model}, batch {batch}, {length} tokens",
               (layers, heads, d_model, batch, length), {}, cache_nbytes(cache))
