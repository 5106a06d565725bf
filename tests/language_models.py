"""What the tests of the two model families (test_mamba.py, test_mamba2.py) share: models with
jittered weights on both sides, token ids, left-padded batches, and the two-paths fixture."""

import pytest
import torch


def jittered(model):
    """``model`` in eval mode with every parameter moved by 0.1 N(0, 1), so that no weight keeps a
    special value (norm weights 1, D 1, zero biases) that could hide a mistake. A tied head is
    moved once, with the embedding."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def reference(model_class, config_class, cfg: dict, seed: int = 0):
    """A transformers model (``model_class(config_class(**cfg))``), jittered, that never stops
    generating early (so every token is compared)."""
    torch.manual_seed(seed)
    model = jittered(model_class(config_class(**cfg)))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def ids_for(cfg, batch=2, length=13, seed=1):
    return torch.randint(0, cfg["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def left_pad(prompts, pad_id=0):
    """A batch of prompts of different lengths, left-padded: ids (b, L) and mask (b, L)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
    return ids, mask


@pytest.fixture(params=[True, False], ids=["fast", "teaching"])
def fast(request):
    """Both forward paths: ssm_tutor.fast (the default) and the teaching path (the mixer's own forward)."""
    return request.param


# ---- checks that hold for every family (each test file calls them on its own models) -------------

def assert_gradients_match(ours, theirs, ids, vocab_size):
    """Every parameter's gradient of one loss agrees (ours' parameter names are theirs)."""
    weights = torch.randn(*ids.shape, vocab_size, generator=torch.Generator().manual_seed(6))
    theirs.train()
    (theirs(ids, use_cache=False).logits * weights).sum().backward()
    (ours(ids) * weights).sum().backward()
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, their_params[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def assert_fast_path_equals_teaching_path(fast, teaching, cfg):
    """The fast layer is held to the teaching layer: the same logits, every parameter's gradient,
    the same generated tokens; and ``use_fast_path`` flips one model between the two."""
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


def assert_cache_converts_from_transformers(ours, theirs, ids, conv_kernel, layers, *, prefix=7):
    """After reading ``ids[:, :prefix]``: transformers' conv cache holds the last K inputs, ours the
    last K-1 (ours is theirs without the oldest column), the SSM states are equal, and a cache
    converted from transformers' continues exactly where transformers would."""
    from ssm_tutor.mamba import MambaCache

    with torch.no_grad():
        cache_theirs = theirs(ids[:, :prefix], use_cache=True).cache_params
        _, cache = ours(ids[:, :prefix], return_cache=True)
        for i in range(layers):
            their_conv = cache_theirs.get_conv_state(i)
            assert their_conv.shape[-1] == conv_kernel and cache.conv_states[i].shape == their_conv[..., 1:].shape
            torch.testing.assert_close(cache.conv_states[i], their_conv[..., 1:], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cache.ssm_states[i], cache_theirs.get_recurrent_state(i), atol=1e-5, rtol=1e-5)
            assert cache.to_transformers_conv_states()[i].shape == their_conv.shape
        converted = MambaCache.from_transformers([cache_theirs.get_conv_state(i) for i in range(layers)],
                                                 [cache_theirs.get_recurrent_state(i) for i in range(layers)], prefix)
        expected = theirs(ids[:, prefix:prefix + 1], cache_params=cache_theirs, use_cache=True).logits[:, 0]
        logits, _ = ours.step(ids[:, prefix], converted)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def assert_left_padding_is_invisible(model, prompts, new_tokens=8):
    """A left-padded batch with its mask gives each prompt the logits and the continuation it gets
    alone; without the mask the padding leaks in (visibly into a short prompt's first token,
    whose conv window then holds padding)."""
    ids, mask = left_pad(prompts)
    together = model.generate(ids, new_tokens, attention_mask=mask)
    with torch.no_grad():
        last = model(ids, attention_mask=mask)[:, -1]
        unmasked = model(ids)
    for i, p in enumerate(prompts):
        alone_ids = torch.tensor([p])
        alone = model.generate(alone_ids, new_tokens)
        assert torch.equal(together[i, ids.shape[1]:], alone[0, len(p):]), f"prompt {i}"
        with torch.no_grad():
            alone_logits = model(alone_ids)[0]
        torch.testing.assert_close(last[i], alone_logits[-1], atol=1e-5, rtol=1e-5)
        first = ids.shape[1] - len(p)
        assert first == 0 or not torch.allclose(unmasked[i, first], alone_logits[0], atol=1e-3), f"prompt {i}"


def assert_mask_matches_transformers(ours, theirs, prompts, new_tokens=6):
    """Logits at the real (unpadded) positions and greedy tokens agree with transformers given the
    same left-padded batch and mask."""
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask, use_cache=False).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)
    tokens = theirs.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    assert torch.equal(ours.generate(ids, new_tokens, attention_mask=mask), tokens)
