"""The Mamba mixer's forward pass, arranged for a CPU.

The same computation as the teaching path (:meth:`ssm_tutor.mamba.MambaMixer.forward`, which
``tests/test_mamba.py`` holds this to), with three differences in *how*, none in *what*:

* activations stay time-major, (b, l, channels) in memory, as the linear layers produce and
  consume them; the convolution and the scan see (b, E, l) *views* of that memory (the official
  layout, with transposed strides), so no (b, E, l) tensor is copied into channel-major order,
  and the fused scan reads and writes each time step's channels contiguously (~15% faster than
  channel-major at E=1536, L=2048, measured);
* the causal depthwise convolution runs as a (1 × K) conv2d over a (b, E, 1, l) view: with
  channels innermost in memory ("channels last") oneDNN convolves in place and answers
  time-major (``nn.Conv1d`` called as a module would first copy to channel-major);
* the scan is stage 5's ``selective_scan(method="auto")`` (the fused chunked CPU scan, or stage
  6's Triton kernel on a GPU), with the gate z fused into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm_tutor.scan import selective_scan

__all__ = ["mamba_mixer_forward"]


def mamba_mixer_forward(mixer, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        return_states: bool = False):
    """``mixer`` (a :class:`ssm_tutor.mamba.MambaMixer`) applied to x (b, l, D) -> (b, l, D)
    [, (conv_state (b, E, K-1), ssm_state (b, E, N))], the fast way. Arguments and results as
    the teaching path's."""
    b, l, _ = x.shape
    E, N, K, R = mixer.d, mixer.n, mixer.d_conv, mixer.dt_rank
    xz = mixer.in_proj(x)                                        # (b, l, 2E), or (b, l, E) without the gate
    u = xz[..., :E].transpose(1, 2)                              # (b, E, l) view of time-major memory
    z = xz[..., E:].transpose(1, 2) if mixer.gated else None     # (b, E, l) view
    if attention_mask is not None:
        u = u * attention_mask[:, None, :].to(u.dtype)           # padding feeds nothing into the conv
    conv_state = F.pad(u[:, :, -(K - 1):], (max(0, K - 1 - l), 0)) if return_states and K > 1 \
        else u.new_zeros(b, E, max(K - 1, 0))                    # last K-1 conv inputs: (b, E, K-1)
    u = F.conv2d(u.unsqueeze(2), mixer.conv1d.weight.unsqueeze(2), mixer.conv1d.bias,
                 padding=(0, K - 1), groups=E)                   # (b, E, 1, l + K - 1), channels last
    u = F.silu(u[..., :l].squeeze(2))                            # (b, E, l), time-major in memory
    if attention_mask is not None:
        u = u * attention_mask[:, None, :].to(u.dtype)           # and nothing into the state
    dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [R, N, N], dim=-1)   # (b, l, R), (b, l, N) ×2
    delta = mixer.dt_proj(dt).transpose(1, 2)                    # Δ before softplus, bias included: (b, E, l)
    wide = torch.float64 if u.dtype == torch.float64 else torch.float32   # the scan's precision
    A = -torch.exp(mixer.A_log.to(wide))                         # (E, N)
    out = selective_scan(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), mixer.D.to(wide), z=z,
                         delta_softplus=True, return_last_state=return_states)
    y, ssm_state = out if return_states else (out, None)         # y: (b, E, l), time-major in memory
    y = mixer.out_proj(y.transpose(1, 2))                        # (b, l, D)
    return (y, (conv_state, ssm_state)) if return_states else y
