"""The mixers' forward passes, arranged for a CPU: Mamba's and Mamba-2's.

The same computations as the teaching paths (:meth:`ssm_tutor.mamba.MambaShell.forward` and
:meth:`ssm_tutor.mamba2.Mamba2Mixer.forward`, which ``tests/test_mamba.py`` and
``tests/test_mamba2.py`` hold these to), with differences in *how*, none in *what*:

* activations stay time-major, (b, l, channels) in memory, as the linear layers produce and
  consume them; the convolution and the scan see (b, E, l) *views* of that memory (the official
  layout, with transposed strides), so no (b, E, l) tensor is copied into channel-major order,
  and the fused scan reads and writes each time step's channels contiguously (~15% faster than
  channel-major at E=1536, L=2048, measured);
* the causal depthwise convolution is :func:`causal_conv_time_major`: with channels innermost in
  memory ("channels last") oneDNN convolves in place and answers time-major (``nn.Conv1d``
  called as a module would first copy to channel-major);
* Mamba's scan is stage 5's ``selective_scan(method="auto")`` (the fused chunked CPU scan, or
  stage 6's Triton kernel on a GPU), with the gate z fused into it; Mamba-2's is the fast SSD
  scan, ``ssd_scan(method="fast")`` (:mod:`ssm_tutor.fast.ssd`), where the teaching path runs the
  chunked algorithm's four steps as written (``method="chunked"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm_tutor.convolution import compute_dtype
from ssm_tutor.mamba import after_window, last_conv_inputs, zero_padding
from ssm_tutor.scan import selective_scan
from ssm_tutor.ssd import ssd_scan

__all__ = ["mamba_mixer_forward", "mamba2_mixer_forward", "causal_conv_time_major"]


def causal_conv_time_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The causal depthwise convolution of a time-major sequence, answered time-major.

    x (b, l, C) as the input projection makes it; weight (C, 1, K) and bias (C,) of an
    ``nn.Conv1d(C, C, K, groups=C, padding=K-1)``. Returns its first l outputs, (b, l, C), equal to
    ``conv1d(x.transpose(1, 2))[..., :l].transpose(1, 2)``. Run as a (1 × K) conv2d over the
    (b, C, 1, l) view of x's memory, which has channels innermost ("channels last"): oneDNN then
    convolves in place and answers in the same layout, where ``nn.Conv1d`` would first copy x to
    channel-major order and its output would be channel-major, so that every later time-major
    read is strided (measured for Mamba-2 at b = 1, l = 2048, C = 1792: 16 ms against 57 ms for
    the conv and its SiLU, and the SSD scan after it 15% faster).
    """
    b, l, C = x.shape
    K = weight.shape[-1]
    out = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight.unsqueeze(2), bias, padding=(0, K - 1), groups=C)
    return out[..., :l].squeeze(2).transpose(1, 2)                     # (b, l, C), time-major in memory


def mamba_mixer_forward(mixer, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        return_states: bool = False, initial_states: tuple | None = None):
    """``mixer`` (a :class:`ssm_tutor.mamba.MambaMixer`) applied to x (b, l, D) -> (b, l, D)
    [, (conv_state (b, E, K-1), ssm_state (b, E, N))], the fast way. Arguments and results as
    the teaching path's."""
    E, N, K, R = mixer.d, mixer.n, mixer.d_conv, mixer.dt_rank
    l = x.shape[1]
    window, h0 = (None, None) if initial_states is None else initial_states
    xz = mixer.in_proj(x)                                        # (b, l, 2E), or (b, l, E) without the gate
    u = after_window(zero_padding(xz[..., :E], attention_mask), window)   # (b, [K-1+]l, E): padding feeds nothing
    z = xz[..., E:].transpose(1, 2) if mixer.gated else None     # (b, E, l) view
    conv_state = last_conv_inputs(u, K) if return_states else None
    u = zero_padding(F.silu(causal_conv_time_major(u, mixer.conv1d.weight, mixer.conv1d.bias)[:, -l:]),
                      attention_mask)                            # (b, l, E), and nothing into the state
    dt, B, C = torch.split(mixer.x_proj(u), [R, N, N], dim=-1)   # (b, l, R), (b, l, N) ×2
    delta = mixer.dt_proj(dt).transpose(1, 2)                    # Δ before softplus, bias included: (b, E, l)
    wide = compute_dtype(u.dtype)                                # the scan's precision
    A = -torch.exp(mixer.A_log.to(wide))                         # (E, N)
    out = selective_scan(u.transpose(1, 2), delta, A, B.transpose(1, 2), C.transpose(1, 2), mixer.D.to(wide),
                         z=z, delta_softplus=True, return_last_state=return_states, initial_state=h0)
    y, ssm_state = out if return_states else (out, None)         # y: (b, E, l), time-major in memory
    y = mixer.out_proj(y.transpose(1, 2))                        # (b, l, D)
    return (y, (conv_state, ssm_state)) if return_states else y


def mamba2_mixer_forward(mixer, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         return_states: bool = False, initial_states: tuple | None = None):
    """``mixer`` (a :class:`ssm_tutor.mamba2.Mamba2Mixer`) applied to x (b, l, D) -> (b, l, D)
    [, (conv_state (b, E + 2gN, K-1), ssm_state (b, H, P, N))], the fast way. Arguments and
    results as the teaching path's."""
    cfg = mixer.config
    E, H, K = cfg.intermediate_size, cfg.num_heads, cfg.conv_kernel
    l = x.shape[1]
    window, h0 = (None, None) if initial_states is None else initial_states
    z, xBC, dt = torch.split(mixer.in_proj(x), [E, mixer.conv_dim, H], dim=-1)   # (b,l,E), (b,l,E+2gN), (b,l,H)
    xBC = after_window(zero_padding(xBC, attention_mask), window)   # padding feeds nothing into the conv
    conv_state = last_conv_inputs(xBC, K) if return_states else None
    xBC = zero_padding(F.silu(causal_conv_time_major(xBC, mixer.conv1d.weight, mixer.conv1d.bias)[:, -l:]),
                        attention_mask)                          # (b, l, E + 2gN), and nothing into the state
    xs, B, C = mixer.split_xBC(xBC)                              # views: (b, l, H, P), (b, l, g, N) ×2
    wide = compute_dtype(x.dtype)
    y, ssm_state = ssd_scan(xs, dt, -torch.exp(mixer.A_log.to(wide)), B, C, cfg.chunk_size, D=mixer.D.to(wide),
                            dt_bias=mixer.dt_bias.to(wide), dt_softplus=True, dt_limit=cfg.time_step_limit,
                            initial_states=h0, return_final_states=True, method="fast")   # (b, l, H, P), (b, H, P, N)
    y = mixer.out_proj(mixer.norm(y.flatten(-2), z))             # (b, l, D)
    return (y, (conv_state, ssm_state)) if return_states else y
