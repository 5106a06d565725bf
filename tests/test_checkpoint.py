"""Checkpoints (ssm_tutor.checkpoint): all-or-nothing saves, safe reads, every problem named.

Failures are simulated where they would happen: the weight file's write dies half-way (a full
disk), the process dies between writing and swapping (a kill), files are truncated or point
outside their directory.
"""

import errno
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from ssm_tutor import checkpoint as ckpt
from ssm_tutor.checkpoint import (CheckpointError, load_state, read_config, read_tensors, resolve_directory,
                                  write_checkpoint)


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "b.bias": torch.randn(5, generator=g),
            "steps": torch.arange(3)}


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_round_trip(tmp_path):
    target = tmp_path / "model"
    write_checkpoint(target, {"model_type": "x", "width": 4}, _tensors())
    assert _listing(target) == ["config.json", "model.safetensors"]
    assert read_config(target) == {"model_type": "x", "width": 4}
    back = read_tensors(target)
    assert back.keys() == _tensors().keys() and all(torch.equal(back[k], v) for k, v in _tensors().items())
    assert _listing(tmp_path) == ["model"]                                        # nothing left beside it


def test_a_failure_half_way_leaves_the_old_checkpoint_and_no_stray_files(tmp_path, monkeypatch):
    target = tmp_path / "model"
    write_checkpoint(target, {"version": 1}, _tensors(1))
    (target / "train_log.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):                              # writes half a file, then fails
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(target, {"version": 2}, _tensors(2))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before           # the old checkpoint, untouched
    assert _listing(tmp_path) == ["model"]                                        # no temporary directory left
    assert read_config(target) == {"version": 1}
    assert torch.equal(read_tensors(target)["a.weight"], _tensors(1)["a.weight"])


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_a_new_save_replaces_weights_and_keeps_other_files(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)                # systems without renameat2
    target = tmp_path / "model"
    write_checkpoint(target, {"version": 1}, _tensors(1))
    (target / "train_log.json").write_text('{"loss": [1]}')
    (target / "pytorch_model.bin").write_bytes(b"old weights of another format")
    write_checkpoint(target, {"version": 2}, _tensors(2))
    assert _listing(target) == ["config.json", "model.safetensors", "train_log.json"]
    assert (target / "train_log.json").read_text() == '{"loss": [1]}'
    assert read_config(target) == {"version": 2}
    assert torch.equal(read_tensors(target)["b.bias"], _tensors(2)["b.bias"])
    assert _listing(tmp_path) == ["model"]


def test_a_killed_save_leaves_the_old_checkpoint_and_the_next_save_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "model"
    write_checkpoint(target, {"version": 1}, _tensors(1))

    class Killed(BaseException):                                                  # like SIGKILL: no cleanup code runs
        pass

    def killed_at_the_swap(a, b):
        raise Killed()

    monkeypatch.setattr(ckpt, "_exchange", killed_at_the_swap)
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda *a, **k: None)             # a dead process cleans nothing
    with pytest.raises(Killed):
        write_checkpoint(target, {"version": 2}, _tensors(2))
    monkeypatch.undo()
    assert read_config(target) == {"version": 1}                                  # the old one still loads
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.saving-")]
    assert len(leftovers) == 1
    write_checkpoint(target, {"version": 3}, _tensors(3))
    assert _listing(tmp_path) == ["model"] and read_config(target) == {"version": 3}


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    bad = _tensors()
    bad["b.bias"][2] = float("nan")
    bad["a.weight"][0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"refusing to save: 2 tensor\(s\) contain NaN or infinite values: "
                                              r"\['a.weight', 'b.bias'\]"):
        write_checkpoint(tmp_path / "model", {}, bad)
    assert _listing(tmp_path) == []


def test_sharded_checkpoint_is_read(tmp_path):
    t = _tensors()
    save_file({"a.weight": t["a.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.bias": t["b.bias"], "steps": t["steps"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors",
        "steps": "model-00002-of-00002.safetensors"}}))
    back = read_tensors(tmp_path)
    assert all(torch.equal(back[k], v) for k, v in t.items())


@pytest.mark.parametrize("shard, message", [
    ("../outside.safetensors", "points outside the checkpoint directory"),
    ("/etc/passwd", "must be relative file names inside"),
    ("sub/../../outside.safetensors", "points outside the checkpoint directory"),
    ("missing.safetensors", "has no such file"),
])
def test_a_shard_index_pointing_outside_the_directory_is_refused(tmp_path, shard, message):
    inner = tmp_path / "ckpt"
    (inner / "sub").mkdir(parents=True)
    save_file({"x": torch.ones(2)}, str(tmp_path / "outside.safetensors"))       # a real file, outside
    (inner / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
    with pytest.raises(CheckpointError, match=message):
        read_tensors(inner)


def test_a_shard_that_lacks_what_the_index_promises_is_named(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "s.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "s.safetensors",
                                                                                      "y": "s.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"says shard 's.safetensors' holds \['y'\]"):
        read_tensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid shard index"):
        read_tensors(tmp_path)


def test_a_corrupt_weight_file_is_named(tmp_path):
    write_checkpoint(tmp_path / "m", {}, _tensors())
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(data[: len(data) // 2])   # truncated
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        read_tensors(tmp_path / "m")


def test_pickles_are_never_unpickled(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(read_tensors(tmp_path)["w"], torch.ones(2))
    torch.save({"evil": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin could not be read as plain tensors.*weights_only"):
        read_tensors(tmp_path)


def test_missing_things_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory .* does not exist"):
        resolve_directory(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no config.json \(found: \[\]\)"):
        read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors, model.safetensors.index.json or"):
        read_tensors(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        read_config(tmp_path)


def test_load_state_lists_every_problem_and_copies_nothing_unless_all_fit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.full((3,), float("nan")), "extra": torch.ones(1)}
    with pytest.raises(CheckpointError) as info:
        load_state(model, state, what="Tiny")
    message = str(info.value)
    assert message.startswith("checkpoint does not fit Tiny:")
    for part in ("missing key '1.weight' (expected shape (2, 3))", "unexpected key 'extra' (shape (1,))",
                 "key '0.weight' has shape (3, 5), Tiny expects (3, 4)", "key '0.bias' contains NaN"):
        assert part in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    good = {"0.weight": torch.ones(3, 4), "0.bias": torch.ones(3), "1.weight": torch.ones(2, 3).double()}
    load_state(model, good)
    assert torch.equal(model[1].weight, torch.ones(2, 3))


def test_load_state_tied_copies():
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    tied = {"head.weight": "emb.weight"}
    w = torch.randn(5, 3)
    load_state(model, {"emb.weight": w}, tied=tied)                                 # the copy may be absent
    load_state(model, {"emb.weight": w, "head.weight": w.clone()}, tied=tied)       # or equal
    with pytest.raises(CheckpointError, match="ties 'head.weight' to 'emb.weight'.*differs"):
        load_state(model, {"emb.weight": w, "head.weight": w + 1}, tied=tied)


def test_a_directory_that_is_not_a_checkpoints_own_is_refused(tmp_path, monkeypatch):
    (tmp_path / "project" / "src").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds subdirectories or is the current directory"):
        write_checkpoint(tmp_path / "project", {}, _tensors())
    assert _listing(tmp_path / "project") == ["src"]
    monkeypatch.chdir(tmp_path / "project" / "src")
    with pytest.raises(CheckpointError, match="give it one of its own"):
        write_checkpoint(".", {}, _tensors())
    write_checkpoint("model", {}, _tensors())                                   # a directory of its own
    assert _listing(tmp_path / "project" / "src") == ["model"]


def test_write_into_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        write_checkpoint(tmp_path / "f", {}, _tensors())
    assert os.listdir(tmp_path) == ["f"]
