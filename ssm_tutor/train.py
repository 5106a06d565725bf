"""Stage 8: training a model on the Mamba paper's synthetic tasks.

Notebook: ``notebooks/08_training.ipynb``. Paper: Gu & Dao (2023), Section 4.1 and Appendix E.1.

The loop (:func:`train`) is the whole recipe, readable in one screen:

    for step in 1 … steps:
        batch  = a fresh seeded batch of the task (never the evaluation batch)
        loss   = cross-entropy at the scored positions only            (masked_cross_entropy)
        loss.backward(); clip the gradient norm to `clip`              (exploding-gradient guard)
        lr     = linear warm-up, then cosine decay to min_lr_ratio·lr  (lr_at)
        AdamW step (weight decay on matrices, not on norms/biases/A_log/D/Δ-bias)
        every `eval_every` steps: loss and accuracy on a fixed evaluation batch

Data-parallel training (stage 10): the same command runs unchanged under
``torchrun --nproc_per_node N`` (PyTorch DDP; the gloo backend on a CPU, nccl with ``--device
cuda``). Every process builds the same seeded *global* batch and trains on its own 1/N of the
rows; the loss of each process is its share of the global batch's masked mean, so after DDP
averages the gradients every process holds exactly the gradient of the one-process run
(:func:`sharded_loss`), and the loss curve is the same up to float rounding (tested at two
processes). Process 0 evaluates and writes the checkpoint. ``--batch-size`` is the global batch.

Command line (writes ``config.json`` + ``model.safetensors``, ``train_log.json``, ``eval.json`` and
``COMMAND.txt`` into ``--out``, which must be new or empty unless ``--overwrite``)::

    # the recipe of the shipped checkpoints/sc_mamba (eval.json: accuracy 0.996)
    python -m ssm_tutor.train --task selective_copying --model mamba --d-model 64 --lr 0.01 --steps 600 --out runs/sc_mamba
    python -m ssm_tutor.train --task induction_heads --model transformer --out runs/ih_transformer
    python -m ssm_tutor.train --task selective_copying --model ssm --mixer lti --no-gated --out /tmp/s4
    # a curriculum: continue a length-64 checkpoint at length 256 (the model flags must match it)
    python -m ssm_tutor.train --task induction_heads --seq-len 256 --init-from checkpoints/ih_mamba_64 --out /tmp/ih256
    # stage 10: multi-query associative recall on a mixture of pair counts, on two processes
    torchrun --nproc_per_node 2 -m ssm_tutor.train --task mqar --num-kv-pairs 4,8,16 --model transformer --out /tmp/mqar
    # stage 11: Mamba-2 (heads of 16 channels, each with a 16 x 64 state) on the same task
    python -m ssm_tutor.train --task mqar --model mamba2 --d-state 64 --head-dim 16 --out /tmp/mqar2

``--model mamba`` is :class:`ssm_tutor.mamba.MambaLM` (saved in the Hugging Face Mamba format);
``--model mamba2`` is :class:`ssm_tutor.mamba2.Mamba2LM` (the Hugging Face Mamba-2 format);
``transformer`` and ``ssm`` are :mod:`ssm_tutor.baselines` (saved as described there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssm_tutor import baselines, tasks
from ssm_tutor.checkpoint import read_config
from ssm_tutor.tasks import IGNORE, TaskBatch
from ssm_tutor.validate import (non_negative_float_arg, non_negative_int_arg, positive_float_arg, positive_int_arg,
                                positive_number)

__all__ = ["lr_at", "masked_cross_entropy", "make_optimizer", "process_group", "sharded_loss", "shard", "make_task",
           "build_model", "train", "save_model", "load_model", "evaluate_checkpoint", "extrapolation", "recall_curve",
           "main", "TASKS", "MODELS", "EVAL_SEED", "EVAL_LENGTHS"]

TASKS = ("selective_copying", "induction_heads", "mqar", "occurs_again")
MODELS = ("mamba", "mamba2", "transformer", "ssm", "hybrid", "bimamba")
LABELLING_TASKS = {"occurs_again": 2}   # task -> number of labels: a per-token classifier (bimamba), not an LM
EVAL_SEED = 10_000_019          # the evaluation batch's seed; training batches use seeds seed·10⁶ + step


# ----------------------------------------------------------------------------------------------
# the two ingredients a learner writes in the notebook's exercises
# ----------------------------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, lr: float, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (1-based): linear warm-up from lr/warmup to lr over ``warmup_steps``,
    then cosine decay from lr to ``min_lr_ratio · lr`` at ``total_steps``:

        lr_t = lr · t / W                                                     for t ≤ W
        lr_t = lr · (r + (1 - r) · ½ (1 + cos(π (t - W) / (T - W))))          for W < t ≤ T
    """
    if step <= warmup_steps:
        return lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over the scored positions (targets != IGNORE) only.

    logits: (N, L, V) float; targets: (N, L) int64 with IGNORE = -100 where not scored. A batch
    with no scored position has no mean (PyTorch would return NaN): that raises ValueError.
    ``reduction="sum"``: the sum over the scored positions instead (0 when there are none).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits must have shape (*targets.shape, V) = {tuple(targets.shape)} + (V,), "
                         f"got {tuple(logits.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class ids (int64), got dtype {targets.dtype}")
    if reduction == "mean" and not (targets != IGNORE).any():
        raise ValueError(f"targets has no scored positions (all {targets.numel()} are IGNORE = {IGNORE}): "
                         f"the masked mean would be 0/0")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE,
                           reduction=reduction)


# ----------------------------------------------------------------------------------------------
# data parallelism: every process trains on its rows of the same global batch
# ----------------------------------------------------------------------------------------------
def process_group() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) in a plain run, its place under torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: TaskBatch, rank: int, world: int) -> TaskBatch:
    """Process ``rank``'s rows of the global batch: the rank-th of ``world`` equal contiguous parts."""
    n = len(batch.inputs)
    if n % world:
        raise ValueError(f"the global batch of {n} examples does not split evenly over {world} processes; "
                         f"choose a batch size divisible by {world}")
    rows = slice(rank * n // world, (rank + 1) * n // world)
    return TaskBatch(batch.inputs[rows], batch.targets[rows])


def sharded_loss(logits: torch.Tensor, targets: torch.Tensor, scored: int, world: int) -> torch.Tensor:
    """This process's part of the global batch's masked mean cross-entropy.

    With S_r the sum of the cross-entropies at this process's scored positions and ``scored`` the
    number of scored positions in the whole global batch, the loss is S_r · world / scored. DDP
    averages the gradients over the ``world`` processes, so every one ends up with
    ∇ (Σ_r S_r) / scored, the gradient of the one-process mean. (The per-process *mean* would be
    wrong whenever the processes' shares hold different numbers of scored positions, as in an
    MQAR batch mixing pair counts.) With world = 1 it is the masked mean itself, computed as
    :func:`masked_cross_entropy` does (so one-process runs round exactly as before).
    """
    if world == 1:
        return masked_cross_entropy(logits, targets)
    return masked_cross_entropy(logits, targets, reduction="sum") * (world / scored)


# ----------------------------------------------------------------------------------------------
# tasks and models by name
# ----------------------------------------------------------------------------------------------
def make_task(name: str, *, seq_len: int, vocab_size: int, num_tokens: int = 8, num_kv_pairs=(8,),
              random_non_queries: bool = True):
    """A function seed, n -> TaskBatch for the task ``name`` with these sizes.

    ``num_kv_pairs`` (mqar): a list of pair counts; each batch mixes them in equal shares;
    ``random_non_queries`` (mqar): random filler tokens (True) or token 0 (see ``tasks.mqar``)."""
    if name == "selective_copying":
        return lambda seed, n: tasks.selective_copying(n, seq_len, num_tokens, vocab_size, seed=seed)
    if name == "induction_heads":
        return lambda seed, n: tasks.induction_heads(n, seq_len, vocab_size, seed=seed)
    if name == "mqar":
        return lambda seed, n: tasks.mqar_mixture(n, seq_len, num_kv_pairs, vocab_size, seed=seed,
                                                  random_non_queries=random_non_queries)
    if name == "occurs_again":
        return lambda seed, n: tasks.occurs_again(n, seq_len, vocab_size, seed=seed)
    raise ValueError(f"task must be one of {TASKS}, got {name!r}")


def build_model(name: str, vocab_size: int, *, d_model: int = 32, n_layers: int = 2, d_state: int = 8,
                n_heads: int = 4, max_len: int = 256, pos_encoding: str = "rope", mixer: str = "selective",
                gated: bool = True, dt_min: float = 0.001, dt_max: float = 0.1, num_labels: int = 2,
                bidirectional: bool = True, attn_layer_period: int = 2, attn_layer_offset: int = 1,
                head_dim: int = 16, chunk_size: int = 64, n_groups: int = 1) -> nn.Module:
    """A fresh model: "mamba" (MambaLM), "mamba2" (Mamba2LM: expand 2, so 2·d_model/head_dim heads of
    ``head_dim`` channels, ``n_groups`` groups of B/C, the SSD scan in chunks of ``chunk_size``; its state
    per layer is heads · head_dim · d_state), "transformer" (TransformerLM), "ssm" (SSMLM with mixer/gated),
    "hybrid" (HybridLM: layer i is attention when (i - attn_layer_offset) % attn_layer_period == 0, with
    ``n_heads`` heads, else Mamba), or "bimamba" (the per-token classifier BiMamba with ``num_labels``;
    ``bidirectional=False``: its causal twin).

    ``dt_min``, ``dt_max`` (mamba, mamba2, hybrid, bimamba): the range Δ = softplus(dt_proj bias) starts in
    (log-uniform per channel).
    """
    if name == "hybrid":
        from ssm_tutor.hybrid import HybridConfig, HybridLM
        return HybridLM(HybridConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                                     state_size=d_state, time_step_min=dt_min, time_step_max=dt_max,
                                     num_attention_heads=n_heads, attn_layer_period=attn_layer_period,
                                     attn_layer_offset=attn_layer_offset))
    if name == "bimamba":
        from ssm_tutor.bidirectional import BiMamba
        from ssm_tutor.mamba import MambaConfig
        return BiMamba(MambaConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                                   state_size=d_state, time_step_min=dt_min, time_step_max=dt_max),
                       num_labels, bidirectional=bidirectional)
    if name == "mamba":
        from ssm_tutor.mamba import MambaConfig, MambaLM
        return MambaLM(MambaConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                                   state_size=d_state, time_step_min=dt_min, time_step_max=dt_max))
    if name == "mamba2":
        from ssm_tutor.mamba2 import Mamba2Config, Mamba2LM
        expand = 2
        if (expand * d_model) % head_dim:
            raise ValueError(f"mamba2: head_dim must divide expand * d_model = {expand} * {d_model}, got {head_dim}")
        num_heads = expand * d_model // head_dim
        if num_heads % n_groups:
            raise ValueError(f"mamba2: n_groups must divide the number of heads (2 * d_model / head_dim = "
                             f"{num_heads}), got {n_groups}")
        return Mamba2LM(Mamba2Config(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                                     state_size=d_state, expand=expand, num_heads=num_heads, head_dim=head_dim,
                                     n_groups=n_groups, chunk_size=chunk_size, time_step_min=dt_min,
                                     time_step_max=dt_max, tie_word_embeddings=True))
    if name == "transformer":
        return baselines.TransformerLM(vocab_size, d_model, n_layers, n_heads, max_len, pos_encoding)
    if name == "ssm":
        return baselines.SSMLM(vocab_size, d_model, n_layers, d_state, mixer=mixer, gated=gated)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def save_model(model: nn.Module, directory) -> None:
    """HF Mamba format for MambaLM (its save_pretrained); baselines.save_pretrained for the others."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        baselines.save_pretrained(model, directory)


def load_model(directory) -> nn.Module:
    """Load any checkpoint this module writes, choosing the class from config.json's model_type."""
    model_type = read_config(directory).get("model_type")
    if model_type == "mamba":
        from ssm_tutor.mamba import MambaLM
        return MambaLM.from_pretrained(directory).eval()
    if model_type == "mamba2":
        from ssm_tutor.mamba2 import Mamba2LM
        return Mamba2LM.from_pretrained(directory).eval()
    if model_type == "ssm_tutor_hybrid":
        from ssm_tutor.hybrid import HybridLM
        return HybridLM.from_pretrained(directory)
    if model_type == "ssm_tutor_bimamba":
        from ssm_tutor.bidirectional import BiMamba
        return BiMamba.from_pretrained(directory)
    return baselines.load_pretrained(directory)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) with weight decay on the weight matrices only.

    Decayed: every parameter with 2 or more dimensions (embeddings, projections, convolution
    kernels), except ``A_log``. Not decayed: vectors (norm weights, biases, D, the Δ bias) and
    ``A_log``: decay would pull A towards -1 and Δ towards softplus(0), i.e. it would change the
    SSM's memory, not just keep the weights small.
    """
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "A_log" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: nn.Module, batch: TaskBatch, batch_size: int = 64) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on ``batch``, in chunks of ``batch_size`` examples."""
    logits = tasks.model_logits(model, batch, batch_size)                       # (N, L, vocab)
    return float(masked_cross_entropy(logits, batch.targets)), tasks.masked_accuracy(logits, batch.targets)


def _check_clip(clip) -> None:
    """clip = 0 would zero every gradient (the model would silently not learn): refuse it."""
    if clip is not None:
        positive_number("clip", clip, why=" (the largest gradient norm a step may use), or None for no clipping")


def train(model: nn.Module, task, *, steps: int = 400, batch_size: int = 32, lr: float = 3e-3,
          warmup: int = 40, weight_decay: float = 0.1, clip: float | None = 1.0, eval_every: int = 50,
          eval_examples: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model`` in place on ``task`` (seed, n -> TaskBatch); return the log (losses, evaluations).

    ``clip``: the largest gradient norm a step may use (> 0), or None for no clipping.
    Under ``torchrun`` (an initialised process group of N processes) each process trains on its
    1/N of every global batch of ``batch_size`` examples (see the module docstring); the returned
    log is the same on every process except that only process 0 evaluates.
    """
    _check_clip(clip)
    rank, world = process_group()
    if batch_size % world:
        raise ValueError(f"batch_size ({batch_size}) is the global batch: it must be divisible by the number "
                         f"of processes ({world})")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    opt = make_optimizer(model, lr, weight_decay)
    net = model
    if world > 1:     # averages the gradients over the processes during backward()
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    eval_batch = task(EVAL_SEED, eval_examples)
    log = {"step": [], "loss": [], "lr": [], "eval_step": [], "eval_loss": [], "eval_accuracy": []}
    model.train()
    bar = tqdm(range(1, steps + 1), desc="training", disable=not progress or rank != 0)
    for step in bar:
        batch = task(seed * 1_000_000 + step, batch_size)          # the global batch, the same in every process
        scored = int((batch.targets != IGNORE).sum())
        mine = shard(batch, rank, world)                           # this process's rows (all of them if world = 1)
        loss = sharded_loss(net(mine.inputs.to(device)), mine.targets.to(device), scored, world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        opt.step()
        loss = loss.detach()
        if world > 1:                                              # the global batch's mean, for the log
            dist.all_reduce(loss)
            loss /= world
        log["step"].append(step); log["loss"].append(round(loss.item(), 5)); log["lr"].append(opt.param_groups[0]["lr"])
        if rank == 0 and (step % eval_every == 0 or step == steps):
            eval_loss, eval_acc = evaluate(model, eval_batch)
            log["eval_step"].append(step); log["eval_loss"].append(round(eval_loss, 5))
            log["eval_accuracy"].append(round(eval_acc, 5))
            bar.set_postfix(loss=f"{loss.item():.3f}", eval_acc=f"{eval_acc:.3f}")
    model.eval()
    return log


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
# the argument types are shared with `ssm-tutor` (ssm_tutor.validate)
_positive_int, _non_negative_int = positive_int_arg, non_negative_int_arg
_positive_float, _non_negative_float = positive_float_arg, non_negative_float_arg


# per-task defaults (paper, Appendix E.1, shrunk to a 2-core CPU)
TASK_DEFAULTS = {"selective_copying": dict(seq_len=32, vocab_size=10, num_tokens=4),
                 "induction_heads": dict(seq_len=256, vocab_size=16),
                 # stage 10 (Zoology's sizes, shrunk: notebook 10 says why)
                 "mqar": dict(seq_len=64, vocab_size=256, num_kv_pairs=[4, 8, 16], random_non_queries=True),
                 "occurs_again": dict(seq_len=32, vocab_size=16)}


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except where the help text already says it (or there is none)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ssm_tutor.train", formatter_class=_HelpWithDefaults,
                                description="Train a model on one of the Mamba paper's synthetic tasks and save it. "
                                            "README.md's Training section gives a recipe that reproduces a shipped "
                                            "checkpoint; each checkpoints/*/COMMAND.txt is the command that made it.")
    p.add_argument("--task", choices=TASKS, help="the task to train on (required unless --evaluate)")
    p.add_argument("--model", default="mamba", choices=MODELS, help="the model to build")
    p.add_argument("--out", metavar="DIR",
                   help="checkpoint directory to write (required unless --evaluate); checked before training: it "
                        "must be writable, and empty or new unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it already holds files (the checkpoint's files are replaced)")
    e = p.add_argument_group("evaluate a saved checkpoint instead of training: an induction-heads one at many "
                             "lengths, an mqar one at many pair counts")
    e.add_argument("--evaluate", metavar="DIR",
                   help="checkpoint directory; writes DIR/extrapolation.json (induction heads: --lengths) or "
                        "DIR/recall.json (mqar: --num-kv-pairs, default the trained ones)")
    e.add_argument("--lengths", type=_lengths, default=[2 ** k for k in range(5, 15)],
                   help="comma-separated sequence lengths (default: 32,64,…,16384)")
    e.add_argument("--recurrent", action="store_true", help="evaluate with the recurrent step mode (constant memory)")
    t = p.add_argument_group("task sizes (defaults depend on --task)")
    t.add_argument("--seq-len", type=_positive_int,
                   help="selective copying: noise length (default: 32); induction heads: length (default: 256)")
    t.add_argument("--vocab-size", type=_positive_int,
                   help="tokens, incl. noise/marker or trigger (default: 10 for selective copying, 16 for induction heads)")
    t.add_argument("--num-tokens", type=_positive_int, help="selective copying: data tokens to copy (default: 4)")
    t.add_argument("--num-kv-pairs", type=_pair_counts,
                   help="mqar: comma-separated key-value pair counts, mixed in equal shares in every batch "
                        "(default: 4,8,16)")
    t.add_argument("--random-non-queries", default=None, action=argparse.BooleanOptionalAction,
                   help="mqar: fill the positions between queries with random tokens (default), or with token 0 "
                        "(--no-random-non-queries, the setting of Zoology's Figure 2)")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=_positive_int, default=64, help="model width")
    m.add_argument("--n-layers", type=_positive_int, default=2, help="number of blocks")
    m.add_argument("--d-state", type=_positive_int, default=8, help="SSM state size N (mamba, mamba2, ssm, hybrid)")
    m.add_argument("--dt-min", type=_positive_float, default=0.001,
                   help="(mamba) smallest initial Δ; a smaller one starts some channels with a longer memory")
    m.add_argument("--dt-max", type=_positive_float, default=0.1, help="(mamba) largest initial Δ")
    m.add_argument("--n-heads", type=_positive_int, default=4, help="attention heads (transformer, hybrid)")
    m.add_argument("--pos-encoding", default="rope", choices=baselines.POS_ENCODINGS, help="(transformer) positions")
    m.add_argument("--mixer", default="selective", choices=baselines.MIXERS, help="(ssm) the inner layer")
    m.add_argument("--gated", default=True, action=argparse.BooleanOptionalAction, help="(ssm) gate with SiLU(z)")
    m.add_argument("--head-dim", type=_positive_int, default=16,
                   help="(mamba2) channels per head P; 2·d_model/P heads, each with a P × N state")
    m.add_argument("--chunk-size", type=_positive_int, default=64, help="(mamba2) SSD chunk length")
    m.add_argument("--n-groups", type=_positive_int, default=1, help="(mamba2) groups of heads sharing B and C")
    m.add_argument("--attn-layer-period", type=_positive_int, default=2,
                   help="(hybrid) one attention layer every this many layers")
    m.add_argument("--attn-layer-offset", type=_non_negative_int, default=1,
                   help="(hybrid) the first attention layer; layer i is attention when (i - offset) %% period == 0")
    m.add_argument("--bidirectional", default=True, action=argparse.BooleanOptionalAction,
                   help="(bimamba) scan both directions; --no-bidirectional: the causal twin")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=_positive_int, default=400, help="training steps")
    o.add_argument("--batch-size", type=_positive_int, default=32, help="examples per step")
    o.add_argument("--lr", type=_positive_float, default=3e-3, help="peak learning rate")
    o.add_argument("--warmup", type=_non_negative_int, default=40, help="linear warm-up steps")
    o.add_argument("--weight-decay", type=_non_negative_float, default=0.1, help="AdamW weight decay (matrices only)")
    o.add_argument("--clip", type=_positive_float, default=1.0,
                   help="largest gradient norm per step (> 0: a norm of 0 would zero every gradient)")
    o.add_argument("--eval-every", type=_positive_int, default=50, help="steps between evaluations during training")
    o.add_argument("--eval-examples", type=_positive_int, default=256,
                   help="examples in the evaluation batch during training (with --evaluate: per length)")
    o.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the initialisation and the batches")
    o.add_argument("--init-from", metavar="DIR",
                   help="start from this checkpoint's weights instead of a fresh initialisation (a curriculum: "
                        "train at a short length first, then continue at a longer one); the model flags must match it")
    o.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (1: these tiny models gain nothing from more, and lose a lot on a busy CPU)")
    o.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    o.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where to train; under torchrun, cuda means cuda:LOCAL_RANK and the nccl backend "
                        "(gloo on the CPU)")
    return p


def _integer_list(text: str, minimum: int, each: str) -> list[int]:
    """A comma-separated list of integers, each at least ``minimum`` (the message names ``each``)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"every {each}, got {text!r}")
    return values


def _pair_counts(text: str) -> list[int]:
    return _integer_list(text, 1, "pair count must be a positive integer")


def _lengths(text: str) -> list[int]:
    return _integer_list(text, 3, "length must be at least 3")


def extrapolation(directory, lengths, num_examples: int = 64, recurrent: bool = False, batch_size: int = 64) -> dict:
    """Induction-heads accuracy of a saved checkpoint at each length: {"lengths": […], "accuracy": […]}."""
    log = json.loads((Path(directory) / "train_log.json").read_text())
    if log["task"]["name"] != "induction_heads":
        raise ValueError(f"{directory} was trained on {log['task']['name']!r}, not induction_heads")
    model = load_model(directory)
    acc = tasks.induction_accuracy_by_length(model, lengths, num_examples, log["task"]["vocab_size"],
                                             seed=EVAL_SEED, batch_size=batch_size, recurrent=recurrent)
    return {"lengths": list(acc), "accuracy": list(acc.values()), "num_examples": num_examples,
            "train_length": log["task"]["seq_len"], "recurrent": recurrent}


def recall_curve(directory, pair_counts=None, num_examples: int = 256) -> dict:
    """MQAR accuracy of a saved checkpoint at each pair count (default: the trained ones), on
    ``num_examples`` seeded examples each (seed EVAL_SEED + P) of the trained length and vocabulary:
    {"pairs": […], "accuracy": […], …}. Pair counts that do not fit the length (4P > seq_len) are
    an error, named by :func:`ssm_tutor.tasks.mqar`."""
    log = json.loads((Path(directory) / "train_log.json").read_text())
    if log["task"]["name"] != "mqar":
        raise ValueError(f"{directory} was trained on {log['task']['name']!r}, not mqar")
    sizes = log["task"]
    pair_counts = list(pair_counts or sizes["num_kv_pairs"])
    model = load_model(directory)
    accuracy = [tasks.model_accuracy(model, tasks.mqar(num_examples, sizes["seq_len"], P, sizes["vocab_size"],
                                                       seed=EVAL_SEED + P,
                                                       random_non_queries=sizes.get("random_non_queries", True)))
                for P in pair_counts]
    return {"pairs": pair_counts, "accuracy": accuracy, "num_examples": num_examples,
            "trained_pairs": sizes["num_kv_pairs"], "seq_len": sizes["seq_len"], "vocab_size": sizes["vocab_size"]}


EVAL_LENGTHS = (32, 128, 512)   # induction heads: the standard evaluation's lengths


STANDARD_EVAL_EXAMPLES = 128   # examples in the standard evaluation (eval.json)


def evaluate_checkpoint(directory, num_examples: int = STANDARD_EVAL_EXAMPLES) -> dict:
    """The standard evaluation of a saved checkpoint on the seeded evaluation set (seed EVAL_SEED),
    what the notebook prints and ``eval.json`` records:

    selective copying: {"accuracy": …} over the copied tokens (num_examples · num_tokens of them);
    induction heads:   {"accuracy@L": …} for L in EVAL_LENGTHS, num_examples // 2 examples each;
    mqar:              {"accuracy@P": …} for each trained pair count P, num_examples examples each
                       (num_examples · P queries);
    occurs_again:      {"accuracy": …} over every token of num_examples sequences, and
                       {"causal_ceiling": …}, the best any causal model can do.
    """
    log = json.loads((Path(directory) / "train_log.json").read_text())
    sizes = {k: v for k, v in log["task"].items() if k != "name"}
    model = load_model(directory)
    if log["task"]["name"] == "selective_copying":
        batch = make_task("selective_copying", **sizes)(EVAL_SEED, num_examples)
        return {"accuracy": tasks.model_accuracy(model, batch)}
    if log["task"]["name"] == "mqar":
        filler = sizes.get("random_non_queries", True)           # the filler the model was trained with
        return {f"accuracy@{P}": tasks.model_accuracy(model, tasks.mqar(num_examples, sizes["seq_len"], P,
                                                                         sizes["vocab_size"], seed=EVAL_SEED,
                                                                         random_non_queries=filler))
                for P in sizes["num_kv_pairs"]}
    if log["task"]["name"] == "occurs_again":
        batch = make_task("occurs_again", **sizes)(EVAL_SEED, num_examples)
        return {"accuracy": tasks.model_accuracy(model, batch),
                "causal_ceiling": tasks.occurs_again_causal_ceiling(sizes["seq_len"], sizes["vocab_size"])}
    acc = tasks.induction_accuracy_by_length(model, EVAL_LENGTHS, num_examples // 2, sizes["vocab_size"],
                                             seed=EVAL_SEED)
    return {f"accuracy@{n}": a for n, a in acc.items()}


def main(argv: list[str] | None = None) -> dict:
    """The command line: train and save (or, with --evaluate, measure a saved checkpoint at many lengths)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    started = _start_process_group(args.device)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)                  # leave the caller's setting as it was
        if started:
            dist.destroy_process_group()


def _start_process_group(device: str) -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment) join the process group: gloo for CPU
    training, nccl for cuda. Returns whether this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return True


def _load_weights_into(model: nn.Module, directory, p: argparse.ArgumentParser) -> None:
    """--init-from: copy a saved checkpoint's weights into the freshly built ``model`` (same architecture)."""
    if not (Path(directory) / "config.json").is_file():
        p.error(f"argument --init-from: {str(directory)!r} is not a checkpoint directory (no config.json)")
    source = load_model(directory)
    if type(source) is not type(model):
        p.error(f"argument --init-from: {str(directory)!r} holds a {type(source).__name__}, "
                f"but --model builds a {type(model).__name__}")
    theirs, ours = source.state_dict(), model.state_dict()
    mismatched = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if mismatched or set(theirs) - set(ours):
        p.error(f"argument --init-from: {str(directory)!r} does not match the model flags "
                f"(--d-model, --n-layers, --d-state, …): differing weights {sorted(mismatched or set(theirs) - set(ours))[:4]}")
    model.load_state_dict(theirs)


def _run(args, argv):
    p = parser()
    if args.evaluate:
        if process_group()[0] != 0:
            return {}                               # one process measures and writes
        directory = Path(args.evaluate)
        if not (directory / "train_log.json").is_file():
            p.error(f"argument --evaluate: {str(directory)!r} is not a checkpoint written by this command "
                    f"(no train_log.json)")
        start = time.perf_counter()
        if json.loads((directory / "train_log.json").read_text())["task"]["name"] == "mqar":
            result, name, x = recall_curve(directory, args.num_kv_pairs, args.eval_examples), "recall.json", "pairs"
        else:
            result = extrapolation(directory, args.lengths, args.eval_examples, args.recurrent)
            name, x = "extrapolation.json", "lengths"
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["command"] = "python -m ssm_tutor.train " + shlex.join(argv)
        (directory / name).write_text(json.dumps(result) + "\n")
        print(" ".join(f"{n}:{a:.2f}" for n, a in zip(result[x], result["accuracy"])))
        return result
    missing = [flag for flag, value in (("--task", args.task), ("--out", args.out)) if value is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)} (or --evaluate DIR)")
    if args.task != "selective_copying" and args.num_tokens is not None:
        p.error("argument --num-tokens: only selective_copying has tokens to copy")
    if args.task != "mqar" and args.num_kv_pairs is not None:
        p.error("argument --num-kv-pairs: only mqar has key-value pairs")
    if args.task != "mqar" and args.random_non_queries is not None:
        p.error("argument --random-non-queries: only mqar has queries")
    if (args.task in LABELLING_TASKS) != (args.model == "bimamba"):
        p.error(f"argument --model: {args.task} is a token-labelling task, trained with --model bimamba "
                f"(with --no-bidirectional for the causal twin)" if args.task in LABELLING_TASKS else
                f"argument --model: bimamba labels tokens (--task {' or '.join(LABELLING_TASKS)}); "
                f"{args.task} needs a language model")
    if args.model != "bimamba" and args.bidirectional is not True:
        p.error("argument --no-bidirectional: only --model bimamba has directions")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("argument --device: cuda was asked for, but torch sees no CUDA GPU")
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in TASK_DEFAULTS[args.task].items()}
    if args.warmup >= args.steps:
        p.error(f"argument --warmup: must be smaller than --steps ({args.steps}), got {args.warmup}")
    for flag, name in (("--dt-min", "dt_min"), ("--dt-max", "dt_max")):
        if args.model not in ("mamba", "mamba2", "hybrid", "bimamba") and getattr(args, name) != p.get_default(name):
            p.error(f"argument {flag}: only --model mamba has a Δ initialisation range (mamba2, hybrid and bimamba too); "
                    f"{args.model!r} ignores it")
    if args.dt_min > args.dt_max:
        p.error(f"argument --dt-min: must be at most --dt-max ({args.dt_max}), got {args.dt_min}")
    for flag, name in (("--attn-layer-period", "attn_layer_period"), ("--attn-layer-offset", "attn_layer_offset")):
        if args.model != "hybrid" and getattr(args, name) != p.get_default(name):
            p.error(f"argument {flag}: only --model hybrid has a layer pattern")
    if args.model == "hybrid" and args.attn_layer_offset >= args.attn_layer_period:
        p.error(f"argument --attn-layer-offset: must be smaller than --attn-layer-period ({args.attn_layer_period}), "
                f"got {args.attn_layer_offset}")
    for flag, name in (("--head-dim", "head_dim"), ("--chunk-size", "chunk_size"), ("--n-groups", "n_groups")):
        if args.model != "mamba2" and getattr(args, name) != p.get_default(name):
            p.error(f"argument {flag}: only --model mamba2 has heads of a state matrix, chunks and groups")
    if args.model == "mamba2" and (2 * args.d_model) % args.head_dim:
        p.error(f"argument --head-dim: must divide 2 * --d-model ({2 * args.d_model}; Mamba-2 expands by 2), "
                f"got {args.head_dim}")
    if args.model == "mamba2" and (2 * args.d_model // args.head_dim) % args.n_groups:
        p.error(f"argument --n-groups: must divide the number of heads, 2 * --d-model / --head-dim = "
                f"{2 * args.d_model // args.head_dim}, got {args.n_groups}")
    if args.model in ("transformer", "hybrid") and args.d_model % args.n_heads:
        p.error(f"argument --n-heads: must divide --d-model ({args.d_model}), got {args.n_heads}")
    _check_out(Path(args.out), args.overwrite, p)
    try:
        task = make_task(args.task, **sizes)
        task(0, min(args.batch_size, args.eval_examples))   # let the generator check the sizes now
    except ValueError as err:
        p.error(f"task sizes: {err}")
    torch.manual_seed(args.seed)
    length = sizes["seq_len"] + (sizes["num_tokens"] if args.task == "selective_copying" else 0)
    model = build_model(args.model, sizes["vocab_size"], d_model=args.d_model, n_layers=args.n_layers,
                        d_state=args.d_state, n_heads=args.n_heads, max_len=length,
                        pos_encoding=args.pos_encoding, mixer=args.mixer, gated=args.gated,
                        dt_min=args.dt_min, dt_max=args.dt_max, num_labels=LABELLING_TASKS.get(args.task, 2),
                        bidirectional=args.bidirectional, attn_layer_period=args.attn_layer_period,
                        attn_layer_offset=args.attn_layer_offset, head_dim=args.head_dim,
                        chunk_size=args.chunk_size, n_groups=args.n_groups)
    if args.init_from is not None:
        _load_weights_into(model, args.init_from, p)
    rank, world = process_group()
    if args.batch_size % world:
        p.error(f"argument --batch-size: the global batch ({args.batch_size}) must be divisible by the number "
                f"of processes ({world})")
    if args.device == "cuda":
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    start = time.perf_counter()
    log = train(model, task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
                eval_examples=args.eval_examples, seed=args.seed, progress=not args.no_progress)
    log["seconds"] = round(time.perf_counter() - start, 1)
    if rank != 0:
        return log                                  # process 0 saves and evaluates
    model.cpu()
    log["task"] = {"name": args.task, **sizes}
    log["args"] = vars(args)
    log["processes"] = world
    log["parameters"] = sum(p.numel() for p in model.parameters())
    out = Path(args.out)
    (out / "extrapolation.json").unlink(missing_ok=True)   # --overwrite: it measured the previous model
    save_model(model, out)
    (out / "train_log.json").write_text(json.dumps(log) + "\n")
    launcher = "python" if world == 1 else f"torchrun --nproc_per_node {world}"
    (out / "COMMAND.txt").write_text(f"{launcher} -m ssm_tutor.train " + shlex.join(argv) + "\n")
    evaluation = evaluate_checkpoint(out)
    (out / "eval.json").write_text(json.dumps(evaluation) + "\n")
    print(_final_report(args, sizes, log, evaluation))
    return log


def _check_out(directory: Path, overwrite: bool, p: argparse.ArgumentParser) -> None:
    """--out, checked before any training: not a file or a broken link, empty or new unless
    ``overwrite``, and in a place this process can write (tried with a temporary directory)."""
    if directory.is_symlink() and not directory.exists():
        p.error(f"argument --out: {str(directory)!r} is a broken symbolic link")
    if directory.exists() and not directory.is_dir():
        p.error(f"argument --out: {str(directory)!r} exists and is not a directory")
    if directory.is_dir() and not overwrite:
        held = sorted(q.name for q in directory.iterdir())
        if held:
            p.error(f"argument --out: {str(directory)!r} already holds files ({', '.join(held[:4])}"
                    f"{', …' if len(held) > 4 else ''}); pass --overwrite to replace the checkpoint there, "
                    f"or choose a new directory")
    existing = directory
    while not existing.exists():                       # the nearest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        p.error(f"argument --out: cannot create {str(directory)!r}: {str(existing)!r} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ssm-tutor-write-test-", dir=existing))
    except OSError as err:
        p.error(f"argument --out: cannot write in {str(existing)!r} ({err.strerror or err})")


def _final_report(args, sizes: dict, log: dict, evaluation: dict) -> str:
    """What the command prints at the end: eval.json's numbers, and the last evaluation made during
    training (on another example set, so it may differ), each saying what it measured."""
    at_length = f" of length {sizes['seq_len']}" if args.task == "induction_heads" else ""
    during = (f"the last evaluation during training gave accuracy {log['eval_accuracy'][-1]:.3f} on its own "
              f"{args.eval_examples} examples{at_length}")
    if args.task == "selective_copying":
        standard = (f"eval.json: accuracy {evaluation['accuracy']:.3f} ({STANDARD_EVAL_EXAMPLES} seeded examples, "
                    f"seed {EVAL_SEED}, {STANDARD_EVAL_EXAMPLES * sizes['num_tokens']} copied tokens)")
    elif args.task in ("mqar", "occurs_again"):
        per = "per pair count" if args.task == "mqar" else "(every token scored)"
        standard = ("eval.json: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items())
                    + f" ({STANDARD_EVAL_EXAMPLES} seeded examples {per}, seed {EVAL_SEED})")
    else:
        standard = ("eval.json: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items())
                    + f" ({STANDARD_EVAL_EXAMPLES // 2} seeded examples per length, seed {EVAL_SEED})")
    return (f"saved {args.model} to {args.out} after {args.steps} steps ({log['seconds']} s)\n"
            f"  {standard}\n"
            f"  ({during}: a different example set, so the two numbers may differ)")


if __name__ == "__main__":
    main()
