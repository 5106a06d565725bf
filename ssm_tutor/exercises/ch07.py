"""Exercises of chapter 7 (``notebooks/07_mamba_model.ipynb``): the full Mamba model.

07.1  RMSNorm: y = x / sqrt(mean(x²) + ε) · w, over the last dimension.
07.2  one step of the causal depthwise convolution, with its sliding window of K-1 inputs.
07.3  one step of the selective SSM: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t, y_t = C_t h_t + D x_t.

Expected values come from :mod:`ssm_tutor.mamba` (``RMSNorm``, ``causal_conv_step``,
``selective_ssm_step``), which ``tests/test_mamba.py`` checks against transformers' own
``MambaRMSNorm``, ``causal_conv1d_update`` and ``mamba_selective_state_update``. The learner's
functions are pure: they return the new state instead of updating it in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm_tutor.exercises import exercise
from ssm_tutor.mamba import RMSNorm, causal_conv_step, selective_ssm_step


@exercise("07.1", "RMSNorm", atol=1e-10, rtol=1e-8)
def rmsnorm_cases():
    g = torch.Generator().manual_seed(71)
    for shape, eps in [((5,), 1e-5), ((2, 3, 8), 1e-5), ((4, 17), 1e-2)]:
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3                   # (..., d)
        weight = torch.randn(shape[-1], generator=g, dtype=torch.float64)              # (d,)
        norm = RMSNorm(shape[-1], eps).double()
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)
        yield f"x of shape {shape}, eps={eps:g}", (x, weight, eps), {}, expected


@exercise("07.2", "one step of the causal depthwise convolution", atol=1e-10, rtol=1e-8)
def conv_step_cases():
    g = torch.Generator().manual_seed(72)
    for b, E, K, bias in [(1, 1, 2, False), (2, 3, 4, True), (3, 5, 3, True)]:
        state = torch.randn(b, E, K - 1, generator=g, dtype=torch.float64)             # (b, E, K-1)
        x = torch.randn(b, E, generator=g, dtype=torch.float64)                        # (b, E)
        weight = torch.randn(E, K, generator=g, dtype=torch.float64)                   # (E, K)
        bb = torch.randn(E, generator=g, dtype=torch.float64) if bias else None        # (E,)
        new_state = state.clone()
        y = causal_conv_step(new_state, x, weight, bb)
        yield f"b={b}, E={E}, K={K}, bias={bias}", (state.clone(), x, weight, bb), {}, (y, new_state)


@exercise("07.3", "one step of the selective SSM", atol=1e-10, rtol=1e-8)
def ssm_step_cases():
    g = torch.Generator().manual_seed(73)
    for b, E, N in [(1, 1, 1), (2, 3, 4), (2, 6, 16)]:
        h = torch.randn(b, E, N, generator=g, dtype=torch.float64)                     # (b, E, N)
        x = torch.randn(b, E, generator=g, dtype=torch.float64)                        # (b, E)
        delta = F.softplus(torch.randn(b, E, generator=g, dtype=torch.float64))        # Δ > 0: (b, E)
        A = -torch.arange(1, N + 1, dtype=torch.float64).expand(E, N).clone()          # (E, N)
        B = torch.randn(b, N, generator=g, dtype=torch.float64)                        # (b, N)
        C = torch.randn(b, N, generator=g, dtype=torch.float64)                        # (b, N)
        D = torch.randn(E, generator=g, dtype=torch.float64)                           # (E,)
        new_h = h.clone()
        y = selective_ssm_step(new_h, x, delta, A, B, C, D)
        yield f"b={b}, E={E}, N={N}", (h.clone(), x, delta, A, B, C, D), {}, (y, new_h)
