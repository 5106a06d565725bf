"""The released Mamba models: hub ids, the Hugging Face cache, the tokenizer, text in and text out.

Every reader of :mod:`ssm_tutor.checkpoint` takes a Hugging Face Hub id where it takes a
directory, so the models Gu & Dao released load as users of mamba-minimal or mamba.py expect::

    from ssm_tutor.mamba import MambaLM
    from ssm_tutor.hub import load_tokenizer, generate_text

    model = MambaLM.from_pretrained("state-spaces/mamba-130m-hf").eval()
    tokenizer = load_tokenizer("state-spaces/mamba-130m-hf")       # GPT-NeoX's byte-level BPE
    print(generate_text(model, tokenizer, "The Mamba architecture", max_new_tokens=20))

Where the files go: ``huggingface_hub``'s cache (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``), the one ``transformers`` uses, so a model downloaded by either is
found by both. Only what a model needs is fetched: ``config.json``, the safetensors weights
(one file or shards), the tokenizer files; ``pytorch_model.bin`` only from a repository that has
no safetensors (the original ``state-spaces/mamba-*`` repositories, read with
``torch.load(weights_only=True)``). With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a model in
the cache loads, one that is not raises :class:`FileNotFoundError` saying so and how to get it.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["RELEASED_MAMBA", "GPT_NEOX_TOKENIZER", "is_hub_id", "snapshot", "is_cached", "cache_dir",
           "load_tokenizer", "generate_text"]

#: the Mamba-1 language models of the paper (trained on the Pile, 300B tokens), in the Hugging
#: Face format that ``transformers.MambaForCausalLM`` reads; each repository ships the tokenizer
RELEASED_MAMBA = {size: f"state-spaces/mamba-{size}-hf" for size in ("130m", "370m", "790m", "1.4b", "2.8b")}
#: the tokenizer every released Mamba was trained with (vocabulary 50 277, padded to 50 280 in the models)
GPT_NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"

MODEL_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
PICKLED_FILES = ["pytorch_model.bin"]           # only where a repository has no safetensors

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(reference) -> bool:
    """True for a string of the form ``"owner/name"`` (a Hugging Face repository id) that is not an
    existing local path. A :class:`pathlib.Path` is always a local path."""
    return (isinstance(reference, str) and _HUB_ID.fullmatch(reference) is not None
            and ".." not in reference and not Path(reference).exists())


def cache_dir() -> Path:
    """The Hugging Face hub cache this process uses (``HF_HUB_CACHE``, read when huggingface_hub is imported)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                         "pytorch_model.bin"))


def _download(repo_id: str, revision: str | None, patterns: list, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_only))


def snapshot(repo_id: str, revision: str | None = None, *, download: bool = True) -> Path:
    """The local directory holding ``repo_id``'s model and tokenizer files at ``revision`` (a
    branch, tag or commit; default ``main``), in the Hugging Face cache.

    Files not yet in the cache are downloaded, unless ``download=False`` or ``HF_HUB_OFFLINE=1``.
    Raises FileNotFoundError when the model is neither in the cache nor obtainable, saying why
    (offline, no such repository, no network) and how to get it.
    """
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    local_only = not download or _offline()
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        directory = _download(repo_id, revision, MODEL_FILES + TOKENIZER_FILES, local_only)
        if not _has_weights(directory) and not local_only:          # an original mamba_ssm repository
            directory = _download(repo_id, revision, MODEL_FILES + PICKLED_FILES, local_only)
    except LocalEntryNotFoundError as err:
        why = ("downloads are switched off (HF_HUB_OFFLINE=1)" if _offline() else
               "downloads were not allowed (download=False)" if not download else
               f"the Hub could not be reached ({err})")
        raise FileNotFoundError(
            f"{where} is not in the Hugging Face cache ({cache_dir()}) and {why}. Download it once with network "
            f"access (e.g. `hf download {repo_id}`, or any call here without HF_HUB_OFFLINE=1), point "
            f"HF_HUB_CACHE at a cache that holds it, or pass the path of a local checkpoint directory.") from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        raise FileNotFoundError(f"{where} is neither a local directory nor a model the Hugging Face Hub serves "
                                f"({type(err).__name__}): check the name (released Mambas: "
                                f"{', '.join(RELEASED_MAMBA.values())})") from None
    return directory


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """True when ``repo_id``'s config and weights are in the Hugging Face cache (nothing is downloaded)."""
    try:
        directory = snapshot(repo_id, revision, download=False)
    except FileNotFoundError:
        return False
    return (directory / "config.json").is_file() and _has_weights(directory)


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------

def load_tokenizer(reference: str | Path = RELEASED_MAMBA["130m"], revision: str | None = None):
    """The tokenizer of a checkpoint, through ``transformers.AutoTokenizer``: from a local
    directory, or from a hub id's snapshot (see :func:`snapshot`).

    The ``-hf`` repositories ship GPT-NeoX's tokenizer; for a hub repository that ships none (the
    original ``state-spaces/mamba-*``), GPT-NeoX's own (:data:`GPT_NEOX_TOKENIZER`) is used, as
    those models were trained with it. A local directory without tokenizer files is an error.
    """
    from transformers import AutoTokenizer

    from ssm_tutor.checkpoint import resolve_directory
    directory = resolve_directory(reference, revision=revision)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        if not is_hub_id(reference):
            raise FileNotFoundError(f"{directory} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                                    f"a released Mamba uses GPT-NeoX's: load_tokenizer({GPT_NEOX_TOKENIZER!r})")
        directory = snapshot(GPT_NEOX_TOKENIZER)
    return AutoTokenizer.from_pretrained(str(directory))


def generate_text(model, tokenizer, prompt: str | list[str], max_new_tokens: int = 32, *,
                  temperature: float = 0.0, top_k: int | None = None, seed: int | None = None,
                  stop_at_eos: bool = True) -> str | list[str]:
    """Continue ``prompt`` (a string, or a list of strings generated as one batch) and return the
    new text only, one string per prompt.

    The prompts are tokenized without special tokens, left-padded to one length with an attention
    mask (each row then continues as it would alone), and continued by ``model.generate``
    (:meth:`ssm_tutor.mamba.MambaLM.generate`: greedy at ``temperature=0``, else sampled, seeded by
    ``seed``) for ``max_new_tokens`` tokens; with ``stop_at_eos`` a row's text ends before its
    first end-of-text token.
    """
    import torch

    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ValueError(f"prompt {empty[0]} gives no tokens: a model needs at least one token to continue")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    length = max(len(row) for row in rows)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (length - len(row)) + row for row in rows], device=device)       # (b, l)
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows], device=device)
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                         attention_mask=mask if bool((mask == 0).any()) else None)            # (b, l + new)
    texts = []
    for new in out[:, length:].tolist():
        if stop_at_eos and eos is not None and eos in new:
            new = new[:new.index(eos)]
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts[0] if single else texts
