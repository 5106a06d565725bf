"""The exercises of chapter 7: a right answer passes, each typical mistake fails with its hint, a stub
is NOT ATTEMPTED, and `ssm-tutor check` on the notebook's own exercise cells with a mistake in each
reports FAIL with that mistake's hint. (Expected answers: ssm_tutor.exercises.ch07 — the package's
cache measured, numpy.convolve, MambaLM.generate per prompt.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from ssm_tutor.exercises import check_exercise
from ssm_tutor.mamba import MambaConfig, MambaLM
from exercise_answers import mistake_test

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ right answers
def cache_bytes(config, batch, dtype):
    E, K, N = config.intermediate_size, config.conv_kernel, config.state_size
    ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    per_layer = E * ((K - 1) * dtype.itemsize + N * ssm_dtype.itemsize)
    return config.num_hidden_layers * batch * per_layer


def ring_conv_step(ring, t, x, weight, bias):
    K1 = ring.shape[-1]
    slots = (t + torch.arange(K1)) % K1                         # oldest first
    window = torch.cat([ring[:, :, slots], x[:, :, None]], dim=-1)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    ring = ring.clone()
    ring[:, :, t % K1] = x
    return y, ring


def generate_ragged(model, prompts, n_new):
    seqs = [p.tolist() for p in prompts]
    lengths = [len(s) for s in seqs]
    cache = model.init_cache(len(seqs))
    for i in range(max(lengths) + n_new - 1):
        tokens = torch.tensor([s[min(i, len(s) - 1)] for s in seqs])   # a finished row reads anything
        logits, cache = model.step(tokens, cache)
        for r, s in enumerate(seqs):
            if len(s) == i + 1 and len(s) < lengths[r] + n_new:        # row r has just read its last token
                s.append(int(logits[r].argmax()))
    return [torch.tensor(s) for s in seqs]


ANSWERS = {"07.1": cache_bytes, "07.2": ring_conv_step, "07.3": generate_ragged}


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_right_answer_passes(exercise_id, capsys):
    assert check_exercise(exercise_id, ANSWERS[exercise_id]).passed
    assert f"Exercise {exercise_id} [PASS]" in capsys.readouterr().out


@pytest.mark.parametrize("exercise_id", sorted(ANSWERS))
def test_stub_is_not_attempted_and_a_malformed_answer_fails_cleanly(exercise_id):
    def stub(*args):
        raise NotImplementedError()

    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"
    result = check_exercise(exercise_id, lambda *args: "not an answer", verbose=False)
    assert result.status == "FAIL", result


# ------------------------------------------------------------------------------ typical mistakes
def _bytes_with(**change):
    def wrong(config, batch, dtype):
        E = config.hidden_size if change.get("width") else config.intermediate_size
        K1 = config.conv_kernel if change.get("window") else config.conv_kernel - 1
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        ssm = dtype if change.get("ssm_in_weight_dtype") else wide
        conv = torch.float32 if change.get("all_4_bytes") else dtype
        ssm = torch.float32 if change.get("all_4_bytes") else ssm
        layers = 1 if change.get("one_layer") else config.num_hidden_layers
        b = 1 if change.get("one_sequence") else batch
        return layers * b * E * (K1 * conv.itemsize + config.state_size * ssm.itemsize)
    return wrong


def _ring_with(*, order=None, write_first=False, slot=0, flip=False):
    def wrong(ring, t, x, weight, bias):
        K1 = ring.shape[-1]
        ring = ring.clone()
        if write_first:
            ring[:, :, t % K1] = x
        slots = {None: (t + torch.arange(K1)) % K1, "storage": torch.arange(K1),
                 "backward": (t - torch.arange(K1)) % K1}[order]
        window = torch.cat([ring[:, :, slots], x[:, :, None]], dim=-1)
        y = (window * (weight.flip(-1) if flip else weight)).sum(-1) + (0 if bias is None else bias)
        ring[:, :, (t + slot) % K1] = x
        return y, ring
    return wrong


def _padded(model, prompts, n_new):
    longest = max(len(p) for p in prompts)
    padded = torch.stack([torch.cat([p, p.new_zeros(longest - len(p))]) for p in prompts])   # right-padded
    cache = model.init_cache(len(prompts))
    for i in range(longest):
        logits, cache = model.step(padded[:, i], cache)
    out = [p.tolist() for p in prompts]
    for j in range(n_new):
        nxt = logits.argmax(-1)
        for s, tok in zip(out, nxt.tolist()):
            s.append(tok)
        if j + 1 < n_new:
            logits, cache = model.step(nxt, cache)
    return [torch.tensor(s) for s in out]


def _read_last_twice(model, prompts, n_new):
    out = []
    for p in prompts:
        cache = model.init_cache(1)
        for tok in p.tolist() + [p[-1].item()]:
            logits, cache = model.step(torch.tensor([tok]), cache)
        seq = p.tolist()
        for j in range(n_new):
            seq.append(int(logits[0].argmax()))
            logits, cache = model.step(torch.tensor([seq[-1]]), cache)
        out.append(torch.tensor(seq))
    return out


MISTAKES = [
    ("07.1", _bytes_with(window=True), "K−1 inputs"),
    ("07.1", _bytes_with(width=True), "intermediate_size"),
    ("07.1", _bytes_with(ssm_in_weight_dtype=True), "kept in float32"),
    ("07.1", _bytes_with(all_4_bytes=True), "weights' dtype (2 bytes"),
    ("07.1", _bytes_with(one_layer=True), "number of layers"),
    ("07.1", _bytes_with(one_sequence=True), "batch size"),
    ("07.2", _ring_with(write_first=True), "read the window first"),
    ("07.2", _ring_with(order="storage"), "not in time order"),
    ("07.2", _ring_with(order="backward"), "not (t − j)"),
    ("07.2", _ring_with(flip=True), "cross-correlation"),
    ("07.2", _ring_with(slot=1), "replacing x_{t−K+1}"),
    ("07.3", _padded, "needs no padding"),
    ("07.3", _read_last_twice, "must not be read twice"),
    ("07.3", lambda model, prompts, n: [s[len(p):] for s, p in zip(generate_ragged(model, prompts, n), prompts)],
     "the prompt followed by"),
]


test_typical_mistake_fails_with_its_hint = mistake_test(MISTAKES)


def test_the_measured_cache_is_transformers_cache_less_one_conv_column():
    """07.1's expected values are our cache's allocation; transformers' cache of the same float32 model
    holds the same SSM state and one more conv input per channel (K instead of K−1)."""
    import transformers
    cfg = dict(vocab_size=16, hidden_size=24, state_size=5, num_hidden_layers=2, conv_kernel=3)
    theirs = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg)).eval()
    ids = torch.randint(0, 16, (3, 4))
    with torch.no_grad():
        cache = theirs(ids, use_cache=True).cache_params
    their_bytes = sum(cache.get_conv_state(i).nbytes + cache.get_recurrent_state(i).nbytes for i in range(2))
    ours = cache_bytes(MambaConfig(**cfg), 3, torch.float32)
    E = 2 * cfg["hidden_size"]
    assert their_bytes - ours == 2 * 3 * E * 4                  # layers · batch · E · one float32 column


# ------------------------------------------------------------------------------ end to end, in the notebook
NOTEBOOK_MISTAKES = {   # grade id of the solution cell: (text(s) of the right answer, a typical mistake, hint expected)
    "ex07-1-solution": ("(K - 1) * dtype.itemsize", "K * dtype.itemsize", "K−1 inputs"),
    "ex07-2-solution": ("slots = (t + torch.arange(K1)) % K1", "slots = torch.arange(K1)", "not in time order"),
    # choosing a row's next token one step late: its last prompt token is read twice (one more step to go round)
    "ex07-3-solution": (("range(max(lengths) + n_new - 1)", "if len(s) == i + 1 and"),
                        ("range(max(lengths) + n_new)", "if len(s) == i and"), "must not be read twice"),
}


def test_ssm_tutor_check_fails_each_typical_mistake_in_the_notebook(tmp_path):
    """The setup cell and the exercise cells of notebooks/07_mamba_model.ipynb, each solution with one
    typical mistake: `ssm-tutor check` must report FAIL, with the mistake's hint, for every one."""
    nb = nbformat.read(ROOT / "notebooks" / "07_mamba_model.ipynb", as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    keep = [setup]
    for i, cell in enumerate(nb.cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if grade_id in NOTEBOOK_MISTAKES:
            right, wrong, _ = NOTEBOOK_MISTAKES[grade_id]
            source = cell.source
            for old, new in zip(*((right, wrong) if isinstance(right, tuple) else ((right,), (wrong,)))):
                assert source.count(old) == 1, f"{grade_id}: the notebook's solution changed; update NOTEBOOK_MISTAKES"
                source = source.replace(old, new)
            mistaken = nbformat.from_dict(dict(cell, source=source))
            keep += [nb.cells[i - 2], nb.cells[i - 1], mistaken, nb.cells[i + 1], nb.cells[i + 2]]
    assert len(keep) == 1 + 5 * len(NOTEBOOK_MISTAKES)
    nb.cells = keep
    path = tmp_path / "07_mistakes.ipynb"
    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "ssm_tutor.cli", "check", str(path)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    for ex_id, (_, _, hint) in zip(("07.1", "07.2", "07.3"), NOTEBOOK_MISTAKES.values()):
        line = next((l for l in done.stdout.splitlines() if f"Exercise {ex_id} [FAIL]" in l), None)
        assert line is not None and hint in line, done.stdout
    assert "0 passed, 3 failed, 0 not attempted, 0 other errors" in done.stdout, done.stdout
