"""Stage 10: a Jamba-style hybrid of Mamba layers and a few attention layers.

Notebook: ``notebooks/10_recall_and_hybrids.ipynb``. Paper: Lieber et al. (2024), *Jamba: A Hybrid
Transformer-Mamba Language Model*, Section 2 (the Jamba block: one attention layer for every
``attn_layer_period`` layers, the rest Mamba) and Section 6 (why a few attention layers restore
in-context recall, and why no positional encoding is needed: the Mamba layers give the order).

A fixed-size state is a compression (notebook 10 measures it on MQAR): Mamba forgets exact
associations when there are more of them than its state holds. Attention keeps every key and
value, at a memory cost that grows with the context. The hybrid keeps a few attention layers:

    layer i is attention  when  (i - attn_layer_offset) % attn_layer_period == 0,  else Mamba

(``0 <= attn_layer_offset < attn_layer_period``, Jamba's own convention). The pieces are the
course's own: Mamba layers are :class:`ssm_tutor.mamba.MambaBlock`, attention layers the baseline
Transformer's :class:`ssm_tutor.baselines.TransformerBlock` (attention + MLP, without position
encoding), on a shared embedding, final RMSNorm and tied head.

Generation keeps a :class:`HybridCache`: a :class:`~ssm_tutor.baselines.KVCache` with the keys and
values of the attention layers (it grows with every token) and a
:class:`~ssm_tutor.mamba.MambaCache` with the conv window and SSM state of the Mamba layers
(fixed size). With A attention layers out of L, the cache grows A/L as fast as a Transformer's.

Checkpoints: ``config.json`` (``model_type`` "ssm_tutor_hybrid", the Mamba fields of
:class:`ssm_tutor.mamba.MambaConfig` plus the three attention fields) and ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ssm_tutor.baselines import KVCache, TransformerBlock
from ssm_tutor.checkpoint import load_state, read_config, read_tensors, resolve_directory, write_checkpoint
from ssm_tutor.mamba import MambaBlock, MambaCache, MambaConfig, RMSNorm
from ssm_tutor.validate import check_cache, check_positive, check_token_ids, non_negative_int

__all__ = ["HybridConfig", "HybridLM", "HybridCache", "layer_types"]


def layer_types(num_layers: int, period: int, offset: int) -> list[str]:
    """The layer pattern: "attention" where (i - offset) % period == 0, else "mamba", i = 0 … L-1."""
    return ["attention" if (i - offset) % period == 0 else "mamba" for i in range(num_layers)]


@dataclass
class HybridConfig(MambaConfig):
    """:class:`MambaConfig` (for the Mamba layers and the sizes) plus Jamba's layer-pattern fields.

    attn_layer_period:   one attention layer every this many layers (Jamba: 8);
    attn_layer_offset:   the index of the first attention layer, 0 <= offset < period (Jamba: 4);
    num_attention_heads: heads of each attention layer (must divide hidden_size).
    A period larger than the number of layers with an offset past the last layer gives no
    attention at all (a plain Mamba); period 1 makes every layer attention (a Transformer).
    """

    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    num_attention_heads: int = 4

    def __post_init__(self):
        super().__post_init__()
        for name in ("attn_layer_period", "num_attention_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HybridConfig.{name} must be a positive integer, got {value!r}")
        offset = self.attn_layer_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < self.attn_layer_period:
            raise ValueError(f"HybridConfig.attn_layer_offset must be an integer in [0, attn_layer_period) = "
                             f"[0, {self.attn_layer_period}), got {offset!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"HybridConfig.num_attention_heads ({self.num_attention_heads}) must divide "
                             f"hidden_size ({self.hidden_size})")

    @property
    def layers_block_type(self) -> list[str]:
        """Jamba's name for the pattern: "attention" or "mamba" per layer."""
        return layer_types(self.num_hidden_layers, self.attn_layer_period, self.attn_layer_offset)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(model_type=HybridLM.model_type, architectures=["HybridLM"],
                   layers_block_type=self.layers_block_type)
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "HybridConfig":
        config = dict(config)
        model_type = config.pop("model_type", HybridLM.model_type)
        if model_type != HybridLM.model_type:
            raise ValueError(f"config.json has model_type {model_type!r}; HybridConfig reads "
                             f"{HybridLM.model_type!r}")
        written = config.pop("layers_block_type", None)
        cfg = super().from_dict(config)                 # MambaConfig's reading, into this class's fields
        if written is not None and written != cfg.layers_block_type:
            raise ValueError(f"config.json lists layers {written} but its period and offset give "
                             f"{cfg.layers_block_type}")
        return cfg


@dataclass
class HybridCache:
    """The inference state of a :class:`HybridLM`: ``kv`` holds the keys and values of the attention
    layers (k[j], v[j] for the j-th attention layer: (b, heads, capacity, head_dim), growing with
    the context), ``ssm`` the conv windows and SSM states of the Mamba layers (fixed size)."""

    kv: KVCache
    ssm: MambaCache

    @property
    def batch(self) -> int:
        return (self.kv.k or self.ssm.ssm_states)[0].shape[0]

    @property
    def length(self) -> int:
        return self.kv.length

    def nbytes(self) -> int:
        """Bytes of the stored state: the keys and values of the ``length`` tokens read, plus the
        Mamba layers' fixed state."""
        kv = sum(t[:, :, : self.kv.length].nbytes for t in self.kv.k + self.kv.v)
        return kv + self.ssm.nbytes()


class HybridLM(nn.Module):
    """A language model whose layers follow :class:`HybridConfig`'s pattern of Mamba and attention.

    ``forward(input_ids (b, l)) -> logits (b, l, V)`` (and the cache with ``return_cache``);
    ``init_cache(b)``, ``step(token_ids (b,), cache)`` and greedy ``generate(input_ids, n)`` run it
    one token at a time and give what the parallel forward gives.
    """

    model_type = "ssm_tutor_hybrid"

    def __init__(self, config: HybridConfig):
        super().__init__()
        if not isinstance(config, HybridConfig):
            raise TypeError(f"config must be a HybridConfig, got {type(config).__name__}")
        self.config = config
        D = config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, D)
        self.layers = nn.ModuleList(
            TransformerBlock(D, config.num_attention_heads, use_rope=False) if kind == "attention"
            else MambaBlock(config)
            for kind in config.layers_block_type)
        self.norm_f = RMSNorm(D, config.layer_norm_epsilon)
        self.lm_head = nn.Linear(D, config.vocab_size, bias=False)
        self.lm_head.weight = self.embeddings.weight                  # tied
        nn.init.normal_(self.embeddings.weight, std=0.02)
        for layer in self.layers:                                     # the baseline Transformer's init
            if isinstance(layer, TransformerBlock):
                for m in layer.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.normal_(m.weight, std=0.02)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.config.layers_block_type) if kind == "attention"]

    # ---- parallel form ----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, return_cache: bool = False):
        """input_ids (b, l) -> logits (b, l, V); with ``return_cache`` also the :class:`HybridCache`
        after the last token (keys and values of every position, the Mamba states)."""
        check_token_ids(input_ids, self.config.vocab_size, device=self.embeddings.weight.device)
        x = self.embeddings(input_ids)                                # (b, l, D)
        keys, values, convs, ssms = [], [], [], []
        for layer in self.layers:
            if not return_cache:
                x = layer(x)
            elif isinstance(layer, TransformerBlock):
                x, (k, v) = layer(x, return_kv=True)                  # k, v: (b, heads, l, head_dim)
                keys.append(k); values.append(v)
            else:
                x, (conv, ssm) = layer(x, return_states=True)         # (b, E, K-1), (b, E, N)
                convs.append(conv.detach().contiguous()); ssms.append(ssm.detach().clone())
        logits = self.lm_head(self.norm_f(x))                         # (b, l, V)
        if not return_cache:
            return logits
        l = input_ids.shape[1]
        return logits, HybridCache(KVCache(keys, values, l), MambaCache(convs, ssms, l))

    # ---- recurrent form ---------------------------------------------------------------------
    def init_cache(self, batch: int, capacity: int = 64) -> HybridCache:
        """An empty cache for ``batch`` sequences, room for ``capacity`` tokens in the KV part (it
        doubles when full)."""
        check_positive(batch=batch, capacity=capacity)
        w = self.embeddings.weight
        heads = self.config.num_attention_heads
        shape = (batch, heads, capacity, self.config.hidden_size // heads)
        n_attn = len(self.attention_layers)
        E, N, K = self.config.intermediate_size, self.config.state_size, self.config.conv_kernel
        n_mamba = self.config.num_hidden_layers - n_attn
        state_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
        return HybridCache(KVCache([w.new_zeros(shape) for _ in range(n_attn)], [w.new_zeros(shape) for _ in range(n_attn)]),
                           MambaCache([w.new_zeros(batch, E, K - 1) for _ in range(n_mamba)],
                                      [torch.zeros(batch, E, N, dtype=state_dtype, device=w.device) for _ in range(n_mamba)]))

    def _step(self, token_ids: torch.Tensor, cache: HybridCache) -> torch.Tensor:
        cache.kv.reserve(cache.kv.length + 1)
        x = self.embeddings(token_ids)                                # (b, D)
        j = m = 0                                                     # attention / Mamba layer counters
        for layer in self.layers:
            if isinstance(layer, TransformerBlock):
                x = layer.step(x[:, None], j, cache.kv)[:, 0]         # reads and extends k[j], v[j]
                j += 1
            else:
                x = layer.step(x, cache.ssm.conv_states[m], cache.ssm.ssm_states[m])   # states in place
                m += 1
        cache.kv.length += 1
        cache.ssm.seqlen += 1
        return self.lm_head(self.norm_f(x))                           # (b, V)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, cache: HybridCache):
        """Read one token per sequence: token_ids (b,) -> (logits (b, V), cache updated in place)."""
        check_token_ids(token_ids, self.config.vocab_size, name="token_ids", dim=1,
                        device=self.embeddings.weight.device)
        check_cache(cache, HybridCache, token_ids.shape[0], made_by="init_cache or forward(return_cache=True)")
        return self._step(token_ids, cache), cache

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation: input_ids (b, l) -> (b, l + max_new_tokens). The prompt is read in
        one parallel pass (which fills the cache), then each new token costs one :meth:`step`."""
        non_negative_int("max_new_tokens", max_new_tokens)
        logits, cache = self(input_ids, return_cache=True)
        out = [input_ids]
        token = logits[:, -1].argmax(-1)                              # (b,)
        for i in range(max_new_tokens):
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                token = self._step(token, cache).argmax(-1)
        return torch.cat(out, dim=1)

    # ---- checkpoints (ssm_tutor.checkpoint) --------------------------------------------------
    _TIED = {"lm_head.weight": "embeddings.weight"}

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` (:meth:`HybridConfig.to_dict`) and ``model.safetensors`` (the state
        dict without the tied head) into ``path``, atomically."""
        cfg = self.config.to_dict()
        cfg["dtype"] = str(self.lm_head.weight.dtype).removeprefix("torch.")
        write_checkpoint(path, cfg, {k: v for k, v in self.state_dict().items() if k not in self._TIED})

    @classmethod
    def from_pretrained(cls, path) -> "HybridLM":
        """Load a checkpoint written by :meth:`save_pretrained`; every missing, unexpected or
        mis-shaped weight is named (:class:`ssm_tutor.checkpoint.CheckpointError`)."""
        directory = resolve_directory(path)
        model = cls(HybridConfig.from_dict(read_config(directory)))
        load_state(model, read_tensors(directory), what="HybridLM", tied=cls._TIED)
        return model.eval()
