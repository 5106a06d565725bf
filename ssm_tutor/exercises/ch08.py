"""Exercises of chapter 8 (notebooks/08_training.ipynb): training on the paper's synthetic tasks.

Expected answers: 08.1 from the closed form of the warm-up + cosine schedule written out here
with ``math`` (independently of ``ssm_tutor.train.lr_at``); 08.2 from PyTorch's own
``F.cross_entropy(..., ignore_index=-100)``; 08.3 from the bytes of a real ``KVCache`` counted by
``ssm_tutor.baselines.cache_nbytes``. Each answer lists the typical mistakes it recognises, with a hint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, compare_answer
from ssm_tutor.tasks import IGNORE


def _cosine(step, total, lr, warmup, floor):
    """The schedule of the notebook's formula (the expected answer of 08.1)."""
    if step <= warmup:
        return lr * step / warmup
    return lr * (floor + (1 - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2)


@exercise("08.1", "warm-up + cosine learning-rate schedule", atol=1e-12, rtol=1e-9, compare=compare_answer)
def schedule_cases():
    for step, total, lr, warmup, floor in [(1, 100, 1e-3, 10, 0.1), (10, 100, 1e-3, 10, 0.1),
                                           (11, 100, 1e-3, 10, 0.1), (55, 100, 1e-3, 10, 0.1),
                                           (100, 100, 1e-3, 10, 0.1), (250, 400, 3e-3, 40, 0.0),
                                           (7, 50, 2e-2, 20, 0.5)]:
        mistakes = []
        if step > warmup and floor > 0:
            mistakes.append(Mistake("the cosine must end at the floor min_lr_ratio · lr, not at 0: "
                                    "lr · (r + (1 − r) · ½ (1 + cos …))",
                                    gives=lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2))
        if step > warmup:
            mistakes.append(Mistake("the cosine's progress runs from 0 at the end of the warm-up to 1 at the last "
                                    "step: (t − W) / (T − W), not t / T",
                                    gives=lr * (floor + (1 - floor) * (1 + math.cos(math.pi * step / total)) / 2)))
        else:
            mistakes.append(Mistake("steps are 1-based: the first step already has lr · 1/W (and step W has the "
                                    "full lr), so use t / W, not (t − 1) / W", gives=lr * (step - 1) / warmup))
        yield (f"step {step} of {total}, warm-up {warmup}, floor {floor}", (step, total, lr, warmup, floor), {},
               Answer(_cosine(step, total, lr, warmup, floor), names=("lr_t",), mistakes=tuple(mistakes)))


@exercise("08.2", "cross-entropy at the scored positions only", atol=1e-6, rtol=1e-6, compare=compare_answer)
def masked_ce_cases():
    g = torch.Generator().manual_seed(8)
    for n, l, v, scored in [(2, 5, 4, 1), (4, 12, 10, 4), (3, 7, 16, 7)]:
        logits = torch.randn(n, l, v, generator=g)
        targets = torch.full((n, l), IGNORE)
        targets[:, l - scored:] = torch.randint(0, v, (n, scored), generator=g)
        expected = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=IGNORE)
        mask = targets != IGNORE
        nll = -torch.log_softmax(logits, -1)[mask].gather(-1, targets[mask][:, None])     # (|S|, 1)
        mistakes = [Mistake("that is minus the answer: the loss is the NEGATIVE log-likelihood", gives=-expected),
                    Mistake("that is the sum over the scored positions; the loss is their mean", gives=nll.sum())]
        if scored < l:
            mistakes.append(Mistake("divide by the number of SCORED positions |S|, not by all N·L positions: "
                                    "the unscored ones must not count", gives=nll.sum() / (n * l)))
        mistakes.append(Mistake("take log_softmax over the vocabulary (the last dimension) before picking the "
                                "target's entry; the raw logit is not a log-probability",
                                gives=-logits[mask].gather(-1, targets[mask][:, None]).mean()))
        yield (f"logits {tuple(logits.shape)}, {scored} scored position(s) per sequence", (logits, targets), {},
               Answer(expected, names=("loss",), mistakes=tuple(mistakes)))


@exercise("08.3", "the size of a KV cache", compare=compare_answer)
def kv_bytes_cases():
    from ssm_tutor.baselines import TransformerLM, cache_nbytes

    for layers, heads, d_model, batch, length in [(2, 4, 32, 1, 256), (2, 4, 32, 8, 16384), (6, 8, 512, 1, 4096)]:
        model = TransformerLM(16, d_model, layers, heads, max_len=4)
        cache = model.init_cache(batch, capacity=1)
        cache.length = length                      # what the cache holds after `length` tokens (float32)
        cache.k = [torch.empty(batch, heads, length, d_model // heads) for _ in range(layers)]
        cache.v = [torch.empty(batch, heads, length, d_model // heads) for _ in range(layers)]
        nbytes = cache_nbytes(cache)
        mistakes = [Mistake("the cache holds keys AND values: two tensors per layer", gives=nbytes // 2),
                    Mistake("that counts numbers, not bytes: a float32 takes 4 bytes", gives=nbytes // 4)]
        if batch > 1:
            mistakes.append(Mistake("every sequence of the batch has its own keys and values: multiply by batch",
                                    gives=nbytes // batch))
        yield (f"{layers} layers, {heads} heads, d_model {d_model}, batch {batch}, {length} tokens",
               (layers, heads, d_model, batch, length), {},
               Answer(nbytes, names=("bytes",), mistakes=tuple(mistakes)))
