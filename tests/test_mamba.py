"""Stage 7: the full Mamba model against transformers' MambaForCausalLM on the same weights.

The reference is built locally from a config (random weights, nothing from the hub); every
parameter is perturbed so that no weight keeps a special value (norm weights 1, D 1, zero biases)
that could hide a mistake. Checkpoints are written by one side and read by the other.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import transformers  # noqa: E402  (the reference; a pinned test requirement, so a missing install fails)

from safetensors.torch import load_file, save_file  # noqa: E402

from ssm_tutor.mamba import (CheckpointError, MambaCache, MambaConfig, MambaLM, RMSNorm,  # noqa: E402
                             causal_conv_step, selective_ssm_step)

# Odd sizes on purpose: hidden sizes not multiples of 8, vocabularies not multiples of 8,
# every conv kernel from 2 to 4, state sizes 1, 5 and 16, odd Δ ranks, biases on and off.
CONFIGS = {
    "h24-n5-k3-r3-bias": dict(hidden_size=24, state_size=5, conv_kernel=3, time_step_rank=3,
                              use_bias=True, use_conv_bias=True, vocab_size=101, num_hidden_layers=2),
    "h17-n1-k2-auto-nobias": dict(hidden_size=17, state_size=1, conv_kernel=2, time_step_rank="auto",
                                  use_bias=False, use_conv_bias=False, vocab_size=50, num_hidden_layers=3),
    "h33-n16-k4-r5-x3-untied": dict(hidden_size=33, state_size=16, conv_kernel=4, time_step_rank=5, expand=3,
                                    use_bias=True, use_conv_bias=False, vocab_size=67, num_hidden_layers=1,
                                    tie_word_embeddings=False),
    "h16-n16-k4-default": dict(hidden_size=16, state_size=16, conv_kernel=4, vocab_size=77, num_hidden_layers=2,
                               use_bias=False, use_conv_bias=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see tests/conftest.py


def make_hf(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():                  # the tied head is perturbed once, with the embedding
            p.add_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = None      # never stop early: compare every token
    model.generation_config.pad_token_id = 0
    return model


def make_ours(cfg: dict, seed: int = 0, fast: bool = True):
    torch.manual_seed(seed)
    model = MambaLM(MambaConfig(**cfg), fast=fast).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def ids_for(cfg, batch=2, length=13, seed=1):
    return torch.randint(0, cfg["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def cfg(request):
    return CONFIGS[request.param]


@pytest.fixture(params=[True, False], ids=["fast", "teaching"])
def fast(request):
    """Both forward paths: ssm_tutor.fast (the default) and the teaching path (MambaMixer's own)."""
    return request.param


# ---- parity with transformers ------------------------------------------------------------------

def test_logits_match_transformers_when_transformers_saves(cfg, fast, tmp_path):
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, fast=fast).eval()
    ids = ids_for(cfg)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == (2, 13, cfg["vocab_size"])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_transformers_reads_our_checkpoint_and_config(cfg, tmp_path):
    ours = make_ours(cfg)
    ours.save_pretrained(tmp_path)
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    for key, value in ours.config.to_dict().items():   # every field we write, transformers reads back
        if key not in ("extra", "architectures", "dtype"):
            assert getattr(hf.config, key) == value, key
    ids = ids_for(cfg, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_token_for_token(cfg, fast, tmp_path):
    hf = make_hf(cfg, seed=3)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, fast=fast).eval()
    prompt = ids_for(cfg, batch=2, length=5, seed=4)
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                               min_new_tokens=12, do_sample=False)
    got = ours.generate(prompt, max_new_tokens=12)
    assert got.shape == (2, 5 + 12)
    assert torch.equal(got, expected), f"ours {got.tolist()}\ntheirs {expected.tolist()}"


def test_gradients_match_transformers(fast, tmp_path):
    """Training needs the backward pass too: every parameter's gradient of a loss agrees."""
    cfg = CONFIGS["h24-n5-k3-r3-bias"]
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, fast=fast)
    hf.train()
    ids = ids_for(cfg, batch=2, length=10, seed=5)
    weights = torch.randn(2, 10, cfg["vocab_size"], generator=torch.Generator().manual_seed(6))
    (hf(ids, use_cache=False).logits * weights).sum().backward()
    (ours(ids) * weights).sum().backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_our_checkpoint_reloads_identically(cfg, tmp_path):
    ours = make_ours(cfg)
    ours.save_pretrained(tmp_path)
    again = MambaLM.from_pretrained(tmp_path)
    assert again.config == ours.config
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1


@pytest.mark.parametrize("cfg", ["h24-n5-k3-r3-bias", "h33-n16-k4-r5-x3-untied"], indirect=True)
def test_projection_weights_are_stored_input_major(cfg, tmp_path):
    """store_input_major_: the (out, in) weights sit in memory as their transposes, through
    saving, loading, dtype changes and training; the checkpoint holds ordinary (out, in) tensors."""
    def input_major_names(model):
        names = [n for n, p in model.named_parameters() if p.dim() == 2 and p.t().is_contiguous()]
        return sorted(names)

    expected = sorted([f"backbone.layers.{i}.mixer.{proj}.weight" for i in range(cfg["num_hidden_layers"])
                       for proj in ("in_proj", "x_proj", "dt_proj", "out_proj")]
                      + ["backbone.embeddings.weight" if cfg.get("tie_word_embeddings", True) else "lm_head.weight"])
    ours = make_ours(cfg)
    assert input_major_names(ours) == expected
    ours.save_pretrained(tmp_path)
    for key, tensor in load_file(str(tmp_path / "model.safetensors")).items():
        torch.testing.assert_close(tensor, ours.state_dict()[key], atol=0, rtol=0, msg=key)
    again = MambaLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert input_major_names(again) == expected
    opt = torch.optim.AdamW(again.parameters(), lr=1e-3)
    again(ids_for(cfg)).logsumexp(-1).mean().backward()
    opt.step()
    assert input_major_names(again) == expected


# ---- the pieces against transformers' own functions ---------------------------------------------

@pytest.mark.parametrize("b, E, K, bias", [(1, 5, 2, True), (2, 7, 4, False), (3, 4, 3, True)])
def test_causal_conv_step_matches_transformers_conv_update(b, E, K, bias):
    from transformers.models.mamba.modeling_mamba import causal_conv1d_update
    g = torch.Generator().manual_seed(b * 100 + K)
    state = torch.randn(b, E, K - 1, generator=g)                # ours: the K-1 previous inputs
    x, w = torch.randn(b, E, generator=g), torch.randn(E, K, generator=g)
    bb = torch.randn(E, generator=g) if bias else None
    theirs_state = torch.cat([torch.zeros(b, E, 1), state], -1)   # transformers keeps K inputs
    expected = causal_conv1d_update(x[:, :, None], theirs_state, w, bb)[:, :, 0]
    got = causal_conv_step(state, x, w, bb)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(state, theirs_state[:, :, 1:])     # the window slid the same way


@pytest.mark.parametrize("b, E, N", [(1, 3, 1), (2, 6, 5), (2, 4, 16)])
def test_selective_ssm_step_matches_transformers_state_update(b, E, N):
    from transformers.models.mamba.modeling_mamba import mamba_selective_state_update
    g = torch.Generator().manual_seed(b * 10 + N)
    h = torch.randn(b, E, N, generator=g)
    x, dt = torch.randn(b, E, generator=g), torch.randn(b, E, generator=g)
    A = -torch.rand(E, N, generator=g) * 3
    B, C, D = torch.randn(b, N, generator=g), torch.randn(b, N, generator=g), torch.randn(E, generator=g)
    theirs_h = h.clone()
    expected = mamba_selective_state_update(theirs_h, x, dt, A, B, C, D, dt_softplus=True)
    got = selective_ssm_step(h, x, F.softplus(dt), A, B, C, D)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h, theirs_h)


def test_rmsnorm_matches_transformers():
    from transformers.models.mamba.modeling_mamba import MambaRMSNorm
    theirs, ours = MambaRMSNorm(11, eps=1e-5), RMSNorm(11, eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_()
        ours.weight.copy_(theirs.weight)
    x = torch.randn(3, 4, 11) * 5
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x.bfloat16()), theirs(x.bfloat16()))


# ---- the recurrent form ------------------------------------------------------------------------

def test_step_by_step_logits_equal_the_parallel_forward(cfg):
    model = make_ours(cfg)
    ids = ids_for(cfg, batch=3, length=9)
    with torch.no_grad():
        parallel = model(ids)                                      # (b, l, V)
    cache = model.init_cache(3)
    for t in range(ids.shape[1]):
        logits, cache = model.step(ids[:, t], cache)
        torch.testing.assert_close(logits, parallel[:, t], atol=1e-5, rtol=1e-5, msg=f"token {t}")


def test_prefill_cache_then_steps_equal_the_parallel_forward(cfg):
    """The cache that the parallel forward hands over (conv window + last SSM state) lets
    step() continue exactly; prompts shorter than the conv window are padded correctly."""
    model = make_ours(cfg)
    ids = ids_for(cfg, batch=2, length=8)
    with torch.no_grad():
        full = model(ids)
        for split in (1, 2, 5):
            _, cache = model(ids[:, :split], return_cache=True)
            for t in range(split, ids.shape[1]):
                logits, cache = model.step(ids[:, t], cache)
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5, msg=f"split {split}, t {t}")


def test_cache_memory_does_not_grow_with_tokens():
    cfg = CONFIGS["h24-n5-k3-r3-bias"]
    model = make_ours(cfg)
    cache = model.init_cache(2)
    E, N, K, L = 48, 5, 3, 2
    assert cache.nbytes() == L * 2 * E * (K - 1 + N) * 4
    before = [t.data_ptr() for t in cache.conv_states + cache.ssm_states]
    for t in range(20):
        _, cache = model.step(torch.tensor([t, t + 1]), cache)
    assert cache.seqlen == 20 and cache.nbytes() == L * 2 * E * (K - 1 + N) * 4
    assert [t.data_ptr() for t in cache.conv_states + cache.ssm_states] == before   # updated in place


def test_float64_step_matches_forward_tightly():
    model = make_ours(CONFIGS["h17-n1-k2-auto-nobias"]).double()
    ids = ids_for(CONFIGS["h17-n1-k2-auto-nobias"], batch=1, length=6)
    with torch.no_grad():
        parallel = model(ids)
    cache = model.init_cache(1)
    assert cache.ssm_states[0].dtype == torch.float64
    for t in range(6):
        logits, cache = model.step(ids[:, t], cache)
        assert logits.dtype == torch.float64                        # float64 models give float64 logits
        torch.testing.assert_close(logits, parallel[:, t], atol=1e-10, rtol=1e-10)


# ---- generation --------------------------------------------------------------------------------

def test_sampling_is_seeded_and_top_k_1_is_greedy():
    cfg = CONFIGS["h24-n5-k3-r3-bias"]
    model = make_ours(cfg)
    prompt = ids_for(cfg, batch=2, length=4)
    a = model.generate(prompt, 15, temperature=1.0, seed=7)
    b = model.generate(prompt, 15, temperature=1.0, seed=7)
    c = model.generate(prompt, 15, temperature=1.0, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :4], prompt)
    assert torch.equal(model.generate(prompt, 15, temperature=0.7, top_k=1, seed=3), model.generate(prompt, 15))
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_top_k_sampling_only_picks_among_the_k_most_likely():
    cfg = CONFIGS["h24-n5-k3-r3-bias"]
    model = make_ours(cfg)
    prompt = ids_for(cfg, batch=1, length=4)
    with torch.no_grad():
        top3 = set(model(prompt)[0, -1].topk(3).indices.tolist())
    firsts = {int(model.generate(prompt, 1, temperature=5.0, top_k=3, seed=s)[0, -1]) for s in range(30)}
    assert firsts <= top3 and len(firsts) > 1


# ---- initialisation ----------------------------------------------------------------------------

def test_paper_initialisation():
    cfg = MambaConfig(hidden_size=32, state_size=6, num_hidden_layers=4, vocab_size=40)
    model = MambaLM(cfg)
    mixer = model.backbone.layers[0].mixer
    E = cfg.intermediate_size
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 7.0)).expand(E, 6))  # S4D-Real
    torch.testing.assert_close(mixer.D, torch.ones(E))
    delta = F.softplus(mixer.dt_proj.bias)                      # Δ at init: in [1e-3, 0.1]
    assert delta.min() >= 1e-3 * (1 - 1e-5) and delta.max() <= 0.1 * (1 + 1e-5)
    assert delta.min() < 0.01 < delta.max()                     # spread over the range, log-uniform
    bound = 1 / math.sqrt(E) / math.sqrt(cfg.num_hidden_layers)  # kaiming-uniform bound / sqrt(layers)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    assert model.lm_head.weight is model.backbone.embeddings.weight
    assert cfg.time_step_rank == 2                              # "auto" = ceil(32 / 16)


# ---- configuration -----------------------------------------------------------------------------

def test_config_round_trips_through_transformers(tmp_path):
    ours = MambaConfig(hidden_size=40, state_size=3, num_hidden_layers=5, vocab_size=97, conv_kernel=2,
                       time_step_rank="auto", use_bias=True, layer_norm_epsilon=1e-6, eos_token_id=3)
    ours.save(tmp_path / "config.json")
    theirs = transformers.MambaConfig.from_pretrained(tmp_path)
    assert theirs.time_step_rank == 3 and theirs.intermediate_size == 80 and theirs.eos_token_id == 3
    theirs.save_pretrained(tmp_path / "back")
    again = MambaConfig.load(tmp_path / "back" / "config.json")
    assert {k: v for k, v in vars(again).items() if k != "extra"} == {k: v for k, v in vars(ours).items() if k != "extra"}
    assert "transformers_version" in again.extra                 # unknown fields are kept, not dropped


def test_official_mamba_ssm_config_is_read():
    cfg = MambaConfig.from_dict({"d_model": 64, "n_layer": 3, "vocab_size": 50277, "ssm_cfg": {"d_state": 8},
                                 "rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.state_size) == (64, 3, 50280, 8)


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=0), "hidden_size"),
    (dict(conv_kernel=2.5), "conv_kernel"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(time_step_min=0.5, time_step_max=0.1), "time_step_min"),
])
def test_bad_config_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        MambaConfig(**bad)


# ---- bad checkpoints ---------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"])
    model.save_pretrained(tmp_path)
    return tmp_path, load_file(str(tmp_path / "model.safetensors"))


def rewrite(path, tensors):
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_official_embedding_key_is_accepted(saved):
    path, tensors = saved
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    tensors["lm_head.weight"] = tensors["backbone.embedding.weight"].clone()   # official files store the tied copy
    rewrite(path, tensors)
    model = MambaLM.from_pretrained(path)
    assert torch.equal(model.backbone.embeddings.weight, tensors["backbone.embedding.weight"])


def test_missing_key_is_named(saved):
    path, tensors = saved
    del tensors["backbone.layers.1.mixer.x_proj.weight"]
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"missing key 'backbone\.layers\.1\.mixer\.x_proj\.weight'.*\(13, 48\)"):
        MambaLM.from_pretrained(path)


def test_unexpected_key_is_named(saved):
    path, tensors = saved
    tensors["backbone.layers.2.norm.weight"] = torch.ones(24)
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"unexpected key 'backbone\.layers\.2\.norm\.weight'"):
        MambaLM.from_pretrained(path)


def test_misshaped_key_names_both_shapes(saved):
    path, tensors = saved
    tensors["backbone.layers.0.mixer.A_log"] = torch.zeros(48, 4)
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"'backbone\.layers\.0\.mixer\.A_log' has shape \(48, 4\).*\(48, 5\)"):
        MambaLM.from_pretrained(path)


def test_nan_weights_are_refused(saved):
    path, tensors = saved
    tensors["backbone.norm_f.weight"][3] = float("nan")
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"'backbone\.norm_f\.weight' contains NaN"):
        MambaLM.from_pretrained(path)


def test_untied_head_in_a_tied_checkpoint_is_refused(saved):
    path, tensors = saved
    tensors["lm_head.weight"] = torch.randn_like(tensors["backbone.embeddings.weight"])
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        MambaLM.from_pretrained(path)


def test_missing_files_are_named(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MambaLM.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLM.from_pretrained(tmp_path / "..")
    path, _ = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        MambaLM.from_pretrained(path)


def test_pytorch_bin_is_read_without_unpickling_objects(saved):
    path, tensors = saved
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")
    model = MambaLM.from_pretrained(path)
    assert torch.equal(model.backbone.norm_f.weight, tensors["backbone.norm_f.weight"])
    torch.save({"evil": object()}, path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        MambaLM.from_pretrained(path)


def test_save_refuses_nan_weights_and_keeps_the_previous_checkpoint(tmp_path):
    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"])
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.backbone.layers[1].mixer.D[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to save.*'backbone\.layers\.1\.mixer\.D'"):
        model.save_pretrained(tmp_path)
    MambaLM.from_pretrained(tmp_path)                              # the earlier checkpoint still loads


# ---- input validation --------------------------------------------------------------------------

@pytest.mark.parametrize("ids, error, message", [
    (torch.zeros(2, 3), TypeError, "torch.long"),
    (torch.zeros(2, 3, dtype=torch.int16), TypeError, "torch.long"),
    (torch.zeros(3, dtype=torch.long), ValueError, r"\(batch, length\)"),
    (torch.full((1, 3), 101), ValueError, "vocab_size is 101"),
    (torch.tensor([[0, -1]]), ValueError, r"\[-1, 0\]"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_bad_input_ids_are_refused(ids, error, message):
    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"])
    with pytest.raises(error, match=message):
        model(ids)
    with pytest.raises(error, match=message):
        model.generate(ids, 2)


def test_bad_step_arguments_are_refused():
    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"])
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        model.step(torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="batch 2"):
        model.step(torch.zeros(3, dtype=torch.long), cache)
    with pytest.raises(TypeError, match="MambaCache"):
        model.step(torch.zeros(2, dtype=torch.long), {"conv": None})
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)


# ---- the teaching path and the fast path ---------------------------------------------------------

@pytest.mark.parametrize("cfg", ["h24-n5-k3-r3-bias", "h33-n16-k4-r5-x3-untied"], indirect=True)
def test_fast_path_equals_teaching_path_values_gradients_and_tokens(cfg):
    """ssm_tutor.fast is held to the teaching layer: the same logits, every parameter's gradient,
    the same generated tokens; and the switch flips one model between the two."""
    fast = make_ours(cfg, fast=True)
    teaching = MambaLM(MambaConfig(**cfg), fast=False).eval()
    teaching.load_state_dict(fast.state_dict())                      # the same weights
    assert fast.backbone.layers[0].mixer.fast and not teaching.backbone.layers[0].mixer.fast
    ids = ids_for(cfg, batch=2, length=11, seed=8)
    weights = torch.randn(2, 11, cfg["vocab_size"], generator=torch.Generator().manual_seed(9))
    out = {}
    for name, model in (("fast", fast), ("teaching", teaching)):
        model.zero_grad()
        logits = model(ids)
        (logits * weights).sum().backward()
        out[name] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(out["fast"][0], out["teaching"][0], atol=1e-5, rtol=1e-5)
    for name, g in out["fast"][1].items():
        torch.testing.assert_close(g, out["teaching"][1][name], atol=1e-4, rtol=1e-4, msg=name)
    prompt = ids_for(cfg, batch=2, length=6, seed=10)
    assert torch.equal(fast.generate(prompt, 10), teaching.generate(prompt, 10))
    with torch.no_grad():
        torch.testing.assert_close(fast.use_fast_path(False)(ids), out["teaching"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.use_fast_path(True)(ids), out["fast"][0], atol=0, rtol=0)


def test_mixer_is_the_selective_layer_of_stage_4_inside_the_shell():
    from ssm_tutor.selective import SelectiveSSM

    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"])
    mixer = model.backbone.layers[0].mixer
    assert isinstance(mixer, SelectiveSSM) and (mixer.d, mixer.n, mixer.dt_rank) == (48, 5, 3)
    assert {n for n, _ in mixer.named_parameters()} == {
        "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
        "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias"}


# ---- interoperability: what transformers writes and does --------------------------------------------

def test_intermediate_size_other_than_expand_times_hidden_loads_and_matches_transformers(fast, tmp_path):
    """transformers builds the SSM branch from config.intermediate_size, which may differ from
    expand * hidden_size; such a checkpoint loads here and gives the same logits."""
    cfg = dict(CONFIGS["h24-n5-k3-r3-bias"], intermediate_size=40)       # expand * hidden = 48
    hf = make_hf(cfg)
    assert hf.backbone.layers[0].mixer.in_proj.weight.shape == (80, 24)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, fast=fast).eval()
    assert ours.config.intermediate_size == 40 and ours.config.expand == 2
    ids = ids_for(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)
    ours.save_pretrained(tmp_path / "again")
    assert transformers.MambaConfig.from_pretrained(tmp_path / "again").intermediate_size == 40


def test_conv_cache_agrees_with_transformers_after_a_prefix(cfg, tmp_path):
    """transformers' conv cache holds the last K inputs (b, E, K), ours the last K-1 (b, E, K-1):
    ours is theirs without the oldest column, the SSM states are equal, and a cache converted from
    transformers' continues exactly where transformers would."""
    from ssm_tutor.mamba import MambaCache

    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path).eval()
    ids = ids_for(cfg, batch=2, length=9, seed=11)
    K = cfg["conv_kernel"]
    with torch.no_grad():
        theirs = hf(ids[:, :7], use_cache=True).cache_params
        _, cache = ours(ids[:, :7], return_cache=True)
        for i in range(cfg["num_hidden_layers"]):
            their_conv = theirs.get_conv_state(i)
            assert their_conv.shape[-1] == K and cache.conv_states[i].shape[-1] == K - 1
            torch.testing.assert_close(cache.conv_states[i], their_conv[..., 1:], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cache.ssm_states[i], theirs.get_recurrent_state(i), atol=1e-5, rtol=1e-5)
            assert cache.to_transformers_conv_states()[i].shape == their_conv.shape
        converted = MambaCache.from_transformers([theirs.get_conv_state(i) for i in range(cfg["num_hidden_layers"])],
                                                 [theirs.get_recurrent_state(i) for i in range(cfg["num_hidden_layers"])], 7)
        expected = hf(ids[:, 7:8], cache_params=theirs, use_cache=True).logits[:, 0]
        logits, _ = ours.step(ids[:, 7], converted)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def _left_pad(prompts, pad_id=0):
    """A batch of prompts of different lengths, left-padded: ids (b, L) and mask (b, L)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    return ids, mask


PROMPTS = [[5, 17, 3, 9, 22, 1, 8], [11, 4], [7, 7, 30, 2, 19]]


def test_left_padded_batch_generates_what_each_prompt_generates_alone(cfg, fast):
    model = make_ours(cfg, seed=12, fast=fast)
    ids, mask = _left_pad([[t % cfg["vocab_size"] for t in p] for p in PROMPTS])
    together = model.generate(ids, 8, attention_mask=mask)
    with torch.no_grad():
        last = model(ids, attention_mask=mask)[:, -1]
    for i, p in enumerate(PROMPTS):
        alone_ids = torch.tensor([[t % cfg["vocab_size"] for t in p]])
        alone = model.generate(alone_ids, 8)
        assert torch.equal(together[i, ids.shape[1]:], alone[0, len(p):]), f"prompt {i}"
        with torch.no_grad():
            torch.testing.assert_close(last[i], model(alone_ids)[0, -1], atol=1e-5, rtol=1e-5)
        with torch.no_grad():                          # without the mask the padding leaks in
            assert i == 0 or not torch.allclose(model(ids)[i, -1], model(alone_ids)[0, -1], atol=1e-3)


def test_attention_mask_matches_transformers(fast, tmp_path):
    """transformers zeroes padded positions before in_proj and after the convolution; without
    biases in in_proj that is what we do (zero before the convolution and the scan)."""
    cfg = CONFIGS["h16-n16-k4-default"]
    hf = make_hf(cfg)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, fast=fast).eval()
    ids, mask = _left_pad(PROMPTS)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(ours.generate(ids, 6, attention_mask=mask), theirs)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(3, 5), "input_ids' shape"),
    (torch.full((3, 7), 2), "only 0 .* and 1"),
    (torch.tensor([[1] * 7, [0] * 7, [1] * 7]), r"rows with no token at all: \[1\]"),
    (torch.tensor([[1] * 7, [1, 1, 0, 0, 0, 0, 0], [1] * 7]), "must be left-padded"),
])
def test_bad_attention_masks_are_named(mask, message):
    model = make_ours(CONFIGS["h16-n16-k4-default"])
    ids = torch.zeros(3, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        model.generate(ids, 2, attention_mask=mask)


# ---- raw torch errors become named errors ---------------------------------------------------------

def test_wrong_width_into_the_mixer_is_named(fast):
    model = make_ours(CONFIGS["h24-n5-k3-r3-bias"], fast=fast)
    mixer = model.backbone.layers[0].mixer
    with pytest.raises(ValueError, match=r"MambaMixer: x must have shape \(batch, length, d\) with d = 24, "
                                         r"got shape \(2, 5, 48\)"):
        mixer(torch.randn(2, 5, 48))
    with pytest.raises(TypeError, match="MambaMixer: x must be a floating-point tensor"):
        mixer(torch.ones(2, 5, 24, dtype=torch.long))


def test_a_model_on_the_meta_device_is_named():
    with torch.device("meta"):
        model = MambaLM(MambaConfig(**CONFIGS["h16-n16-k4-default"]))
    with pytest.raises(ValueError, match="the model's weights is on the meta device"):
        model(torch.zeros(1, 3, dtype=torch.long))
    mixer = model.backbone.layers[0].mixer
    with pytest.raises(ValueError, match="MambaMixer's weights is on the meta device"):
        mixer(torch.zeros(1, 3, 16))
