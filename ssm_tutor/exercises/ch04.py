"""Exercises of chapter 4 (``notebooks/04_selection.ipynb``): selection.

04.1  one step of Mamba's discretisation: Ā = exp(Δ A) (zero-order hold) and B̄u = Δ B u (Euler);
      expected values from ``scipy.signal.cont2discrete`` ("zoh" for Ā, "euler" for B̄).
04.2  the selective scan as a loop over time; expected values from
      :func:`ssm_tutor.selective.selective_scan_ref` (itself checked against transformers' Mamba).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import cont2discrete

from ssm_tutor.exercises import exercise
from ssm_tutor.selective import selective_scan_ref


def _scipy_step(delta: float, a: float, b: float):
    """Ā by zero-order hold and B̄ by Euler for the scalar system h' = a h + b u (SciPy's formulas)."""
    system = (np.array([[a]]), np.array([[b]]), np.array([[1.0]]), np.array([[0.0]]))
    A_zoh = cont2discrete(system, delta, method="zoh")[0][0, 0]
    B_euler = cont2discrete(system, delta, method="euler")[1][0, 0]
    return A_zoh, B_euler


@exercise("04.1", "one discretisation step: Ā = exp(ΔA), B̄u = ΔBu", atol=1e-10, rtol=1e-8)
def discretize_step_cases():
    g = torch.Generator().manual_seed(41)
    for b, d, n in [(1, 1, 1), (2, 3, 4), (3, 5, 2)]:
        delta = F.softplus(torch.randn(b, d, generator=g, dtype=torch.float64))  # (b, d) > 0
        A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 4 - 0.5          # (d, n) < 0
        B = torch.randn(b, n, generator=g, dtype=torch.float64)                    # (b, n)
        u = torch.randn(b, d, generator=g, dtype=torch.float64)                    # (b, d)
        A_bar = np.empty((b, d, n))
        Bu_bar = np.empty((b, d, n))
        for i in range(b):
            for c in range(d):
                for k in range(n):
                    a_zoh, b_euler = _scipy_step(delta[i, c].item(), A[c, k].item(), B[i, k].item())
                    A_bar[i, c, k] = a_zoh
                    Bu_bar[i, c, k] = b_euler * u[i, c].item()
        yield (f"b={b}, d={d}, n={n}", (delta, A, B, u), {},
               (torch.from_numpy(A_bar), torch.from_numpy(Bu_bar)))


@exercise("04.2", "the selective scan as a loop over time", atol=1e-10, rtol=1e-8)
def selective_loop_cases():
    g = torch.Generator().manual_seed(42)
    for b, d, l, n in [(1, 1, 1, 1), (1, 2, 5, 3), (2, 3, 8, 4)]:
        u = torch.randn(b, d, l, generator=g, dtype=torch.float64)                       # (b, d, l)
        delta = F.softplus(torch.randn(b, d, l, generator=g, dtype=torch.float64))       # (b, d, l) > 0
        A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 2 - 0.1               # (d, n)
        B = torch.randn(b, n, l, generator=g, dtype=torch.float64)                       # (b, n, l)
        C = torch.randn(b, n, l, generator=g, dtype=torch.float64)                       # (b, n, l)
        D = torch.randn(d, generator=g, dtype=torch.float64)                             # (d,)
        expected = selective_scan_ref(u, delta, A, B, C, D=D)
        yield f"b={b}, d={d}, l={l}, n={n}", (u, delta, A, B, C, D), {}, expected
