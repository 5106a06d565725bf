"""Exercises of chapter 4 (``notebooks/04_selection.ipynb``): selection, chosen by hand.

Each asks for something the notebook does not write: a Δ derived from A, a Δ per word, and the
Δ_t, B_t, C_t of a layer that copies. Many answers are right (any large enough Δ erases a state),
so 04.2 and 04.3 check what the learner's parameters *do*: the checker runs the scan with them and
compares the states or outputs with the ones the task asks for.

04.1  the bias b_Δ that makes each channel forget exactly half of its slowest memory over k empty
      tokens: expected values by bisection on the state that transformers' ``mamba_selective_scan``
      computes (its own softplus and exp), not on the closed form;
04.2  ``delta_for(tokens, A)``: Δ per word so that fillers take no time and a separator erases the
      state; the states the learner's Δ gives (run by ``mamba_selective_scan``) against the ideal
      ones, computed by ``scipy.signal.dlsim`` on the sentence with its fillers removed and
      restarted after each separator;
04.3  ``copy_head(kinds)``: Δ_t, B_t, C_t chosen from each token's kind so that the layer outputs
      the value of the most recent mark at every query and 0 elsewhere; the outputs (run by
      ``mamba_selective_scan``) against the values the marks carried.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import torch
from transformers.models.mamba.modeling_mamba import mamba_selective_scan

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, close, compare_answer

#: Δ of a data word in 04.2
DELTA_DATA = 0.5
#: what an erasing step may leave of the state before it (04.2 and 04.3)
LEFTOVER = 1e-6


def _vector(x, name: str, length: int) -> torch.Tensor:
    """The learner's ``name`` as a float64 vector of ``length`` entries, or a ValueError saying what came."""
    if not isinstance(x, (torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{name} must be a tensor of shape ({length},), got {type(x).__name__}")
    try:
        v = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor of real numbers, shape ({length},): {err}") from None
    if v.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), one value per token, got shape {tuple(v.shape)}")
    return v


def _check_steps(delta: torch.Tensor, tokens) -> None:
    """Δ must be finite and not negative; the message names the token."""
    for t, (step, token) in enumerate(zip(delta.tolist(), tokens)):
        if math.isnan(step):
            raise ValueError(f"Δ is NaN at token {t} ({token!r})")
        if math.isinf(step):
            raise ValueError(f"Δ is inf at token {t} ({token!r}): exp(Δ A) = 0 erases, but B̄ u = Δ B u is inf · u "
                             "(NaN when u = 0); a large finite Δ erases as well")
        if step < 0:
            raise ValueError(f"Δ is negative at token {t} ({token!r}): {step:g}; with Δ < 0, exp(Δ A) > 1 and the "
                             "state grows")


# ----------------------------------------------------------------------------------------------
# 04.1 the bias of Δ for a half-life of k tokens
# ----------------------------------------------------------------------------------------------

def _half_life_by_bisection(A_log: torch.Tensor, k: int) -> torch.Tensor:
    """b_Δ (d,) such that, with Δ = softplus(b_Δ) on every token, the slowest state entry of each
    channel keeps exactly half of what one token wrote after k more tokens with no input; by
    bisection on what transformers' scan computes."""
    A = -torch.exp(A_log)                                              # (d, n)
    d, n = A.shape
    u = torch.zeros(1, d, k + 1, dtype=torch.float64)
    u[..., 0] = 1.0                                                    # write once, then k empty tokens
    zero = torch.zeros_like(u)                                         # x_proj's part of Δ: none
    ones = torch.ones(1, n, k + 1, dtype=torch.float64)                # B = C = 1

    def kept(bias):                                                    # what the slowest entry keeps: (d,)
        run = lambda l: mamba_selective_scan(u[..., :l], zero[..., :l], A, ones[..., :l], ones[..., :l],  # noqa: E731
                                             delta_bias=bias, delta_softplus=True, return_last_state=True)[1]
        return (run(k + 1) / run(1)).amax(-1)[0]

    lo, hi = torch.full((d,), -40.0, dtype=torch.float64), torch.full((d,), 10.0, dtype=torch.float64)
    for _ in range(80):
        mid = (lo + hi) / 2
        longer = kept(mid) > 0.5                                       # keeps too much: Δ must grow
        lo, hi = torch.where(longer, mid, lo), torch.where(longer, hi, mid)
    return (lo + hi) / 2


def _bias_for(delta: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.expm1(delta))                               # softplus⁻¹, for the typical mistakes


@exercise("04.1", "the bias of Δ that halves the slowest memory in k tokens", atol=1e-9, rtol=1e-7,
          compare=compare_answer)
def half_life_cases():
    g = torch.Generator().manual_seed(41)
    cases = [
        (torch.log(torch.arange(1.0, 5.0, dtype=torch.float64)).repeat(3, 1), 1),        # A = -(1, 2, 3, 4)
        (torch.log(torch.rand(4, 3, generator=g, dtype=torch.float64) * 4 + 0.2), 5),
        (torch.log(torch.rand(2, 8, generator=g, dtype=torch.float64) * 0.5 + 0.05), 20),
    ]
    for A_log, k in cases:
        slowest, fastest = torch.exp(A_log).amin(-1), torch.exp(A_log).amax(-1)      # min and max |A|: (d,)
        delta = math.log(2) / (k * slowest)
        mistakes = [
            Mistake("that is Δ itself; the layer computes Δ = softplus(b_Δ + …), so return the bias: invert the "
                    "softplus, b_Δ = log(exp(Δ) − 1)", gives=delta),
            Mistake("that halves the fastest entry (the most negative A); the slowest one, A closest to 0, keeps "
                    "the most, and it is the one that must be down to one half",
                    gives=_bias_for(math.log(2) / (k * fastest))),
            Mistake("exp(−1) is not one half: the entry keeps exp(kΔA), and exp(kΔA) = 1/2 needs ln 2",
                    gives=_bias_for(1 / (k * slowest))),
        ]
        if k > 1:
            mistakes.append(Mistake("that halves the memory in one token; the decay compounds over the k tokens: "
                                    "exp(ΔA)^k = exp(kΔA)", gives=_bias_for(math.log(2) / slowest)))
        d, n = A_log.shape
        yield f"d={d}, n={n}, k={k}", (A_log.clone(), k), {}, Answer(
            _half_life_by_bisection(A_log, k), names=("b_Δ (d,)",), mistakes=tuple(mistakes),
            hint="after k empty tokens an entry keeps exp(kΔA) of its value; set that to 1/2 for the slowest "
                 "entry (A = −exp(A_log) closest to 0), solve for Δ, then invert Δ = softplus(b_Δ)")


# ----------------------------------------------------------------------------------------------
# 04.2 delta_for(tokens, A): skip the fillers, erase at a separator
# ----------------------------------------------------------------------------------------------

FILLER, SEPARATOR = "um", "|"


def _word_values(tokens, seed: int) -> torch.Tensor:
    """The input u of each word: a seeded value in [-1, 1] per distinct data word, 0 for fillers
    and separators. (l,) float64."""
    g = torch.Generator().manual_seed(seed)
    table = {w: float(torch.rand(1, generator=g, dtype=torch.float64) * 2 - 1)
             for w in sorted(set(tokens) - {FILLER, SEPARATOR})}
    return torch.tensor([table.get(w, 0.0) for w in tokens], dtype=torch.float64)


def _ideal_states(tokens, u: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The states the task asks for, (l, n): the sentence with its fillers removed, run from h = 0
    after each separator with Δ = DELTA_DATA, by scipy's dlsim (output matrices Ā, B̄ give the
    state after each input); a filler repeats the state before it, a separator gives 0."""
    a = A.numpy()
    Ad, Bd = np.diag(np.exp(DELTA_DATA * a)), DELTA_DATA * np.ones((a.size, 1))
    states, h, segment = [], np.zeros(a.size), []
    for word, value in zip(tokens, u.tolist()):
        if word == SEPARATOR:
            segment, h = [], np.zeros(a.size)
        elif word != FILLER:
            segment.append(value)
            h = scipy.signal.dlsim((Ad, Bd, Ad, Bd, 1.0), np.array(segment))[1][-1]
        states.append(h)
    return torch.tensor(np.array(states))


def _states_of(delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The states (l, n) of the one-channel SSM (B = C = 1) run with the learner's Δ: each state
    entry n is run as its own channel with A_n, so the scan's outputs y are the states."""
    n, l = A.shape[0], u.shape[0]
    y = mamba_selective_scan(u.expand(1, n, l).contiguous(), delta.expand(1, n, l).contiguous(), A[:, None],
                             torch.ones(1, 1, l, dtype=torch.float64), torch.ones(1, 1, l, dtype=torch.float64))
    return y[0].T                                                      # (l, n)


@exercise("04.2", "delta_for: skip the fillers, erase at a separator", atol=1e-5, rtol=0.0, compare=compare_answer)
def delta_for_cases():
    cases = [
        ("the um cat um um sat | on um the mat um", [-0.3, -1.5]),
        ("um um a b um | | c um", [-0.05, -2.0]),
        ("x y z", [-1.0, -0.5, -3.0]),
        ("| um w um v | um", [-0.01, -0.2]),
    ]
    for i, (sentence, a) in enumerate(cases):
        tokens = sentence.split()
        A = torch.tensor(a, dtype=torch.float64)                                      # (n,)
        u = _word_values(tokens, seed=420 + i)
        slowest = min(abs(x) for x in a)
        needed = math.log(1 / LEFTOVER) / slowest

        def at(got, word, tokens=tokens):                                             # Δ at the positions of `word`
            v = _vector(got, "Δ", len(tokens))
            return v[[t for t, w in enumerate(tokens) if w == word]]

        def view(got, tokens=tokens, u=u, A=A):
            delta = _vector(got, "Δ", len(tokens))
            _check_steps(delta, tokens)
            return _states_of(delta, u, A)

        mistakes = (
            Mistake("a filler must take no time: Δ = 0 gives Ā = exp(0·A) = 1 (the state is kept) and B̄ = 0 "
                    "(nothing is written)", looks=lambda got, at=at: bool((at(got, FILLER) != 0).any())),
            Mistake("Δ ≈ 0 at a separator keeps the state; to erase it Ā = exp(ΔA) must be ≈ 0, which a large Δ "
                    "gives", looks=lambda got, at=at: bool((at(got, SEPARATOR) < 1e-3).any())),
            Mistake(f"not large enough: a separator leaves exp(ΔA) of each state entry, and the slowest entry "
                    f"(A = {-slowest:g}, closest to 0) decides: exp(−{slowest:g}·Δ) ≤ {LEFTOVER:g} needs "
                    f"Δ ≥ ln(10⁶)/{slowest:g} ≈ {needed:.4g}",
                    looks=lambda got, at=at, needed=needed: bool((at(got, SEPARATOR) < needed * (1 - 1e-9)).any())),
            Mistake(f"a data word keeps its step Δ = {DELTA_DATA}",
                    looks=lambda got, tokens=tokens: bool(any(
                        abs(s - DELTA_DATA) > 1e-12 for s, w in zip(_vector(got, "Δ", len(tokens)).tolist(), tokens)
                        if w not in (FILLER, SEPARATOR)))),
        )
        yield f"{' '.join(tokens)!r}, A={a}", (list(tokens), A.clone()), {}, Answer(
            _ideal_states(tokens, u, A), names=("the states h_t (l, n) your Δ gives",), mistakes=mistakes,
            view=view, hint=f"Δ = 0 on 'um', Δ = {DELTA_DATA} on a word, and on '|' a Δ with exp(Δ·A) ≤ "
                            f"{LEFTOVER:g} for every entry of A")


# ----------------------------------------------------------------------------------------------
# 04.3 copy_head(kinds): Δ_t, B_t, C_t that copy the most recent mark
# ----------------------------------------------------------------------------------------------

KINDS = ("noise", "mark", "query")


def _copy_parameters(got, kinds):
    """The learner's (Δ, B, C) as three float64 vectors, each the same for every token of a kind."""
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise ValueError(f"expected a tuple (delta, B, C) of three tensors of shape ({len(kinds)},), got "
                         f"{type(got).__name__}{f' of {len(got)} items' if isinstance(got, (tuple, list)) else ''}")
    delta, B, C = (_vector(x, name, len(kinds)) for x, name in zip(got, ("delta", "B", "C")))
    for x, name in ((delta, "delta"), (B, "B"), (C, "C")):
        for kind in KINDS:
            values = {v for v, k in zip(x.tolist(), kinds) if k == kind}
            if len(values) > 1:
                raise ValueError(f"{name} differs between tokens of kind {kind!r} ({sorted(values)}): the layer "
                                 "sees only the token, so every token of one kind gets the same Δ, B and C")
    return delta, B, C


def _of_kind(got, kinds, kind: str) -> tuple[float, float, float]:
    """(Δ, B, C) the learner gives a token of ``kind`` (NaN when the case has none)."""
    delta, B, C = _copy_parameters(got, kinds)
    where = [t for t, k in enumerate(kinds) if k == kind]
    return tuple(float(x[where[0]]) if where else math.nan for x in (delta, B, C))


def _nonzero(x: float) -> bool:
    return not math.isnan(x) and x != 0.0


@exercise("04.3", "copy_head: Δ, B and C that copy the most recent mark", atol=1e-6, rtol=0.0,
          compare=compare_answer)
def copy_head_cases():
    cases = [
        "noise mark noise noise query",
        "mark noise query noise query",
        "noise mark noise mark noise noise query query",
        "mark mark query noise mark query",
    ]
    g = torch.Generator().manual_seed(43)
    A = torch.tensor([[-1.0]], dtype=torch.float64)                                   # (d=1, n=1)
    for text in cases:
        kinds = text.split()
        l = len(kinds)
        u = torch.rand(l, generator=g, dtype=torch.float64) * 2 - 1                   # every token has a value
        expected, last = torch.zeros(l, dtype=torch.float64), None
        for t, kind in enumerate(kinds):
            if kind == "mark":
                last = u[t]
            elif kind == "query":
                expected[t] = last
        two_marks = kinds.count("mark") > 1

        def view(got, kinds=kinds, u=u):
            delta, B, C = _copy_parameters(got, kinds)
            _check_steps(delta, kinds)
            y = mamba_selective_scan(u[None, None], delta[None, None], A, B[None, None], C[None, None])
            return y[0, 0]                                                            # (l,)

        def kind_of(got, kind, kinds=kinds):
            return _of_kind(got, kinds, kind)

        mistakes = (
            Mistake("noise and queries must leave the state alone: Δ = 0 there (Ā = exp(0) = 1 keeps the state, "
                    "B̄ = 0·B writes nothing)",
                    looks=lambda got, k=kind_of: _nonzero(k(got, "noise")[0]) or _nonzero(k(got, "query")[0])),
            Mistake("the output must be 0 except at a query: y_t = C_t h_t, so C_t = 0 on noise and marks",
                    looks=lambda got, k=kind_of: _nonzero(k(got, "mark")[2]) or _nonzero(k(got, "noise")[2])),
            Mistake("Mamba's B̄ = Δ B: a mark writes Δ_t B_t u_t, so with Δ = 20 and B = 1 the state holds 20·u. "
                    "Choose B_t = 1/Δ_t on a mark (ZOH's B̄ = (1 − e^{−Δ}) B would have written about u by "
                    "itself: its reset stays bounded, Euler's grows with Δ)",
                    looks=lambda got, k=kind_of: not close(k(got, "mark")[0] * k(got, "mark")[1], 1.0, rtol=1e-9)),
            Mistake(f"a new mark must replace the old value, which survives as e^{{−Δ}} h: e^{{−Δ}} ≤ {LEFTOVER:g} "
                    f"needs Δ ≥ ln(10⁶) ≈ {math.log(1 / LEFTOVER):.2f} on a mark",
                    looks=lambda got, k=kind_of, two=two_marks: two and k(got, "mark")[0] < math.log(1 / LEFTOVER)),
            Mistake("at a query y = C h: C = 1 reads the stored value as it is",
                    looks=lambda got, k=kind_of: not close(k(got, "query")[2], 1.0, rtol=1e-9)),
        )
        yield repr(text), (list(kinds),), {}, Answer(
            expected, names=("y (l,), the layer's output at every token",), mistakes=mistakes, view=view,
            hint="on a mark: a large Δ (erase) and B = 1/Δ (write u itself); on noise and queries: Δ = 0; "
                 "C = 1 at a query and 0 elsewhere")
