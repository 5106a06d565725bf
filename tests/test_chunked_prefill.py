"""Chunked prefill: ``forward(ids, cache=..., return_cache=True)`` continues a sequence from a cache.

A long sequence read in chunks, the state carried from one chunk to the next, must give what one
forward over the whole sequence gives (logits and final cache) and what reading it token by token
with ``step`` gives; the cache it ends in must generate the same tokens. Checked for both model
families that share ``MambaLM.forward`` (Mamba, Mamba-2), both paths (fast, teaching), float64
and float32, with chunk sizes that do not divide the length; the outside reference is
transformers' one-pass forward on the same weights. The scans' ``initial_state`` is checked on
its own, gradient included.
"""

import pytest
import torch

import transformers  # noqa: E402  (the reference)

from language_models import fast, ids_for, jittered, reference  # noqa: F401  (fast: a fixture)

from ssm_tutor.mamba import MambaCache, MambaConfig, MambaLM
from ssm_tutor.mamba2 import Mamba2Config, Mamba2LM
from ssm_tutor.scan import selective_scan

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see tests/conftest.py

FAMILIES = {
    "mamba": (MambaLM, MambaConfig, dict(hidden_size=17, state_size=5, conv_kernel=4, time_step_rank=3,
                                         use_bias=True, use_conv_bias=True, vocab_size=53, num_hidden_layers=2)),
    "mamba2": (Mamba2LM, Mamba2Config, dict(hidden_size=24, state_size=5, head_dim=6, num_heads=8, expand=2,
                                            n_groups=2, conv_kernel=3, chunk_size=4, vocab_size=41,
                                            num_hidden_layers=2, tie_word_embeddings=False)),
}
CHUNKS = (3, 7, 1, 5, 4)          # 20 tokens; none divides it, one chunk is shorter than the conv window
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-5)}


def make(family: str, fast: bool, dtype=torch.float64, seed: int = 0):
    model_class, config_class, cfg = FAMILIES[family]
    torch.manual_seed(seed)
    return jittered(model_class(config_class(**cfg), fast=fast)).to(dtype), cfg


def read_in_chunks(model, ids, chunks, cache=None):
    """ids (b, L) read chunk by chunk, the cache carried across: (logits (b, L, V), final cache)."""
    cache = model.init_cache(ids.shape[0]) if cache is None else cache
    logits, t = [], 0
    for size in chunks:
        out, cache = model(ids[:, t:t + size], cache=cache, return_cache=True)
        logits.append(out)
        t += size
    return torch.cat(logits, dim=1), cache


def assert_same_cache(a: MambaCache, b: MambaCache, **tol):
    assert a.seqlen == b.seqlen
    for x, y in zip(a.conv_states + a.ssm_states, b.conv_states + b.ssm_states):
        assert x.shape == y.shape and x.dtype == y.dtype
        torch.testing.assert_close(x, y, **tol)


def greedy(model, cache, first, n):
    """n tokens decoded greedily with ``step`` from ``cache`` (copied), given the first token's logits."""
    cache = MambaCache([c.clone() for c in cache.conv_states], [h.clone() for h in cache.ssm_states], cache.seqlen)
    tokens, logits = [], first
    for _ in range(n):
        token = logits.argmax(-1)
        tokens.append(token)
        logits, cache = model.step(token, cache)
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunks_equal_one_forward_and_token_steps(family, fast, dtype):
    model, cfg = make(family, fast, dtype)
    ids = ids_for(cfg, batch=2, length=sum(CHUNKS), seed=3)
    with torch.no_grad():
        whole, whole_cache = model(ids, return_cache=True)
        chunked, cache = read_in_chunks(model, ids, CHUNKS)
    torch.testing.assert_close(chunked, whole, **TOL[dtype])
    assert_same_cache(cache, whole_cache, **TOL[dtype])
    assert cache.seqlen == ids.shape[1]
    stepped, step_cache = [], model.init_cache(2)
    for t in range(ids.shape[1]):
        out, step_cache = model.step(ids[:, t], step_cache)
        stepped.append(out)
    torch.testing.assert_close(chunked, torch.stack(stepped, dim=1), **TOL[dtype])
    assert_same_cache(cache, step_cache, **TOL[dtype])
    # the continued cache generates what generate() does from the whole prompt
    expected = model.generate(ids, 8)[:, ids.shape[1]:]
    assert torch.equal(greedy(model, cache, chunked[:, -1], 8), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_cache_from_forward_or_step_continues_and_is_not_modified(family):
    model, cfg = make(family, fast=True)
    ids = ids_for(cfg, batch=1, length=12, seed=4)
    with torch.no_grad():
        whole = model(ids)
        head, cache = model(ids[:, :5], return_cache=True)        # a prompt read in one forward
        _, cache = model.step(ids[:, 5], cache)                   # then one token stepped
        kept = [t.clone() for t in cache.conv_states + cache.ssm_states]
        tail, after = model(ids[:, 6:], cache=cache, return_cache=True)
        without_cache = model(ids[:, 6:], cache=cache)            # return_cache=False: logits only
    torch.testing.assert_close(tail, whole[:, 6:], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(without_cache, tail, atol=0, rtol=0)
    assert after.seqlen == 12
    for t, k in zip(cache.conv_states + cache.ssm_states, kept):
        assert torch.equal(t, k)                                  # the given cache is left as it was


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "teaching"])
def test_chunked_logits_match_transformers_one_pass(fast_path, tmp_path):
    """The reference nobody here wrote: transformers' forward over the whole sequence. (transformers
    5's own multi-token continuation from ``cache_params`` is not exact -- measured here, float64,
    up to 3e-4 off its one-pass logits -- so it is not the reference for the chunks.)"""
    cfg = FAMILIES["mamba"][2]
    hf = reference(transformers.MambaForCausalLM, transformers.MambaConfig, cfg).double()
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path, dtype=torch.float64, fast=fast_path).eval()
    ids = ids_for(cfg, batch=2, length=sum(CHUNKS), seed=5)
    with torch.no_grad():
        expected = hf(ids).logits
        got, _ = read_in_chunks(ours, ids, CHUNKS)
    torch.testing.assert_close(got.float(), expected, atol=1e-6, rtol=1e-6)   # transformers answers float32


def test_left_padded_first_chunk_then_more_chunks():
    """A mask is allowed with a fresh cache (left padding in the first chunk) and then the rows
    continue without one: each row as it would alone."""
    model, cfg = make("mamba", fast=True)
    short, long = [5, 9, 2], [7, 1, 4, 4, 8]
    ids = torch.tensor([[0, 0] + short, long])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    more = ids_for(cfg, batch=2, length=6, seed=6)
    with torch.no_grad():
        _, cache = model(ids, attention_mask=mask, cache=model.init_cache(2), return_cache=True)
        tail, _ = model(more, cache=cache, return_cache=True)
        for row, prompt in enumerate((short, long)):
            alone = model(torch.cat([torch.tensor([prompt]), more[row:row + 1]], dim=1))
            torch.testing.assert_close(tail[row], alone[0, len(prompt):], atol=1e-10, rtol=1e-10)


def test_bad_caches_are_named():
    model, cfg = make("mamba", fast=True)
    ids = ids_for(cfg, batch=2, length=4)
    with torch.no_grad():
        _, cache = model(ids, return_cache=True)
        with pytest.raises(TypeError, match="cache must be a MambaCache"):
            model(ids, cache=(cache.conv_states, cache.ssm_states))
        with pytest.raises(ValueError, match="batch 1 but the cache was made for batch 2"):
            model(ids[:1], cache=cache)
        short = MambaCache(cache.conv_states[:1], cache.ssm_states[:1], cache.seqlen)
        with pytest.raises(ValueError, match="cache holds 1 layers but the model has 2"):
            model(ids, cache=short)
        with pytest.raises(ValueError, match="attention_mask cannot be used with a cache that has already read 4"):
            model(ids, attention_mask=torch.ones_like(ids), cache=cache)


def test_lti_mixer_refuses_a_cache_by_name():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(**FAMILIES["mamba"][2]), mixer="lti").eval()   # Table 1's S4 rows
    ids = ids_for(FAMILIES["mamba"][2], batch=1, length=4)
    with torch.no_grad(), pytest.raises(NotImplementedError, match="LTIMambaMixer cannot continue from a cache"):
        model(ids, cache=model.init_cache(1))


# ---- the scan's initial state ------------------------------------------------------------------

def scan_inputs(b=2, d=3, l=29, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)   # noqa: E731
    return dict(u=r(b, d, l), delta=r(b, d, l), A=-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.5,
                B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l))


def cut(inputs, t0, t1):
    return {k: (v[..., t0:t1] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}


@pytest.mark.parametrize("method", ["fused", "reference", "sequential", "chunked"])
def test_scan_from_initial_state_continues_the_sequence(method):
    x = scan_inputs()
    kw = dict(delta_softplus=True, return_last_state=True, method=method)
    y, h = selective_scan(**x, **kw)
    y1, h1 = selective_scan(**cut(x, 0, 11), **kw)
    y2, h2 = selective_scan(**cut(x, 11, 29), **kw, initial_state=h1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h2, h, atol=1e-12, rtol=1e-12)


def test_fused_scan_gradient_reaches_the_initial_state():
    x = scan_inputs(l=21)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    wy, wh = torch.randn(2, 3, 21, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    grads = {}
    for method in ("fused", "reference"):
        u, start = x["u"].clone().requires_grad_(), h0.clone().requires_grad_()
        y, h = selective_scan(**{**x, "u": u}, delta_softplus=True, return_last_state=True, method=method,
                              initial_state=start, **({"chunk_size": 8} if method == "fused" else {}))
        grads[method] = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), [u, start])
    for got, expected in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_scan_initial_state_errors_are_named():
    x = scan_inputs()
    with pytest.raises(ValueError, match=r"initial_state must have shape \(b, d, n\) = \(2, 3, 4\)"):
        selective_scan(**x, initial_state=torch.zeros(2, 3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="initial_state must be a torch.Tensor"):
        selective_scan(**x, initial_state=[0.0])
    with pytest.raises(NotImplementedError, match="method='triton' cannot start from an initial_state"):
        selective_scan(**x, method="triton", initial_state=torch.zeros(2, 3, 4, dtype=torch.float64))
