"""Reading and writing checkpoints, for every model family: the Hugging Face layout.

A checkpoint is a directory holding ``config.json`` and the weights, as ``model.safetensors``,
as shards listed by ``model.safetensors.index.json``, or (read only) as ``pytorch_model.bin``.
:class:`ssm_tutor.mamba.MambaLM` (which ``transformers.MambaForCausalLM`` reads and writes too),
the baselines of :mod:`ssm_tutor.baselines` and the later model families all go through here:

    write_checkpoint(directory, config, tensors)      atomic: all of the new checkpoint, or the old one
    read_config(directory) -> dict
    read_tensors(directory) -> {name: tensor}         never unpickles: safetensors, or torch.load(weights_only=True)
    load_state(model, tensors, what=…, tied=…)        every missing / unexpected / mis-shaped / non-finite weight named

Errors: :class:`CheckpointError` (a ValueError) for a checkpoint that is there but wrong (corrupt
file, bad index, weights that do not fit); FileNotFoundError for one that is not there.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "resolve_directory", "read_config", "read_tensors", "write_checkpoint",
           "load_state", "WEIGHT_FILES"]

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, INDEX, PICKLE)


class CheckpointError(ValueError):
    """A checkpoint that is there but cannot be used: a corrupt or unsafe file, a bad shard index,
    or weights that do not fit the model (missing, unexpected, mis-shaped or non-finite)."""


# ----------------------------------------------------------------------------------------------
# where a checkpoint is
# ----------------------------------------------------------------------------------------------

def resolve_directory(path) -> Path:
    """The local directory a checkpoint reference names.

    Today a reference is a local directory and this checks that it exists. This is the one place
    where a hub id (``"state-spaces/mamba-130m-hf"``) will be resolved to a downloaded directory,
    so every reader gets that for free."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    return directory


def _found(directory: Path) -> str:
    return f"found: {sorted(p.name for p in directory.iterdir())}"


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

def read_config(directory) -> dict:
    """The checkpoint's ``config.json`` as a dict."""
    directory = resolve_directory(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG} ({_found(directory)})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:                     # safetensors raises its own error types for bad bytes
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                              f"it may be truncated or corrupt: save it again") from None


def _shard_path(directory: Path, name, index: Path) -> Path:
    """A shard named by the index must be a file inside the checkpoint directory."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or Path(name).is_absolute():
        raise CheckpointError(f"{index} names shard {name!r}: shards must be relative file names inside "
                              f"the checkpoint directory")
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise CheckpointError(f"{index} names shard {name!r}, which points outside the checkpoint directory "
                              f"{directory}: refused")
    if not path.is_file():
        raise CheckpointError(f"{index} names shard {name!r}, but {directory} has no such file ({_found(directory)})")
    return path


def _read_sharded(directory: Path) -> dict:
    index = directory / INDEX
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid shard index (a JSON object with a 'weight_map'): "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard files")
    state = {}
    for name in sorted(set(weight_map.values()), key=str):
        shard = _load_safetensors(_shard_path(directory, name, index))
        wanted = {k for k, v in weight_map.items() if v == name}
        if wanted - shard.keys():
            raise CheckpointError(f"{index} says shard {name!r} holds {sorted(wanted - shard.keys())[:5]}, "
                                  f"but the file does not")
        state.update({k: shard[k] for k in wanted})
    return state


def read_tensors(directory) -> dict:
    """Every tensor of the checkpoint, {name: tensor} on the CPU, from ``model.safetensors``, the
    shards of ``model.safetensors.index.json``, or ``pytorch_model.bin`` (read with
    ``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects)."""
    directory = resolve_directory(directory)
    if (directory / SAFETENSORS).is_file():
        return _load_safetensors(directory / SAFETENSORS)
    if (directory / INDEX).is_file():
        return _read_sharded(directory)
    if (directory / PICKLE).is_file():
        try:
            state = torch.load(directory / PICKLE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{directory / PICKLE} could not be read as plain tensors "
                                  f"(torch.load with weights_only=True): {type(err).__name__}: {err}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{directory / PICKLE} must hold a dict of tensors, got {type(state).__name__}")
        return state
    raise FileNotFoundError(f"{directory} has no {SAFETENSORS}, {INDEX} or {PICKLE} ({_found(directory)})")


# ----------------------------------------------------------------------------------------------
# writing: all or nothing
# ----------------------------------------------------------------------------------------------

def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 with RENAME_EXCHANGE).
    False where the system cannot: the caller then falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _is_weight_file(name: str) -> bool:
    return name in WEIGHT_FILES or name == CONFIG or (name.startswith("model-") and name.endswith(".safetensors")) \
        or (name.startswith("pytorch_model") and name.endswith(".bin"))


def write_checkpoint(directory, config: dict, tensors: dict) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``, atomically.

    Everything is written into a temporary directory beside the target and swapped in at the
    end, so a crash, a kill or a full disk part-way leaves the previous checkpoint whole and no
    half-written file behind (a killed save leaves a hidden ``.NAME.saving-*`` directory, which
    the next save to NAME removes). Other files already in ``directory`` (a training log, an
    evaluation) are kept; old weight files are not. Since the whole directory is replaced, it
    must be a checkpoint's own: one holding subdirectories, or the current directory, is refused.

    Refuses (CheckpointError, nothing written) tensors with NaN or infinite values, naming them.
    """
    directory = Path(directory)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"refusing to save: {len(bad)} tensor(s) contain NaN or infinite values: "
                              f"{sorted(bad)[:8]} (a diverged training run?)")
    from safetensors.torch import save_file

    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory")
    if directory.is_dir():
        here, target = Path.cwd().resolve(), directory.resolve()
        if target == here or target in here.parents or any(p.is_dir() for p in directory.iterdir()):
            raise CheckpointError(f"{directory} holds subdirectories or is the current directory; a checkpoint is "
                                  f"saved by replacing its whole directory, so give it one of its own "
                                  f"(e.g. {directory / 'model'})")
    for stale in parent.glob(f".{directory.name}.saving-*"):          # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=parent))
    try:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        plain = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
        save_file(plain, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        if directory.is_dir():
            for item in directory.iterdir():                          # keep the files that are not the model
                if not _is_weight_file(item.name):
                    shutil.copy2(item, tmp / item.name)
            if _exchange(tmp, directory):
                shutil.rmtree(tmp)                                    # tmp now holds the old checkpoint
                return
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=parent))
            os.rmdir(old)
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# fitting the tensors to a model
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def load_state(model_or_expected, state: dict, *, what: str = "MambaLM", tied: dict | None = None) -> None:
    """Copy a checkpoint's tensors into a model after checking all of them.

    ``model_or_expected``: an ``nn.Module`` (its ``state_dict()``), or a dict {name: tensor} of
    the tensors to fill. ``tied`` maps a key that is another key's copy to that key (e.g.
    ``{"lm_head.weight": "backbone.embeddings.weight"}``): it need not be in the checkpoint, and
    when it is it must equal its twin. Raises :class:`CheckpointError` listing every missing,
    unexpected, mis-shaped or non-finite tensor, and copies nothing unless all fit.
    """
    tied = tied or {}
    expected = model_or_expected.state_dict() if isinstance(model_or_expected, nn.Module) else dict(model_or_expected)
    for alias in tied:
        expected.pop(alias, None)
    problems = []
    for key in sorted(set(expected) - set(state)):
        problems.append(f"missing key {key!r} (expected shape {tuple(expected[key].shape)})")
    for key in sorted(set(state) - set(expected)):
        if key not in tied:
            problems.append(f"unexpected key {key!r} (shape {tuple(state[key].shape)})")
    for key in sorted(set(state) & set(expected)):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            problems.append(f"key {key!r} has shape {tuple(state[key].shape)}, {what} expects "
                            f"{tuple(expected[key].shape)}")
        elif state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            problems.append(f"key {key!r} contains NaN or infinite values")
    if not problems:
        for alias, twin in tied.items():
            if alias in state and twin in state and (state[alias].shape != state[twin].shape
                                                     or not torch.equal(state[alias], state[twin])):
                problems.append(f"the config ties {alias!r} to {twin!r} (tie_word_embeddings) but the "
                                f"checkpoint's {alias!r} differs from it")
    if problems:
        raise CheckpointError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    for key, tensor in expected.items():
        tensor.copy_(state[key])
