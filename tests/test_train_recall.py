"""Stage 10 on the training command line: mqar and occurs_again, the hybrid and BiMamba models,
the recall curve of a saved checkpoint."""

import json
from pathlib import Path

import pytest

from ssm_tutor.bidirectional import BiMamba
from ssm_tutor.hybrid import HybridLM
from ssm_tutor.train import load_model, main

TINY = ["--d-model", "16", "--d-state", "4", "--steps", "3", "--warmup", "1", "--batch-size", "6",
        "--eval-every", "3", "--eval-examples", "6", "--no-progress"]


def test_mqar_hybrid_trains_saves_and_measures_its_recall_curve(tmp_path, capsys, monkeypatch):
    out = tmp_path / "h"
    main(["--task", "mqar", "--seq-len", "16", "--vocab-size", "32", "--num-kv-pairs", "2,4", "--model", "hybrid",
          "--n-heads", "2", "--no-random-non-queries", *TINY, "--out", str(out)])
    log = json.loads((out / "train_log.json").read_text())
    assert log["task"] == {"name": "mqar", "seq_len": 16, "vocab_size": 32, "num_kv_pairs": [2, 4],
                           "random_non_queries": False}
    assert set(json.loads((out / "eval.json").read_text())) == {"accuracy@2", "accuracy@4"}
    assert isinstance(load_model(out), HybridLM)
    assert "eval.json: accuracy@2" in capsys.readouterr().out
    result = main(["--evaluate", str(out), "--num-kv-pairs", "1,2,3,4", "--eval-examples", "8"])
    recall = json.loads((out / "recall.json").read_text())
    assert recall["pairs"] == [1, 2, 3, 4] and len(recall["accuracy"]) == 4 and recall["num_examples"] == 8
    assert recall["command"].startswith("python -m ssm_tutor.train --evaluate") and result["pairs"] == [1, 2, 3, 4]
    assert all(0 <= a <= 1 for a in recall["accuracy"])
    # the standard evaluation (eval.json) draws its examples with the filler the model was trained on
    from ssm_tutor import tasks
    from ssm_tutor.train import evaluate_checkpoint
    fillers, real_mqar = [], tasks.mqar
    monkeypatch.setattr(tasks, "mqar", lambda *a, **k: fillers.append(k.get("random_non_queries", True)) or real_mqar(*a, **k))
    evaluate_checkpoint(out, 8)
    assert fillers == [False, False]


def test_mqar_mamba2_trains_saves_and_measures_its_recall_curve(tmp_path):
    """--model mamba2 builds Mamba2LM from the shared flags (d_model, n_layers, d_state) and its own
    (head_dim, chunk_size, n_groups), saves it in the Mamba-2 format, and --evaluate reloads it."""
    from ssm_tutor.mamba2 import Mamba2LM

    out = tmp_path / "m2"
    main(["--task", "mqar", "--seq-len", "16", "--vocab-size", "32", "--num-kv-pairs", "2,4", "--model", "mamba2",
          "--head-dim", "8", "--chunk-size", "8", "--n-groups", "2", "--no-random-non-queries", *TINY,
          "--steps", "2", "--eval-every", "2", "--out", str(out)])
    model = load_model(out)
    assert isinstance(model, Mamba2LM)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.state_size) == (16, 2, 4)
    assert (c.num_heads, c.head_dim, c.chunk_size, c.n_groups, c.expand) == (4, 8, 8, 2, 2)
    assert json.loads((out / "config.json").read_text())["model_type"] == "mamba2"
    assert len(json.loads((out / "train_log.json").read_text())["loss"]) == 2
    main(["--evaluate", str(out), "--num-kv-pairs", "1,2", "--eval-examples", "8"])
    recall = json.loads((out / "recall.json").read_text())
    assert recall["pairs"] == [1, 2] and all(0 <= a <= 1 for a in recall["accuracy"])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_occurs_again_trains_a_bimamba_and_reports_the_causal_ceiling(tmp_path, bidirectional):
    out = tmp_path / "b"
    main(["--task", "occurs_again", "--seq-len", "12", "--vocab-size", "6", "--model", "bimamba",
          *([] if bidirectional else ["--no-bidirectional"]), *TINY, "--out", str(out)])
    model = load_model(out)
    assert isinstance(model, BiMamba) and model.bidirectional == bidirectional
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation) == {"accuracy", "causal_ceiling"} and 0.5 < evaluation["causal_ceiling"] < 1


@pytest.mark.parametrize("argv, message", [
    (["--task", "mqar", "--model", "bimamba", "--out", "x"], "bimamba labels tokens"),
    (["--task", "occurs_again", "--model", "mamba", "--out", "x"], "token-labelling task, trained with --model bimamba"),
    (["--task", "induction_heads", "--num-kv-pairs", "4", "--out", "x"], "only mqar has key-value pairs"),
    (["--task", "induction_heads", "--no-random-non-queries", "--out", "x"], "only mqar has queries"),
    (["--task", "mqar", "--num-kv-pairs", "4,x", "--out", "x"], "expected comma-separated positive integers"),
    (["--task", "mqar", "--num-kv-pairs", "32", "--seq-len", "64", "--out", "x"], r"seq_len >= 4·num_kv_pairs = 128"),
    (["--task", "mqar", "--model", "hybrid", "--attn-layer-period", "2", "--attn-layer-offset", "2", "--out", "x"],
     "must be smaller than --attn-layer-period"),
    (["--task", "mqar", "--model", "mamba", "--attn-layer-period", "3", "--out", "x"], "only --model hybrid has a layer pattern"),
    (["--task", "mqar", "--model", "transformer", "--no-bidirectional", "--out", "x"], "only --model bimamba has directions"),
    (["--task", "mqar", "--batch-size", "2", "--out", "x"], "at least the number of pair counts"),
    (["--task", "mqar", "--model", "mamba2", "--d-model", "16", "--head-dim", "12", "--out", "x"],
     r"--head-dim: must divide 2 \* --d-model \(32"),
    (["--task", "mqar", "--model", "mamba2", "--d-model", "16", "--head-dim", "8", "--n-groups", "3", "--out", "x"],
     r"--n-groups: must divide the number of heads, 2 \* --d-model / --head-dim = 4, got 3"),
    (["--task", "mqar", "--model", "mamba", "--head-dim", "8", "--out", "x"], "only --model mamba2 has heads"),
    (["--task", "mqar", "--model", "transformer", "--chunk-size", "8", "--out", "x"], "only --model mamba2 has heads"),
])
def test_bad_stage_10_arguments_give_clear_messages(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- shipped recall curves
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("directory", sorted(p.parent for p in CHECKPOINTS.glob("*/recall.json")), ids=lambda p: p.name)
def test_shipped_recall_curve_reproduces_one_point(directory):
    """Notebook 10 plots recall.json; re-measure its point at the largest trained pair count (each pair
    count has its own seeded batch, so one point can be measured alone) with the recorded settings."""
    from ssm_tutor.train import recall_curve

    recorded = json.loads((directory / "recall.json").read_text())
    P = max(recorded["trained_pairs"])
    measured = recall_curve(directory, [P], recorded["num_examples"])
    assert measured["accuracy"] == pytest.approx([recorded["accuracy"][recorded["pairs"].index(P)]], abs=1e-9)
    assert recorded["command"].startswith("python -m ssm_tutor.train --evaluate checkpoints/")
