"""Exercises of chapter 6 (``notebooks/06_triton_kernel.ipynb``): the Triton SRAM kernel.

06.1  a Triton kernel for the linear recurrence h_t = a_t h_{t-1} + b_t started from a given
      state h0 (the carry a chunked kernel hands from one chunk to the next); expected values from
      stage 5's :func:`ssm_tutor.scan.linear_scan` (``method="sequential"``, ``h0=``).
06.2  the backward of the linear recurrence by a reverse scan, G_t = ∂L/∂h_t + a_{t+1} G_{t+1};
      expected gradients from PyTorch autograd through stage 5's ``linear_scan``.
06.3  the bytes a fused selective-scan forward moves to and from GPU memory; expected values
      from :func:`ssm_tutor.kernels.traffic.traffic` (``"fused"``).
"""

from __future__ import annotations

import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.kernels import traffic as _traffic
from ssm_tutor.scan import linear_scan


def _recurrence_inputs(g, rows, L, dtype=torch.float32):
    a = torch.rand(rows, L, generator=g, dtype=torch.float64).mul(0.6).add(0.3).to(dtype)   # (rows, L) in (0.3, 0.9)
    b = torch.randn(rows, L, generator=g, dtype=torch.float64).to(dtype)                     # (rows, L)
    return a, b


@exercise("06.1", "a Triton linear recurrence started from h0", atol=1e-5, rtol=1e-5)
def recurrence_h0_cases():
    g = torch.Generator().manual_seed(61)
    for rows, L in [(1, 1), (2, 7), (3, 16), (2, 21)]:
        a, b = _recurrence_inputs(g, rows, L)
        h0 = torch.randn(rows, generator=g, dtype=torch.float64).float()                      # (rows,)
        expected = linear_scan(a, b, "sequential", h0=h0)
        device = "cuda" if torch.cuda.is_available() else "cpu"                              # where a kernel runs
        yield (f"rows={rows}, L={L}", (a.to(device), b.to(device), h0.to(device)), {}, expected)


@exercise("06.2", "the backward of h_t = a_t h_{t-1} + b_t by a reverse scan", atol=1e-10, rtol=1e-8)
def recurrence_backward_cases():
    g = torch.Generator().manual_seed(62)
    for rows, L in [(1, 1), (1, 5), (3, 12)]:
        a, b = _recurrence_inputs(g, rows, L, torch.float64)
        a.requires_grad_(True)
        b.requires_grad_(True)
        h = linear_scan(a, b, "sequential")                                                    # (rows, L)
        grad_h = torch.randn(rows, L, generator=g, dtype=torch.float64)                        # ∂L/∂h_t
        # L = 1: h_0 = b_0 does not depend on a, so its gradient is zero (materialised)
        grad_a, grad_b = torch.autograd.grad(h, (a, b), grad_h, allow_unused=True, materialize_grads=True)
        yield (f"rows={rows}, L={L}", (a.detach(), h.detach(), grad_h), {}, (grad_a, grad_b))


@exercise("06.3", "bytes moved by the fused selective-scan forward")
def fused_bytes_cases():
    for b, d, l, n, size in [(1, 1, 1, 1, 4), (2, 3, 5, 4, 4), (8, 2048, 2048, 16, 2), (4, 768, 1000, 16, 2)]:
        expected = _traffic.traffic("fused", b, d, l, n, {2: "bf16", 4: "fp32"}[size]).total
        yield (f"b={b}, d={d}, l={l}, n={n}, {size}-byte inputs", (b, d, l, n, size), {}, expected)
