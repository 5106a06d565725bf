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
fixed-size cache: per layer the last K-1 conv inputs (E, K-1) and the SSM state (E, N).

Two memory layouts make it fast on a CPU (``benchmarks/bench_model.py``; notebook 7 quotes the
numbers): the parallel forward keeps activations time-major, (b, l, channels), and hands the
conv and the scan transposed views of them; and the projection weights are stored input-major
(``store_input_major_``), which speeds up the one-token products of ``step``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_tutor.scan import selective_scan   # stage 5 (picks stage 6's Triton kernel on a GPU)
from ssm_tutor.checkpoint import CheckpointError, load_state, read_config, read_tensors, resolve_directory, write_checkpoint
from ssm_tutor.validate import check_token_ids

__all__ = ["MambaConfig", "RMSNorm", "MambaMixer", "MambaBlock", "MambaBackbone", "MambaLM",
           "MambaCache", "CheckpointError", "causal_conv_step", "selective_ssm_step"]


# --------------------------------------------------------------------------------------------
# Configuration (the Hugging Face ``config.json``)
# --------------------------------------------------------------------------------------------

@dataclass
class MambaConfig:
    """The hyper-parameters, with the names and defaults of ``transformers.MambaConfig``.

    ``time_step_rank="auto"`` becomes ceil(hidden_size / 16). Fields this class does not use
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

    def __post_init__(self):
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        for name in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand",
                     "conv_kernel", "time_step_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
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

    @property
    def intermediate_size(self) -> int:
        """E = expand * D, the width of the SSM branch."""
        return self.expand * self.hidden_size

    def to_dict(self) -> dict:
        """The ``config.json`` content, readable by ``transformers.MambaConfig``."""
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        out.update(model_type="mamba", architectures=["MambaForCausalLM"],
                   intermediate_size=self.intermediate_size)
        out.setdefault("dtype", "float32")
        return out

    @classmethod
    def from_dict(cls, config: dict) -> "MambaConfig":
        """Read a Hugging Face ``config.json`` dict, or an official ``mamba_ssm`` one
        (``d_model``, ``n_layer``, ``ssm_cfg``, ``pad_vocab_size_multiple``)."""
        config = dict(config)
        if "d_model" in config and "hidden_size" not in config:
            config = _from_mamba_ssm_config(config)
        model_type = config.pop("model_type", "mamba")
        if model_type != "mamba":
            raise ValueError(f"config.json has model_type {model_type!r}; this class reads 'mamba' (Mamba-1)")
        config.pop("architectures", None)
        intermediate = config.pop("intermediate_size", None)
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in config.items() if k in names}
        extra = {k: v for k, v in config.items() if k not in names}
        cfg = cls(**known, extra=extra)
        if intermediate is not None and intermediate != cfg.intermediate_size:
            raise ValueError(f"config.json says intermediate_size={intermediate} but expand * hidden_size = "
                             f"{cfg.expand} * {cfg.hidden_size} = {cfg.intermediate_size}")
        return cfg

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path) -> "MambaConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None


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

def store_input_major_(module: nn.Module) -> None:
    """Keep ``module.weight``, an (out, in) matrix, in the memory order of its transpose.

    Shape, values, state-dict key and checkpoint bytes stay those of ``nn.Linear`` (a checkpoint
    stores a contiguous copy); only the order in memory changes, so that ``F.linear`` computes
    x Wᵀ with Wᵀ contiguous. For one token that product is a matrix-vector product, bound by
    reading W from memory, and MKL reads Wᵀ this way at ~25 GB/s against ~15 GB/s in PyTorch's
    default order (measured on the 2-core test machine; the 50k-vocabulary head's product takes
    6.5 ms instead of 9.9 ms): recurrent generation spends about 1.5x less time on its weights.
    The order survives ``.to()``, ``load_state_dict``, deep copies and optimiser steps.
    """
    weight = module.weight
    module.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)


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
    """
    window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)   # (b, E, K)
    conv_state.copy_(window[:, :, 1:])                           # drop the oldest input
    y = (window * weight).sum(-1)                                # (b, E)
    return y if bias is None else y + bias


def selective_ssm_step(h: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                       B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """One step of the selective SSM (paper Algorithm 2, one t), updating h in place:

        h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_t        y_t = C_t · h_t + D ⊙ x_t

    h (b, E, N) (its dtype is the compute dtype), x and delta (b, E) (Δ already softplus-ed),
    A (E, N), B and C (b, N), D (E,). Returns y_t (b, E) in h's dtype.
    """
    h.mul_(torch.mul(delta.unsqueeze(-1), A).exp_())             # Ā_t h_{t-1} (exp in place: one buffer)
    h.addcmul_((delta * x).unsqueeze(-1), B.unsqueeze(1).to(h.dtype))   # + B̄_t x_t
    y = torch.bmm(h, C.unsqueeze(-1).to(h.dtype)).squeeze(-1)    # C_t h_t: (b, E)
    return y if D is None else torch.addcmul(y, x, D)


class MambaMixer(nn.Module):
    """The Mamba block's mixer (paper Figure 3, Algorithm 2): gated, convolved, selective SSM.

    Input and output x: (b, l, D). Parameters (names as in the checkpoints):
        in_proj   (2E, D)        x -> [x, z]
        conv1d    (E, 1, K), (E,) depthwise causal convolution
        x_proj    (R + 2N, E)    x -> [Δ_low_rank, B, C]
        dt_proj   (E, R), (E,)   Δ_low_rank -> Δ (before softplus; the bias sets Δ's scale)
        A_log     (E, N)         A = -exp(A_log), real and negative (S4D-Real)
        D         (E,)           skip connection
        out_proj  (D, E)
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        D, E, N, K, R = (config.hidden_size, config.intermediate_size, config.state_size,
                         config.conv_kernel, config.time_step_rank)
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = E, N, K, R
        self.in_proj = nn.Linear(D, 2 * E, bias=config.use_bias)
        self.conv1d = nn.Conv1d(E, E, kernel_size=K, groups=E, padding=K - 1, bias=config.use_conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, D, bias=config.use_bias)
        self.reset_parameters()
        for linear in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
            store_input_major_(linear)                            # faster one-token products

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (Section 3.6 and the official code)."""
        cfg = self.config
        for linear in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj):
            linear.reset_parameters()                             # PyTorch's kaiming-uniform
        self.conv1d.reset_parameters()
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                linear.bias.zero_()
        # Δ's projection: weight ~ U(-s, s) with s = R^-1/2 (or constant s).
        s = cfg.time_step_rank ** -0.5 * cfg.time_step_scale
        if cfg.time_step_init_scheme == "constant":
            self.dt_proj.weight.fill_(s)
        else:
            self.dt_proj.weight.uniform_(-s, s)
        # Δ = softplus(bias) should start log-uniform in [time_step_min, time_step_max]:
        # bias = softplus⁻¹(Δ) = Δ + log(1 - exp(-Δ)).
        lo, hi = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
        dt = torch.exp(torch.rand(self.d_inner) * (hi - lo) + lo).clamp(min=cfg.time_step_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-Real: A_n = -(n + 1), stored as A_log = log(1..N) for every channel.
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        # GPT-2 style, as in the official init: scale the residual branch's output projection
        # by 1/sqrt(number of layers) so the residual stream's variance does not grow with depth.
        self.out_proj.weight /= math.sqrt(cfg.num_hidden_layers)

    def forward(self, x: torch.Tensor, return_states: bool = False):
        """The parallel form over a whole sequence. x: (b, l, D) -> (b, l, D).

        With ``return_states`` also returns the recurrent state after the last token:
        (conv_state (b, E, K-1), ssm_state (b, E, N)), ready for :meth:`step`.
        """
        b, l, _ = x.shape
        E, N, K, R = self.d_inner, self.d_state, self.d_conv, self.dt_rank
        # Everything stays time-major, (b, l, channels) in memory, as the linear layers produce
        # and consume it. The conv and the scan see (b, E, l) *views* of that memory (the
        # official layout, with transposed strides), so no (b, E, l) tensor is ever copied
        # into channel-major order, and the fused scan reads and writes each time step's
        # channels contiguously (~15% faster than channel-major at E=1536, L=2048, measured).
        xz = self.in_proj(x)                                     # (b, l, 2E)
        x, z = xz[..., :E].transpose(1, 2), xz[..., E:].transpose(1, 2)   # (b, E, l) views each
        conv_state = F.pad(x[:, :, -(K - 1):], (max(0, K - 1 - l), 0)) if return_states and K > 1 \
            else x.new_zeros(b, E, 0)                            # last K-1 conv inputs: (b, E, K-1)
        # the causal depthwise conv as a (1 × K) conv2d over a (b, E, 1, l) view: with channels
        # innermost in memory ("channels last") oneDNN convolves in place and answers time-major
        # (self.conv1d holds the weights; called as a module it would copy to channel-major first)
        x = F.conv2d(x.unsqueeze(2), self.conv1d.weight.unsqueeze(2), self.conv1d.bias,
                     padding=(0, K - 1), groups=E)               # (b, E, 1, l + K - 1)
        x = F.silu(x[..., :l].squeeze(2))                        # (b, E, l), time-major in memory

        x_dbl = self.x_proj(x.transpose(1, 2))                   # (b, l, R + 2N)
        dt, B, C = torch.split(x_dbl, [R, N, N], dim=-1)         # (b, l, R), (b, l, N), (b, l, N)
        delta = self.dt_proj(dt).transpose(1, 2)                 # Δ before softplus: (b, E, l)
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32   # the scan's precision
        A = -torch.exp(self.A_log.to(wide))                      # (E, N)
        out = selective_scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), self.D.to(wide), z=z,
                             delta_softplus=True, return_last_state=return_states)
        y, ssm_state = out if return_states else (out, None)    # y: (b, E, l), time-major in memory
        y = self.out_proj(y.transpose(1, 2))                     # (b, l, D)
        return (y, (conv_state, ssm_state)) if return_states else y

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
             A: torch.Tensor | None = None) -> torch.Tensor:
        """The recurrent form: one token. x: (b, D) -> (b, D); updates the two states in place.

        conv_state (b, E, K-1): the previous K-1 conv inputs, oldest first.
        ssm_state  (b, E, N):   h_{t-1}, in float32 (float64 for a float64 model).
        A          (E, N):      -exp(A_log) in ssm_state's dtype; computed here when not given
                                (``generate`` computes it once rather than once per token).

        Kept lean on purpose (it runs once per generated token and layer): about twenty small
        tensor operations, no allocation bigger than one (b, E, N) tensor.
        """
        # The linear layers are called as F.linear on their parameters rather than through
        # nn.Module.__call__: the same product without ~4 µs of hook handling per call (measured),
        # four calls per layer and token. (So forward hooks on those sub-modules do not fire here.)
        N, R = self.d_state, self.dt_rank
        x, z = F.linear(x, self.in_proj.weight, self.in_proj.bias).chunk(2, dim=-1)   # (b, E) each
        x = F.silu(causal_conv_step(conv_state, x, self.conv1d.weight[:, 0], self.conv1d.bias))  # (b, E)
        dt, B, C = torch.split(F.linear(x, self.x_proj.weight), [R, N, N], dim=-1)  # (b, R), (b, N), (b, N)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias).to(ssm_state.dtype))  # Δ_t: (b, E)
        if A is None:
            A = -torch.exp(self.A_log.to(ssm_state.dtype))       # (E, N)
        y = selective_ssm_step(ssm_state, x, delta, A, B, C, self.D)   # (b, E)
        y = y.to(x.dtype) * F.silu(z)                            # gate
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)   # (b, D)


class MambaBlock(nn.Module):
    """Pre-norm residual block: x <- x + Mixer(RMSNorm(x)). The residual stream stays in
    float32 when ``residual_in_fp32`` (it matters for half-precision weights only)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = MambaMixer(config)

    def _residual(self, x):
        return x.float() if self.residual_in_fp32 and x.dtype != torch.float64 else x

    def forward(self, x: torch.Tensor, return_states: bool = False):
        out = self.mixer(self.norm(x.to(self.norm.weight.dtype)), return_states=return_states)
        if return_states:
            return self._residual(x) + out[0], out[1]
        return self._residual(x) + out

    def step(self, x, conv_state, ssm_state, A=None):
        return self._residual(x) + self.mixer.step(self.norm(x.to(self.norm.weight.dtype)), conv_state, ssm_state, A)


class MambaBackbone(nn.Module):
    """Embeddings, the stack of blocks, the final norm (checkpoint prefix ``backbone.``)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        nn.init.normal_(self.embeddings.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, return_states: bool = False):
        """input_ids (b, l) -> normalised hidden states (b, l, D), and with ``return_states`` the
        per-layer states after the last token: ([conv (b, E, K-1)], [ssm (b, E, N)])."""
        x = self.embeddings(input_ids)                           # (b, l, D)
        conv_states, ssm_states = [], []
        for layer in self.layers:
            if return_states:
                x, (conv, ssm) = layer(x, return_states=True)
                conv_states.append(conv.detach().contiguous())      # inference state:
                ssm_states.append(ssm.detach().clone())             # no graph, its own memory
            else:
                x = layer(x)                                     # (b, l, D)
        x = self.norm_f(x)
        return (x, (conv_states, ssm_states)) if return_states else x


@dataclass
class MambaCache:
    """The whole inference state: per layer the conv window and the SSM state.

    Its size is fixed by the model, (K-1 + N) · E numbers per layer and sequence, however
    many tokens have been read: this is the "constant memory" of recurrent inference.
    """

    conv_states: list      # per layer (b, E, K-1)
    ssm_states: list       # per layer (b, E, N)
    seqlen: int = 0        # tokens read so far

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)


# --------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------

class MambaLM(nn.Module):
    """Mamba language model; state-dict keys are those of ``transformers.MambaForCausalLM``."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # The head's (V, D) matrix is read whole for every generated token (154 MB at V = 50280):
        # stored input-major it is read ~1.5x faster. Tied, the embedding shares that order; its
        # lookup then gathers a strided row, a few microseconds per token.
        if config.tie_word_embeddings:
            store_input_major_(self.backbone.embeddings)           # (V, D), the head's (out, in)
            self.lm_head.weight = self.backbone.embeddings.weight   # one matrix, two uses
        else:
            store_input_major_(self.lm_head)

    # ---- parallel form ----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, return_cache: bool = False):
        """input_ids (b, l) int64 -> logits (b, l, V) (float32), and the cache after the last
        token when ``return_cache`` (so :meth:`step` can continue the sequence)."""
        check_token_ids(input_ids, self.config.vocab_size, device=self.lm_head.weight.device)
        out = self.backbone(input_ids, return_states=return_cache)   # (b, l, D) [, states]
        x, states = out if return_cache else (out, None)
        logits = self.lm_head(x.to(self.lm_head.weight.dtype)).float()   # (b, l, V)
        return (logits, MambaCache(*states, input_ids.shape[1])) if return_cache else logits

    # ---- recurrent form ---------------------------------------------------------------------
    @torch.inference_mode()
    def init_cache(self, batch: int) -> MambaCache:
        """An empty cache (all zeros: the state before any token) for ``batch`` sequences."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        w = self.lm_head.weight
        state_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
        E, N, K = self.config.intermediate_size, self.config.state_size, self.config.conv_kernel
        L = self.config.num_hidden_layers
        return MambaCache([torch.zeros(batch, E, K - 1, dtype=w.dtype, device=w.device) for _ in range(L)],
                          [torch.zeros(batch, E, N, dtype=state_dtype, device=w.device) for _ in range(L)])

    @staticmethod
    def cache_nbytes(cache: MambaCache) -> int:
        return cache.nbytes()

    def _step(self, token_ids: torch.Tensor, cache: MambaCache, As: list | None = None) -> torch.Tensor:
        x = self.backbone.embeddings(token_ids)                  # (b, D)
        As = As or [None] * len(cache.ssm_states)
        for layer, conv, ssm, A in zip(self.backbone.layers, cache.conv_states, cache.ssm_states, As):
            x = layer.step(x, conv, ssm, A)                      # (b, D)
        cache.seqlen += 1
        return self.lm_head(self.backbone.norm_f(x).to(self.lm_head.weight.dtype)).float()   # (b, V)

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor, cache: MambaCache):
        """Read one token per sequence: token_ids (b,) -> (logits (b, V), cache), the cache
        updated in place. Memory does not grow with the number of tokens read."""
        check_token_ids(token_ids, self.config.vocab_size, name="token_ids", dim=1, device=self.lm_head.weight.device)
        if not isinstance(cache, MambaCache):
            raise TypeError(f"cache must be a MambaCache (from init_cache or forward(return_cache=True)), "
                            f"got {type(cache).__name__}")
        if len(cache.ssm_states) != self.config.num_hidden_layers or cache.ssm_states[0].shape[0] != token_ids.shape[0]:
            raise ValueError(f"cache holds {len(cache.ssm_states)} layers for batch {cache.ssm_states[0].shape[0]}, "
                             f"but the model has {self.config.num_hidden_layers} layers and token_ids has batch "
                             f"{token_ids.shape[0]}")
        return self._step(token_ids, cache), cache

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Continue each prompt by ``max_new_tokens`` tokens: input_ids (b, l) -> (b, l + new).

        The prompt is read in parallel (one forward pass, which also fills the cache), then
        every new token costs one :meth:`step`. temperature 0 picks the most likely token
        (greedy); otherwise tokens are sampled from softmax(logits / temperature), restricted to
        the ``top_k`` most likely when given, with a generator seeded by ``seed``.
        """
        check_token_ids(input_ids, self.config.vocab_size, device=self.lm_head.weight.device)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
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

        logits, cache = self(input_ids, return_cache=True)      # prefill: (b, l, V)
        As = [-torch.exp(layer.mixer.A_log.to(h.dtype))          # A per layer, once per call
              for layer, h in zip(self.backbone.layers, cache.ssm_states)]
        out = torch.empty(input_ids.shape[0], input_ids.shape[1] + max_new_tokens,
                          dtype=torch.long, device=input_ids.device)
        out[:, :input_ids.shape[1]] = input_ids
        token = choose(logits[:, -1])
        for i in range(input_ids.shape[1], out.shape[1]):
            out[:, i] = token
            if i + 1 < out.shape[1]:
                token = choose(self._step(token, cache, As))
        return out

    # ---- checkpoints (ssm_tutor.checkpoint) --------------------------------------------------
    def _tied(self) -> dict:
        """The checkpoint key that is a copy of another (the tied head), for load_state."""
        return {"lm_head.weight": "backbone.embeddings.weight"} if self.config.tie_word_embeddings else {}

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face Mamba layout) into ``path``,
        atomically (see :func:`ssm_tutor.checkpoint.write_checkpoint`; NaN weights are refused)."""
        cfg = self.config.to_dict()
        cfg["dtype"] = str(self.lm_head.weight.dtype).removeprefix("torch.")
        tensors = {k: v for k, v in self.state_dict().items() if k not in self._tied()}
        write_checkpoint(path, cfg, tensors)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None) -> "MambaLM":
        """Load a checkpoint directory written by :meth:`save_pretrained`, by
        ``transformers.MambaForCausalLM.save_pretrained``, or by ``mamba_ssm`` (config.json +
        model.safetensors, sharded safetensors, or pytorch_model.bin read with weights_only).

        Raises :class:`CheckpointError` naming every missing, unexpected or mis-shaped key.
        """
        directory = resolve_directory(path)
        config = MambaConfig.from_dict(read_config(directory))
        state = read_tensors(directory)
        if "backbone.embedding.weight" in state and "backbone.embeddings.weight" not in state:
            state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")   # official name
        model = cls(config)
        load_state(model, state, what="MambaLM", tied=model._tied())
        return model.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else model
