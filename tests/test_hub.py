"""Released models by hub id (ssm_tutor.hub), tested on a Hugging Face cache built here.

The cache is a directory in the hub's own layout, ``models--OWNER--NAME/refs/main`` and
``snapshots/<commit>/``, holding a tiny Mamba written by ``save_pretrained`` and a tiny byte-level
BPE tokenizer trained here with the ``tokenizers`` library (GPT-NeoX's kind of tokenizer). Nothing
in this file reaches the network: ``HF_HUB_OFFLINE=1`` for all but one test, and every test runs
with sockets refused (the ``no_network`` fixture), so an attempt to connect fails the test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import huggingface_hub
from huggingface_hub import constants as hub_constants

from ssm_tutor import hub
from ssm_tutor.checkpoint import resolve_directory
from ssm_tutor.mamba import MambaConfig, MambaLM

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = "tiny-org/mamba-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
VOCAB = 300


def tiny_model(seed: int) -> MambaLM:
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2,
                                eos_token_id=0, pad_token_id=0, bos_token_id=0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE (GPT-NeoX's kind) with VOCAB tokens, <|endoftext|> = 0, trained on two sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the selective state space model reads one token at a time",
                             "a state of fixed size holds the past"] * 20, trainer)
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id("<|endoftext|>") == 0
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}))


def add_snapshot(cache: Path, repo: str, commit: str, model: MambaLM, *, branch: str | None = "main",
                 tokenizer: bool = True) -> Path:
    """Put ``model`` into ``cache`` as the hub does: models--owner--name/snapshots/<commit>/, refs/<branch>."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    directory = storage / "snapshots" / commit
    model.save_pretrained(directory)
    if tokenizer:
        write_tokenizer(directory)
    if branch:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / branch).write_text(commit)
    return directory


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to resolve a name or open a connection fails (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("tests/test_hub.py: the network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, pointed at by HF_HUB_CACHE, offline."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(root))     # huggingface_hub reads both at import
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.fixture
def cached(cache, model):
    return add_snapshot(cache, REPO, COMMIT, model)


def ids_for(batch=2, length=9, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- loading by hub id ---------------------------------------------------------------------------

def test_from_pretrained_takes_a_hub_id_and_reads_the_cached_snapshot(cached, model, no_network):
    loaded = MambaLM.from_pretrained(REPO).eval()
    ids = ids_for()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert resolve_directory(REPO) == cached
    assert no_network == []


def test_a_revision_names_a_branch_or_a_commit(cache, model):
    add_snapshot(cache, REPO, COMMIT, model)
    other = tiny_model(1)
    add_snapshot(cache, REPO, OTHER, other, branch="v2")
    ids = ids_for()
    with torch.no_grad():
        for revision, expected in ((None, model), ("main", model), ("v2", other), (OTHER, other), (COMMIT, model)):
            loaded = MambaLM.from_pretrained(REPO, revision=revision).eval()
            torch.testing.assert_close(loaded(ids), expected(ids), atol=0, rtol=0, msg=f"revision {revision}")


def test_offline_and_not_cached_says_so_and_how_to_get_it(cache):
    with pytest.raises(FileNotFoundError) as err:
        MambaLM.from_pretrained("state-spaces/mamba-130m-hf")
    message = str(err.value)
    for phrase in ("'state-spaces/mamba-130m-hf' is not in the Hugging Face cache", str(cache),
                   "HF_HUB_OFFLINE=1", "hf download state-spaces/mamba-130m-hf", "local checkpoint directory"):
        assert phrase in message, message
    assert not hub.is_cached("state-spaces/mamba-130m-hf")


def test_an_unknown_revision_of_a_cached_model_is_not_found(cached):
    with pytest.raises(FileNotFoundError, match="at revision 'nope' is not in the Hugging Face cache"):
        MambaLM.from_pretrained(REPO, revision="nope")


def test_a_local_directory_wins_over_a_hub_id_of_the_same_name(cached, tmp_path, monkeypatch):
    local = tiny_model(2)
    local.save_pretrained(tmp_path / "work" / REPO)
    monkeypatch.chdir(tmp_path / "work")
    assert not hub.is_hub_id(REPO)                           # it names an existing path here
    ids = ids_for()
    with torch.no_grad():
        torch.testing.assert_close(MambaLM.from_pretrained(REPO)(ids), local(ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="revision='main' applies to a hub id"):
        MambaLM.from_pretrained(REPO, revision="main")


@pytest.mark.parametrize("reference,expected", [
    ("state-spaces/mamba-130m-hf", True), ("EleutherAI/gpt-neox-20b", True), ("a/b", True),
    ("mamba-130m", False), ("a/b/c", False), ("../x", False), ("/abs/path", False), ("owner/", False),
    ("", False), (Path("state-spaces/mamba-130m-hf"), False)])
def test_what_counts_as_a_hub_id(reference, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.is_hub_id(reference) is expected


def test_a_missing_path_that_is_no_hub_id_keeps_the_plain_error(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .*not a Hugging Face Hub id"):
        MambaLM.from_pretrained(tmp_path / "nowhere")


def test_is_cached_needs_the_config_and_the_weights(cache, model):
    assert not hub.is_cached(REPO)
    directory = add_snapshot(cache, REPO, COMMIT, model)
    assert hub.is_cached(REPO)
    (directory / "model.safetensors").unlink()                  # an interrupted download
    assert not hub.is_cached(REPO)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        MambaLM.from_pretrained(REPO)


def test_the_released_sizes_are_listed():
    assert hub.RELEASED_MAMBA["130m"] == "state-spaces/mamba-130m-hf"
    assert sorted(hub.RELEASED_MAMBA) == sorted(["130m", "370m", "790m", "1.4b", "2.8b"])
    assert all(hub.is_hub_id(repo) for repo in hub.RELEASED_MAMBA.values())


# ---- what is downloaded (huggingface_hub's download replaced by a recorder) -------------------------

# the files of state-spaces/mamba-130m-hf on the Hub
HF_REPO_FILES = [".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
                 "pytorch_model.bin", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
# the files of the original state-spaces/mamba-130m (mamba_ssm's format, no safetensors, no tokenizer)
ORIGINAL_REPO_FILES = [".gitattributes", "README.md", "config.json", "pytorch_model.bin"]


@pytest.fixture
def recorder(tmp_path, monkeypatch, model):
    """snapshot_download replaced: it 'downloads' from a listing, writing the files its patterns select."""
    from huggingface_hub.utils import filter_repo_objects
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    calls, listing = [], {}

    def fake(repo_id, revision=None, allow_patterns=None, local_files_only=False, **_):
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=list(allow_patterns),
                          local_files_only=local_files_only))
        directory = tmp_path / "fake" / repo_id.replace("/", "--")
        directory.mkdir(parents=True, exist_ok=True)
        for name in filter_repo_objects(listing[repo_id], allow_patterns=allow_patterns):
            (directory / name).touch()
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls, listing


def test_only_the_config_safetensors_and_tokenizer_are_fetched(recorder):
    calls, listing = recorder
    listing["state-spaces/mamba-130m-hf"] = HF_REPO_FILES
    directory = hub.snapshot("state-spaces/mamba-130m-hf")
    assert len(calls) == 1 and not calls[0]["local_files_only"]
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors",
                                                           "special_tokens_map.json", "tokenizer.json",
                                                           "tokenizer_config.json"]   # no pytorch_model.bin


def test_a_repository_without_safetensors_gets_its_pytorch_bin(recorder):
    calls, listing = recorder
    listing["state-spaces/mamba-130m"] = ORIGINAL_REPO_FILES
    directory = hub.snapshot("state-spaces/mamba-130m", revision="main")
    assert len(calls) == 2 and all(c["revision"] == "main" for c in calls)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_download_false_only_looks_in_the_cache(recorder):
    calls, listing = recorder
    listing[REPO] = HF_REPO_FILES
    hub.snapshot(REPO, download=False)
    assert [c["local_files_only"] for c in calls] == [True]


def test_online_without_a_network_falls_back_to_the_cache(cached, model, monkeypatch, no_network):
    """HF_HUB_OFFLINE unset: huggingface_hub tries the Hub, cannot connect, and uses the cached snapshot."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    assert hub.snapshot(REPO) == cached
    assert no_network, "huggingface_hub did not even try the network: this test no longer tests the fallback"
    with pytest.raises(FileNotFoundError, match="the Hub could not be reached"):
        hub.snapshot("state-spaces/mamba-130m-hf")


# ---- the tokenizer and text ----------------------------------------------------------------------

def test_the_tokenizer_loads_from_the_snapshot_and_round_trips_text(cached):
    tokenizer = hub.load_tokenizer(REPO)
    ids = tokenizer("the state space", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "the state space" and tokenizer.eos_token_id == 0
    assert max(tokenizer("Ünïcode, any bytes!")["input_ids"]) < VOCAB             # byte-level: no unknowns


def test_a_local_directory_without_a_tokenizer_is_named(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer .*gpt-neox-20b"):
        hub.load_tokenizer(tmp_path / "m")


def test_a_hub_model_without_a_tokenizer_uses_gpt_neox(cache, model):
    add_snapshot(cache, REPO, COMMIT, model, tokenizer=False)
    neox = cache / "models--EleutherAI--gpt-neox-20b"
    (neox / "snapshots" / OTHER).mkdir(parents=True)
    write_tokenizer(neox / "snapshots" / OTHER)
    (neox / "refs").mkdir()
    (neox / "refs" / "main").write_text(OTHER)
    tokenizer = hub.load_tokenizer(REPO)
    assert tokenizer.name_or_path == str(neox / "snapshots" / OTHER)


def test_generate_text_is_the_models_greedy_tokens_decoded(cached):
    model = MambaLM.from_pretrained(REPO).eval()
    tokenizer = hub.load_tokenizer(REPO)
    prompt = "the selective state"
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    tokens = model.generate(ids, 12)[0, ids.shape[1]:].tolist()
    expected = tokenizer.decode(tokens[:tokens.index(0)] if 0 in tokens else tokens, skip_special_tokens=True)
    assert hub.generate_text(model, tokenizer, prompt, max_new_tokens=12) == expected
    assert hub.generate_text(model, tokenizer, prompt, max_new_tokens=12, stop_at_eos=False) == \
        tokenizer.decode(tokens, skip_special_tokens=True)


def test_a_batch_of_prompts_continues_each_as_alone(cached):
    model = MambaLM.from_pretrained(REPO).eval()
    tokenizer = hub.load_tokenizer(REPO)
    prompts = ["a state", "the selective state space model reads", "holds the past"]
    together = hub.generate_text(model, tokenizer, prompts, max_new_tokens=8, stop_at_eos=False)
    alone = [hub.generate_text(model, tokenizer, p, max_new_tokens=8, stop_at_eos=False) for p in prompts]
    assert together == alone


def test_sampled_text_is_seeded(cached):
    model = MambaLM.from_pretrained(REPO).eval()
    tokenizer = hub.load_tokenizer(REPO)
    a, b = (hub.generate_text(model, tokenizer, "a state", 16, temperature=1.0, seed=3, stop_at_eos=False)
            for _ in range(2))
    assert a == b


class _FixedModel(torch.nn.Module):
    """A stand-in whose generate appends fixed tokens and records its arguments."""

    def __init__(self, new):
        super().__init__()
        self.weight, self.new, self.calls = torch.nn.Parameter(torch.zeros(1)), new, []

    def generate(self, ids, max_new_tokens, **kwargs):
        self.calls.append((ids, kwargs))
        return torch.cat([ids, torch.tensor([self.new[:max_new_tokens]] * ids.shape[0])], dim=1)


def test_text_stops_before_the_end_of_text_token_and_prompts_are_left_padded(cached):
    tokenizer = hub.load_tokenizer(REPO)
    words = tokenizer("the state", add_special_tokens=False)["input_ids"]
    fake = _FixedModel(words + [0] + words)
    assert hub.generate_text(fake, tokenizer, "a", 2 * len(words) + 1) == "the state"
    assert hub.generate_text(fake, tokenizer, "a", 2 * len(words) + 1, stop_at_eos=False) == "the statethe state"
    hub.generate_text(fake, tokenizer, ["a", "the selective state"], 3)
    ids, kwargs = fake.calls[-1]
    mask = kwargs["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and bool(mask[1].all())            # row 0 padded on the left
    assert ids[0, -1] == tokenizer("a", add_special_tokens=False)["input_ids"][-1]


@pytest.mark.parametrize("prompt,error,message", [("", ValueError, "gives no tokens"), ([], TypeError, "non-empty"),
                                                   ([1, 2], TypeError, "list of strings")])
def test_bad_prompts_are_named(cached, prompt, error, message):
    model = MambaLM.from_pretrained(REPO).eval()
    with pytest.raises(error, match=message):
        hub.generate_text(model, hub.load_tokenizer(REPO), prompt)


# ---- against transformers on the same cached files ------------------------------------------------

def test_same_tokens_as_transformers_from_the_same_snapshot(cached):
    import transformers
    ours = MambaLM.from_pretrained(REPO).eval()
    theirs = transformers.MambaForCausalLM.from_pretrained(str(hub.snapshot(REPO))).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hub.snapshot(REPO)))
    ids = torch.tensor([tokenizer("a state of fixed", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)
        expected = theirs.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(ids, 16), expected)


# ---- as a user runs it: only the environment variables -------------------------------------------

def test_a_fresh_process_finds_the_model_through_the_environment(cached, model, tmp_path):
    ids = ids_for(batch=1)
    with torch.no_grad():
        expected = model(ids)
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    script = (
        "import socket, sys, torch\n"
        "def refuse(*a, **k): raise OSError('network off')\n"
        "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
        "from ssm_tutor.mamba import MambaLM\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        f"m = MambaLM.from_pretrained({REPO!r}).eval()\n"
        "with torch.no_grad(): torch.testing.assert_close(m(e['ids']), e['logits'], atol=0, rtol=0)\n"
        "print('loaded from', m.config.vocab_size)\n")
    env = dict(os.environ, HF_HUB_CACHE=str(cached.parents[2]), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_HOME", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and "loaded from 300" in done.stdout, done.stdout + done.stderr
