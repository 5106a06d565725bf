"""Stage 10: the Jamba-style hybrid of Mamba blocks and attention blocks, and its mixed cache."""

import pytest
import torch

import transformers  # the layer pattern's reference: transformers' JambaConfig (written by others)

from ssm_tutor.baselines import KVCache, TransformerBlock, TransformerLM, cache_nbytes
from ssm_tutor.hybrid import HybridCache, HybridConfig, HybridLM, layer_types
from ssm_tutor.mamba import MambaBlock, MambaConfig, MambaLM

SMALL = dict(vocab_size=23, hidden_size=16, state_size=4, num_attention_heads=2)


def _model(layers=4, period=2, offset=1, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cfg = HybridConfig(**SMALL, num_hidden_layers=layers, attn_layer_period=period, attn_layer_offset=offset)
    return HybridLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("layers,period,offset", [(8, 8, 4), (2, 2, 1), (2, 2, 0), (6, 3, 2), (5, 1, 0), (3, 4, 3), (32, 8, 4)])
def test_layer_pattern_is_jambas(layers, period, offset):
    jamba = transformers.JambaConfig(num_hidden_layers=layers, attn_layer_period=period, attn_layer_offset=offset,
                                     expert_layer_period=1, expert_layer_offset=0)
    ours = HybridConfig(**SMALL, num_hidden_layers=layers, attn_layer_period=period, attn_layer_offset=offset)
    assert ours.layers_block_type == jamba.layers_block_type == layer_types(layers, period, offset)
    model = HybridLM(ours)
    kinds = ["attention" if isinstance(l, TransformerBlock) else "mamba" for l in model.layers]
    assert kinds == jamba.layers_block_type
    assert all(isinstance(l, (TransformerBlock, MambaBlock)) for l in model.layers)   # the course's own blocks


@pytest.mark.parametrize("period,offset", [(2, 1), (2, 0), (4, 3)])
def test_step_by_step_equals_the_parallel_forward(period, offset):
    model = _model(layers=4, period=period, offset=offset)
    ids = torch.randint(0, 23, (3, 11))
    full = model(ids)
    cache = model.init_cache(3, capacity=2)                        # small: the KV part must grow on the way
    steps = torch.stack([model.step(ids[:, t], cache)[0] for t in range(11)], dim=1)
    torch.testing.assert_close(steps, full)
    assert cache.length == 11 and cache.kv.k[0].shape[2] >= 11


def test_generate_equals_recomputing_the_prefix():
    """Greedy generation through the mixed cache (prefill in parallel, then one step per token)
    gives the tokens that the full forward on the growing sequence gives."""
    model = _model(layers=4, period=2, offset=1, seed=3)
    prompt = torch.randint(0, 23, (2, 7))
    out = model.generate(prompt, 9)
    assert out.shape == (2, 16) and torch.equal(out[:, :7], prompt)
    seq = prompt
    for _ in range(9):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    # and the cache after the prefill continues exactly like a cache filled token by token
    logits, cache = model(prompt, return_cache=True)
    stepped = model.init_cache(2)
    for t in range(7):
        last = model.step(prompt[:, t], stepped)[0]
    torch.testing.assert_close(last, logits[:, -1])
    nxt = out[:, 7]
    torch.testing.assert_close(model.step(nxt, cache)[0], model.step(nxt, stepped)[0])


def test_without_attention_it_is_mamba():
    """Period 3 with offset 2 in a 2-layer model leaves no attention layer: the hybrid is then the
    stage-7 MambaLM (itself checked against transformers), weight for weight."""
    cfg = HybridConfig(**SMALL, num_hidden_layers=2, attn_layer_period=3, attn_layer_offset=2)
    assert cfg.layers_block_type == ["mamba", "mamba"]
    hybrid = HybridLM(cfg).double().eval()
    mamba = MambaLM(MambaConfig(**{k: v for k, v in SMALL.items() if k != "num_attention_heads"},
                                num_hidden_layers=2)).double().eval()
    state = {k.replace("backbone.", ""): v for k, v in mamba.state_dict().items() if k != "lm_head.weight"}
    hybrid.load_state_dict(state, strict=False)
    assert set(hybrid.state_dict()) - {"lm_head.weight"} == set(state)
    ids = torch.randint(0, 23, (2, 9))
    torch.testing.assert_close(hybrid(ids), mamba(ids))


def test_cache_bytes_grow_with_the_attention_layers_only():
    """One attention layer in four: the KV part grows a quarter as fast as a 4-layer Transformer's
    cache of the same width, the Mamba part does not grow."""
    model = _model(layers=4, period=4, offset=3, dtype=torch.float32)
    transformer = TransformerLM(23, d_model=16, n_layers=4, n_heads=2, max_len=8)
    sizes = {}
    for length in (16, 64):
        ids = torch.randint(0, 23, (1, length))
        _, cache = model(ids, return_cache=True)
        tcache = transformer.init_cache(1, capacity=length)
        tcache.length = length
        sizes[length] = (cache.nbytes(), cache.ssm.nbytes(), cache_nbytes(tcache))
    (h16, s16, t16), (h64, s64, t64) = sizes[16], sizes[64]
    assert s16 == s64 == 3 * (32 * 3 + 32 * 4) * 4                   # 3 Mamba layers, E=32: (K-1 + N)·E floats
    assert h64 - h16 == (t64 - t16) // 4                               # KV growth: 1 of 4 layers
    assert h16 - s16 == 2 * 16 * 16 * 4                                # k and v: length · d_model floats each


def test_config_checks_and_round_trip():
    cfg = HybridConfig(**SMALL, num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1)
    again = HybridConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.layers_block_type == ["mamba", "attention", "mamba", "attention"]
    with pytest.raises(ValueError, match=r"attn_layer_offset must be an integer in \[0, attn_layer_period\)"):
        HybridConfig(**SMALL, attn_layer_period=2, attn_layer_offset=2)
    with pytest.raises(ValueError, match="must divide hidden_size"):
        HybridConfig(vocab_size=10, hidden_size=16, num_attention_heads=3)
    with pytest.raises(ValueError, match="model_type"):
        HybridConfig.from_dict(dict(cfg.to_dict(), model_type="mamba"))
    with pytest.raises(TypeError, match="HybridConfig"):
        HybridLM(MambaConfig(vocab_size=10, hidden_size=16))


def test_step_refuses_a_wrong_cache():
    model = _model(layers=2)
    with pytest.raises(TypeError, match="HybridCache"):
        model.step(torch.tensor([1]), model.init_cache(1).kv)
    with pytest.raises(ValueError, match="batch"):
        model.step(torch.tensor([1, 2]), model.init_cache(1))


# ---- the baseline pieces the hybrid reuses ----------------------------------------------------

def test_transformer_block_returns_the_keys_and_values_its_step_stores():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, use_rope=True).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y, (k, v) = block(x, return_kv=True)
    torch.testing.assert_close(y, block(x))
    cache = KVCache([torch.zeros(2, 2, 1, 8, dtype=torch.float64)], [torch.zeros(2, 2, 1, 8, dtype=torch.float64)])
    for t in range(6):
        cache.reserve(t + 1)
        block.step(x[:, t:t + 1], 0, cache)
        cache.length += 1
    torch.testing.assert_close(cache.k[0][:, :, :6], k)
    torch.testing.assert_close(cache.v[0][:, :, :6], v)


def test_kv_cache_reserve_doubles_and_keeps_what_it_holds():
    k = torch.arange(8.0).view(1, 1, 4, 2)
    cache = KVCache([k.clone()], [k.clone()], length=4)
    cache.reserve(4)
    assert cache.k[0].shape[2] == 4                                    # enough room: unchanged
    cache.reserve(9)
    assert cache.k[0].shape[2] == 16 and torch.equal(cache.k[0][:, :, :4], k)


def test_checkpoint_round_trip_and_named_errors(tmp_path):
    from ssm_tutor.checkpoint import CheckpointError, read_config, read_tensors

    model = _model(layers=4, period=2, offset=1, dtype=torch.float32, seed=4)
    model.save_pretrained(tmp_path / "h")
    config = read_config(tmp_path / "h")
    assert config["model_type"] == "ssm_tutor_hybrid" and config["layers_block_type"][1] == "attention"
    assert "lm_head.weight" not in read_tensors(tmp_path / "h")              # tied to the embedding
    again = HybridLM.from_pretrained(tmp_path / "h")
    ids = torch.randint(0, 23, (2, 8))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)
    other = _model(layers=4, period=2, offset=0, dtype=torch.float32)         # attention where Mamba was
    other.save_pretrained(tmp_path / "o")
    config = read_config(tmp_path / "o")
    (tmp_path / "o" / "config.json").write_text(__import__("json").dumps({**config, "attn_layer_offset": 1,
                                                                          "layers_block_type": None}))
    with pytest.raises(CheckpointError, match="missing key 'layers.0.mixer.A_log'"):
        HybridLM.from_pretrained(tmp_path / "o")
