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

The language model itself is :class:`ssm_tutor.mamba.MambaLM`'s: ``forward`` (with
``attention_mask``), the recurrent ``step``, ``generate`` (same arguments), the checkpoints and
the fast-path switch are inherited and only the mixer differs. The recurrent cache is a
:class:`~ssm_tutor.mamba.MambaCache` holding, per layer, the conv window (b, E + 2gN, K-1) and
the SSM state (b, H, P, N).

Two paths compute the mixer's forward pass, as for Mamba: the *teaching* path written in
:meth:`Mamba2Mixer.forward` (``nn.Conv1d``, then the chunked algorithm's four steps of
``ssm_tutor.ssd``), and the *fast* path of :mod:`ssm_tutor.fast.mixer` (a time-major
convolution and the chunk-by-chunk SSD scan of :mod:`ssm_tutor.fast.ssd`). ``Mamba2LM(config)``
takes the fast path, ``Mamba2LM(config, fast=False)`` the teaching one; the tests hold them equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.convolution import compute_dtype, dt_bias_init
from ssm_tutor.mamba import (HFConfig, after_window, MambaBackbone, MambaBlock, MambaLM, RMSNorm, causal_conv_step,
                             last_conv_inputs, zero_padding)
from ssm_tutor.ssd import ssd_scan, ssd_step
from ssm_tutor.validate import check_has_data, check_layer_input, check_step_limit, positive_int

__all__ = ["Mamba2Config", "GatedRMSNorm", "Mamba2Mixer", "Mamba2Block", "Mamba2Backbone", "Mamba2LM"]


# --------------------------------------------------------------------------------------------
# Configuration (transformers' Mamba2Config field names and defaults)
# --------------------------------------------------------------------------------------------

@dataclass
class Mamba2Config(HFConfig):
    """The hyper-parameters, with the names and defaults of ``transformers.Mamba2Config``.

    Fields this class does not use (``time_step_rank``, ``transformers_version``, …) are kept in
    ``extra`` and written back, so a config survives a round trip (:class:`~ssm_tutor.mamba.HFConfig`).
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

    model_type: ClassVar[str] = "mamba2"
    architecture: ClassVar[str] = "Mamba2ForCausalLM"

    def __post_init__(self):
        for name in ("num_heads", "head_dim", "vocab_size", "hidden_size", "state_size", "num_hidden_layers",
                     "expand", "conv_kernel", "n_groups", "chunk_size"):
            positive_int(f"Mamba2Config.{name}", getattr(self, name))
        if self.expand * self.hidden_size != self.num_heads * self.head_dim:
            raise ValueError(f"Mamba2Config: expand * hidden_size = {self.expand} * {self.hidden_size} must equal "
                             f"num_heads * head_dim = {self.num_heads} * {self.head_dim}")
        if self.num_heads % self.n_groups:
            raise ValueError(f"Mamba2Config.n_groups = {self.n_groups} must divide num_heads = {self.num_heads}")
        if self.hidden_act != "silu":
            raise ValueError(f"Mamba2Config.hidden_act must be 'silu', got {self.hidden_act!r}")
        limit = self.time_step_limit
        if isinstance(limit, (tuple, list)):
            limit = [_decode_float(v) for v in limit]
        self.time_step_limit = check_step_limit("Mamba2Config.time_step_limit", limit)
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
        out = super().to_dict()
        out["time_step_limit"] = [_encode_float(v) for v in self.time_step_limit]
        return out


def _encode_float(v: float):
    return {"__float__": "Infinity"} if v == math.inf else v


def _decode_float(v):
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"].replace("Infinity", "inf"))
    return v


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------

class GatedRMSNorm(RMSNorm):
    """Mamba-2's output norm: gate first, then RMS-normalise each of g groups of channels.

        u = y ⊙ SiLU(z),   u_G ← u_G / sqrt(mean(u_G²) + ε) for each group G of d/g channels,   out = w ⊙ u

    (``norm_before_gate=False`` in ``mamba_ssm``). With g = n_groups the normalisation never mixes
    the heads of two groups, so the model can be split across devices group by group (Section 7.2).
    Computed in float32 (float64 for float64 inputs) and returned in y's dtype, as transformers
    does. The weight w (d,) is :class:`~ssm_tutor.mamba.RMSNorm`'s.
    """

    def __init__(self, d: int, groups: int, eps: float = 1e-5):
        positive_int("groups", groups)
        if d % groups:
            raise ValueError(f"GatedRMSNorm: groups = {groups} must divide d = {d}")
        super().__init__(d, eps)
        self.groups = groups

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        wide = compute_dtype(y.dtype)
        u = y.to(wide) * F.silu(z.to(wide))                      # the gate: (..., d)
        u = u.unflatten(-1, (self.groups, -1))                   # (..., g, d/g)
        u = F.rms_norm(u, (u.shape[-1],), eps=self.eps).flatten(-2)
        return self.weight * u.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


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

    ``fast`` (default True): :meth:`forward` runs :func:`ssm_tutor.fast.mixer.mamba2_mixer_forward`
    (a time-major convolution and the fast SSD scan); False runs the teaching path written here,
    with the chunked algorithm's four steps (``ssd_scan(method="chunked")``). ``attention_mask``
    as in :class:`~ssm_tutor.mamba.MambaShell`: padded positions are zeroed before the
    convolution and before the scan, so left padding reaches neither the window nor the state.
    (``gated`` is there for :class:`~ssm_tutor.mamba.MambaBlock`'s signature: Mamba-2's gate sits
    inside its norm and cannot be switched off.)
    """

    has_fast_path = True

    def __init__(self, config: Mamba2Config, *, gated: bool = True, fast: bool = True):
        super().__init__()
        if gated is not True:
            raise ValueError("Mamba2Mixer has its gate inside the output norm (GatedRMSNorm); gated must be True")
        self.config, self.fast = config, fast
        D, E, H = config.hidden_size, config.intermediate_size, config.num_heads
        self.hidden_size, self.conv_dim = D, config.conv_dim
        self.in_proj = nn.Linear(D, E + self.conv_dim + H, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(E, config.n_groups, config.layer_norm_epsilon)
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

    def split_xBC(self, xBC: torch.Tensor):
        """[x, B, C] (..., E + 2gN) -> views x (..., H, P), B and C (..., g, N)."""
        cfg = self.config
        x, B, C = torch.split(xBC, [cfg.intermediate_size, cfg.n_groups * cfg.state_size,
                                    cfg.n_groups * cfg.state_size], dim=-1)
        return (x.unflatten(-1, (cfg.num_heads, cfg.head_dim)), B.unflatten(-1, (cfg.n_groups, cfg.state_size)),
                C.unflatten(-1, (cfg.n_groups, cfg.state_size)))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_states: bool = False,
                initial_states: tuple | None = None):
        """The parallel form over a sequence: x (b, l, D) -> (b, l, D); with ``return_states``
        also (conv window (b, E + 2gN, K-1), SSM state (b, H, P, N)) after the last token.
        ``initial_states`` (conv window, SSM state): continue from there (chunked prefill; as in
        :meth:`ssm_tutor.mamba.MambaShell.forward`: the window goes before x, the scan starts at h_0)."""
        check_layer_input(x, self.hidden_size, "Mamba2Mixer")
        check_has_data("Mamba2Mixer's weights", self.in_proj.weight)
        if self.fast:
            from ssm_tutor.fast.mixer import mamba2_mixer_forward     # the fast layer builds on this module
            return mamba2_mixer_forward(self, x, attention_mask, return_states, initial_states)
        cfg = self.config
        l, E, H, K = x.shape[1], cfg.intermediate_size, cfg.num_heads, cfg.conv_kernel
        window, h0 = (None, None) if initial_states is None else initial_states
        z, xBC, dt = torch.split(self.in_proj(x), [E, self.conv_dim, H], dim=-1)   # (b,l,E), (b,l,E+2gN), (b,l,H)
        xBC = after_window(zero_padding(xBC, attention_mask), window)   # padding feeds nothing; (b, [K-1+]l, ·)
        conv = self.conv1d(xBC.transpose(1, 2))[..., :xBC.shape[1]][..., -l:]   # causal conv, this chunk: (b, E + 2gN, l)
        xs, B, C = self.split_xBC(zero_padding(F.silu(conv).transpose(1, 2), attention_mask))
        wide = compute_dtype(x.dtype)                            # xs (b, l, H, P), B and C (b, l, g, N)
        A = -torch.exp(self.A_log.to(wide))                      # (H,)
        y, h = ssd_scan(xs, dt, A, B, C, cfg.chunk_size, D=self.D.to(wide), dt_bias=self.dt_bias.to(wide),
                        dt_softplus=True, dt_limit=cfg.time_step_limit, initial_states=h0,
                        return_final_states=True, method="chunked")                        # the four steps: (b, l, H, P), (b, H, P, N)
        y = self.out_proj(self.norm(y.flatten(-2), z))           # gate, norm, project: (b, l, D)
        return (y, (last_conv_inputs(xBC, K), h)) if return_states else y

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
        xs, B, C = self.split_xBC(xBC)                           # (b, H, P), (b, g, N), (b, g, N)
        wide = ssm_state.dtype
        delta = F.softplus(dt.to(wide) + self.dt_bias.to(wide)).clamp(*cfg.time_step_limit)   # Δ_t: (b, H)
        if A is None:
            A = -torch.exp(self.A_log.to(wide))                  # (H,)
        y, new_state = ssd_step(ssm_state, xs.to(wide), delta, A, B.to(wide), C.to(wide))     # (b, H, P)
        ssm_state.copy_(new_state)
        y = y + self.D.to(wide)[:, None] * xs.to(wide)           # + D x_t
        return self.out_proj(self.norm(y.flatten(-2).to(x.dtype), z))   # (b, D)

    def init_states(self, batch: int):
        """Zero states for ``batch`` sequences: (conv window (b, E + 2gN, K-1), SSM state (b, H, P, N))."""
        positive_int("batch", batch)
        cfg, w = self.config, self.in_proj.weight
        window = torch.zeros(batch, self.conv_dim, cfg.conv_kernel - 1, dtype=w.dtype, device=w.device)
        state = torch.zeros(batch, cfg.num_heads, cfg.head_dim, cfg.state_size, dtype=compute_dtype(w.dtype),
                            device=w.device)
        return window, state


# --------------------------------------------------------------------------------------------
# The block, the backbone, the language model: Mamba-1's, with the Mamba-2 mixer
# --------------------------------------------------------------------------------------------

class Mamba2Block(MambaBlock):
    """:class:`~ssm_tutor.mamba.MambaBlock` (pre-norm residual, ``forward`` and ``step``) around
    the Mamba-2 mixer."""

    mixers = {"ssd": Mamba2Mixer}


class Mamba2Backbone(MambaBackbone):
    """:class:`~ssm_tutor.mamba.MambaBackbone` (embeddings, blocks, final norm; checkpoint prefix
    ``backbone.``) with Mamba-2 blocks."""

    block = Mamba2Block


class Mamba2LM(MambaLM):
    """Mamba-2 language model; state-dict keys are those of ``transformers.Mamba2ForCausalLM``.

    :class:`~ssm_tutor.mamba.MambaLM` with Mamba-2 blocks: ``forward(input_ids, attention_mask=None,
    return_cache=False)``, ``step(token_ids, cache)``, ``generate(input_ids, max_new_tokens,
    temperature=0.0, top_k=None, seed=None, attention_mask=None)``, ``init_cache``,
    ``use_fast_path``, ``save_pretrained`` and ``from_pretrained`` are all MambaLM's (the cache a
    :class:`~ssm_tutor.mamba.MambaCache` with Mamba-2's sizes). ``fast`` (default True): the fast
    path of :mod:`ssm_tutor.fast`; ``Mamba2LM(config, fast=False)`` or ``use_fast_path(False)``
    the teaching path.
    """

    config_class = Mamba2Config
    backbone_class = Mamba2Backbone
    checkpoint_mixer = "ssd"

    def __init__(self, config: Mamba2Config, fast: bool = True):
        super().__init__(config, fast, mixer="ssd")
