"""Stage 8: the baselines that Mamba is compared against on the paper's synthetic tasks.

Notebook: ``notebooks/08_training.ipynb``. Paper: Gu & Dao (2023), Section 4.1, Table 1
(selective copying) and Table 2 / Figure in Section 4.1.2 (induction heads).

Two language models with the interface of :class:`ssm_tutor.mamba.MambaLM`
(``forward(input_ids (b, l)) -> logits (b, l, V)`` and a recurrent ``step``):

* :class:`TransformerLM`: a small causal Transformer (pre-norm blocks of multi-head attention
  and an MLP). The paper's induction-heads baselines are attention models with absolute,
  rotary (RoPE) and xPos position encodings; all of them fail past about twice their
  training length. We use **RoPE** by default: a rotation of queries and keys by an angle
  proportional to the position, so attention scores depend only on the *relative* offset
  between two tokens. Unlike learned absolute embeddings (which simply do not exist past
  ``max_len``: the model cannot even be run there) a RoPE model can be run at any length,
  so we can watch it degrade; but the rotation frequencies at offsets never seen in
  training give attention patterns the model never learned to read, and it collapses.
  ``pos_encoding="learned"`` and ``"sinusoidal"`` are there to try.
  Its recurrent mode is a KV cache: every past key and value is kept, so the cache grows
  with the length (:func:`cache_nbytes`), while an SSM keeps a fixed-size state.

* :class:`SSMLM`: the generic SSM language model used for the paper's Table 1, one code path
  for four variants, so the comparison is like for like. It *is* the Mamba model of stage 7
  (:class:`ssm_tutor.mamba.MambaLM`: RMSNorm → in_proj → causal depthwise conv → SiLU → SSM →
  [× SiLU(z)] → out_proj, residual), and two switches change only what the table varies:

  - ``mixer="selective"`` (S6, :class:`ssm_tutor.mamba.MambaMixer`): Δ, B, C are computed from
    the input at every step; ``mixer="lti"`` (S4D-Real, :class:`ssm_tutor.mamba.LTIMambaMixer`,
    stage 3's LTI layer): Δ (one per channel), B and C are learned constants, so the whole SSM is
    one fixed convolution kernel (computed with an FFT).
  - ``gated=True`` (the Mamba block): the SSM's output is multiplied by SiLU(z) of a second
    branch; ``gated=False`` (the "no gate" architecture of Table 1): that branch is dropped.

  ``SSMLM(mixer="selective", gated=True)`` is the Mamba model; both mixers use the same
  initialisation of A (S4D-Real: A = -(1, 2, …, N)) and Δ ∈ [0.001, 0.1]. Its cache is the
  Mamba family's :class:`ssm_tutor.mamba.MambaCache`.

Both models save to a directory as ``config.json`` + ``model.safetensors`` (see
:func:`save_pretrained` and :func:`load_pretrained`): the config holds ``model_type``
(``"ssm_tutor_transformer"`` or ``"ssm_tutor_ssm"``) and the constructor's arguments; the
safetensors file holds the ``state_dict`` without ``lm_head.weight`` (tied to the embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.checkpoint import CheckpointError, load_state, read_config, read_tensors, write_checkpoint
from ssm_tutor.mamba import MambaCache, MambaConfig, MambaLM
from ssm_tutor.validate import check_cache, check_choice, check_positive, check_token_ids

__all__ = ["TransformerLM", "TransformerBlock", "KVCache", "SSMLM", "SSMCache", "cache_nbytes", "legacy_ssmlm_key",
           "save_pretrained", "load_pretrained", "MIXERS", "POS_ENCODINGS"]

POS_ENCODINGS = ("rope", "learned", "sinusoidal")
MIXERS = ("selective", "lti")


# ----------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------
def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position encoding: rotate feature pairs (x_i, x_{i+hd/2}) by the angle pos · base^(-2i/hd).

    x: (b, h, l, hd); positions: (l,) int. Then q_s · k_t depends only on s - t (and q, k).
    """
    hd = x.shape[-1]
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = base ** (-torch.arange(0, hd // 2, dtype=wide, device=x.device) * 2 / hd)          # (hd/2,)
    angle = positions.to(wide)[:, None] * freqs[None, :]                                        # (l, hd/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sinusoidal_embedding(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The original Transformer's fixed encoding: sin/cos of pos · 10000^(-2i/d). (l,) -> (l, d_model)."""
    freqs = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)      # (d/2,)
    angle = positions.to(torch.float32)[:, None] * freqs[None, :]                          # (l, d/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[:, :d_model]          # (l, d)


@dataclass
class KVCache:
    """Past keys and values of every layer: k[i], v[i] of shape (b, heads, capacity, head_dim).

    ``length`` tokens are stored; the capacity doubles when full (RoPE / sinusoidal models).
    """
    k: list
    v: list
    length: int = 0

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def reserve(self, length: int) -> None:
        """Make room for ``length`` tokens, doubling the capacity until it fits (the stored keys and
        values are kept)."""
        while self.k and self.k[0].shape[2] < length:
            self.k = [torch.cat([k, torch.zeros_like(k)], dim=2) for k in self.k]
            self.v = [torch.cat([v, torch.zeros_like(v)], dim=2) for v in self.v]


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, use_rope: bool):
        super().__init__()
        self.n_heads, self.head_dim, self.use_rope = n_heads, d_model // n_heads, use_rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _qkv(self, x, positions):
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (b, h, l, hd)
        if self.use_rope:
            q, k = rope(q, positions), rope(k, positions)
        return q, k, v

    def forward(self, x, return_kv: bool = False):         # x: (b, l, d_model)
        """Causal self-attention over the whole sequence; with ``return_kv`` also the keys and
        values (b, heads, l, head_dim) each, to fill a KV cache for :meth:`step`."""
        b, l, d = x.shape
        q, k, v = self._qkv(x, torch.arange(l, device=x.device))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # softmax(q kᵀ/√hd + causal mask) v
        y = self.out(y.transpose(1, 2).reshape(b, l, d))
        return (y, (k.detach(), v.detach())) if return_kv else y

    def step(self, x, layer: int, cache: KVCache):           # x: (b, 1, d_model)
        b, _, d = x.shape
        t = cache.length
        q, k, v = self._qkv(x, torch.tensor([t], device=x.device))     # (b, h, 1, hd)
        cache.k[layer][:, :, t: t + 1] = k
        cache.v[layer][:, :, t: t + 1] = v
        y = F.scaled_dot_product_attention(q, cache.k[layer][:, :, : t + 1], cache.v[layer][:, :, : t + 1])
        return self.out(y.transpose(1, 2).reshape(b, 1, d))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: x <- x + Attention(LN(x)); x <- x + MLP(LN(x)).

    ``forward(x (b, l, d_model), return_kv=False)``; ``step(x (b, 1, d_model), layer, cache)`` reads
    and extends ``cache.k[layer]``, ``cache.v[layer]`` (a :class:`KVCache`) at position
    ``cache.length``. Used by :class:`TransformerLM` and by the attention layers of
    :class:`ssm_tutor.hybrid.HybridLM`."""

    def __init__(self, d_model: int, n_heads: int, use_rope: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads, use_rope)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x, return_kv: bool = False):
        if return_kv:
            y, kv = self.attn(self.ln1(x), return_kv=True)
            x = x + y
            return x + self.mlp(self.ln2(x)), kv
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x, layer, cache):
        x = x + self.attn.step(self.ln1(x), layer, cache)
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """A small causal Transformer language model (pre-norm, tied embeddings).

    Args:
        vocab_size, d_model, n_layers, n_heads: the usual sizes (d_model divisible by n_heads,
            head_dim = d_model / n_heads even for RoPE).
        max_len: the longest sequence for ``pos_encoding="learned"`` (there is no embedding past
            it); for "rope" and "sinusoidal" only the KV cache's initial capacity.
        pos_encoding: "rope" (default), "learned" absolute embeddings, or fixed "sinusoidal".

    ``forward(input_ids (b, l)) -> logits (b, l, vocab)``; ``init_cache(b)`` and
    ``step(token_ids (b,), cache) -> (logits (b, vocab), cache)`` run it one token at a time and
    give the same logits as the parallel forward.
    """

    model_type = "ssm_tutor_transformer"

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 256, pos_encoding: str = "rope"):
        super().__init__()
        check_positive(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=max_len)
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if pos_encoding == "rope" and (d_model // n_heads) % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_model / n_heads = {d_model // n_heads}")
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                           max_len=max_len, pos_encoding=pos_encoding)
        self.arguments = self.config                            # what save_pretrained records
        self.vocab_size, self.max_len, self.pos_encoding = vocab_size, max_len, pos_encoding
        self.embedding = nn.Embedding(vocab_size, d_model)
        if pos_encoding == "learned":
            self.pos_embedding = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(TransformerBlock(d_model, n_heads, pos_encoding == "rope") for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight             # tied
        self.apply(_init_weights)

    def _embed(self, input_ids, start: int):
        l = input_ids.shape[1]
        if self.pos_encoding == "learned" and start + l > self.max_len:
            raise ValueError(f"input_ids: a model with learned position embeddings takes at most max_len = "
                             f"{self.max_len} positions, got position {start + l - 1}")
        x = self.embedding(input_ids)                                          # (b, l, d_model)
        positions = torch.arange(start, start + l, device=input_ids.device)
        if self.pos_encoding == "learned":
            x = x + self.pos_embedding(positions)
        elif self.pos_encoding == "sinusoidal":
            x = x + sinusoidal_embedding(positions, x.shape[-1]).to(x)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(input_ids, self.vocab_size)
        x = self._embed(input_ids, 0)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))                                     # (b, l, vocab)

    def init_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences, room for ``capacity`` tokens (default max_len)."""
        check_positive(batch=batch)
        cap = capacity or self.max_len
        p = self.embedding.weight
        a = self.layers[0].attn
        shape = (batch, a.n_heads, cap, a.head_dim)
        return KVCache([p.new_zeros(shape) for _ in self.layers], [p.new_zeros(shape) for _ in self.layers])

    def step(self, token_ids: torch.Tensor, cache: KVCache):
        """One token per sequence: token_ids (b,) -> (logits (b, vocab), cache updated in place)."""
        check_token_ids(token_ids, self.vocab_size, name="token_ids", dim=1)
        check_cache(cache, KVCache, token_ids.shape[0])
        cache.reserve(cache.length + 1)                                        # full: double the room
        x = self._embed(token_ids[:, None], cache.length)                      # (b, 1, d_model)
        for i, layer in enumerate(self.layers):
            x = layer.step(x, i, cache)
        cache.length += 1
        return self.lm_head(self.norm_f(x))[:, 0], cache


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# the generic SSM language model (Table 1's variants): the Mamba model with two switches
# ----------------------------------------------------------------------------------------------
SSMCache = MambaCache   # the Mamba family's one cache type (the name of the old, separate one)


class SSMLM(MambaLM):
    """Table 1's models: :class:`ssm_tutor.mamba.MambaLM` built with the two switches the table
    varies (see the module docstring), with a tied LM head.

    Args:
        vocab_size, d_model, n_layers: sizes; d_state = N, expand = E / d_model, d_conv = K.
        mixer: "selective" (S6: Δ, B, C depend on the input) or "lti" (S4D-Real: they do not).
        gated: multiply the SSM output by SiLU(z) (the Mamba block) or not ("no gate").
        fast: the fast path of ``ssm_tutor.fast`` (selective mixer) or the teaching path.

    Forward, step, generate, init_cache and the cache type are MambaLM's. Saved by
    :func:`save_pretrained` (its own config: MambaLM's Hugging Face format has no switches).
    """

    model_type = "ssm_tutor_ssm"

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2, d_state: int = 8,
                 expand: int = 2, d_conv: int = 4, mixer: str = "selective", gated: bool = True, fast: bool = True):
        check_positive(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_state=d_state,
                       expand=expand, d_conv=d_conv)
        check_choice("mixer", mixer, MIXERS)
        if not isinstance(gated, bool):
            raise TypeError(f"gated must be True or False, got {gated!r}")
        config = MambaConfig(vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                             state_size=d_state, expand=expand, conv_kernel=d_conv)
        super().__init__(config, fast, mixer=mixer, gated=gated)
        self.arguments = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_state=d_state,
                              expand=expand, d_conv=d_conv, mixer=mixer, gated=gated)
        self.vocab_size = vocab_size

    def save_pretrained(self, directory) -> None:
        """See :func:`save_pretrained`."""
        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, **_) -> "SSMLM":
        """See :func:`load_pretrained`."""
        model = load_pretrained(directory)
        if not isinstance(model, cls):
            raise CheckpointError(f"{directory} holds a {type(model).__name__}, not an SSMLM")
        return model


def cache_nbytes(cache) -> int:
    """Bytes of recurrent state a model keeps after ``cache.length`` tokens.

    KVCache: the stored keys and values (2 · layers · b · heads · length · head_dim numbers), which
    grows with the length. MambaCache and any object with tensors: all its tensors, a constant.
    """
    if isinstance(cache, KVCache):
        return sum(t[:, :, : cache.length].nbytes for t in cache.k + cache.v)
    if isinstance(cache, MambaCache):
        return cache.nbytes()
    tensors = [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]
    for v in vars(cache).values():
        if isinstance(v, (list, tuple, dict)):
            tensors += [t for t in (v.values() if isinstance(v, dict) else v) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise TypeError(f"cache_nbytes: cannot find tensors in a {type(cache).__name__}")
    return sum(t.nbytes for t in tensors)


# ----------------------------------------------------------------------------------------------
# saving and loading (config.json + model.safetensors)
# ----------------------------------------------------------------------------------------------
_CLASSES = {TransformerLM.model_type: TransformerLM, SSMLM.model_type: SSMLM}


def save_pretrained(model: nn.Module, directory) -> None:
    """Write ``config.json`` ({"model_type": …, constructor arguments}) and ``model.safetensors``
    (the state_dict without the tied ``lm_head.weight``), atomically (ssm_tutor.checkpoint)."""
    if type(model).model_type not in _CLASSES:
        raise TypeError(f"model must be a TransformerLM or SSMLM, got {type(model).__name__}")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    write_checkpoint(directory, {"model_type": model.model_type, **model.arguments}, state)


def legacy_ssmlm_key(key: str) -> str:
    """The key, in today's SSMLM (the Mamba block), of a tensor saved by the SSMLM that had its
    own block class (checkpoints written before it was rebuilt on MambaLM, such as the shipped
    ``checkpoints/sc_*``). The tensors are the same; only their names move:

        embedding.weight        -> backbone.embeddings.weight
        norm_f.weight           -> backbone.norm_f.weight
        layers.{i}.norm.weight  -> backbone.layers.{i}.norm.weight
        layers.{i}.{name}       -> backbone.layers.{i}.mixer.{name}
                                   (in_proj, conv1d, out_proj, A_log, D; x_proj, dt_proj | dt_bias, B, C)
    """
    if key in ("embedding.weight", "norm_f.weight"):
        return {"embedding.weight": "backbone.embeddings.weight", "norm_f.weight": "backbone.norm_f.weight"}[key]
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
        where = "" if parts[2] == "norm" else "mixer."
        return f"backbone.layers.{parts[1]}.{where}{'.'.join(parts[2:])}"
    return key


def load_pretrained(directory) -> nn.Module:
    """Load a model written by :func:`save_pretrained` (SSMLM checkpoints of the old layout too,
    see :func:`legacy_ssmlm_key`); every missing, unexpected or mis-shaped weight is named
    (:class:`ssm_tutor.checkpoint.CheckpointError`)."""
    config = read_config(directory)
    model_type = config.pop("model_type", None)
    if model_type not in _CLASSES:
        raise CheckpointError(f"{Path(directory) / 'config.json'}: model_type must be one of {sorted(_CLASSES)}, "
                              f"got {model_type!r}")
    cls = _CLASSES[model_type]
    model = cls(**config)
    state = read_tensors(directory)
    if cls is SSMLM:
        state = {legacy_ssmlm_key(k): v for k, v in state.items()}
    tied = model._tied() if isinstance(model, MambaLM) else {"lm_head.weight": "embedding.weight"}
    load_state(model, state, what=cls.__name__, tied=tied)
    return model.eval()
