"""Data-parallel training: ``python -m ssm_tutor.train`` under ``torchrun`` equals the one-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ssm_tutor.tasks import IGNORE, mqar_mixture
from ssm_tutor.train import build_model, shard, sharded_loss


def test_averaged_shard_gradients_equal_the_global_mean_gradient():
    """What DDP computes (the mean over processes of each shard's gradient) is the gradient of the
    global batch's masked mean, even when the shards hold different numbers of scored positions."""
    torch.manual_seed(0)
    model = build_model("transformer", 32, d_model=16, n_heads=2, max_len=16)
    batch = mqar_mixture(8, 16, [2, 4], 32, seed=3)            # shard 0: 2 pairs each, shard 1: 4 pairs each
    scored = int((batch.targets != IGNORE).sum())

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole = grads(sharded_loss(model(batch.inputs), batch.targets, scored, 1))
    world = 2
    parts = [grads(sharded_loss(model(b.inputs), b.targets, scored, world))
             for b in (shard(batch, r, world) for r in range(world))]
    torch.testing.assert_close(sum(parts) / world, whole, rtol=1e-5, atol=1e-7)
    # the per-process mean (a common mistake) is not the same thing here
    naive = [grads(torch.nn.functional.cross_entropy(model(b.inputs).flatten(0, 1), b.targets.flatten()))
             for b in (shard(batch, r, world) for r in range(world))]
    assert (sum(naive) / world - whole).abs().max() > 1e-3


def test_shard_splits_the_rows_and_refuses_an_uneven_batch():
    batch = mqar_mixture(6, 16, [2, 4], 32, seed=0)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p.inputs for p in parts]), batch.inputs)
    with pytest.raises(ValueError, match="divisible by 4"):
        shard(batch, 0, 4)


FLAGS = ["--task", "mqar", "--num-kv-pairs", "2,4", "--seq-len", "16", "--vocab-size", "32", "--model", "mamba",
         "--d-model", "16", "--d-state", "4", "--steps", "12", "--warmup", "2", "--batch-size", "8",
         "--lr", "0.01", "--eval-every", "100", "--eval-examples", "8", "--no-progress"]


def _run(command, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_two_processes_follow_the_one_process_loss_curve(tmp_path):
    """Same global batch of 8 (4 rows per process, holding 2 and 4 pairs: unequal numbers of scored
    positions), 12 AdamW steps: the loss curves agree to 1e-4 (float rounding of the gradient
    all-reduce, which sums in another order) and so do the final weights."""
    from safetensors.torch import load_file

    _run([sys.executable, "-m", "ssm_tutor.train", *FLAGS, "--out", "one"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          "-m", "ssm_tutor.train", *FLAGS, "--out", "two"], tmp_path)
    one = json.loads((tmp_path / "one" / "train_log.json").read_text())
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert (tmp_path / "two" / "COMMAND.txt").read_text().startswith("torchrun --nproc_per_node 2 -m ssm_tutor.train")
    assert len(one["loss"]) == len(two["loss"]) == 12
    assert max(abs(a - b) for a, b in zip(one["loss"], two["loss"])) < 1e-4, (one["loss"], two["loss"])
    w1, w2 = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    torch.manual_seed(0)                                               # the command's initialisation
    start = build_model("mamba", 32, d_model=16, d_state=4).state_dict()
    assert max((w1[k] - start[k]).abs().max().item() for k in w1) > 1e-2   # and the weights did move
