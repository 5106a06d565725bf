"""Specifications of the stage-8 baselines: the Transformer with a KV cache and the generic SSM LM."""

import pytest
import torch
import torch.nn.functional as F

from ssm_tutor.baselines import (SSMLM, KVCache, TransformerLM, cache_nbytes, legacy_ssmlm_key, load_pretrained,
                                 rope, save_pretrained)
from ssm_tutor.mamba import MambaCache
from ssm_tutor.checkpoint import CheckpointError
from ssm_tutor.selective import selective_scan_ref

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see tests/conftest.py


def _run_steps(model, ids, cache):
    return torch.stack([model.step(ids[:, t], cache)[0] for t in range(ids.shape[1])], dim=1)


@pytest.mark.parametrize("pos_encoding", ["rope", "learned", "sinusoidal"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_kv_cache_step_equals_forward(pos_encoding, dtype):
    torch.manual_seed(1)
    model = TransformerLM(11, d_model=24, n_layers=2, n_heads=3 if pos_encoding != "rope" else 4,
                          max_len=12, pos_encoding=pos_encoding).to(dtype).eval()
    ids = torch.randint(0, 11, (3, 12))
    with torch.no_grad():
        full = model(ids)                                   # (3, 12, 11)
        cache = model.init_cache(3, capacity=5)             # too small on purpose: it must grow
        stepped = _run_steps(model, ids, cache)
    torch.testing.assert_close(stepped, full, **TOL[dtype])
    assert cache.length == 12


@pytest.mark.parametrize("mixer", ["selective", "lti"])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ssm_recurrent_step_equals_forward(mixer, gated, dtype):
    torch.manual_seed(2)
    model = SSMLM(9, d_model=16, n_layers=2, d_state=4, mixer=mixer, gated=gated).to(dtype).eval()
    ids = torch.randint(0, 9, (2, 17))
    with torch.no_grad():
        full = model(ids)
        stepped = _run_steps(model, ids, model.init_cache(2))
    torch.testing.assert_close(stepped, full, **TOL[dtype])


@pytest.mark.parametrize("make", [lambda: TransformerLM(7, 16, 2, 2, 10),
                                  lambda: SSMLM(7, 16, 2, mixer="selective"),
                                  lambda: SSMLM(7, 16, 2, mixer="lti", gated=False)])
def test_models_are_causal(make):
    torch.manual_seed(4)
    model = make().eval()
    ids = torch.randint(0, 7, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 7
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rope_scores_depend_only_on_the_offset():
    torch.manual_seed(5)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    score = lambda s, t: (rope(q, torch.tensor([s])) * rope(k, torch.tensor([t]))).sum()
    torch.testing.assert_close(score(5, 2), score(103, 100))
    torch.testing.assert_close(score(9, 9), (q * k).sum())


def test_kv_cache_grows_with_length_but_ssm_state_does_not():
    torch.manual_seed(6)
    tf, ssm = TransformerLM(5, 16, 2, 2, 64).eval(), SSMLM(5, 16, 2).eval()
    kv, st = tf.init_cache(1), ssm.init_cache(1)
    sizes = []
    with torch.no_grad():
        for t in range(40):
            tf.step(torch.tensor([t % 5]), kv)
            ssm.step(torch.tensor([t % 5]), st)
            sizes.append((cache_nbytes(kv), cache_nbytes(st)))
    # KV cache: 2 (k and v) · layers · heads · head_dim · 4 bytes per token
    assert [s[0] for s in sizes] == [2 * 2 * 16 * 4 * (t + 1) for t in range(40)]
    # Mamba: per layer the K-1 = 3 last conv inputs and the N = 8 states of E = 32 channels, float32
    assert len({s[1] for s in sizes}) == 1 and sizes[0][1] == 2 * (32 * 3 + 32 * 8) * 4
    assert isinstance(st, MambaCache)


def test_learned_positions_refuse_sequences_longer_than_max_len():
    model = TransformerLM(5, 16, 1, 2, max_len=8, pos_encoding="learned")
    with pytest.raises(ValueError, match="max_len = 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("model", [TransformerLM(5, 16, 1, 2, 8), SSMLM(5, 16, 1)], ids=["transformer", "ssm"])
@pytest.mark.parametrize("bad, error, message", [
    (torch.zeros(2, 3), TypeError, "integer token ids"),
    (torch.zeros(3, dtype=torch.long), ValueError, r"\(batch, length\)"),
    (torch.full((1, 3), 5), ValueError, r"\[0, 5\)"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_bad_input_ids_are_named(model, bad, error, message):
    with pytest.raises(error, match=message):
        model(bad)


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="pos_encoding"):
        TransformerLM(5, 16, 1, 2, 8, pos_encoding="alibi")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerLM(5, 16, 1, 3, 8)
    with pytest.raises(ValueError, match="mixer"):
        SSMLM(5, mixer="s4")
    with pytest.raises(ValueError, match="d_model must be a positive integer"):
        SSMLM(5, d_model=0)


@pytest.mark.parametrize("model, other", [(TransformerLM(5, 16, 1, 2, 8), SSMLM(5, 16, 1)),
                                          (SSMLM(5, 16, 1), TransformerLM(5, 16, 1, 2, 8))],
                         ids=["transformer", "ssm"])
def test_step_rejects_a_cache_of_another_batch_size_or_model(model, other):
    ids = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="token_ids has batch 3 but the cache was made for batch 2"):
        model.step(ids, model.init_cache(2))
    kind = type(other.init_cache(3)).__name__
    with pytest.raises(TypeError, match=f"cache must be an? {type(model.init_cache(3)).__name__} from init_cache, got {kind}"):
        model.step(ids, other.init_cache(3))


@pytest.mark.parametrize("make", [lambda: TransformerLM(7, 16, 2, 2, 10, pos_encoding="learned"),
                                  lambda: SSMLM(7, 16, 2, mixer="lti", gated=False)])
def test_save_and_load_round_trip(make, tmp_path):
    torch.manual_seed(7)
    model = make().eval()
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    ids = torch.randint(0, 7, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    embedding = loaded.embedding if isinstance(loaded, TransformerLM) else loaded.backbone.embeddings
    assert loaded.lm_head.weight is embedding.weight                # still tied


def test_loading_a_checkpoint_with_a_missing_key_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(SSMLM(7, 16, 1), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["backbone.layers.0.mixer.D"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key 'backbone.layers.0.mixer.D'"):
        load_pretrained(tmp_path)


# --- SSMLM is the Mamba model; checkpoints of its old layout still load -----------------------

def test_ssmlm_is_mambalm_with_two_switches():
    from ssm_tutor.mamba import LTIMambaMixer, MambaLM, MambaMixer

    for mixer, gated, cls in [("selective", True, MambaMixer), ("lti", False, LTIMambaMixer)]:
        model = SSMLM(7, 16, 2, 4, mixer=mixer, gated=gated)
        assert isinstance(model, MambaLM)
        assert all(type(layer.mixer) is cls and layer.mixer.gated is gated for layer in model.backbone.layers)
        assert model.backbone.layers[0].mixer.in_proj.weight.shape == ((2 if gated else 1) * 32, 16)


def test_legacy_keys_map_to_the_mamba_block():
    table = {"embedding.weight": "backbone.embeddings.weight", "norm_f.weight": "backbone.norm_f.weight",
             "layers.0.norm.weight": "backbone.layers.0.norm.weight",
             "layers.11.in_proj.weight": "backbone.layers.11.mixer.in_proj.weight",
             "layers.1.conv1d.bias": "backbone.layers.1.mixer.conv1d.bias",
             "layers.1.dt_proj.bias": "backbone.layers.1.mixer.dt_proj.bias",
             "layers.0.dt_bias": "backbone.layers.0.mixer.dt_bias", "layers.0.B": "backbone.layers.0.mixer.B",
             "layers.0.A_log": "backbone.layers.0.mixer.A_log", "layers.0.out_proj.weight": "backbone.layers.0.mixer.out_proj.weight",
             "backbone.layers.0.mixer.D": "backbone.layers.0.mixer.D"}              # today's keys pass unchanged
    assert {k: legacy_ssmlm_key(k) for k in table} == table


def _old_ssmlm_logits(t, ids, n_layers, mixer, gated):
    """The old SSMLM (its own block class), written out from the raw tensors of a checkpoint in
    the old layout: RMSNorm -> in_proj -> conv -> SiLU -> SSM -> [gate] -> out_proj, residual.
    The LTI SSM is its FFT convolution with K[d, k] = Σ_n C Δ B exp(Δ A k), as the old code had it."""
    x = t["embedding.weight"][ids]                                                   # (b, l, d_model)
    l = ids.shape[1]
    for i in range(n_layers):
        p = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"layers.{i}.")}
        h = F.rms_norm(x, p["norm.weight"].shape, p["norm.weight"], 1e-5) @ p["in_proj.weight"].T
        u, z = h.chunk(2, -1) if gated else (h, None)
        u = F.silu(F.conv1d(u.transpose(1, 2), p["conv1d.weight"], p["conv1d.bias"], padding=3,
                            groups=u.shape[-1])[..., :l])                              # (b, e, l)
        A = -torch.exp(p["A_log"])                                                   # (e, N)
        if mixer == "selective":
            R = p["dt_proj.weight"].shape[1]
            dt, B, C = (u.transpose(1, 2) @ p["x_proj.weight"].T).split([R, A.shape[1], A.shape[1]], -1)
            delta = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])       # (b, l, e)
            y = selective_scan_ref(u, delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), p["D"])
        else:
            delta = F.softplus(p["dt_bias"])                                         # (e,)
            k = torch.arange(l, dtype=A.dtype)
            K = torch.einsum("dn,dnl->dl", p["C"] * p["B"] * delta[:, None], torch.exp((delta[:, None] * A)[..., None] * k))
            y = torch.fft.irfft(torch.fft.rfft(u, n=2 * l) * torch.fft.rfft(K, n=2 * l), n=2 * l)[..., :l] + p["D"][:, None] * u
        y = y.transpose(1, 2)
        if gated:
            y = y * F.silu(z)
        x = x + y @ p["out_proj.weight"].T
    x = F.rms_norm(x, t["norm_f.weight"].shape, t["norm_f.weight"], 1e-5)
    return x @ t["embedding.weight"].T


@pytest.mark.parametrize("name", ["sc_lti_gated", "sc_lti_nogate", "sc_s6_gated", "sc_s6_nogate"])
def test_shipped_checkpoints_of_the_old_layout_give_the_old_models_logits(name):
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(__file__).resolve().parents[1] / "checkpoints" / name
    config = json.loads((directory / "config.json").read_text())
    raw = load_file(str(directory / "model.safetensors"))
    assert "embedding.weight" in raw                                                 # still the old layout
    ids = torch.randint(0, config["vocab_size"], (2, 36), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _old_ssmlm_logits(raw, ids, config["n_layers"], config["mixer"], config["gated"])
        got = load_pretrained(directory)(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
