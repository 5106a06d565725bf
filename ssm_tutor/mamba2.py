"""Stage 11: the Mamba-2 language model, built on the SSD scan of ``ssm_tutor.ssd``.

Notebook: ``notebooks/11_mamba2_ssd.ipynb``. Paper: Dao & Gu, *Transformers are SSMs* (2024),
Section 7 (the Mamba-2 block: parallel projections, grouped B/C as in multi-value
attention, an extra normalisation before the output projection), Section 5 (the scalar-A SSM).

What changes from Mamba-1 (``ssm_tutor.mamba``), block by block::

    Mamba2LM                              the same language model: embeddings, blocks, norm_f, head
      backbone.layers[i]: Mamba2Block     the same pre-norm residual block, x <- x + Mixer(RMSNorm(x))
        mixer.in_proj    D -> [z (E), x (E), B (g·N), C (g·N), dt (H)]   all at once, from the block's input
        mixer.conv1d     causal depthwise conv over x, B and C together (E + 2gN channels), then SiLU
        SSD scan         per head: h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ (h_t is P × N), y_t = h_t C_t + D x_t
                         Δ = softplus(dt + dt_bias); A = -exp(A_log) is ONE scalar per head
        mixer.norm       gated RMSNorm: RMSNorm(y ⊙ SiLU(z)) over g groups of E/g channels
        mixer.out_proj   E -> D

D = hidden_size, E = expand · D = H · P (H = num_heads, P = head_dim), N = state_size,
g = n_groups (B and C are shared by the H/g heads of a group), K = conv_kernel.

B, C and Δ now come from the block's input directly (not from the convolved x through x_proj),
and A's restriction to a scalar per head is what lets the scan run as matrix products.

Checkpoints use transformers' Mamba-2 layout (``config.json`` + ``model.safetensors``; keys
``backbone.embeddings.weight``, ``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.
{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D, norm.weight, out_proj.weight}``,
``backbone.norm_f.weight``, ``lm_head.weight`` unless tied), so a model saved here loads in
``transformers.Mamba2ForCausalLM`` and the other way round.

The language model itself is :class:`ssm_tutor.mamba.MambaLM`'s: ``forward``, the recurrent
``step`` and ``generate`` (same arguments) are inherited and only the blocks differ. The
recurrent cache holds, per layer, the conv window (b, E + 2gN, K-1) and the SSM state (b, H, P, N).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.mamba import (CheckpointError, MambaBackbone, MambaBlock, MambaCache, MambaLM, RMSNorm,
                             causal_conv_step)
from ssm_tutor.fast.ssd import causal_conv_time_major
from ssm_tutor.selective import dt_bias_init
from ssm_tutor.ssd import ssd_scan, ssd_step

__all__ = ["Mamba2Config", "GatedRMSNorm", "Mamba2Mixer", "Mamba2Block", "Mamba2Backbone", "Mamba2LM"]


# --------------------------------------------------------------------------------------------
# Configuration (transformers' Mamba2Config field names and defaults)
# --------------------------------------------------------------------------------------------

@dataclass
class Mamba2Config:
    """The hyper-parameters, with the names and defaults of ``transformers.Mamba2Config``.

    Fields this class does not use (``time_step_rank``, ``transformers_version``, …) are kept in
    ``extra`` and written back, so a config survives a round trip.
    """

    num_heads: int = 128
    head_dim: int = 64
    vocab_size: int = 32768
    hidden_size: int = 4096
    state_size: int = 128
    num_hidden_layers: int = 64
    layer_norm_epsilon: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 2
    expand: int = 2
    conv_kernel: int = 4
    n_groups: int = 8
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    initializer_range: float = 0.1
    residual_in_fp32: bool = True
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple = (0.0, math.inf)
    rescale_prenorm_residual: bool = False
    use_cache: bool = True
    chunk_size: int = 256
    tie_word_embeddings: bool = False
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for name in ("num_heads", "head_dim", "vocab_size", "hidden_size", "state_size", "num_hidden_layers",
                     "expand", "conv_kernel", "n_groups", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Mamba2Config.{name} must be a positive integer, got {value!r}")
        if self.expand * self.hidden_size != self.num_heads * self.head_dim:
            raise ValueError(f"Mamba2Config: expand * hidden_size = {self.expand} * {self.hidden_size} must equal "
                             f"num_heads * head_dim = {self.num_heads} * {self.head_dim}")
        if self.num_heads % self.n_groups:
            raise ValueError(f"Mamba2Config.n_groups = {self.n_groups} must divide num_heads = {self.num_heads}")
        if self.hidden_act != "silu":
            raise ValueError(f"Mamba2Config.hidden_act must be 'silu', got {self.hidden_act!r}")
        limit = tuple(_decode_float(v) for v in self.time_step_limit)
        if len(limit) != 2 or not 0 <= limit[0] <= limit[1]:
            raise ValueError(f"Mamba2Config.time_step_limit must be (low, high) with 0 <= low <= high, "
                             f"got {self.time_step_limit!r}")
        self.time_step_limit = limit
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(f"Mamba2Config needs 0 < time_step_min <= time_step_max, got "
                             f"{self.time_step_min!r} and {self.time_step_max!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"Mamba2Config.layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")

    @property
    def intermediate_size(self) -> int:
        """E = expand · D = num_heads · head_dim, the width of the SSM branch."""
        return self.expand * self.hidden_size

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: x, B and C together, E + 2 g N."""
        return self.intermediate_size + 2 * self.n_groups * self.state_size

    def to_dict(self) -> dict:
        """The ``config.json`` content, readable by ``transformers.Mamba2Config``. An infinite
        limit is written as transformers 5 writes it, {"__float__": "Infinity"} (plain JSON has no inf)."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        out["time_step_limit"] = [_encode_float(v) for v in self.time_step_limit]
        out.update(model_type="mamba2", architectures=["Mamba2ForCausalLM"])
        out.setdefault("dtype", "float32")
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "Mamba2Config":
        """Read transformers' ``config.json`` dict (``model_type`` "mamba2")."""
        config = dict(config)
        model_type = config.pop("model_type", "mamba2")
        if model_type != "mamba2":
            raise ValueError(f"config.json has model_type {model_type!r}; Mamba2Config reads 'mamba2' "
                             f"(use ssm_tutor.mamba.MambaConfig for 'mamba')")
        config.pop("architectures", None)
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in config.items() if k in names},
                   extra={k: v for k, v in config.items() if k not in names})


def _encode_float(v: float):
    return {"__float__": "Infinity"} if v == math.inf else v


def _decode_float(v) -> float:
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"].replace("Infinity", "inf"))
    return float(v)


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------

class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: gate first, then RMS-normalise each of g groups of channels.

        u = y ⊙ SiLU(z),   u_G ← u_G / sqrt(mean(u_G²) + ε) for each group G of E/g channels,   out = w ⊙ u

    (``norm_before_gate=False`` in ``mamba_ssm``). With g = n_groups the normalisation never mixes
    the heads of two groups, so the model can be split across devices group by group (Section 7.2).
    Computed in float32 (float64 for float64 inputs) and returned in y's dtype, as transformers does.
    """

    def __init__(self, d: int, groups: int, eps: float = 1e-5):
        super().__init__()
        if d % groups:
            raise ValueError(f"GatedRMSNorm: groups = {groups} must divide d = {d}")
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(d))                # w: (d,)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        wide = torch.float64 if y.dtype == torch.float64 else torch.float32
        u = y.to(wide) * F.silu(z.to(wide))                      # (..., d)
        u = u.unflatten(-1, (self.groups, -1))                   # (..., g, d/g)
        u = F.rms_norm(u, (u.shape[-1],), eps=self.eps).flatten(-2)
        return self.weight * u.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, groups={self.groups}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    """The Mamba-2 mixer (Section 7). Input and output x: (b, l, D).

    Parameters (names as in the checkpoints):
        in_proj   (2E + 2gN + H, D)      x -> [z, x, B, C, dt]
        conv1d    (E + 2gN, 1, K), (E + 2gN,)   depthwise causal convolution of [x, B, C]
        dt_bias   (H,)                   Δ = softplus(dt + dt_bias)
        A_log     (H,)                   A = -exp(A_log): one scalar per head
        D         (H,)                   skip connection, per head
        norm      (E,)                   gated RMSNorm over n_groups groups
        out_proj  (D, E)
    """

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        D, E, H, N, g = (config.hidden_size, config.intermediate_size, config.num_heads, config.state_size,
                         config.n_groups)
        self.conv_dim = config.conv_dim
        self.in_proj = nn.Linear(D, E + self.conv_dim + H, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(E, g, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(E, D, bias=config.use_bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official ``mamba_ssm`` initialisation: Δ = softplus(dt_bias) log-uniform in
        [time_step_min, time_step_max], A uniform in [1, 16] (stored as its log), D = 1, and the
        residual branch's output projection scaled by 1/sqrt(layers)."""
        cfg = self.config
        for module in (self.in_proj, self.conv1d, self.out_proj):
            module.reset_parameters()
            if module.bias is not None and module is not self.conv1d:
                module.bias.zero_()
        self.dt_bias.copy_(dt_bias_init(cfg.num_heads, cfg.time_step_min, cfg.time_step_max, cfg.time_step_floor))
        self.A_log.copy_(torch.empty(cfg.num_heads).uniform_(1, 16).log())
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        self.out_proj.weight /= math.sqrt(cfg.num_hidden_layers)

    def _split_xBC(self, xBC: torch.Tensor):
        """[x, B, C] (..., E + 2gN) -> x (..., H, P), B and C (..., g, N)."""
        cfg = self.config
        x, B, C = torch.split(xBC, [cfg.intermediate_size, cfg.n_groups * cfg.state_size,
                                    cfg.n_groups * cfg.state_size], dim=-1)
        return (x.unflatten(-1, (cfg.num_heads, cfg.head_dim)), B.unflatten(-1, (cfg.n_groups, cfg.state_size)),
                C.unflatten(-1, (cfg.n_groups, cfg.state_size)))

    def forward(self, x: torch.Tensor, return_states: bool = False):
        """The parallel form over a sequence: x (b, l, D) -> (b, l, D); with ``return_states``
        also (conv window (b, E + 2gN, K-1), SSM state (b, H, P, N)) after the last token."""
        cfg = self.config
        b, l, _ = x.shape
        E, H, K = cfg.intermediate_size, cfg.num_heads, cfg.conv_kernel
        z, xBC, dt = torch.split(self.in_proj(x), [E, self.conv_dim, H], dim=-1)   # (b,l,E), (b,l,E+2gN), (b,l,H)
        window = xBC.transpose(1, 2)                             # (b, E + 2gN, l) view
        conv_state = F.pad(window[:, :, -(K - 1):], (max(0, K - 1 - l), 0)) if return_states and K > 1 \
            else xBC.new_zeros(b, self.conv_dim, 0)              # the last K-1 conv inputs
        # causal depthwise conv (the weights of self.conv1d), then SiLU: (b, l, E + 2gN); computed
        # time-major by the fast layer, equal to F.silu(self.conv1d(window)[..., :l]).transpose(1, 2)
        xBC = F.silu(causal_conv_time_major(xBC, self.conv1d.weight, self.conv1d.bias))
        xs, B, C = self._split_xBC(xBC)                          # (b, l, H, P), (b, l, g, N), (b, l, g, N)
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(wide))                      # (H,)
        y, ssm_state = ssd_scan(xs, dt, A, B, C, cfg.chunk_size, D=self.D.to(wide), dt_bias=self.dt_bias.to(wide),
                                dt_softplus=True, dt_limit=cfg.time_step_limit, return_final_states=True)
        y = self.out_proj(self.norm(y.flatten(-2), z))           # (b, l, D)
        return (y, (conv_state, ssm_state)) if return_states else y

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
             A: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrent form: one token. x (b, D) -> (b, D); updates the two states in place.

        conv_state (b, E + 2gN, K-1): the previous K-1 conv inputs, oldest first.
        ssm_state  (b, H, P, N):      h_{t-1}, in float32 (float64 for a float64 model).
        A          (H,):              -exp(A_log) in ssm_state's dtype; computed here when not given.
        (Δ is clamped to ``time_step_limit`` here as in the parallel form; transformers' and
        mamba_ssm's recurrent steps skip that clamp, which matters only for non-default limits.)
        """
        cfg = self.config
        E, H = cfg.intermediate_size, cfg.num_heads
        z, xBC, dt = torch.split(self.in_proj(x), [E, self.conv_dim, H], dim=-1)    # (b, E), (b, E+2gN), (b, H)
        xBC = F.silu(causal_conv_step(conv_state, xBC, self.conv1d.weight[:, 0], self.conv1d.bias))
        xs, B, C = self._split_xBC(xBC)                          # (b, H, P), (b, g, N), (b, g, N)
        wide = ssm_state.dtype
        delta = F.softplus(dt.to(wide) + self.dt_bias.to(wide)).clamp(*cfg.time_step_limit)   # Δ_t: (b, H)
        if A is None:
            A = -torch.exp(self.A_log.to(wide))                  # (H,)
        y, new_state = ssd_step(ssm_state, xs.to(wide), delta, A, B.to(wide), C.to(wide))     # (b, H, P)
        ssm_state.copy_(new_state)
        y = y + self.D.to(wide)[:, None] * xs.to(wide)           # + D x_t
        return self.out_proj(self.norm(y.flatten(-2).to(x.dtype), z))   # (b, D)


class Mamba2Block(MambaBlock):
    """Mamba-1's pre-norm residual block (``forward`` and ``step`` inherited) around the Mamba-2 mixer."""

    def __init__(self, config: Mamba2Config):
        nn.Module.__init__(self)
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = Mamba2Mixer(config)


class Mamba2Backbone(MambaBackbone):
    """Embeddings, the Mamba-2 blocks, the final norm (checkpoint prefix ``backbone.``); ``forward``
    is Mamba-1's."""

    def __init__(self, config: Mamba2Config):
        nn.Module.__init__(self)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Mamba2Block(config) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        nn.init.normal_(self.embeddings.weight, std=0.02)


# --------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------

class Mamba2LM(MambaLM):
    """Mamba-2 language model; state-dict keys are those of ``transformers.Mamba2ForCausalLM``.

    ``forward(input_ids, return_cache=False)``, ``step(token_ids, cache)`` and ``generate(input_ids,
    max_new_tokens, temperature=0.0, top_k=None, seed=None)`` are :class:`~ssm_tutor.mamba.MambaLM`'s.
    """

    def __init__(self, config: Mamba2Config):
        nn.Module.__init__(self)
        self.config = config
        self.backbone = Mamba2Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight   # one matrix, two uses

    @torch.inference_mode()
    def init_cache(self, batch: int) -> MambaCache:
        """An empty cache (the state before any token): per layer a conv window (b, E + 2gN, K-1)
        and an SSM state (b, H, P, N) of zeros."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        cfg, w = self.config, self.lm_head.weight
        state_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
        L = cfg.num_hidden_layers
        return MambaCache(
            [torch.zeros(batch, cfg.conv_dim, cfg.conv_kernel - 1, dtype=w.dtype, device=w.device) for _ in range(L)],
            [torch.zeros(batch, cfg.num_heads, cfg.head_dim, cfg.state_size, dtype=state_dtype, device=w.device)
             for _ in range(L)])

    # save_pretrained is MambaLM's: config.json from Mamba2Config.to_dict, model.safetensors.
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None) -> "Mamba2LM":
        """Load a checkpoint directory written by :meth:`save_pretrained` or by
        ``transformers.Mamba2ForCausalLM.save_pretrained`` (config.json + model.safetensors, or
        sharded safetensors). Raises CheckpointError naming every missing, unexpected or mis-shaped key."""
        config, state = _read_checkpoint(Path(path))
        if "backbone.embedding.weight" in state and "backbone.embeddings.weight" not in state:
            state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")   # mamba_ssm's name
        model = cls(config)
        model.load_checkpoint_state(state)
        return model.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else model

    def load_checkpoint_state(self, state: dict) -> None:
        """MambaLM's key, shape and finiteness checks, naming this class in the error."""
        try:
            super().load_checkpoint_state(state)
        except CheckpointError as err:
            raise CheckpointError(str(err).replace("MambaLM", type(self).__name__, 1)) from None


def _read_checkpoint(path: Path) -> tuple[Mamba2Config, dict]:
    """(config, tensors) of a checkpoint directory: config.json and safetensors only (never
    unpickled). A shard index may only name files inside the directory.
    (To be replaced by the shared ``ssm_tutor.checkpoint`` reader once it exists.)"""
    from safetensors.torch import load_file
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json (found: {sorted(os.listdir(path))})")
    try:
        config = Mamba2Config.from_dict(json.loads((path / "config.json").read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / 'config.json'} is not valid JSON: {err}") from None
    if (path / "model.safetensors").is_file():
        return config, load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors or model.safetensors.index.json "
                                f"(found: {sorted(os.listdir(path))})")
    state = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        file = (path / shard).resolve()
        if file.parent != path.resolve():
            raise CheckpointError(f"{index} names the shard {shard!r}, which is outside {path}")
        state.update(load_file(str(file)))
    return config, state
