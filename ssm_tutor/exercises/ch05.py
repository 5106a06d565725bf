"""Chapter 5 exercises: the parallel scan (notebook ``05_parallel_scan.ipynb``).

05.1 Blelloch's down-sweep, from the up-sweep's tree alone (the notebook shows the up-sweep only).
     Expected: the exclusive prefixes from ``torch.cumprod`` and a plain Python loop.
05.2 The exact work and depth of the chunked scan for a length L and a chunk size T.
     Expected: what ``scan_cost("chunked", L, chunk_size=T)`` counts by running the code.
05.3 The backward pass's reverse scan G_t = g_t + a_{t+1} G_{t+1}, written with a forward scan.
     Expected: autograd through a plain Python loop.

Each typical mistake is recomputed here (the combine's order swapped, an inclusive prefix, a_t
for a_{t+1}, ...) so that a learner who makes it is told which one.
"""

from __future__ import annotations

import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, compare_answer
from ssm_tutor.scan import blelloch_up_sweep, combine, linear_scan, scan_cost


def _ab(shape, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g, dtype=torch.float64) * 1.8 - 0.9   # decays in (-0.9, 0.9)
    b = torch.randn(*shape, generator=g, dtype=torch.float64)
    return a, b


def _loop(a, b):
    """h_t = a_t h_{t-1} + b_t from h_{-1} = 0, one Python step at a time (the outside reference)."""
    h, out = torch.zeros_like(b[..., 0]), []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, dim=-1)


# ---- 05.1: the down-sweep ---------------------------------------------------------------------

def _exclusive_prefixes(a, b):
    """P_t = (a_0 … a_{t-1}, h_{t-1}): everything strictly before t; P_0 = (1, 0)."""
    ones, zeros = torch.ones_like(a[..., :1]), torch.zeros_like(b[..., :1])
    a_P = torch.cat([ones, torch.cumprod(a, dim=-1)[..., :-1]], dim=-1)
    b_P = torch.cat([zeros, _loop(a, b)[..., :-1]], dim=-1)
    return a_P, b_P


def _wrong_down_sweep(tree, *, swap=False, own_block=False, root_identity=True):
    """The down-sweep with one typical mistake switched on (for the hints)."""
    a_P, b_P = torch.ones_like(tree[-1][0]), torch.zeros_like(tree[-1][1])
    if not root_identity:
        a_P, b_P = tree[-1]
    for a, b in reversed(tree[:-1]):
        a_blk, b_blk = (a[..., 1::2], b[..., 1::2]) if own_block else (a[..., 0::2], b[..., 0::2])
        a_r, b_r = combine(a_blk, b_blk, a_P, b_P) if swap else combine(a_P, b_P, a_blk, b_blk)
        a_P = torch.stack([a_P, a_r], dim=-1).flatten(-2)
        b_P = torch.stack([b_P, b_r], dim=-1).flatten(-2)
    return a_P, b_P


@exercise("05.1", "Blelloch's down-sweep: the exclusive prefixes from the up-sweep's tree",
          atol=1e-12, rtol=1e-10, compare=compare_answer)
def down_sweep_cases():
    for seed, shape in enumerate([(8,), (3, 4), (2, 3, 16), (2, 1)]):
        a, b = _ab(shape, seed)
        tree = blelloch_up_sweep(a, b)
        yield f"a, b of shape {shape} (N = {shape[-1]})", (tree,), {}, Answer(
            _exclusive_prefixes(a, b), names=("a_P", "b_P"),
            mistakes=(
                Mistake("these are the inclusive prefixes (a_0 … a_t, h_t); the down-sweep gives every position "
                        "what comes strictly BEFORE it, so position 0 gets the identity (1, 0)",
                        (torch.cumprod(a, dim=-1), _loop(a, b))),
                Mistake("the combine's order: the right child's prefix is P ∘ (left sibling's block), P first, "
                        "because the steps before the parent's block happen first; combine(block, P) composes "
                        "them the other way round", _wrong_down_sweep(tree, swap=True)),
                Mistake("the right child's prefix takes in its LEFT sibling's block (a[..., 0::2]), the steps "
                        "between the parent's start and its own start, not its own block",
                        _wrong_down_sweep(tree, own_block=True)),
                Mistake("start the walk from the identity (1, 0) at the root: nothing comes before the whole "
                        "sequence, whatever the root's own product is", _wrong_down_sweep(tree, root_identity=False)),
            ),
            hint="walk the levels from the root down (reversed(tree[:-1])); each node's prefix P goes unchanged "
                 "to its left child and as combine(P, left child's block) to its right child; interleave "
                 "left, right with torch.stack(..., dim=-1).flatten(-2)")


# ---- 05.2: the chunked scan's work and depth --------------------------------------------------

def _chunked_counts(L, T, *, padded=True, fold_round=True, fold_all=False):
    chunks = -(-L // T)
    within = (T - 1) * chunks if padded else L - chunks          # (1) T − 1 rounds over every chunk
    carry = chunks - 1                                           # (2) one combine per chunk boundary
    fold = L if fold_all else max(L - T, 0)                      # (3) every position after chunk 0
    work = within + carry + fold
    depth = (T - 1) + carry + (1 if fold_round and L > T else 0)
    return work, depth


@exercise("05.2", "the exact work and depth of the chunked scan", compare=compare_answer)
def chunked_cost_cases():
    for L, T in [(1024, 32), (100, 10), (100, 7), (12, 4), (5, 8), (1, 1)]:
        cost = scan_cost("chunked", L, chunk_size=T)
        right = (cost.work, cost.depth)
        candidates = [
            ("the last chunk is padded with identity steps up to T, and step (1) runs all T − 1 rounds on "
             "every chunk, padding included: (T − 1) · ⌈L/T⌉ combines", _chunked_counts(L, T, padded=False)),
            ("chunk 0 starts from h = 0 and needs no fold-in; the fold-in touches positions T … L − 1 only",
             _chunked_counts(L, T, fold_all=True)),
            ("the fold-in is one more round (when there is a second chunk): depth (T − 1) + (⌈L/T⌉ − 1) + 1",
             _chunked_counts(L, T, fold_round=False)),
            ("T + L/T and 2L are the page's approximations; count the rounds and combines the code runs",
             (2 * L, T + -(-L // T))),
        ]
        mistakes = tuple(Mistake(hint, gives) for hint, gives in candidates if gives != right)
        yield f"L = {L}, T = {T}", (L, T), {}, Answer(
            right, names=("work", "depth"), mistakes=mistakes,
            hint="count the three steps of chunked_scan separately: (1) within chunks, (2) the carry, "
                 "(3) the fold-in; a round is one vectorised combine, its work the number of positions it combines")


# ---- 05.3: the reverse scan of the backward pass ----------------------------------------------

def _adjoint(a, g):
    """G = ∂L/∂b for L = Σ_t g_t h_t, by autograd through the loop: G_t = g_t + a_{t+1} G_{t+1}."""
    b = torch.zeros_like(g, requires_grad=True)
    (G,) = torch.autograd.grad((g * _loop(a, b)).sum(), b)
    return G


def _flipped(fn, a, g):
    flip = lambda x: x.flip(-1)
    return flip(fn(flip(a), flip(g)))


@exercise("05.3", "the reverse scan of the backward pass, G_t = g_t + a_{t+1} G_{t+1}",
          atol=1e-10, rtol=1e-10, compare=compare_answer)
def reverse_scan_cases():
    for seed, shape in enumerate([(6,), (3, 10), (2, 2, 17), (4, 1)]):
        a, g = _ab(shape, seed + 200)
        a_next = torch.cat([a[..., 1:], torch.ones_like(a[..., :1])], dim=-1)
        yield f"a, g of shape {shape}", (a, g), {}, Answer(
            _adjoint(a, g), names=("G",),
            mistakes=(
                Mistake("h_t reaches h_{t+1} through a_{t+1}, not a_t: shift a by one step (a_{t+1}, and 1 past "
                        "the end) before the scan", _flipped(lambda x, y: linear_scan(x, y), a, g)),
                Mistake("the gradient flows backwards in time: flip a_{t+1} and g along the last axis, scan, and "
                        "flip the result back", linear_scan(a_next, g)),
                Mistake("flip the scan's result back: after scanning the flipped sequences, position 0 holds "
                        "G_{L-1}", linear_scan(a_next.flip(-1), g.flip(-1))),
                Mistake("that is a forward scan of (a, g), h_t = a_t h_{t-1} + g_t; the gradient needs the "
                        "future, not the past", linear_scan(a, g)),
            ),
            hint="G_{L-1} = g_{L-1}, then G_t = g_t + a_{t+1} G_{t+1} going backwards; with time flipped this "
                 "is a forward scan of (a_{t+1}, g_t)")
