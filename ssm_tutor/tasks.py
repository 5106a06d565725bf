"""The synthetic tasks: the Mamba paper's selective copying and induction heads, and Zoology's
multi-query associative recall (MQAR).

Paper: Gu & Dao (2023), Section 4.1 and Appendix E.1. Both tasks are seeded, so the same
arguments always give the same batch. Each returns a :class:`TaskBatch` of ``inputs`` and
``targets``, both (num_examples, length) int64: a causal model reads ``inputs`` and is scored
only where ``targets != IGNORE`` (the positions where the answer must be produced).

Selective copying (Section 4.1.1, Figure 2): a body of ``seq_len`` tokens holds ``num_tokens`` data
tokens at random positions among ``seq_len - num_tokens`` noise tokens; then ``num_tokens`` copy
markers follow, and at each marker the model must emit the data tokens in their original order. A time-invariant system
cannot do this: where the data sits changes from example to example, so no fixed kernel works.

Induction heads (Section 4.1.2): random tokens, with a trigger token placed once somewhere in
the sequence and followed by the answer token; the sequence ends with the trigger again and the
model must recall the token that followed its first occurrence.

Multi-query associative recall (Arora et al. 2023, *Zoology*, Section 3 and Appendix E; stage 10):
the sequence opens with key-value pairs ``k1 v1 k2 v2 …``, and later each key appears once more,
where the model must answer with its value. Recalling many pairs at once is what a fixed-size
state finds hard (notebook 10).

Occurs again (stage 10, bidirectional models): label every token 1 if the same token occurs again
later in the sequence, else 0. The answer depends only on the *future*, so a causal model can do
no better than guess from the position (:func:`occurs_again_causal_ceiling`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ssm_tutor.validate import check_positive

__all__ = ["TaskBatch", "selective_copying", "induction_heads", "mqar", "mqar_mixture", "occurs_again",
           "occurs_again_causal_ceiling", "IGNORE", "NOISE", "MARKER", "TRIGGER",
           "masked_accuracy"]

IGNORE = -100   # target value for positions that are not scored (PyTorch's cross_entropy default)
NOISE = 0       # selective copying: the filler ("um", padding) token
MARKER = 1      # selective copying: "now copy the next data token"
TRIGGER = 0     # induction heads: the token whose successor must be recalled


class TaskBatch(NamedTuple):
    inputs: torch.Tensor   # (num_examples, length) int64
    targets: torch.Tensor  # (num_examples, length) int64, IGNORE where not scored


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def selective_copying(num_examples: int, seq_len: int = 64, num_tokens: int = 8, vocab_size: int = 10,
                      seed: int = 0) -> TaskBatch:
    """Selective-copying examples.

    Token ids: ``NOISE`` = 0, ``MARKER`` = 1, data tokens 2 … vocab_size-1.
    inputs:  (num_examples, seq_len + num_tokens): a body of seq_len tokens (num_tokens data tokens
             among seq_len - num_tokens noise tokens), then the num_tokens markers.
    targets: IGNORE everywhere except the last ``num_tokens`` positions, which hold the data tokens
             in order (the model's prediction *at* marker j must be data token j).
    """
    check_positive(num_examples=num_examples, seq_len=seq_len, num_tokens=num_tokens, vocab_size=vocab_size)
    if num_tokens > seq_len:
        raise ValueError(f"num_tokens ({num_tokens}) must be at most seq_len ({seq_len})")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3 (noise, marker and one data token), got {vocab_size}")
    g = _generator(seed)
    data = torch.randint(2, vocab_size, (num_examples, num_tokens), generator=g)          # (N, k)
    # choose k distinct positions per example, kept in increasing order so the copy order is the data order
    positions = torch.rand(num_examples, seq_len, generator=g).argsort(dim=1)[:, :num_tokens]
    positions = positions.sort(dim=1).values                                            # (N, k)
    body = torch.full((num_examples, seq_len), NOISE, dtype=torch.long)                 # (N, seq_len)
    body.scatter_(1, positions, data)
    markers = torch.full((num_examples, num_tokens), MARKER, dtype=torch.long)          # (N, k)
    inputs = torch.cat([body, markers], dim=1)                                          # (N, seq_len + k)
    targets = torch.full_like(inputs, IGNORE)
    targets[:, seq_len:] = data
    return TaskBatch(inputs, targets)


def induction_heads(num_examples: int, seq_len: int = 256, vocab_size: int = 16, seed: int = 0) -> TaskBatch:
    """Induction-heads examples.

    Token ids: ``TRIGGER`` = 0, ordinary tokens 1 … vocab_size-1.
    inputs:  (num_examples, seq_len): random ordinary tokens; the trigger at a random position p
             (0 ≤ p ≤ seq_len - 3) followed by the answer; the trigger again at the last position.
    targets: IGNORE everywhere except the last position, which holds the answer.
    """
    check_positive(num_examples=num_examples, seq_len=seq_len, vocab_size=vocab_size)
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3 (trigger, answer, trigger), got {seq_len}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2 (the trigger and one token), got {vocab_size}")
    g = _generator(seed)
    inputs = torch.randint(1, vocab_size, (num_examples, seq_len), generator=g)         # (N, L)
    first = torch.randint(0, seq_len - 2, (num_examples,), generator=g)                 # (N,)
    rows = torch.arange(num_examples)
    answer = inputs[rows, first + 1].clone()                                            # (N,)
    inputs[rows, first] = TRIGGER
    inputs[:, -1] = TRIGGER
    targets = torch.full_like(inputs, IGNORE)
    targets[:, -1] = answer
    return TaskBatch(inputs, targets)


def mqar(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int = 0,
         power_a: float = 0.01, random_non_queries: bool = True) -> TaskBatch:
    """Multi-query associative recall (MQAR) examples, as Zoology defines them.

    Token ids: keys come from [1, vocab_size/2), values from [vocab_size/2, vocab_size) (integer
    halves: ``vocab_size // 2``). Each example, of length ``seq_len``:

    * positions 0 … 2P-1 (P = ``num_kv_pairs``): the pairs ``k_1 v_1 … k_P v_P``, the P keys
      distinct, the P values distinct;
    * after them, each key is queried exactly once, at position 2P + 2·g, where the slot g is
      drawn (without replacement) from the power law p(g) ∝ a·(g+1)^(a-1), g = 0 … S-1,
      S = (seq_len - 2P) // 2 and a = ``power_a`` (0.01: most queries come soon after the pairs,
      a few much later, as repeated bigrams do in text);
    * every other position holds a random token from [0, vocab_size), so a key id can also turn
      up as noise (Zoology's ``random_non_queries``, its generator's default); with
      ``random_non_queries=False`` it holds 0, a token no key or value uses (the setting of
      Zoology's Figure 2 runs).

    targets: at a query position the value paired with the queried key; IGNORE everywhere else
    (the model reads the key and must *predict* its value, like a next-token prediction).

    Raises ValueError when 4·P > seq_len (P pairs and P queries with a noise token after each need
    4P positions), or when the vocabulary has fewer than P keys or P values to draw from.
    """
    check_positive(num_examples=num_examples, seq_len=seq_len, num_kv_pairs=num_kv_pairs,
                    vocab_size=vocab_size)
    P = num_kv_pairs
    if 4 * P > seq_len:
        raise ValueError(f"mqar: num_kv_pairs={P} needs seq_len >= 4·num_kv_pairs = {4 * P} (2 tokens per pair, "
                         f"then a query and a filler token per pair), got seq_len={seq_len}")
    half = vocab_size // 2
    if half - 1 < P or vocab_size - half < P:
        raise ValueError(f"mqar: vocab_size={vocab_size} has {half - 1} key ids in [1, {half}) and "
                         f"{vocab_size - half} value ids in [{half}, {vocab_size}); num_kv_pairs={P} distinct "
                         f"keys need vocab_size >= {2 * P + 2}")
    if not (isinstance(power_a, (int, float)) and 0 < power_a <= 1):
        raise ValueError(f"mqar: power_a must be in (0, 1] (1 is uniform), got {power_a!r}")
    g = _generator(seed)
    N, context = num_examples, 2 * P
    # P distinct keys and P distinct values per example: the first P of a random permutation
    keys = 1 + torch.rand(N, half - 1, generator=g).argsort(dim=1)[:, :P]               # (N, P) in [1, half)
    values = half + torch.rand(N, vocab_size - half, generator=g).argsort(dim=1)[:, :P]  # (N, P) in [half, V)
    # the query slots: P distinct slots per example, drawn from the power law
    slots = (seq_len - context) // 2                                                     # S
    law = power_a * torch.arange(1, slots + 1, dtype=torch.float64) ** (power_a - 1)     # (S,)
    gaps = torch.multinomial(law.expand(N, slots), P, replacement=False, generator=g)    # (N, P)
    query_pos = context + 2 * gaps                                                       # (N, P)

    inputs = torch.randint(0, vocab_size, (N, seq_len), generator=g)                     # the noise
    if not random_non_queries:
        inputs.zero_()
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs.scatter_(1, query_pos, keys)                  # key i is queried at query_pos[:, i]
    targets = torch.full_like(inputs, IGNORE)
    targets.scatter_(1, query_pos, values)               # … and the answer there is its value
    return TaskBatch(inputs, targets)


def mqar_mixture(num_examples: int, seq_len: int, pair_counts, vocab_size: int, seed: int = 0,
                 random_non_queries: bool = True) -> TaskBatch:
    """MQAR examples mixing several pair counts in equal shares (as Zoology trains), concatenated
    in the order of ``pair_counts``: the first ones get one example more when the shares do not
    divide evenly. Share i is ``mqar(…, seed=100·seed + i)``."""
    pair_counts = [pair_counts] if isinstance(pair_counts, int) else list(pair_counts)
    if not pair_counts or len(pair_counts) > 100:
        raise ValueError(f"pair_counts must list 1 to 100 pair counts, got {pair_counts!r}")
    check_positive(num_examples=num_examples)
    if num_examples < len(pair_counts):
        raise ValueError(f"num_examples ({num_examples}) must be at least the number of pair counts "
                         f"({len(pair_counts)}) so that each gets an example")
    k = len(pair_counts)
    parts = [mqar(num_examples // k + (i < num_examples % k), seq_len, P, vocab_size, seed=100 * seed + i,
                  random_non_queries=random_non_queries)
             for i, P in enumerate(pair_counts)]
    return TaskBatch(torch.cat([b.inputs for b in parts]), torch.cat([b.targets for b in parts]))


def occurs_again(num_examples: int, seq_len: int = 32, vocab_size: int = 16, seed: int = 0) -> TaskBatch:
    """Token labelling: does this token occur again later in the sequence?

    inputs:  (num_examples, seq_len), tokens drawn uniformly from [0, vocab_size).
    targets: (num_examples, seq_len), 1 at position t if inputs[t] == inputs[s] for some s > t,
             else 0; every position is scored (two labels, no IGNORE).
    """
    check_positive(num_examples=num_examples, seq_len=seq_len, vocab_size=vocab_size)
    g = _generator(seed)
    inputs = torch.randint(0, vocab_size, (num_examples, seq_len), generator=g)        # (N, L)
    same = inputs[:, :, None] == inputs[:, None, :]                                    # (N, L, L): x_t == x_s
    later = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)                     # s > t
    targets = (same & later).any(dim=2).long()                                         # (N, L)
    return TaskBatch(inputs, targets)


def occurs_again_causal_ceiling(seq_len: int, vocab_size: int) -> float:
    """The best accuracy any causal model can reach on :func:`occurs_again`.

    Tokens are independent and uniform, so what a causal model has read says nothing about the
    tokens still to come: at position t its best guess is the likelier label given t alone.
    The token occurs again with probability p_t = 1 - (1 - 1/V)^(L-1-t), and the best
    accuracy is the average over positions of max(p_t, 1 - p_t).
    """
    check_positive(seq_len=seq_len, vocab_size=vocab_size)
    q = 1.0 - 1.0 / vocab_size
    p = [1.0 - q ** (seq_len - 1 - t) for t in range(seq_len)]
    return sum(max(pt, 1.0 - pt) for pt in p) / seq_len


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (targets != IGNORE) where argmax(logits) equals the target.

    logits: (N, L, vocab); targets: (N, L).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits must have shape (*targets.shape, vocab) = ({', '.join(map(str, targets.shape))}, V), "
                         f"got {tuple(logits.shape)}")
    mask = targets != IGNORE
    if not mask.any():
        raise ValueError("targets has no scored positions (all are IGNORE)")
    return float((logits.argmax(-1)[mask] == targets[mask]).float().mean())


# ----------------------------------------------------------------------------------------------
# evaluation helpers (stage 8): accuracy of a model, and accuracy against the sequence length
# ----------------------------------------------------------------------------------------------
__all__ += ["model_logits", "model_accuracy", "last_position_logits", "induction_accuracy_by_length"]


@torch.no_grad()
def model_logits(model, batch: TaskBatch, batch_size: int = 64) -> torch.Tensor:
    """``model(batch.inputs)`` in eval mode, ``batch_size`` examples at a time: (N, L, vocab)."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
    check_positive(batch_size=batch_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device                      # run where the model is, answer on the CPU
    logits = torch.cat([model(batch.inputs[i:i + batch_size].to(device)).cpu()
                        for i in range(0, len(batch.inputs), batch_size)])
    model.train(was_training)
    return logits


def model_accuracy(model, batch: TaskBatch, batch_size: int = 64) -> float:
    """masked_accuracy of ``model(inputs)`` on ``batch``, run ``batch_size`` examples at a time."""
    return masked_accuracy(model_logits(model, batch, batch_size), batch.targets)


@torch.no_grad()
def last_position_logits(model, inputs: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
    """Logits at the last position, (N, L) -> (N, vocab).

    ``recurrent=False`` runs the parallel ``model(inputs)``; ``recurrent=True`` feeds one token at
    a time through ``model.init_cache`` / ``model.step``, whose memory does not grow with L for an
    SSM (the way to reach very long sequences on a CPU).
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs must have shape (N, L), got shape {tuple(inputs.shape)}")
    if not recurrent:
        return model(inputs)[:, -1]
    cache = model.init_cache(inputs.shape[0])
    for t in range(inputs.shape[1]):
        logits, cache = model.step(inputs[:, t], cache)
    return logits


def induction_accuracy_by_length(model, lengths, num_examples: int = 32, vocab_size: int = 16, seed: int = 0,
                                 batch_size: int = 32, recurrent: bool = False) -> dict[int, float]:
    """Induction-heads accuracy for each sequence length in ``lengths``: {length: accuracy}.

    Each length gets its own seeded batch of ``num_examples`` (seed + length, so adding a length
    does not change the others); only the last position is scored, so only its logits are computed
    (see :func:`last_position_logits`).
    """
    check_positive(num_examples=num_examples, batch_size=batch_size)
    was_training = model.training
    model.eval()
    results = {}
    for length in lengths:
        batch = induction_heads(num_examples, int(length), vocab_size, seed=seed + int(length))
        correct = 0
        for i in range(0, num_examples, batch_size):
            logits = last_position_logits(model, batch.inputs[i:i + batch_size], recurrent)   # (b, V)
            correct += int((logits.argmax(-1) == batch.targets[i:i + batch_size, -1]).sum())
        results[int(length)] = correct / num_examples
    model.train(was_training)
    return results
