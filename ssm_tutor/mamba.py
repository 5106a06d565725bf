"""Stage 7: the full Mamba language model.

Notebook: ``notebooks/07_mamba_model.ipynb``. Paper: Gu & Dao, *Mamba: Linear-Time Sequence
Modeling with Selective State Spaces* (2023), Section 3.4 (the Mamba block, Figure 3) and
Section 3.5 / Appendix (initialisation), plus the official ``mamba_ssm`` code for details the
paper leaves out (RMSNorm, tied embeddings, the 1/sqrt(layers) rescaling).

The model, from the token ids down::

    MambaLM
      backbone.embeddings               token ids (b, l) -> x (b, l, D)
      backbone.layers[i]: MambaBlock    x <- x + MambaMixer(RMSNorm(x))      (pre-norm residual)
        mixer.in_proj                     D -> 2E: the SSM branch x and the gate branch z
        mixer.conv1d                      causal depthwise convolution over time, kernel K, then SiLU
        mixer.x_proj                      E -> R + 2N: the selection, Δ (low rank R), B and C
        mixer.dt_proj                     R -> E: Δ back to every channel; softplus(Δ + bias)
        selective scan                    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,  y_t = C_t h_t + D x_t
        gate                              y * SiLU(z)
        mixer.out_proj                    E -> D
      backbone.norm_f                   final RMSNorm
      lm_head                           D -> V, the embedding matrix again (tied)

D = hidden_size, E = expand * D (intermediate size), N = state_size, K = conv_kernel,
R = time_step_rank, V = vocab_size.

Checkpoints use the Hugging Face layout (``config.json`` + ``model.safetensors``), so a model
saved here loads in ``transformers.MambaForCausalLM`` and the other way round.

Inference has two modes with the same result: the *parallel* forward over a whole sequence
(the scan of stages 5–6), and the *recurrent* ``step`` that advances one token with a
fixed-size cache (:class:`MambaCache`): per layer the last K-1 conv inputs (E, K-1) and the SSM
state (E, N).

Two paths compute the forward pass: the *teaching* path, :class:`MambaMixer`'s own ``forward``
(the block as the paper draws it, stage 4's S6 layer inside), and the *fast* path of
:mod:`ssm_tutor.fast` (time-major activations, a channels-last convolution, stage 5's fused scan,
input-major weights). ``MambaLM(config)`` takes the fast path; ``MambaLM(config, fast=False)``
or ``model.use_fast_path(False)`` the teaching one. The tests hold them equal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.checkpoint import (CheckpointError, load_state, read_config, read_tensors, resolve_directory,
                                  write_checkpoint)
from ssm_tutor.convolution import LTISSM, compute_dtype          # stage 3: the LTI layer (Table 1's baseline)
from ssm_tutor.fast.layout import store_input_major_
from ssm_tutor.selective import SelectiveSSM, selective_ssm_step   # stage 4: the S6 layer, one step of it
from ssm_tutor.validate import (check_cache, check_choice, check_has_data, check_layer_input, check_mask,
                                check_token_ids, finite_number, non_negative_int, positive_int)

__all__ = ["MambaConfig", "RMSNorm", "MambaShell", "MambaMixer", "LTIMambaMixer", "MambaBlock", "MambaBackbone",
           "MambaLM", "MambaCache", "CheckpointError", "causal_conv_step", "last_conv_inputs", "after_window", "zero_padding",
           "selective_ssm_step"]


# --------------------------------------------------------------------------------------------
# Configuration (the Hugging Face ``config.json``)
# --------------------------------------------------------------------------------------------

class HFConfig:
    """The ``config.json`` round trip every model family's config shares (a mixin for dataclasses).

    A subclass is a dataclass whose fields carry transformers' names, plus an ``extra`` dict that
    keeps the fields it does not use (written back, so a config survives a round trip); it sets
    ``model_type`` and ``architecture`` (transformers' names for the family)."""

    model_type: ClassVar[str]
    architecture: ClassVar[str]

    def to_dict(self) -> dict:
        """The ``config.json`` content, readable by the family's transformers config class."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        out.update(model_type=self.model_type, architectures=[self.architecture])
        out.setdefault("dtype", "float32")
        return out

    @classmethod
    def from_dict(cls, config: dict):
        """Read a ``config.json`` dict of this family (its ``model_type``); unknown fields go to ``extra``."""
        config = dict(config)
        model_type = config.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            families = {"mamba": "ssm_tutor.mamba.MambaLM", "mamba2": "ssm_tutor.mamba2.Mamba2LM"}
            other = f" (use {families[model_type]} for {model_type!r})" if model_type in families else ""
            raise ValueError(f"config.json has model_type {model_type!r}; {cls.__name__} reads "
                             f"{cls.model_type!r}{other}")
        config.pop("architectures", None)
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in config.items() if k in names},
                   extra={k: v for k, v in config.items() if k not in names})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path):
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None


@dataclass
class MambaConfig(HFConfig):
    """The hyper-parameters, with the names and defaults of ``transformers.MambaConfig``.

    ``time_step_rank="auto"`` becomes ceil(hidden_size / 16); ``intermediate_size`` (E, the width
    of the SSM branch) defaults to expand * hidden_size but may be set on its own, as
    transformers allows. Fields this class does not use
    are kept in ``extra`` and written back, so a config survives a round trip.

    ``rescale_prenorm_residual`` is carried for transformers only and should stay False in a
    checkpoint: transformers 5 applies that 1/sqrt(layers) rescaling again to the *loaded*
    ``out_proj`` weights. :class:`MambaLM` always initialises as the official ``mamba_ssm`` code
    does, which includes that rescaling.
    """

    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 32
    layer_norm_epsilon: float = 1e-5
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 0
    expand: int = 2
    intermediate_size: int | None = None
    conv_kernel: int = 4
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    initializer_range: float = 0.1
    residual_in_fp32: bool = True
    time_step_rank: int | str = "auto"
    time_step_scale: float = 1.0
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_init_scheme: str = "random"
    time_step_floor: float = 1e-4
    rescale_prenorm_residual: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    model_type: ClassVar[str] = "mamba"
    architecture: ClassVar[str] = "MambaForCausalLM"

    def __post_init__(self):
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(positive_int("MambaConfig.hidden_size", self.hidden_size) / 16)
        if self.intermediate_size is None:
            self.intermediate_size = self.expand * self.hidden_size
        for name in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand",
                     "intermediate_size", "conv_kernel", "time_step_rank"):
            positive_int(f"MambaConfig.{name}", getattr(self, name))
        if self.hidden_act != "silu":
            raise ValueError(f"MambaConfig.hidden_act must be 'silu' (the only activation Mamba uses), "
                             f"got {self.hidden_act!r}")
        if self.time_step_init_scheme not in ("random", "constant"):
            raise ValueError(f"MambaConfig.time_step_init_scheme must be 'random' or 'constant', "
                             f"got {self.time_step_init_scheme!r}")
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(f"MambaConfig needs 0 < time_step_min <= time_step_max, got "
                             f"{self.time_step_min!r} and {self.time_step_max!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"MambaConfig.layer_norm_epsilon must be positive, got {self.layer_norm_epsilon!r}")

    @classmethod
    def from_dict(cls, config: dict) -> "MambaConfig":
        """Read a Hugging Face ``config.json`` dict, or an official ``mamba_ssm`` one
        (``d_model``, ``n_layer``, ``ssm_cfg``, ``pad_vocab_size_multiple``)."""
        if "d_model" in config and "hidden_size" not in config:
            config = _from_mamba_ssm_config(config)
        return super().from_dict(config)


def _from_mamba_ssm_config(c: dict) -> dict:
    """Map the official ``mamba_ssm`` MambaConfig fields to the Hugging Face names."""
    if not c.get("rms_norm", True):
        raise ValueError("this model implements rms_norm=True only (every released Mamba uses it)")
    ssm = dict(c.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba1") != "Mamba1":
        raise ValueError(f"ssm_cfg.layer={ssm['layer']!r}: this model is Mamba-1")
    multiple = c.get("pad_vocab_size_multiple", 8)
    vocab = c["vocab_size"]
    vocab += (-vocab) % multiple                     # the official model pads the vocabulary
    out = dict(hidden_size=c["d_model"], num_hidden_layers=c["n_layer"], vocab_size=vocab,
               residual_in_fp32=c.get("residual_in_fp32", True),
               tie_word_embeddings=c.get("tie_embeddings", True))
    for theirs, ours in (("d_state", "state_size"), ("d_conv", "conv_kernel"), ("expand", "expand"),
                         ("dt_rank", "time_step_rank"), ("conv_bias", "use_conv_bias"), ("bias", "use_bias"),
                         ("dt_min", "time_step_min"), ("dt_max", "time_step_max"),
                         ("dt_init_floor", "time_step_floor"), ("dt_scale", "time_step_scale"),
                         ("dt_init", "time_step_init_scheme")):
        if theirs in ssm:
            out[ours] = ssm[theirs]
    return out


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """Root-mean-square normalisation: y = x / sqrt(mean(x²) + ε) · w  (no mean subtraction, no bias).

    Half-precision inputs are normalised in float32 and cast back, as transformers does.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))      # w: (d,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):           # normalise in float32
            return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)   # one fused op

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def causal_conv_step(conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """One output of the causal depthwise convolution, for the token x_t.

        y_t[e] = Σ_k weight[e, k] · window[e, k] + bias[e],   window = (x_{t-K+1}, …, x_{t-1}, x_t)

    conv_state (b, E, K-1) holds x_{t-K+1} … x_{t-1} (oldest first) and slides by one token, in
    place. x (b, E), weight (E, K), bias (E,) or None. Returns y_t (b, E), before the SiLU.

    transformers keeps K inputs per channel instead (the window *after* adding x_t); the oldest
    of them never reaches another output. :meth:`MambaCache.to_transformers_conv_states` and
    :meth:`MambaCache.from_transformers` convert at the boundary.
    """
    window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)   # (b, E, K)
    conv_state.copy_(window[:, :, 1:])                           # drop the oldest input
    y = (window * weight).sum(-1)                                # (b, E)
    return y if bias is None else y + bias


def last_conv_inputs(x: torch.Tensor, K: int) -> torch.Tensor:
    """The convolution's window after a whole sequence, for the recurrent cache (what
    :func:`causal_conv_step` slides): x (b, l, E) -> its last K-1 inputs (b, E, K-1), oldest
    first, with zeros in front when l < K-1 (the window before any token is all zeros)."""
    return F.pad(x.transpose(1, 2), (K - 1, 0))[..., x.shape[1]:]


def after_window(u: torch.Tensor, window: torch.Tensor | None) -> torch.Tensor:
    """The convolution's input for a chunk that continues a sequence: the cached window (the
    previous chunk's last K-1 inputs, (b, E, K-1), oldest first) followed by the chunk's own
    inputs u (b, l, E) -> (b, K-1+l, E). The convolution of that, cut to its last l causal
    outputs, is what one convolution over the whole sequence gives for the chunk's positions
    (a zero window, as from ``init_cache``, is the zero padding of a fresh start). ``None``
    (no cache): u itself."""
    return u if window is None else torch.cat([window.transpose(1, 2).to(u.dtype), u], dim=1)


def zero_padding(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """x (b, l, E) with the padded positions (mask 0) set to zero."""
    return x if attention_mask is None else x * attention_mask[..., None].to(x.dtype)


class MambaShell(nn.Module):
    """The Mamba block's mixer around an SSM layer (paper Figure 3): everything but the SSM.

        x (b, l, D) --in_proj--> u, z (b, l, E)
        u --causal depthwise conv1d over time, SiLU--> u'
        u' --the SSM layer--> y                         (y, u' of shape (b, l, E))
        y · SiLU(z) --out_proj--> (b, l, D)             (without the gate: out_proj(y))

    Not used alone: a mixer class inherits from this *and* from the SSM layer it wraps, whose
    forward / step / init_state it calls -- :class:`MambaMixer` (this + stage 4's S6 layer) and
    :class:`LTIMambaMixer` (this + stage 3's LTI layer; the LTI rows of Table 1). The SSM layer's
    parameters are the mixer's own, so checkpoint keys stay flat (``mixer.A_log``,
    ``mixer.x_proj.weight``, ...), as in the Hugging Face checkpoints.

    ``attention_mask`` (b, l), 1 for a token and 0 for padding: padded positions are zeroed
    before the convolution and before the SSM, so with left padding they reach neither the
    convolution's window nor the state, and each row computes what it would alone.
    (transformers zeroes them before in_proj and after the convolution: the same when in_proj
    has no bias, as in every released Mamba; with a bias its padding leaks the bias into the
    window.)
    """

    has_fast_path = False                   # whether ssm_tutor.fast has this mixer's forward (see MambaLM.use_fast_path)

    def _build_shell(self, config: MambaConfig, gated: bool) -> None:
        D, E, K = config.hidden_size, config.intermediate_size, config.conv_kernel
        self.hidden_size, self.d_conv, self.gated = D, K, gated
        self.in_proj = nn.Linear(D, (2 if gated else 1) * E, bias=config.use_bias)   # x -> u [, z]
        self.conv1d = nn.Conv1d(E, E, kernel_size=K, groups=E, padding=K - 1, bias=config.use_conv_bias)
        self.out_proj = nn.Linear(E, D, bias=config.use_bias)
        with torch.no_grad():
            for linear in (self.in_proj, self.out_proj):
                if linear.bias is not None:
                    linear.bias.zero_()
            # GPT-2 style, as in the official init: the residual branch's output projection is
            # scaled by 1/sqrt(layers) so the residual stream's variance does not grow with depth
            self.out_proj.weight /= math.sqrt(config.num_hidden_layers)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_states: bool = False,
                initial_states: tuple | None = None):
        """The parallel form over a whole sequence, the teaching path. x (b, l, D) -> (b, l, D).

        With ``return_states`` also returns the recurrent state after the last token:
        (conv_state (b, E, K-1), ssm_state (b, E, N)), ready for :meth:`step`.

        ``initial_states`` (conv_state, ssm_state), as :meth:`step` and ``return_states`` hold
        them: x continues a sequence that has reached that state (chunked prefill). The
        convolution then sees the cached K-1 inputs before x (:func:`after_window`) and the scan
        starts from h_0 = ssm_state instead of 0.
        """
        check_layer_input(x, self.hidden_size, type(self).__name__)
        check_has_data(f"{type(self).__name__}'s weights", self.in_proj.weight)
        l, K = x.shape[1], self.d_conv
        window, h0 = (None, None) if initial_states is None else initial_states
        xz = self.in_proj(x)                                                 # (b, l, 2E) or (b, l, E)
        u, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)             # (b, l, E) each
        u = after_window(zero_padding(u, attention_mask), window)            # padding feeds nothing forward; (b, [K-1+]l, E)
        conv = self.conv1d(u.transpose(1, 2))[..., :u.shape[1]][..., -l:]   # causal conv, this chunk's outputs: (b, E, l)
        u_conv = zero_padding(F.silu(conv).transpose(1, 2), attention_mask)   # (b, l, E)
        start = {} if h0 is None else {"initial_state": h0}                  # h_0 (b, E, N), else 0
        out = super().forward(u_conv, return_last_state=return_states, **start)   # the SSM layer: (b, l, E)
        y, h = out if return_states else (out, None)
        if self.gated:
            y = y * F.silu(z)                                                # the gate
        y = self.out_proj(y)                                                 # (b, l, D)
        if not return_states:
            return y
        return y, (last_conv_inputs(u, K), h)                                # conv window (b, E, K-1), state

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """The recurrent form: one token. x (b, D) -> (b, D); updates the two states in place.

        conv_state (b, E, K-1): the previous K-1 conv inputs, oldest first.
        ssm_state  (b, E, N):   h_{t-1}, in float32 (float64 for a float64 model).
        """
        xz = self.in_proj(x)                                                 # (b, 2E) or (b, E)
        u, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)             # (b, E) each
        u = F.silu(causal_conv_step(conv_state, u, self.conv1d.weight[:, 0], self.conv1d.bias))   # (b, E)
        y, _ = super().step(u, ssm_state)                                    # the SSM layer, one step
        if self.gated:
            y = y * F.silu(z)                                                # the gate
        return self.out_proj(y)                                              # (b, D)

    def init_states(self, batch: int):
        """Zero states for ``batch`` sequences: (conv_state (b, E, K-1), ssm_state)."""
        w = self.in_proj.weight
        window = torch.zeros(batch, self.conv1d.in_channels, self.d_conv - 1, dtype=w.dtype, device=w.device)
        return window, super().init_state(batch)


class MambaMixer(MambaShell, SelectiveSSM):
    """The Mamba block's mixer (paper Figure 3, Algorithm 2): gated, convolved, selective SSM.

    It *is* stage 4's :class:`~ssm_tutor.selective.SelectiveSSM` (its x_proj, dt_proj, A_log
    and D, with the paper's initialisation) inside :class:`MambaShell` (in_proj, conv1d, the
    gate, out_proj). Input and output x: (b, l, D). Parameters (names as in the checkpoints):

        in_proj   (2E, D)        x -> [u, z]
        conv1d    (E, 1, K), (E,) depthwise causal convolution
        x_proj    (R + 2N, E)    u -> [Δ_low_rank, B, C]                       (SelectiveSSM)
        dt_proj   (E, R), (E,)   Δ_low_rank -> Δ (before softplus; the bias sets Δ's scale)
        A_log     (E, N)         A = -exp(A_log), real and negative (S4D-Real)
        D         (E,)           skip connection
        out_proj  (D, E)

    ``fast`` (default True): :meth:`forward` runs :func:`ssm_tutor.fast.mixer.mamba_mixer_forward`,
    the same computation arranged for a CPU; False runs the teaching path written here
    (:meth:`MambaShell.forward`). ``gated=False`` drops z (Table 1's "no gate" rows).
    """

    has_fast_path = True

    def __init__(self, config: MambaConfig, *, gated: bool = True, fast: bool = True):
        super().__init__(config.intermediate_size, config.state_size, dt_rank=config.time_step_rank,
                         dt_min=config.time_step_min, dt_max=config.time_step_max,
                         dt_init_floor=config.time_step_floor, dt_scale=config.time_step_scale,
                         dt_init=config.time_step_init_scheme)                # SelectiveSSM's parameters
        self._build_shell(config, gated)
        self.fast = fast

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_states: bool = False,
                initial_states: tuple | None = None):
        """x (b, l, D) -> (b, l, D) [, (conv_state, ssm_state)], from ``initial_states`` if given:
        the teaching path (:meth:`MambaShell.forward`), or with ``self.fast`` the same computation
        arranged for speed."""
        if self.fast:
            from ssm_tutor.fast.mixer import mamba_mixer_forward             # the fast layer builds on this module
            check_layer_input(x, self.hidden_size, "MambaMixer")
            check_has_data("MambaMixer's weights", self.in_proj.weight)
            return mamba_mixer_forward(self, x, attention_mask, return_states, initial_states)
        return super().forward(x, attention_mask, return_states, initial_states)   # the teaching path


class LTIMambaMixer(MambaShell, LTISSM):
    """The Mamba block's shell around stage 3's LTI layer instead of the S6 layer: Δ, B and C
    are learned constants (S4D-Real, Mamba's discretization Ā = exp(ΔA), B̄ = ΔB), so the SSM
    is one convolution kernel per channel. The "S4" rows of the Mamba paper's Table 1.
    Parameters: in_proj, conv1d, out_proj as :class:`MambaMixer`; dt_bias, A_log, B, C, D of
    :class:`~ssm_tutor.convolution.LTISSM`."""

    fast = False                            # the convolution (an FFT) is its own fast path

    def __init__(self, config: MambaConfig, *, gated: bool = True, fast: bool = False):
        super().__init__(config.intermediate_size, config.state_size, init="s4d_real", discretization="mamba",
                         dt_min=config.time_step_min, dt_max=config.time_step_max,
                         dt_init_floor=config.time_step_floor)               # LTISSM's parameters
        self._build_shell(config, gated)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_states: bool = False,
                initial_states: tuple | None = None):
        """As :meth:`MambaShell.forward`, from a zero state only."""
        if initial_states is not None:
            raise NotImplementedError("LTIMambaMixer cannot continue from a cache (its LTI layer's forward has no "
                                      "initial state): read the sequence in one forward, or token by token with step")
        return super().forward(x, attention_mask, return_states)


MIXERS = {"selective": MambaMixer, "lti": LTIMambaMixer}


class MambaBlock(nn.Module):
    """Pre-norm residual block: x <- x + Mixer(RMSNorm(x)). The residual stream stays in
    float32 when ``residual_in_fp32`` (it matters for half-precision weights only).

    ``mixer``: "selective" (:class:`MambaMixer`, Mamba) or "lti" (:class:`LTIMambaMixer`);
    ``gated``: with the SiLU(z) gate (Mamba) or without. A later model family reuses the block
    with its own mixers (``ssm_tutor.mamba2.Mamba2Block``): ``mixers`` maps the names to classes
    taking ``(config, gated=, fast=)``."""

    mixers = MIXERS

    def __init__(self, config: MambaConfig, *, mixer: str = "selective", gated: bool = True, fast: bool = True):
        super().__init__()
        check_choice("mixer", mixer, self.mixers)
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = self.mixers[mixer](config, gated=gated, fast=fast)

    def _residual(self, x):
        return x.float() if self.residual_in_fp32 and x.dtype != torch.float64 else x

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, return_states: bool = False,
                initial_states: tuple | None = None):
        start = {} if initial_states is None else {"initial_states": initial_states}
        out = self.mixer(self.norm(x.to(self.norm.weight.dtype)), attention_mask, return_states, **start)
        if return_states:
            return self._residual(x) + out[0], out[1]
        return self._residual(x) + out

    def step(self, x, conv_state, ssm_state):
        return self._residual(x) + self.mixer.step(self.norm(x.to(self.norm.weight.dtype)), conv_state, ssm_state)


class MambaBackbone(nn.Module):
    """Embeddings, the stack of blocks (``block``, :class:`MambaBlock`), the final norm
    (checkpoint prefix ``backbone.``)."""

    block = MambaBlock

    def __init__(self, config: MambaConfig, *, mixer: str = "selective", gated: bool = True, fast: bool = True):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.block(config, mixer=mixer, gated=gated, fast=fast)
                                    for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        nn.init.normal_(self.embeddings.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_states: bool = False, cache: "MambaCache | None" = None):
        """input_ids (b, l) -> normalised hidden states (b, l, D), and with ``return_states`` the
        per-layer states after the last token: ([conv window], [ssm state]) (see :class:`MambaCache`).
        ``cache``: start each layer from its states there (the sequence continues); not modified."""
        x = self.embeddings(input_ids)                           # (b, l, D)
        conv_states, ssm_states = [], []
        starts = [None] * len(self.layers) if cache is None else list(zip(cache.conv_states, cache.ssm_states))
        for layer, start in zip(self.layers, starts):
            kw = {} if start is None else {"initial_states": start}
            if return_states:
                x, (conv, ssm) = layer(x, attention_mask, return_states=True, **kw)
                conv_states.append(conv.detach().contiguous())      # inference state:
                ssm_states.append(ssm.detach().clone())             # no graph, its own memory
            else:
                x = layer(x, attention_mask, **kw)               # (b, l, D)
        x = self.norm_f(x)
        return (x, (conv_states, ssm_states)) if return_states else x


@dataclass
class MambaCache:
    """The whole inference state of a Mamba-family model: per layer the conv window and the SSM state.

    Its size is fixed by the model, however many tokens have been read: this is the "constant
    memory" of recurrent inference. Per layer and sequence:

    ==========================  =============================  ==================  ====================
    family                      conv window (the conv inputs)  SSM state           numbers
    ==========================  =============================  ==================  ====================
    Mamba (:class:`MambaLM`)    (E, K-1): u                    (E, N)              (K-1 + N) · E
    Mamba-2 (``Mamba2LM``)      (E + 2gN, K-1): x, B and C     (H, P, N)           (K-1)(E + 2gN) + HPN
    ==========================  =============================  ==================  ====================

    E = intermediate size (= H · P for Mamba-2, H heads of P channels), N = state size,
    K = conv kernel, g = Mamba-2's groups. The SSM states are float32 (float64 for a float64
    model), the windows in the weights' dtype.

    The conv window holds the K-1 previous inputs, oldest first; transformers' cache holds K,
    one more that no later output uses: :meth:`to_transformers_conv_states` and
    :meth:`from_transformers` convert at the boundary (for both families).
    """

    conv_states: list      # per layer (b, E, K-1); Mamba-2: (b, E + 2gN, K-1)
    ssm_states: list       # per layer (b, E, N);   Mamba-2: (b, H, P, N)
    seqlen: int = 0        # tokens read so far

    @property
    def batch(self) -> int:
        return self.ssm_states[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)

    def to_transformers_conv_states(self) -> list:
        """Per layer (b, C, K), transformers' layout: a zero column for the input that has left the window."""
        return [F.pad(c, (1, 0)) for c in self.conv_states]

    @classmethod
    def from_transformers(cls, conv_states, ssm_states, seqlen: int = 0) -> "MambaCache":
        """From transformers' per-layer states: conv (b, C, K) (the oldest column is dropped) and the SSM
        states ((b, E, N), or Mamba-2's (b, H, P, N)), in float32 (float64 stays float64)."""
        return cls([c[..., 1:].clone() for c in conv_states], [h.float().clone() if h.dtype != torch.float64
                                                               else h.clone() for h in ssm_states], seqlen)


# --------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------

class MambaLM(nn.Module):
    """Mamba language model; state-dict keys are those of ``transformers.MambaForCausalLM``.

    ``fast`` (default True): the fast path of :mod:`ssm_tutor.fast` (and input-major weights);
    ``MambaLM(config, fast=False)`` or :meth:`use_fast_path` (False) the teaching path.
    ``mixer`` and ``gated`` build Table 1's other variants (see ``ssm_tutor.baselines.SSMLM``,
    which saves them in its own format: transformers reads only the default).

    A later model family is this class with other parts (``ssm_tutor.mamba2.Mamba2LM``): its
    ``config_class`` (reads config.json), ``backbone_class`` (whose blocks hold its mixers) and
    ``checkpoint_mixer`` (the mixer the Hugging Face format of the family describes).
    """

    config_class = MambaConfig
    backbone_class = MambaBackbone
    checkpoint_mixer = "selective"

    def __init__(self, config: MambaConfig, fast: bool = True, *, mixer: str = "selective", gated: bool = True):
        super().__init__()
        self.config = config
        self.mixer_kind, self.gated = mixer, gated
        self.backbone = self.backbone_class(config, mixer=mixer, gated=gated, fast=fast)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if fast:
            self._store_input_major()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight   # one matrix, two uses

    def _store_input_major(self) -> None:
        # The head's (V, D) matrix is read whole for every generated token (154 MB at V = 50280):
        # stored input-major it is read ~1.5x faster (ssm_tutor.fast.layout). Tied, the embedding
        # shares that order; its lookup then gathers a strided row, a few microseconds per token.
        store_input_major_(self.backbone.embeddings if self.config.tie_word_embeddings else self.lm_head)
        for layer in self.backbone.layers:
            for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                if hasattr(layer.mixer, name):
                    store_input_major_(getattr(layer.mixer, name))

    def use_fast_path(self, fast: bool = True) -> "MambaLM":
        """Run every mixer's forward on the fast path (True) or the teaching path (False). Returns self."""
        for layer in self.backbone.layers:
            layer.mixer.fast = bool(fast) and layer.mixer.has_fast_path
        return self

    # ---- parallel form ----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_cache: bool = False, cache: MambaCache | None = None):
        """input_ids (b, l) -> logits (b, l, V) (float32; float64 for a float64 model), and the
        cache after the last token when ``return_cache`` (so :meth:`step` can continue).

        ``attention_mask`` (b, l): 1 for tokens, 0 for padding. Left-pad prompts of different
        lengths: each row then gives the logits and cache it would give alone (padded positions'
        logits are meaningless).

        ``cache`` (from :meth:`init_cache`, a previous ``forward(..., return_cache=True)`` or
        :meth:`step`): input_ids continue the sequences that cache has read, so a long sequence
        can be read in chunks with the state carried across, in memory that does not grow with
        its length (chunked prefill). The logits and returned cache are those of one forward
        over everything read so far; the given cache is not modified. An ``attention_mask``
        cannot be combined with a cache that has read tokens (padding would sit mid-sequence)."""
        check_has_data("the model's weights", self.lm_head.weight)
        check_token_ids(input_ids, self.config.vocab_size, device=self.lm_head.weight.device)
        if cache is not None:
            self._check_cache(cache, input_ids.shape[0])
            if attention_mask is not None and cache.seqlen > 0:
                raise ValueError(f"attention_mask cannot be used with a cache that has already read {cache.seqlen} "
                                 "tokens: padding would sit in the middle of the sequence. Pad (left) only the "
                                 "first chunk, or pass no mask")
        if attention_mask is not None:
            check_mask(attention_mask, input_ids, left_padded=return_cache or cache is not None)
        out = self.backbone(input_ids, attention_mask, return_states=return_cache, cache=cache)   # (b, l, D) [, states]
        x, states = out if return_cache else (out, None)
        logits = self._logits(x)                                                      # (b, l, V)
        if not return_cache:
            return logits
        return logits, MambaCache(*states, input_ids.shape[1] + (0 if cache is None else cache.seqlen))

    def _check_cache(self, cache: MambaCache, batch: int) -> None:
        """A MambaCache for ``batch`` sequences with one state per layer of this model."""
        check_cache(cache, MambaCache, batch)
        if len(cache.ssm_states) != self.config.num_hidden_layers:
            raise ValueError(f"cache holds {len(cache.ssm_states)} layers but the model has "
                             f"{self.config.num_hidden_layers}")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        w = self.lm_head.weight
        return self.lm_head(x.to(w.dtype)).to(compute_dtype(w.dtype))

    # ---- recurrent form ---------------------------------------------------------------------
    @torch.inference_mode()
    def init_cache(self, batch: int) -> MambaCache:
        """An empty cache (all zeros: the state before any token) for ``batch`` sequences."""
        positive_int("batch", batch)
        states = [layer.mixer.init_states(batch) for layer in self.backbone.layers]
        return MambaCache([c for c, _ in states], [h for _, h in states])

    @staticmethod
    def cache_nbytes(cache: MambaCache) -> int:
        return cache.nbytes()

    def _step(self, token_ids: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        x = self.backbone.embeddings(token_ids)                  # (b, D)
        for layer, conv, ssm in zip(self.backbone.layers, cache.conv_states, cache.ssm_states):
            x = layer.step(x, conv, ssm)                         # (b, D)
        cache.seqlen += 1
        return self._logits(self.backbone.norm_f(x))             # (b, V)

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor, cache: MambaCache):
        """Read one token per sequence: token_ids (b,) -> (logits (b, V), cache), the cache
        updated in place. Memory does not grow with the number of tokens read."""
        check_token_ids(token_ids, self.config.vocab_size, name="token_ids", dim=1,
                        device=self.lm_head.weight.device)
        self._check_cache(cache, token_ids.shape[0])
        return self._step(token_ids, cache), cache

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Continue each prompt by ``max_new_tokens`` tokens: input_ids (b, l) -> (b, l + new).

        The prompt is read in parallel (one forward pass, which also fills the cache), then
        every new token costs one :meth:`step`. temperature 0 picks the most likely token
        (greedy); otherwise tokens are sampled from softmax(logits / temperature), restricted to
        the ``top_k`` most likely when given, with a generator seeded by ``seed``.
        ``attention_mask`` (b, l): for a batch of prompts of different lengths, left-padded
        (0 for padding); each row continues as its prompt would alone.
        """
        check_token_ids(input_ids, self.config.vocab_size, device=self.lm_head.weight.device)
        non_negative_int("max_new_tokens", max_new_tokens)
        finite_number("temperature", temperature, minimum=0)
        if top_k is not None:
            positive_int("top_k", top_k)
        if attention_mask is not None:
            check_mask(attention_mask, input_ids, left_padded=True)
        if max_new_tokens == 0:
            return input_ids.clone()
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=input_ids.device)
            generator.manual_seed(seed if seed is not None else torch.seed())

        def choose(logits):                                      # logits (b, V) -> (b,)
            if temperature == 0:
                return logits.argmax(-1)
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]

        logits, cache = self(input_ids, attention_mask, return_cache=True)   # prefill: (b, l, V)
        out = torch.empty(input_ids.shape[0], input_ids.shape[1] + max_new_tokens,
                          dtype=input_ids.dtype, device=input_ids.device)
        out[:, :input_ids.shape[1]] = input_ids
        token = choose(logits[:, -1])
        for i in range(input_ids.shape[1], out.shape[1]):
            out[:, i] = token
            if i + 1 < out.shape[1]:
                token = choose(self._step(token, cache))
        return out

    # ---- checkpoints (ssm_tutor.checkpoint) --------------------------------------------------
    def _tied(self) -> dict:
        """The checkpoint key that is a copy of another (the tied head), for load_state."""
        return {"lm_head.weight": "backbone.embeddings.weight"} if self.config.tie_word_embeddings else {}

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face Mamba layout) into ``path``,
        atomically (see :func:`ssm_tutor.checkpoint.write_checkpoint`; NaN weights are refused)."""
        if (self.mixer_kind, self.gated) != (self.checkpoint_mixer, True):
            raise TypeError(f"save_pretrained writes the Hugging Face Mamba format, which has no mixer="
                            f"{self.mixer_kind!r}, gated={self.gated}; use ssm_tutor.baselines.save_pretrained")
        cfg = self.config.to_dict()
        cfg["dtype"] = str(self.lm_head.weight.dtype).removeprefix("torch.")
        tensors = {k: v for k, v in self.state_dict().items() if k not in self._tied()}
        write_checkpoint(path, cfg, tensors)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None, fast: bool = True, *,
                        revision: str | None = None) -> "MambaLM":
        """Load a checkpoint directory written by :meth:`save_pretrained`, by
        ``transformers.MambaForCausalLM.save_pretrained``, or by ``mamba_ssm`` (config.json +
        model.safetensors, sharded safetensors, or pytorch_model.bin read with weights_only);
        or a released model by its Hugging Face Hub id, e.g. ``"state-spaces/mamba-130m-hf"``
        (``ssm_tutor.hub.RELEASED_MAMBA`` lists them), fetched into the Hugging Face cache once
        (see :mod:`ssm_tutor.hub`; ``revision``: a branch, tag or commit of the hub repository).
        (For a subclass: its family's transformers class, e.g. ``Mamba2ForCausalLM``.)

        Raises :class:`CheckpointError` naming every missing, unexpected or mis-shaped key, and
        FileNotFoundError for a checkpoint that is not there (offline and not cached included).
        """
        directory = resolve_directory(path, revision=revision)
        config = cls.config_class.from_dict(read_config(directory))
        state = read_tensors(directory)
        if "backbone.embedding.weight" in state and "backbone.embeddings.weight" not in state:
            state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")   # official name
        model = cls(config, fast=fast)
        load_state(model, state, what=cls.__name__, tied=model._tied())
        return model.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else model
