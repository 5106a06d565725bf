"""Stage 11: the Mamba-2 model against transformers' Mamba2ForCausalLM on the same weights.

The reference is built locally from a config (random weights, nothing from the hub); every
parameter is perturbed so that no weight keeps a special value (norm weights 1, D 1, zero biases)
that could hide a mistake. Checkpoints are written by one side and read by the other.
"""

import json

import pytest
import torch

import transformers  # noqa: E402  (the reference; a pinned test requirement, so a missing install fails)

from language_models import (assert_cache_converts_from_transformers, assert_fast_path_equals_teaching_path,  # noqa: F401
                             assert_gradients_match, assert_left_padding_is_invisible, assert_mask_matches_transformers,
                             fast, ids_for, jittered, reference)  # (fast: a fixture)
from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

from safetensors.torch import load_file, save_file  # noqa: E402

from ssm_tutor.mamba import CheckpointError, MambaCache, MambaLM
from ssm_tutor.mamba2 import GatedRMSNorm, Mamba2Config, Mamba2LM, Mamba2Mixer

# n_groups 1 and > 1 (and = heads), tied and untied heads, chunks that do not divide the lengths
# used below (13 and 5 + 12), every conv kernel from 2 to 4, biases on and off, a dt limit.
CONFIGS = {
    "h4x6-g2-n5-k3-Q4-untied": dict(num_heads=4, head_dim=6, hidden_size=12, n_groups=2, state_size=5,
                                    conv_kernel=3, chunk_size=4, vocab_size=37, num_hidden_layers=2),
    "h3x4-g1-n3-k4-Q5-tied-bias": dict(num_heads=3, head_dim=4, hidden_size=6, n_groups=1, state_size=3,
                                       conv_kernel=4, chunk_size=5, vocab_size=29, num_hidden_layers=1,
                                       tie_word_embeddings=True, use_bias=True, use_conv_bias=False),
    "h6x3-g6-n2-k2-Q8-limit-x3": dict(num_heads=6, head_dim=3, hidden_size=6, expand=3, n_groups=6, state_size=2,
                                      conv_kernel=2, chunk_size=8, vocab_size=23, num_hidden_layers=2,
                                      time_step_limit=(0.01, 0.5)),
}

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see tests/conftest.py


def make_hf(cfg: dict, seed: int = 0):
    return reference(transformers.Mamba2ForCausalLM, transformers.Mamba2Config, cfg, seed)


def make_ours(cfg: dict, seed: int = 0, fast: bool = True):
    torch.manual_seed(seed)
    return jittered(Mamba2LM(Mamba2Config(**cfg), fast=fast))


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def cfg(request):
    return CONFIGS[request.param]


# ---- parity with transformers ------------------------------------------------------------------

def test_logits_match_transformers_when_transformers_saves(cfg, fast, tmp_path):
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    ours = Mamba2LM.from_pretrained(tmp_path, fast=fast).eval()
    assert ours.backbone.layers[0].mixer.fast == fast
    ids = ids_for(cfg)
    with torch.no_grad():
        expected = hf(ids, use_cache=False).logits
        got = ours(ids)
    assert got.shape == (2, 13, cfg["vocab_size"])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_transformers_reads_our_checkpoint_and_config(cfg, tmp_path):
    ours = make_ours(cfg)
    ours.save_pretrained(tmp_path)
    hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    for key, value in ours.config.to_dict().items():   # every field we write, transformers reads back
        if key not in ("extra", "architectures", "dtype", "time_step_limit"):
            assert getattr(hf.config, key) == value, key
    assert tuple(hf.config.time_step_limit) == ours.config.time_step_limit
    ids = ids_for(cfg, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids, use_cache=False).logits, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_token_for_token(cfg, fast, tmp_path):
    # transformers' recurrent step does not clamp Δ to time_step_limit (ours does, as its forward
    # does): compare generation with the default, unlimited range; the limit's forward is compared above
    cfg = {k: v for k, v in cfg.items() if k != "time_step_limit"}
    hf = make_hf(cfg, seed=3)
    hf.save_pretrained(tmp_path)
    ours = Mamba2LM.from_pretrained(tmp_path, fast=fast).eval()
    prompt = ids_for(cfg, batch=2, length=5, seed=4)
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                               min_new_tokens=12, do_sample=False)
    got = ours.generate(prompt, max_new_tokens=12)
    assert got.shape == (2, 5 + 12)
    assert torch.equal(got, expected), f"ours {got.tolist()}\ntheirs {expected.tolist()}"


def test_gradients_match_transformers(fast, tmp_path):
    """Training needs the backward pass too: every parameter's gradient of a loss agrees."""
    cfg = CONFIGS["h4x6-g2-n5-k3-Q4-untied"]
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    assert_gradients_match(Mamba2LM.from_pretrained(tmp_path, fast=fast), hf, ids_for(cfg, length=10, seed=5),
                           cfg["vocab_size"])

def test_gated_norm_matches_transformers():
    x, z = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    theirs = MambaRMSNormGated(12, group_size=4, eps=1e-5)
    ours = GatedRMSNorm(12, groups=3, eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_()
        ours.weight.copy_(theirs.weight)
    torch.testing.assert_close(ours(x, z), theirs(x, z))


# ---- the recurrent form ------------------------------------------------------------------------

def test_step_by_step_logits_equal_the_parallel_forward(cfg):
    model = make_ours(cfg, seed=7)
    ids = ids_for(cfg, seed=8)
    with torch.no_grad():
        parallel = model(ids)
    cache = model.init_cache(2)
    stepped = torch.stack([model.step(ids[:, t], cache)[0] for t in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(stepped, parallel, atol=1e-5, rtol=1e-5)
    assert cache.seqlen == ids.shape[1]
    # the prefill hands over its states: read 6 tokens at once, then step through the rest
    with torch.no_grad():
        _, cache = model(ids[:, :6], return_cache=True)
    rest = torch.stack([model.step(ids[:, t], cache)[0] for t in range(6, ids.shape[1])], dim=1)
    torch.testing.assert_close(rest, parallel[:, 6:], atol=1e-5, rtol=1e-5)


def test_generate_equals_recomputing_the_prefix():
    cfg = CONFIGS["h4x6-g2-n5-k3-Q4-untied"]
    model = make_ours(cfg, seed=9)
    prompt = ids_for(cfg, batch=2, length=3, seed=10)
    got = model.generate(prompt, max_new_tokens=9)
    seq = prompt
    with torch.no_grad():
        for _ in range(9):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq)


def test_sampling_is_seeded_and_top_k_restricts_it():
    cfg = CONFIGS["h3x4-g1-n3-k4-Q5-tied-bias"]
    model = make_ours(cfg, seed=11)
    prompt = ids_for(cfg, batch=2, length=4, seed=12)
    a = model.generate(prompt, 10, temperature=1.5, seed=3)
    assert torch.equal(a, model.generate(prompt, 10, temperature=1.5, seed=3))
    assert not torch.equal(a, model.generate(prompt, 10, temperature=1.5, seed=4))
    assert torch.equal(model.generate(prompt, 10, temperature=1.0, top_k=1, seed=5), model.generate(prompt, 10))


def test_the_cache_has_a_fixed_size():
    cfg = CONFIGS["h4x6-g2-n5-k3-Q4-untied"]
    model = make_ours(cfg)
    cache = model.init_cache(3)
    c = Mamba2Config(**cfg)
    assert isinstance(cache, MambaCache)
    assert cache.conv_states[0].shape == (3, c.intermediate_size + 2 * c.n_groups * c.state_size, c.conv_kernel - 1)
    assert cache.ssm_states[0].shape == (3, c.num_heads, c.head_dim, c.state_size)
    size = cache.nbytes()
    for t in range(20):
        model.step(torch.zeros(3, dtype=torch.long), cache)
    assert cache.nbytes() == size and cache.seqlen == 20


# ---- configs and checkpoints --------------------------------------------------------------------

def test_config_round_trip_keeps_unknown_fields_and_writes_infinity_as_transformers_does(tmp_path):
    cfg = Mamba2Config(**CONFIGS["h4x6-g2-n5-k3-Q4-untied"], extra={"my_field": 3})
    d = cfg.to_dict()
    assert d["time_step_limit"] == [0.0, {"__float__": "Infinity"}] and d["my_field"] == 3
    again = Mamba2Config.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.extra["my_field"] == 3
    assert Mamba2Config.from_dict({**d, "time_step_limit": [0.0, float("inf")]}).time_step_limit == (0.0, float("inf"))


@pytest.mark.parametrize("fields,match", [
    (dict(num_heads=5, head_dim=6, hidden_size=12), r"expand \* hidden_size = 2 \* 12 must equal num_heads \* head_dim"),
    (dict(num_heads=4, head_dim=6, hidden_size=12, n_groups=3), "n_groups = 3 must divide num_heads = 4"),
    (dict(num_heads=4, head_dim=6, hidden_size=12, chunk_size=0), "chunk_size must be a positive integer"),
    (dict(num_heads=4, head_dim=6, hidden_size=12, n_groups=1, time_step_limit=(1.0, 0.1)), "time_step_limit"),
])
def test_inconsistent_configs_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        Mamba2Config(**fields)


def test_a_mamba1_config_is_refused():
    with pytest.raises(ValueError, match="model_type 'mamba'"):
        Mamba2Config.from_dict({"model_type": "mamba", "hidden_size": 8})


def test_checkpoint_problems_are_named(tmp_path):
    cfg = CONFIGS["h4x6-g2-n5-k3-Q4-untied"]
    make_ours(cfg).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    del state["backbone.layers.1.mixer.dt_bias"]
    state["backbone.layers.0.mixer.A_log"] = torch.zeros(5)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as err:
        Mamba2LM.from_pretrained(tmp_path)
    message = str(err.value)
    assert "does not fit Mamba2LM" in message
    assert "missing key 'backbone.layers.1.mixer.dt_bias'" in message
    assert "'backbone.layers.0.mixer.A_log' has shape (5,), Mamba2LM expects (4,)" in message


def test_missing_files_and_foreign_shards_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Mamba2LM.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Mamba2LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(Mamba2Config(**CONFIGS["h4x6-g2-n5-k3-Q4-untied"]).to_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Mamba2LM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside"):
        Mamba2LM.from_pretrained(tmp_path)


def test_a_mamba2_checkpoint_is_refused_by_mamba1_with_the_class_to_use(tmp_path):
    make_ours(CONFIGS["h4x6-g2-n5-k3-Q4-untied"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"use ssm_tutor.mamba2.Mamba2LM for 'mamba2'"):
        MambaLM.from_pretrained(tmp_path)


# ---- the teaching path and the fast path ---------------------------------------------------------

def test_fast_path_equals_teaching_path_values_gradients_and_tokens(cfg):
    """ssm_tutor.fast (a time-major convolution, the fast SSD scan) is held to the teaching layer
    (nn.Conv1d, the chunked algorithm's four steps); see language_models.py."""
    assert_fast_path_equals_teaching_path(make_ours(cfg, fast=True), Mamba2LM(Mamba2Config(**cfg), fast=False).eval(),
                                          cfg)

def test_both_paths_hand_over_the_same_cache(cfg):
    fast = make_ours(cfg, seed=13, fast=True)
    teaching = Mamba2LM(Mamba2Config(**cfg), fast=False).eval()
    teaching.load_state_dict(fast.state_dict())
    ids = ids_for(cfg, batch=2, length=7, seed=14)
    with torch.no_grad():
        _, a = fast(ids, return_cache=True)
        _, b = teaching(ids, return_cache=True)
    for x, y in zip(a.conv_states + a.ssm_states, b.conv_states + b.ssm_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_mixer_refuses_what_it_cannot_do():
    config = Mamba2Config(**CONFIGS["h4x6-g2-n5-k3-Q4-untied"])
    with pytest.raises(ValueError, match="gated must be True"):
        Mamba2Mixer(config, gated=False)
    with pytest.raises(ValueError, match=r"mixer must be one of \('ssd',\), got 'selective'"):
        from ssm_tutor.mamba2 import Mamba2Block
        Mamba2Block(config, mixer="selective")


# ---- interoperability: caches and padding -----------------------------------------------------------

def test_conv_cache_agrees_with_transformers_after_a_prefix(cfg, tmp_path):
    """transformers' conv cache holds the last K inputs of x, B and C (b, E + 2gN, K), ours the last
    K-1: ours is theirs without the oldest column, the SSM states (b, H, P, N) are equal, and a
    cache converted from transformers' continues exactly where transformers would."""
    cfg = {k: v for k, v in cfg.items() if k != "time_step_limit"}   # their step does not clamp Δ
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    assert_cache_converts_from_transformers(Mamba2LM.from_pretrained(tmp_path).eval(), hf,
                                            ids_for(cfg, batch=2, length=9, seed=11), cfg["conv_kernel"],
                                            cfg["num_hidden_layers"])

PROMPTS = [[5, 17, 3, 9, 22, 1, 8, 14, 2], [11, 4], [7, 7, 20, 2, 19]]   # 9 tokens: more than one chunk


def test_left_padded_batch_generates_what_each_prompt_generates_alone(cfg, fast):
    assert_left_padding_is_invisible(make_ours(cfg, seed=12, fast=fast),
                                     [[t % cfg["vocab_size"] for t in p] for p in PROMPTS])


def test_attention_mask_matches_transformers(fast, tmp_path):
    """transformers zeroes padded positions before in_proj and after the convolution; without a
    bias in in_proj that is what we do (zero before the convolution and before the scan)."""
    cfg = CONFIGS["h4x6-g2-n5-k3-Q4-untied"]
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    assert_mask_matches_transformers(Mamba2LM.from_pretrained(tmp_path, fast=fast).eval(), hf, PROMPTS)

def test_bad_attention_mask_is_named():
    model = make_ours(CONFIGS["h4x6-g2-n5-k3-Q4-untied"])
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="must be left-padded"):
        model.generate(ids, 2, attention_mask=torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]))


# ---- raw torch errors become named errors ---------------------------------------------------------

def test_wrong_width_and_meta_weights_into_the_mixer_are_named(fast):
    model = make_ours(CONFIGS["h4x6-g2-n5-k3-Q4-untied"], fast=fast)
    mixer = model.backbone.layers[0].mixer
    with pytest.raises(ValueError, match=r"Mamba2Mixer: x must have shape \(batch, length, d\) with d = 12, "
                                         r"got shape \(2, 5, 24\)"):
        mixer(torch.randn(2, 5, 24))
    with torch.device("meta"):
        model = Mamba2LM(Mamba2Config(**CONFIGS["h4x6-g2-n5-k3-Q4-untied"]), fast=fast)
    with pytest.raises(ValueError, match="the model's weights is on the meta device"):
        model(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="Mamba2Mixer's weights is on the meta device"):
        model.backbone.layers[0].mixer(torch.zeros(1, 3, 12))
