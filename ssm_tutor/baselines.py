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
  for four variants, so the comparison is like for like. Each block is Mamba's block
  (RMSNorm → in_proj → causal depthwise conv → SiLU → SSM → [× SiLU(z)] → out_proj, residual)
  and two switches change only what the table varies:

  - ``mixer="selective"`` (S6): Δ, B, C are computed from the input at every step;
    ``mixer="lti"`` (S4D-Real): Δ (one per channel), B and C are learned constants, so the
    whole SSM is one fixed convolution kernel (computed with an FFT).
  - ``gated=True`` (the Mamba block): the SSM's output is multiplied by SiLU(z) of a second
    branch; ``gated=False`` (the "no gate" architecture of Table 1): that branch is dropped.

  ``SSMLM(mixer="selective", gated=True)`` is architecturally the Mamba block; both mixers use
  the same initialisation of A (S4D-Real: A = -(1, 2, …, N)) and Δ ∈ [0.001, 0.1].

Both models save to a directory as ``config.json`` + ``model.safetensors`` (see
:func:`save_pretrained` and :func:`load_pretrained`): the config holds ``model_type``
(``"ssm_tutor_transformer"`` or ``"ssm_tutor_ssm"``) and the constructor's arguments; the
safetensors file holds the ``state_dict`` without ``lm_head.weight`` (tied to the embedding).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.scan import selective_scan
from ssm_tutor.tasks import _check_positive   # "name must be a positive integer, got …"

__all__ = ["TransformerLM", "TransformerBlock", "KVCache", "SSMLM", "SSMCache", "cache_nbytes", "check_input_ids",
           "save_pretrained", "load_pretrained", "lti_kernel"]

POS_ENCODINGS = ("rope", "learned", "sinusoidal")
MIXERS = ("selective", "lti")


# ----------------------------------------------------------------------------------------------
# input checks shared by every model
# ----------------------------------------------------------------------------------------------
def check_input_ids(input_ids, vocab_size: int, name: str = "input_ids", dim: int = 2) -> None:
    """Raise a clear error unless ``input_ids`` is an integer tensor of ``dim`` dims with ids in [0, vocab)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {input_ids.dtype}")
    shape = "(batch, length)" if dim == 2 else "(batch,)"
    if input_ids.dim() != dim:
        raise ValueError(f"{name} must have shape {shape}, got shape {tuple(input_ids.shape)}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")


def check_step_arguments(token_ids, vocab_size: int, cache, cache_type: type, cache_name: str) -> None:
    """The checks every ``step(token_ids, cache)`` makes: ids (b,) in range, and a cache of the
    right type (``cache_name``, e.g. "a KVCache") made for the same batch."""
    check_input_ids(token_ids, vocab_size, "token_ids", dim=1)
    if not isinstance(cache, cache_type):
        raise TypeError(f"cache must be {cache_name} from init_cache, got {type(cache).__name__}")
    if cache.batch != token_ids.shape[0]:
        raise ValueError(f"token_ids has batch {token_ids.shape[0]} but the cache was made for batch {cache.batch}")


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
        _check_positive(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=max_len)
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if pos_encoding == "rope" and (d_model // n_heads) % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_model / n_heads = {d_model // n_heads}")
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                           max_len=max_len, pos_encoding=pos_encoding)
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
        check_input_ids(input_ids, self.vocab_size)
        x = self._embed(input_ids, 0)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))                                     # (b, l, vocab)

    def init_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences, room for ``capacity`` tokens (default max_len)."""
        _check_positive(batch=batch)
        cap = capacity or self.max_len
        p = self.embedding.weight
        a = self.layers[0].attn
        shape = (batch, a.n_heads, cap, a.head_dim)
        return KVCache([p.new_zeros(shape) for _ in self.layers], [p.new_zeros(shape) for _ in self.layers])

    def step(self, token_ids: torch.Tensor, cache: KVCache):
        """One token per sequence: token_ids (b,) -> (logits (b, vocab), cache updated in place)."""
        check_step_arguments(token_ids, self.vocab_size, cache, KVCache, "a KVCache")
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
# the generic SSM language model (Table 1's variants)
# ----------------------------------------------------------------------------------------------
def lti_kernel(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, delta: torch.Tensor, length: int) -> torch.Tensor:
    """The convolution kernel of the time-invariant SSM with Ā = exp(ΔA), B̄ = ΔB (as in S6):

        K[d, k] = Σ_n C[d, n] · Δ[d] B[d, n] · exp(Δ[d] A[d, n] k),   k = 0 … length-1

    A, B, C: (d, n); delta: (d,) > 0. Returns (d, length). y = K * u (causal) is the SSM's output.
    """
    k = torch.arange(length, device=A.device, dtype=A.dtype)                             # (l,)
    decay = torch.exp((delta[:, None] * A)[:, :, None] * k)                              # (d, n, l)
    return torch.einsum("dn,dnl->dl", C * B * delta[:, None], decay)                     # (d, l)


def causal_fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """y[b, d, t] = Σ_{k ≤ t} K[d, k] u[b, d, t - k], via FFT of size 2l. u: (b, d, l); K: (d, l)."""
    l = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * l) * torch.fft.rfft(K, n=2 * l), n=2 * l)
    return y[..., :l]


@dataclass
class SSMCache:
    """Recurrent state of every layer: conv[i] (b, d_inner, d_conv) last inputs, ssm[i] (b, d_inner, N)."""
    conv: list
    ssm: list
    length: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.ssm[0].shape[0]


class _SSMBlock(nn.Module):
    def __init__(self, d_model, d_state, expand, d_conv, mixer, gated):
        super().__init__()
        e = expand * d_model
        self.d_inner, self.d_state, self.mixer, self.gated = e, d_state, mixer, gated
        self.dt_rank = math.ceil(d_model / 16)
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.in_proj = nn.Linear(d_model, (2 if gated else 1) * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        # S4D-Real initialisation shared by both mixers: A = -(1, …, N) per channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1))  # (e, N)
        self.D = nn.Parameter(torch.ones(e))
        dt = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))  # Δ ∈ [0.001, 0.1]
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        if mixer == "selective":       # Δ, B, C from the input (S6)
            self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(self.dt_rank, e)
            with torch.no_grad():
                self.dt_proj.bias.copy_(inv_softplus_dt)
        else:                          # Δ, B, C learned constants (S4D)
            self.dt_bias = nn.Parameter(inv_softplus_dt)                     # Δ = softplus(dt_bias): (e,)
            self.B = nn.Parameter(torch.ones(e, d_state))
            self.C = nn.Parameter(torch.randn(e, d_state) / math.sqrt(d_state))
        self.out_proj = nn.Linear(e, d_model, bias=False)

    def _ssm_params(self, x):
        """x: (b, l, e) -> Δ (b, l, e) after softplus, B, C (b, l, N); constants broadcast for LTI."""
        if self.mixer == "selective":
            dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            return F.softplus(self.dt_proj(dt)), B, C
        return F.softplus(self.dt_bias), self.B, self.C

    def forward(self, x):                                           # x: (b, l, d_model)
        b, l, _ = x.shape
        xz = self.in_proj(self.norm(x))                             # (b, l, e or 2e)
        u, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)    # (b, l, e) each
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :l])         # (b, e, l)
        A = -torch.exp(self.A_log)                                  # (e, N)
        if self.mixer == "selective":
            delta, B, C = self._ssm_params(u.transpose(1, 2))       # (b, l, e), (b, l, N), (b, l, N)
            y = selective_scan(u, delta.transpose(1, 2).contiguous(), A, B.transpose(1, 2).contiguous(),
                                  C.transpose(1, 2).contiguous(), self.D)                 # (b, e, l)
        else:
            delta, B, C = self._ssm_params(None)                     # (e,), (e, N), (e, N)
            y = causal_fft_conv(u, lti_kernel(A, B, C, delta, l)) + self.D[:, None] * u  # (b, e, l)
        y = y.transpose(1, 2)                                       # (b, l, e)
        if self.gated:
            y = y * F.silu(z)
        return x + self.out_proj(y)

    def step(self, x, conv_state, ssm_state):                      # x: (b, d_model)
        xz = self.in_proj(self.norm(x))
        u, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)    # (b, e)
        conv_state = torch.cat([conv_state[:, :, 1:], u[:, :, None]], dim=-1)          # (b, e, d_conv)
        u = F.silu((conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (b, e)
        A = -torch.exp(self.A_log)
        delta, B, C = self._ssm_params(u[:, None] if self.mixer == "selective" else None)
        if self.mixer == "selective":
            delta, B, C = delta[:, 0], B[:, 0, None, :], C[:, 0, None, :]               # (b, e), (b, 1, N)
        dA = torch.exp(delta[..., None] * A)                                            # Ā: (b, e, N)
        ssm_state = dA * ssm_state + delta[..., None] * B * u[..., None]                # h_t = Ā h + B̄ u
        y = (ssm_state * C).sum(-1) + self.D * u                                        # y_t = C h_t + D u
        if self.gated:
            y = y * F.silu(z)
        return x + self.out_proj(y), conv_state, ssm_state


class SSMLM(nn.Module):
    """A stack of SSM blocks (see the module docstring) with a tied LM head.

    Args:
        vocab_size, d_model, n_layers: sizes; d_state = N, expand = d_inner / d_model, d_conv.
        mixer: "selective" (S6: Δ, B, C depend on the input) or "lti" (S4D-Real: they do not).
        gated: multiply the SSM output by SiLU(z) (the Mamba block) or not ("no gate").
    """

    model_type = "ssm_tutor_ssm"

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2, d_state: int = 8,
                 expand: int = 2, d_conv: int = 4, mixer: str = "selective", gated: bool = True):
        super().__init__()
        _check_positive(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_state=d_state,
                        expand=expand, d_conv=d_conv)
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        if not isinstance(gated, bool):
            raise TypeError(f"gated must be True or False, got {gated!r}")
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_state=d_state,
                           expand=expand, d_conv=d_conv, mixer=mixer, gated=gated)
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(_SSMBlock(d_model, d_state, expand, d_conv, mixer, gated)
                                    for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight                 # tied
        nn.init.normal_(self.embedding.weight, std=0.02)            # small logits at the start: loss ≈ log V

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.vocab_size)
        x = self.embedding(input_ids)                               # (b, l, d_model)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm_f(x))                         # (b, l, vocab)

    def init_cache(self, batch: int) -> SSMCache:
        """Zero state for ``batch`` sequences: its size does not depend on the length."""
        _check_positive(batch=batch)
        p = self.embedding.weight
        blk = self.layers[0]
        return SSMCache([p.new_zeros(batch, blk.d_inner, blk.conv1d.kernel_size[0]) for _ in self.layers],
                        [p.new_zeros(batch, blk.d_inner, blk.d_state) for _ in self.layers])

    def step(self, token_ids: torch.Tensor, cache: SSMCache):
        """token_ids (b,) -> (logits (b, vocab), cache updated in place), equal to forward's last position."""
        check_step_arguments(token_ids, self.vocab_size, cache, SSMCache, "an SSMCache")
        x = self.embedding(token_ids)                               # (b, d_model)
        for i, layer in enumerate(self.layers):
            x, cache.conv[i], cache.ssm[i] = layer.step(x, cache.conv[i], cache.ssm[i])
        cache.length += 1
        return self.lm_head(self.norm_f(x)), cache


def cache_nbytes(cache) -> int:
    """Bytes of recurrent state a model keeps after ``cache.length`` tokens.

    KVCache: the stored keys and values (2 · layers · b · heads · length · head_dim numbers), which
    grows with the length. SSMCache and any object with tensors: all its tensors, a constant.
    """
    if isinstance(cache, KVCache):
        return sum(t[:, :, : cache.length].nbytes for t in cache.k + cache.v)
    if isinstance(cache, SSMCache):
        return sum(t.nbytes for t in cache.conv + cache.ssm)
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
    (the state_dict without the tied ``lm_head.weight``)."""
    from safetensors.torch import save_file

    if type(model).model_type not in _CLASSES:
        raise TypeError(f"model must be a TransformerLM or SSMLM, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": model.model_type, **model.config}, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(d / "model.safetensors"))


def load_pretrained(directory) -> nn.Module:
    """Load a model written by :func:`save_pretrained`; a missing or unexpected key raises KeyError."""
    from safetensors.torch import load_file

    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"directory {str(d)!r} has no {name}")
    config = json.loads((d / "config.json").read_text())
    model_type = config.pop("model_type", None)
    if model_type not in _CLASSES:
        raise ValueError(f"{d / 'config.json'}: model_type must be one of {sorted(_CLASSES)}, got {model_type!r}")
    model = _CLASSES[model_type](**config)
    state = load_file(str(d / "model.safetensors"))
    expected = {k for k in model.state_dict() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise KeyError(f"{d / 'model.safetensors'}: missing keys {missing}, unexpected keys {unexpected}")
    for k, v in model.state_dict().items():
        if k in state and state[k].shape != v.shape:
            raise ValueError(f"{d / 'model.safetensors'}: {k} has shape {tuple(state[k].shape)}, "
                             f"the config expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=False)
    return model.eval()
