"""Exercises of chapter 11 (``notebooks/11_mamba2_ssd.ipynb``): Mamba-2 and state space duality.

11.1  the stable segment sum: S[t, s] = a_{s+1} + … + a_t (s ≤ t), -inf above the diagonal,
      exact even after a huge (or infinite) entry.
11.2  the state-passing step as a recurrence over chunks (the notebook writes it as a matrix).
11.3  the matrix-multiply FLOPs of the chunked algorithm's three heavy steps, for any L and Q.

Expected answers: 11.1 from a float64 sum over each segment, written here (nothing subtracted);
11.2 from :func:`ssm_tutor.ssd.pass_states` (``tests/test_ssd.py`` checks it against the token-by-token
recurrence); 11.3 from counting the matrix products PyTorch runs for the package's step functions
on tensors of those sizes (``matmul_flops``, which the tests hold to PyTorch's own FlopCounterMode). Each checker names the typical
mistake it recognises.
"""

from __future__ import annotations

import math

import torch

from ssm_tutor.exercises import compare, exercise
from ssm_tutor.ssd import chunk_diagonal_blocks, chunk_off_diagonal_blocks, chunk_states, matmul_flops, pass_states


# ---- 11.1 the stable segsum ----------------------------------------------------------------------

def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """The reference: every segment summed on its own in float64 Python loops, cast to a's dtype."""
    T = a.shape[-1]
    rows = a.reshape(-1, T).double().tolist()
    out = torch.full((len(rows), T, T), -math.inf, dtype=torch.float64)
    for r, row in enumerate(rows):
        for t in range(T):
            for s in range(t + 1):
                out[r, t, s] = math.fsum(row[s + 1:t + 1])
    return out.reshape(*a.shape, T).to(a.dtype)


def _segsum_hint(expected, got, atol, rtol):
    msg = compare(expected, got, atol, rtol, "segsum")
    if msg is None or not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return msg
    T = expected.shape[-1]
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    diagonal = torch.eye(T, dtype=torch.bool)
    if T > 1 and not bool((got[..., above] == -math.inf).all()):
        return msg + ". Hint: above the diagonal (s > t) every entry must be -inf, so that exp() turns it into 0: " \
                     "a later input never reaches an earlier output"
    if not bool((got[..., diagonal] == 0).all()):
        return msg + ". Hint: the diagonal must be 0 (exp(0) = 1: x_t reaches y_t undecayed); the segment for " \
                     "(t, s) is a_{s+1} … a_t, it does not include a_s"
    if bool(torch.isnan(got).any()):
        return msg + ". Hint: NaN is what (-inf) - (-inf) gives: differences of cumulative sums fail after an " \
                     "infinite entry; sum each segment on its own (mask, then cumsum)"
    return msg + ". Hint: the values are close but not exact after a huge entry: differences of cumulative sums " \
                 "lose the small terms' digits; sum each segment on its own (mask, then cumsum)"


@exercise("11.1", "the stable segment sum", atol=1e-6, rtol=1e-6, compare=_segsum_hint)
def segsum_cases():
    g = torch.Generator().manual_seed(111)
    for shape in [(1,), (4,), (2, 3, 6)]:
        a = -torch.rand(*shape, generator=g, dtype=torch.float64)
        yield f"a of shape {shape}, float64", (a,), {}, _segment_sums(a)
    reset = torch.tensor([-0.2, -1e7, -0.1, -0.3, -0.7, -0.2])             # a huge decay: a state reset
    yield "a float32 sequence with a huge entry (-1e7) at step 1", (reset,), {}, _segment_sums(reset)
    hard = torch.tensor([-0.5, -math.inf, -0.25, -0.125], dtype=torch.float64)
    yield "an infinite entry (a hard reset) at step 1", (hard,), {}, _segment_sums(hard)


# ---- 11.2 the state-passing step as a recurrence --------------------------------------------------

DECAY_HINT = (". Hint: S_{k+1} = exp(T_k) S_k + states_k: the carried state decays by exp(T_k), the total "
              "log-decay of chunk k (not of chunk k+1), before the chunk's own state is added; final is S_c")


def _passing_hint(expected, got, atol, rtol):
    names = ("entering", "final")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (entering, final), got {type(got).__name__}"
    for name, e, g in zip(names, expected, got):
        msg = compare(e, g, atol, rtol, name)
        if msg is None:
            continue
        if name == "entering" and isinstance(g, torch.Tensor) and g.shape == e.shape:
            if compare(e[:, 1:], g[:, :-1], atol, rtol) is None:
                return msg + ". Hint: these are the states *after* each chunk; entering[:, k] is the state " \
                             "before chunk k, so entering[:, 0] is the initial state"
            if compare(e[:, 0], g[:, 0], atol, rtol) is not None:
                return msg + ". Hint: entering[:, 0] must be the initial state (nothing has been read yet)"
            return msg + DECAY_HINT
        return msg + (DECAY_HINT if name == "final" else "")
    return None


@exercise("11.2", "the state-passing step as a recurrence", atol=1e-10, rtol=1e-8, compare=_passing_hint)
def passing_cases():
    g = torch.Generator().manual_seed(112)
    for b, c, h, p, n in [(1, 1, 1, 1, 1), (1, 4, 2, 3, 2), (2, 5, 3, 2, 4)]:
        states = torch.randn(b, c, h, p, n, generator=g, dtype=torch.float64)        # (b, c, h, p, n)
        totals = -torch.rand(b, h, c, generator=g, dtype=torch.float64) * 2          # T_k = Σ ΔA over chunk k
        initial = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)          # (b, h, p, n)
        expected = pass_states(states, totals[..., None], initial)                 # chunks of one step each
        yield f"b={b}, c={c} chunks, h={h}, p={p}, n={n}", (states, totals, initial), {}, expected


# ---- 11.3 the FLOP count of the chunked algorithm -------------------------------------------------

STEPS = ("diagonal_blocks", "chunk_states", "off_diagonal_blocks")


def measured_flops(L: int, Q: int, n: int, p: int) -> dict:
    """Matrix-multiply FLOPs of the package's steps 1, 2 and 4 for one sequence and one head, counted
    from the products PyTorch runs (:func:`ssm_tutor.ssd.matmul_flops`, checked against PyTorch's
    FlopCounterMode in the tests; multiply-add = 2 FLOPs; elementwise work not counted)."""
    c = math.ceil(L / Q)

    def empty(*shape):                                   # values do not matter, only the shapes
        return torch.zeros(*shape)

    xbar, B, C = empty(1, c, Q, 1, p), empty(1, c, Q, 1, n), empty(1, c, Q, 1, n)
    dA, entering = empty(1, 1, c, Q), empty(1, c, 1, p, n)
    runs = {"diagonal_blocks": lambda: chunk_diagonal_blocks(xbar, dA, B, C),
            "chunk_states": lambda: chunk_states(xbar, dA, B),
            "off_diagonal_blocks": lambda: chunk_off_diagonal_blocks(C, dA, entering)}
    return {name: matmul_flops(run) for name, run in runs.items()}


def _flops_hint(expected, got, atol, rtol):
    if not isinstance(got, dict) or set(got) != set(STEPS):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        return f"expected a dict with the keys {list(STEPS)}, got {keys}"
    for name in STEPS:
        e, g = expected[name], got[name]
        if not isinstance(g, (int, float)) or g != e:
            msg = f"{name}: expected {e:,} FLOPs, got {g!r}"
            if isinstance(g, (int, float)) and g * 2 == e:
                return msg + ". Hint: a multiply-add counts as 2 FLOPs"
            return msg + (". Hint: the last chunk is padded to Q steps, so there are ceil(L / Q) chunks"
                          if name == STEPS[0] else "")
    return None


@exercise("11.3", "the FLOP count of the chunked algorithm", compare=_flops_hint)
def flop_cases():
    for L, Q, n, p in [(64, 16, 8, 4), (50, 16, 8, 4), (7, 8, 3, 5), (2048, 256, 128, 64), (2048, 64, 128, 64)]:
        yield f"L={L}, Q={Q}, n={n}, p={p}", (L, Q, n, p), {}, measured_flops(L, Q, n, p)
