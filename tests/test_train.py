"""Specifications of stage 8: the schedule, the loss, the training loop, the command line and the
shipped checkpoints."""

import json
import math
from pathlib import Path

import pytest
import torch

from ssm_tutor.baselines import SSMLM, TransformerLM
from ssm_tutor.tasks import IGNORE
from ssm_tutor.train import EVAL_SEED, load_model, lr_at, main, make_task, masked_cross_entropy, train

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see tests/conftest.py


# ---------------------------------------------------------------------------------------------- schedule, loss
def test_lr_warms_up_linearly_then_decays_by_a_cosine_to_the_floor():
    lr, W, T = 1e-3, 10, 110
    assert lr_at(1, T, lr, W) == pytest.approx(lr / W)
    assert lr_at(5, T, lr, W) == pytest.approx(lr / 2)
    assert lr_at(W, T, lr, W) == pytest.approx(lr)
    assert lr_at(W + 50, T, lr, W) == pytest.approx(lr * (0.1 + 0.9 * 0.5))   # half-way: cos(π/2) = 0
    assert lr_at(T, T, lr, W) == pytest.approx(0.1 * lr)
    after = [lr_at(t, T, lr, W) for t in range(W, T + 1)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_masked_cross_entropy_averages_only_the_scored_positions():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    targets = torch.full((3, 5), IGNORE)
    targets[0, 4], targets[1, 2], targets[2, 0] = 3, 6, 0
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    expected = -torch.log_softmax(logits, -1)[rows, cols, targets[rows, cols]].mean()
    torch.testing.assert_close(masked_cross_entropy(logits, targets).double(), expected)
    with pytest.raises(ValueError, match="logits must have shape"):
        masked_cross_entropy(logits[:, :4], targets)


def test_masked_cross_entropy_refuses_a_batch_with_nothing_to_score():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="no scored positions"):           # PyTorch alone returns NaN
        masked_cross_entropy(logits, torch.full((2, 3), IGNORE))
    with pytest.raises(TypeError, match="targets must hold integer class ids"):
        masked_cross_entropy(logits, torch.zeros(2, 3))


def test_clip_zero_is_refused_and_none_means_no_clipping():
    task = make_task("induction_heads", seq_len=8, vocab_size=4)

    def run(clip):
        torch.manual_seed(0)
        model = SSMLM(4, d_model=8, n_layers=1, d_state=2, mixer="lti")
        return train(model, task, steps=3, warmup=1, eval_every=3, eval_examples=8, progress=False, clip=clip)

    for bad in (0, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"clip must be a positive finite number \(the largest gradient norm a step may use\), or None"):
            run(bad)
    assert run(None)["loss"] == run(1e30)["loss"]                  # None: never clipped
    assert run(None)["loss"] != run(1e-3)["loss"]                  # (and clipping does change the run)


# ---------------------------------------------------------------------------------------------- the loop learns
def _initial_and_final_loss(model, task, **kw):
    batch = task(EVAL_SEED, 128)
    with torch.no_grad():
        before = float(masked_cross_entropy(model(batch.inputs), batch.targets))
    log = train(model, task, progress=False, eval_examples=128, **kw)
    return before, log["eval_loss"][-1], log


def test_short_training_on_selective_copying_lowers_the_loss_substantially():
    torch.manual_seed(0)
    task = make_task("selective_copying", seq_len=12, vocab_size=5, num_tokens=2)   # 3 data tokens
    model = TransformerLM(5, d_model=32, n_layers=2, n_heads=4, max_len=14, pos_encoding="learned")
    before, after, log = _initial_and_final_loss(model, task, steps=150, warmup=10, lr=3e-3, eval_every=50, seed=0)
    assert before == pytest.approx(math.log(5), abs=0.3)          # untrained: about uniform over the vocabulary
    assert after < 0.5 * math.log(3), f"loss {before:.3f} -> {after:.3f}: below half of chance (ln 3) expected"
    assert log["eval_accuracy"][-1] > 0.8


def test_short_training_on_induction_heads_lowers_the_loss_substantially():
    torch.manual_seed(0)
    task = make_task("induction_heads", seq_len=16, vocab_size=6)
    model = SSMLM(6, d_model=32, n_layers=2, d_state=4, mixer="selective")
    # (150 steps: at 110 the Mamba initialisation, out_proj scaled by 1/sqrt(layers), is at 85-100 % by seed)
    before, after, log = _initial_and_final_loss(model, task, steps=150, warmup=10, lr=1e-2, eval_every=75, seed=0)
    assert before == pytest.approx(math.log(6), abs=0.3)
    assert after < 0.3 * math.log(5), f"loss {before:.3f} -> {after:.3f}: below 0.3 × chance (ln 5) expected"
    assert log["eval_accuracy"][-1] > 0.9


def test_training_is_seeded():
    task = make_task("induction_heads", seq_len=8, vocab_size=4)
    logs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = SSMLM(4, d_model=8, n_layers=1, d_state=2, mixer="lti")
        logs.append(train(model, task, steps=4, warmup=1, eval_every=2, eval_examples=8, progress=False, seed=3))
    assert logs[0]["loss"] == logs[1]["loss"] and logs[0]["eval_loss"] == logs[1]["eval_loss"]


# ---------------------------------------------------------------------------------------------- command line
def test_command_writes_a_checkpoint_its_log_and_its_command(tmp_path, capsys):
    argv = ["--task", "induction_heads", "--model", "ssm", "--mixer", "lti", "--no-gated", "--seq-len", "8",
            "--vocab-size", "4", "--d-model", "8", "--n-layers", "1", "--d-state", "2", "--steps", "3",
            "--warmup", "1", "--eval-every", "2", "--eval-examples", "8", "--no-progress", "--out", str(tmp_path)]
    main(argv)
    printed = capsys.readouterr().out
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert "eval.json: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items()) in printed
    assert "64 seeded examples per length" in printed and "a different example set" in printed
    assert (tmp_path / "COMMAND.txt").read_text().startswith("python -m ssm_tutor.train --task induction_heads")
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log["step"] == [1, 2, 3] and log["eval_step"] == [2, 3] and log["task"]["seq_len"] == 8
    model = load_model(tmp_path)
    assert isinstance(model, SSMLM) and model.arguments["mixer"] == "lti" and model.arguments["gated"] is False
    result = main(["--evaluate", str(tmp_path), "--lengths", "8,16", "--eval-examples", "4", "--recurrent"])
    assert result["lengths"] == [8, 16] and len(result["accuracy"]) == 2
    assert json.loads((tmp_path / "extrapolation.json").read_text())["accuracy"] == result["accuracy"]


def _tiny_ssm_checkpoint(directory, d_model="8"):
    main(["--task", "induction_heads", "--model", "ssm", "--seq-len", "8", "--vocab-size", "4", "--d-model", d_model,
          "--n-layers", "1", "--d-state", "2", "--steps", "2", "--warmup", "1", "--eval-every", "2",
          "--eval-examples", "4", "--no-progress", "--out", str(directory)])


def test_init_from_continues_from_the_saved_weights(tmp_path, monkeypatch):
    """--init-from (a curriculum: short sequences first): the new run starts from the saved weights."""
    import ssm_tutor.train as train_module

    _tiny_ssm_checkpoint(tmp_path / "stage1")
    saved = load_model(tmp_path / "stage1").state_dict()
    seen = {}

    def spy(model, task, **kw):          # record the weights the training loop starts from
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return train(model, task, **kw)

    monkeypatch.setattr(train_module, "train", spy)
    _tiny_ssm_checkpoint(tmp_path / "stage2")                     # fresh: differs from stage 1
    assert any(not torch.equal(seen[k], saved[k]) for k in saved)
    main(["--task", "induction_heads", "--model", "ssm", "--seq-len", "16", "--vocab-size", "4", "--d-model", "8",
          "--n-layers", "1", "--d-state", "2", "--steps", "2", "--warmup", "1", "--eval-every", "2",
          "--eval-examples", "4", "--no-progress", "--init-from", str(tmp_path / "stage1"), "--out", str(tmp_path / "stage3")])
    assert seen.keys() == saved.keys() and all(torch.equal(seen[k], saved[k]) for k in saved)
    assert "--init-from" in (tmp_path / "stage3" / "COMMAND.txt").read_text()


def test_command_prints_the_selective_copying_accuracy_that_eval_json_records(tmp_path, capsys):
    main(["--task", "selective_copying", "--model", "ssm", "--seq-len", "6", "--num-tokens", "2", "--vocab-size", "4",
          "--d-model", "8", "--n-layers", "1", "--d-state", "2", "--steps", "2", "--warmup", "1", "--eval-every", "2",
          "--eval-examples", "4", "--no-progress", "--out", str(tmp_path / "sc")])
    printed = capsys.readouterr().out
    accuracy = json.loads((tmp_path / "sc" / "eval.json").read_text())["accuracy"]
    assert f"eval.json: accuracy {accuracy:.3f} (128 seeded examples, seed {EVAL_SEED}, 256 copied tokens)" in printed
    assert "on its own 4 examples: a different example set" in printed


@pytest.mark.parametrize("case", ["holds_files", "is_a_file", "under_a_file", "broken_link"])
def test_out_is_checked_before_training(tmp_path, capsys, monkeypatch, case):
    import ssm_tutor.train as train_module

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started although --out is unusable")

    monkeypatch.setattr(train_module, "train", must_not_train)
    out = tmp_path / "out"
    message = {"holds_files": "already holds files (old.txt); pass --overwrite",
               "is_a_file": "exists and is not a directory",
               "under_a_file": "is a file", "broken_link": "is a broken symbolic link"}[case]
    if case == "holds_files":
        out.mkdir()
        (out / "old.txt").write_text("x")
    elif case == "is_a_file":
        out.write_text("x")
    elif case == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    else:
        out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SystemExit):
        main(["--task", "induction_heads", "--model", "ssm", "--seq-len", "8", "--vocab-size", "4", "--steps", "2",
              "--warmup", "1", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert "argument --out" in err and message in err, err


def test_overwrite_replaces_a_checkpoint_and_drops_its_stale_extrapolation(tmp_path):
    _tiny_ssm_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "extrapolation.json").write_text("{}")
    with pytest.raises(SystemExit):
        _tiny_ssm_checkpoint(tmp_path / "ck")                           # not without --overwrite
    main(["--task", "induction_heads", "--model", "ssm", "--seq-len", "8", "--vocab-size", "4", "--d-model", "8",
          "--n-layers", "1", "--d-state", "2", "--steps", "2", "--warmup", "1", "--eval-every", "2",
          "--eval-examples", "4", "--no-progress", "--out", str(tmp_path / "ck"), "--overwrite", "--seed", "5"])
    assert "--seed 5" in (tmp_path / "ck" / "COMMAND.txt").read_text()
    assert not (tmp_path / "ck" / "extrapolation.json").exists()


def test_help_shows_every_default(monkeypatch, capsys):
    from ssm_tutor.train import parser

    monkeypatch.setenv("COLUMNS", "400")                                # no wrapped help text
    p = parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    blocks = {}                                                         # option -> its help text
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            option = line.split()[0].rstrip(",")
            blocks[option] = line
        elif line.startswith("    ") and blocks:
            blocks[option] += line
    for action in p._actions:
        if action.default is None or action.default is False or not action.option_strings or action.dest == "help":
            continue
        text = blocks[action.option_strings[0]]
        assert "default" in text, f"--help does not show the default of {action.option_strings[0]}: {text!r}"
    assert "(default: 0)" in blocks["--seed"]
    for flag in ("--seq-len", "--vocab-size", "--num-tokens"):          # defaults that depend on --task
        assert "default: " in blocks[flag]


@pytest.mark.parametrize("flags, message", [
    (["--model", "mamba"], "holds a SSMLM, but --model builds a MambaLM"),
    (["--model", "ssm", "--d-model", "16"], "does not match the model flags"),
])
def test_init_from_a_different_architecture_is_refused(tmp_path, capsys, flags, message):
    _tiny_ssm_checkpoint(tmp_path / "stage1")
    argv = ["--task", "induction_heads", "--seq-len", "8", "--vocab-size", "4", "--n-layers", "1", "--d-state", "2",
            "--steps", "2", "--warmup", "1", "--init-from", str(tmp_path / "stage1"), "--out", str(tmp_path / "x"), *flags]
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--task", "copying", "--out", "x"], "argument --task: invalid choice: 'copying'"),
    (["--task", "induction_heads", "--model", "rnn", "--out", "x"], "argument --model: invalid choice: 'rnn'"),
    (["--task", "induction_heads", "--steps", "0", "--out", "x"], "argument --steps: expected a positive integer, got 0"),
    (["--task", "induction_heads", "--d-model", "-4", "--out", "x"], "argument --d-model: expected a positive integer"),
    (["--task", "induction_heads", "--lr", "abc", "--out", "x"], "argument --lr: expected a positive number, got 'abc'"),
    (["--task", "induction_heads", "--steps", "10", "--warmup", "10", "--out", "x"], "--warmup: must be smaller than --steps"),
    (["--task", "selective_copying", "--seq-len", "4", "--num-tokens", "6", "--out", "x"],
     "num_tokens \\(6\\) must be at most seq_len \\(4\\)"),
    (["--task", "induction_heads", "--model", "transformer", "--n-heads", "3", "--out", "x"],
     "--n-heads: must divide --d-model"),
    (["--task", "induction_heads"], "required: --out"),
    (["--task", "induction_heads", "--num-tokens", "4", "--out", "x"], "--num-tokens: only selective_copying"),
    (["--evaluate", "/nonexistent/dir"], "not a checkpoint written by this command"),
    (["--evaluate", "x", "--lengths", "64,abc"], "argument --lengths: expected comma-separated positive integers"),
    (["--task", "induction_heads", "--init-from", "/nonexistent/dir", "--out", "x"],
     "argument --init-from: '/nonexistent/dir' is not a checkpoint directory"),
    (["--task", "induction_heads", "--dt-min", "0.5", "--dt-max", "0.1", "--out", "x"],
     "argument --dt-min: must be at most --dt-max"),
    (["--task", "induction_heads", "--model", "ssm", "--dt-min", "0.0001", "--out", "x"],
     "argument --dt-min: only --model mamba has a Δ initialisation range"),
])
def test_bad_arguments_give_clear_messages(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m ssm_tutor.train")
    assert __import__("re").search(message, err), err


def test_gated_selective_ssm_is_mamba_at_the_same_seed():
    """Table 1's gated S6 row is trained as --model mamba: the same weights at the same seed as
    --model ssm --mixer selective --gated, and the same training (a few steps compared)."""
    from ssm_tutor.train import build_model

    models = []
    for name, switches in (("mamba", {}), ("ssm", dict(mixer="selective", gated=True))):
        torch.manual_seed(5)
        models.append(build_model(name, 10, d_model=16, n_layers=1, **switches))
    a, b = models
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    task = make_task("selective_copying", seq_len=8, vocab_size=10, num_tokens=2)
    logs = [train(m, task, steps=4, warmup=1, eval_examples=4, progress=False) for m in (a, b)]
    assert logs[0]["loss"] == logs[1]["loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------- shipped checkpoints
def _shipped():
    return sorted(p.parent for p in CHECKPOINTS.glob("*/eval.json"))


@pytest.mark.parametrize("directory", _shipped(), ids=lambda p: p.name)
def test_shipped_checkpoint_reproduces_its_recorded_accuracy(directory):
    """Every committed checkpoint loads, and its accuracy on the seeded evaluation set is the one
    recorded next to it (the number the notebook prints)."""
    from ssm_tutor.train import evaluate_checkpoint

    recorded = json.loads((directory / "eval.json").read_text())
    measured = evaluate_checkpoint(directory)
    assert measured == pytest.approx(recorded, abs=1e-9)
    assert (directory / "COMMAND.txt").read_text().startswith("python -m ssm_tutor.train")


def _extrapolated():
    return sorted(p.parent for p in CHECKPOINTS.glob("*/extrapolation.json"))


@pytest.mark.parametrize("directory", _extrapolated(), ids=lambda p: p.name)
def test_shipped_extrapolation_reproduces_at_four_times_the_training_length(directory):
    """The long-length curve the notebook plots is read from extrapolation.json; re-measure one of its
    points (4 × the training length, a few seconds) with the recorded settings. Each length has its own
    seeded batch, so one point can be measured alone."""
    from ssm_tutor.train import extrapolation

    recorded = json.loads((directory / "extrapolation.json").read_text())
    length = 4 * recorded["train_length"]
    assert length in recorded["lengths"], f"{directory.name}: no point at 4 × the training length"
    measured = extrapolation(directory, [length], recorded["num_examples"], recorded["recurrent"])
    assert measured["accuracy"] == [recorded["accuracy"][recorded["lengths"].index(length)]]


def test_every_shipped_checkpoint_is_documented():
    """The directories with a model are exactly the ones checkpoints/README.md describes."""
    import re

    documented = set(re.findall(r"^### `([a-z0-9_]+)`", (CHECKPOINTS / "README.md").read_text(), re.M))
    present = {p.parent.name for p in CHECKPOINTS.glob("*/config.json")}
    assert present == documented and {p.name for p in _shipped()} == present, (present, documented)
