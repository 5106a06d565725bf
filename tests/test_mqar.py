"""Multi-query associative recall (``tasks.mqar``) follows Zoology's definition, property by property."""

import numpy as np
import pytest
import torch

from ssm_tutor.tasks import IGNORE, TaskBatch, mqar

SIZES = [(64, 8, 8192), (256, 64, 8192), (128, 16, 256), (24, 6, 16), (33, 8, 40)]


def _parts(batch, P):
    """keys, values (N, P) from the opening pairs; query positions (N, P) where targets are scored."""
    keys, values = batch.inputs[:, 0:2 * P:2], batch.inputs[:, 1:2 * P:2]
    return keys, values


@pytest.mark.parametrize("seq_len,P,V", SIZES)
def test_shapes_dtypes_and_seeding(seq_len, P, V):
    batch = mqar(16, seq_len, P, V, seed=3)
    assert isinstance(batch, TaskBatch)
    assert batch.inputs.shape == batch.targets.shape == (16, seq_len)
    assert batch.inputs.dtype == batch.targets.dtype == torch.long
    assert batch.inputs.min() >= 0 and batch.inputs.max() < V
    again, other = mqar(16, seq_len, P, V, seed=3), mqar(16, seq_len, P, V, seed=4)
    assert torch.equal(batch.inputs, again.inputs) and torch.equal(batch.targets, again.targets)
    assert not torch.equal(batch.inputs, other.inputs)


@pytest.mark.parametrize("seq_len,P,V", SIZES)
def test_keys_are_distinct_and_in_the_lower_half_values_in_the_upper_half(seq_len, P, V):
    keys, values = _parts(mqar(200, seq_len, P, V, seed=1), P)
    assert keys.min() >= 1 and keys.max() < V // 2
    assert values.min() >= V // 2 and values.max() < V
    for row_k, row_v in zip(keys.tolist(), values.tolist()):
        assert len(set(row_k)) == P and len(set(row_v)) == P


@pytest.mark.parametrize("seq_len,P,V", SIZES)
def test_each_key_is_queried_once_after_the_pairs_and_the_target_is_its_value(seq_len, P, V):
    batch = mqar(100, seq_len, P, V, seed=2)
    keys, values = _parts(batch, P)
    for n in range(100):
        scored = (batch.targets[n] != IGNORE).nonzero().flatten().tolist()
        assert len(scored) == P                                       # one query per key, nothing else scored
        assert min(scored) >= 2 * P                                   # after the pairs
        assert all((t - 2 * P) % 2 == 0 for t in scored)              # on Zoology's even slots
        pairs = dict(zip(keys[n].tolist(), values[n].tolist()))
        queried = [batch.inputs[n, t].item() for t in scored]
        assert sorted(queried) == sorted(pairs)                       # every key exactly once
        assert [batch.targets[n, t].item() for t in scored] == [pairs[k] for k in queried]


def test_everything_but_the_queries_is_ignored_and_the_filler_is_random():
    batch = mqar(500, 64, 8, 512, seed=0)
    mask = batch.targets != IGNORE
    assert int(mask.sum()) == 500 * 8
    assert (batch.targets[:, :16] == IGNORE).all()                    # the pairs are never scored
    filler = batch.inputs[:, 16:][~mask[:, 16:]]                       # noise tokens
    counts = torch.bincount(filler, minlength=512).float()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.2     # ~uniform over the whole vocabulary


def _law(slots, a):
    p = a * np.arange(1, slots + 1) ** (a - 1)
    return p / p.sum()


@pytest.mark.parametrize("a", [0.01, 1.0])
def test_query_slots_follow_the_power_law(a):
    # the frequency of each query slot, against numpy's own weighted sampling without replacement
    seq_len, P, N = 64, 8, 3000
    slots = (seq_len - 2 * P) // 2
    batch = mqar(N, seq_len, P, 256, seed=5, power_a=a)
    pos = (batch.targets != IGNORE).nonzero()[:, 1]
    ours = np.bincount(((pos - 2 * P) // 2).numpy(), minlength=slots) / (N * P)
    # the reference: successive sampling without replacement from p is the top P of
    # log p + Gumbel noise (the Gumbel-top-k identity), drawn here with numpy
    rng = np.random.default_rng(0)
    race = np.log(_law(slots, a)) + rng.gumbel(size=(4 * N, slots))
    theirs = np.bincount(np.argsort(-race, axis=1)[:, :P].ravel(), minlength=slots) / (4 * N * P)
    assert 0.5 * np.abs(ours - theirs).sum() < 0.03                    # total variation; sampling noise ~0.01
    if a < 1:
        assert ours[0] > 3 * ours[-1]                                  # early slots much more likely
    else:
        assert np.allclose(ours, 1 / slots, atol=0.01)                 # a = 1: uniform


@pytest.mark.parametrize("args,message", [
    ((10, 31, 8, 8192), "seq_len >= 4·num_kv_pairs = 32"),
    ((10, 64, 8, 16), "vocab_size >= 18"),
    ((0, 64, 8, 8192), "num_examples must be a positive integer"),
    ((10, 64, 0, 8192), "num_kv_pairs must be a positive integer"),
])
def test_impossible_sizes_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        mqar(*args)


def test_bad_power_is_named():
    with pytest.raises(ValueError, match="power_a"):
        mqar(4, 64, 8, 256, power_a=0.0)


def test_without_random_filler_every_non_query_after_the_pairs_is_zero():
    """Zoology's Figure 2 setting (random_non_queries=False): the filler is token 0, which no key uses."""
    noisy = mqar(50, 64, 8, 256, seed=9)
    clean = mqar(50, 64, 8, 256, seed=9, random_non_queries=False)
    assert torch.equal(noisy.targets, clean.targets)                   # same pairs, same queries
    query = clean.targets != IGNORE
    assert torch.equal(noisy.inputs[query], clean.inputs[query])
    assert (clean.inputs[:, 16:][~query[:, 16:]] == 0).all()
    assert (clean.inputs[:, :16] > 0).all()


def test_a_mixture_has_equal_shares_in_order():
    from ssm_tutor.tasks import mqar_mixture

    batch = mqar_mixture(10, 64, [4, 8, 16], 256, seed=2)
    scored = (batch.targets != IGNORE).sum(1).tolist()
    assert scored == [4] * 4 + [8] * 3 + [16] * 3
    assert torch.equal(batch.inputs[4:7], mqar(3, 64, 8, 256, seed=201).inputs)
    with pytest.raises(ValueError, match="at least the number of pair counts"):
        mqar_mixture(2, 64, [4, 8, 16], 256)
