"""Exercises of chapter 10 (notebooks/10_recall_and_hybrids.ipynb): recall, hybrids, both directions.

10.1  the MQAR accuracy metric, per pair count, from a batch that mixes pair counts: expected values
      counted here with a plain Python loop over the examples and their query positions;
10.2  choosing the hybrid's attention period from measured accuracy curves: expected answers from a
      brute-force search written here (count the attention layers of every candidate with Jamba's
      rule as transformers' ``JambaConfig`` states it, keep the accurate ones, take the fewest);
10.3  the flip-and-combine of a bidirectional (Vision-Mamba) block: expected values from running the
      two mixers on an explicitly reversed copy built with index arithmetic (no ``flip``).
"""

from __future__ import annotations

import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, close, compare_answer
from ssm_tutor.tasks import IGNORE, mqar_mixture


# ----------------------------------------------------------------------------------------------
# 10.1 the MQAR accuracy metric, per pair count
# ----------------------------------------------------------------------------------------------

def _accuracy_by_pairs_loop(logits, targets) -> dict:
    right, total = {}, {}
    for row_logits, row_targets in zip(logits, targets):
        queries = [t for t in range(len(row_targets)) if int(row_targets[t]) != IGNORE]
        P = len(queries)
        for t in queries:
            total[P] = total.get(P, 0) + 1
            right[P] = right.get(P, 0) + int(int(row_logits[t].argmax()) == int(row_targets[t]))
    return {P: right[P] / total[P] for P in sorted(total)}


def _as_dict(got):
    if not isinstance(got, dict):
        raise ValueError(f"expected a dict {{pair count: accuracy}}, got {type(got).__name__}")
    return got


def _by_keys(keys):
    """The view of a {pair count: accuracy} answer: its values in the order of ``keys``."""

    def view(got):
        got = _as_dict(got)
        if sorted(int(k) for k in got) != list(keys):
            raise ValueError(f"expected the pair counts {list(keys)} as keys, got {sorted(got)}")
        return tuple(float(got[k]) for k in keys)

    return view


def _dict_close(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(abs(float(a[k]) - b[k]) < 1e-9 for k in b)


def _mistaken_all_positions(logits, targets):
    """A typical mistake: the argmax compared with the target at every position, IGNORE included."""
    out = {}
    for P in sorted({int((row != IGNORE).sum()) for row in targets}):
        rows = (targets != IGNORE).sum(1) == P
        out[P] = float((logits[rows].argmax(-1) == targets[rows]).float().mean())
    return out


def _mistaken_by_row_count(logits, targets):
    """A typical mistake: examples grouped by their position in the batch, not by their pair count."""
    return {i: float((logits[i].argmax(-1) == targets[i])[targets[i] != IGNORE].float().mean())
            for i in range(len(targets))}


@exercise("10.1", "the MQAR accuracy metric, per pair count", compare=compare_answer)
def mqar_accuracy_cases():
    g = torch.Generator().manual_seed(10)
    for n, L, pairs, V in [(6, 16, [2, 4], 24), (9, 64, [4, 8, 16], 256), (4, 32, [8], 64)]:
        batch = mqar_mixture(n, L, pairs, V, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        logits = torch.randn(n, L, V, generator=g)
        # make about half of the answers right, so that a wrong metric shows
        query = batch.targets != IGNORE
        lucky = query & (torch.rand(n, L, generator=g) < 0.5)
        logits[lucky] = logits[lucky].scatter(-1, batch.targets[lucky][:, None], 50.0)
        expected = _accuracy_by_pairs_loop(logits, batch.targets)
        mistakes = (
            Mistake("score only the query positions (targets != IGNORE): the filler positions have no "
                    "answer to get right",
                    looks=lambda got, l=logits, t=batch.targets: _dict_close(_as_dict(got), _mistaken_all_positions(l, t))),
            Mistake("group the examples by their pair count (the number of scored positions in the row), "
                    "not by their index in the batch",
                    looks=lambda got, l=logits, t=batch.targets: _dict_close(_as_dict(got), _mistaken_by_row_count(l, t))),
        )
        yield (f"{n} examples of length {L} mixing {pairs} pairs, vocabulary {V}", (logits, batch.targets), {},
               Answer(tuple(expected.values()), names=tuple(f"accuracy at {P} pairs" for P in expected),
                      view=_by_keys(list(expected)), mistakes=mistakes,
                      hint="the keys are the pair counts present in the batch, each value the fraction of "
                           "that group's queries whose argmax is the target"))


# ----------------------------------------------------------------------------------------------
# 10.2 choosing the attention period
# ----------------------------------------------------------------------------------------------

def _jamba_attention_layers(num_layers, period, offset):
    # transformers' JambaConfig.layers_block_type: "attention" if i % period == offset
    return sum(1 for i in range(num_layers) if i % period == offset)


def _best_period(curves, num_layers, pairs, min_accuracy):
    qualifying = [pattern for pattern, accuracy in curves.items() if accuracy[pairs] >= min_accuracy]
    return min(qualifying, key=lambda pattern: _jamba_attention_layers(num_layers, *pattern))


@exercise("10.2", "the hybrid's attention period from measured curves", compare=compare_answer)
def attention_period_cases():
    L2 = {(1, 0): {4: 1.0, 8: 1.0, 16: 0.99}, (2, 1): {4: 1.0, 8: 0.99, 16: 0.97},
          (3, 2): {4: 0.95, 8: 0.6, 16: 0.2}}                              # (3, 2) in 2 layers: no attention
    L8 = {(1, 0): {8: 1.0, 32: 0.99}, (2, 1): {8: 1.0, 32: 0.98}, (4, 3): {8: 1.0, 32: 0.93},
          (8, 4): {8: 0.99, 32: 0.71}, (9, 8): {8: 0.8, 32: 0.1}}
    odd = {(1, 0): {32: 1.0}, (5, 4): {32: 0.95}, (6, 0): {32: 0.96}, (9, 8): {32: 0.3}}   # period 6: layers 0 and 6
    cases = [("2 layers, 16 pairs, at least 95 %", (L2, 2, 16, 0.95)),
             ("2 layers, 4 pairs, at least 90 %", (L2, 2, 4, 0.9)),
             ("8 layers, 32 pairs, at least 90 %", (L8, 8, 32, 0.9)),
             ("8 layers, 8 pairs, at least 99 %", (L8, 8, 8, 0.99)),
             ("8 layers, 32 pairs, at least 90 %, periods 5 and 6", (odd, 8, 32, 0.9))]
    for description, args in cases:
        curves, num_layers, pairs, min_accuracy = args
        expected = _best_period(*args)
        most_accurate = max(curves, key=lambda k: curves[k][pairs])
        largest_ok = max((k for k in curves if curves[k][pairs] >= min_accuracy), key=lambda k: k[0], default=None)
        mistakes = (
            Mistake("the period that reaches the accuracy with the FEWEST attention layers is wanted (the KV "
                    "cache grows with them), not the most accurate one", gives=most_accurate),
            Mistake("a larger period does not always mean fewer attention layers: count them with Jamba's rule, "
                    "layer i is attention when (i - offset) % period == 0, for i in range(num_layers) "
                    "(a period past the last layer may leave none)", gives=largest_ok),
        )
        yield description, args, {}, Answer(expected, names=("period", "offset"),
                                            mistakes=tuple(m for m in mistakes if m.gives != expected),
                                            hint="keep the candidates whose accuracy at `pairs` is at least "
                                                 "`min_accuracy`; return the (period, offset) with the fewest "
                                                 "attention layers")


# ----------------------------------------------------------------------------------------------
# 10.3 flip and combine
# ----------------------------------------------------------------------------------------------

class _CumulativeMixer(torch.nn.Module):
    """A small causal 'mixer' with its own weights: y_t = W · Σ_{s ≤ t} decay^(t-s) h_s."""

    def __init__(self, d, decay, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
        self.decay = decay

    def forward(self, h):                                       # (b, l, d) -> (b, l, d)
        t = torch.arange(h.shape[1], dtype=torch.float64)
        weights = torch.tril(self.decay ** (t[:, None] - t[None, :]).clamp(min=0))     # (l, l), causal
        return torch.einsum("ts,bsd,ed->bte", weights, h, self.W)


def _reversed(h):
    """h with its time axis reversed, by index arithmetic."""
    l = h.shape[1]
    return h[:, torch.tensor([l - 1 - t for t in range(l)])]


@exercise("10.3", "flip and combine: the bidirectional block", atol=1e-10, rtol=1e-9, compare=compare_answer)
def flip_and_combine_cases():
    from ssm_tutor.bidirectional import BiMambaBlock
    from ssm_tutor.mamba import MambaConfig

    g = torch.Generator().manual_seed(103)
    torch.manual_seed(103)
    block = BiMambaBlock(MambaConfig(vocab_size=8, hidden_size=6, state_size=3, num_hidden_layers=1)).double()
    block.requires_grad_(False)
    for f, b, (bs, l, d), name in [
        (_CumulativeMixer(4, 0.8, 1), _CumulativeMixer(4, 0.5, 2), (2, 7, 4), "two decaying cumulative sums"),
        (block.forward_mixer, block.backward_mixer, (3, 9, 6), "the two MambaMixers of a BiMambaBlock"),
    ]:
        h = torch.randn(bs, l, d, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fwd, bwd_raw = f(h), b(_reversed(h))
            expected = fwd + _reversed(bwd_raw)
            mistakes = (
                Mistake("flip the backward mixer's output back in time: its position t describes token l-1-t",
                        gives=fwd + bwd_raw),
                Mistake("reverse the TIME axis (dimension 1 of (b, l, d)), not the channels",
                        gives=f(h) + b(h.flip(-1)).flip(-1)),
                Mistake("the backward mixer must read the reversed sequence: b(flip(h)), then flip its output",
                        gives=fwd + b(h)),
                Mistake("the two directions are added, not averaged", gives=expected / 2),
            )
        yield (f"{name}, h {tuple(h.shape)}", (f, b, h), {},
               Answer(expected, names=("y",), mistakes=mistakes,
                      hint="y = mixer_fwd(h) + flip(mixer_bwd(flip(h))), flipping dimension 1"))
