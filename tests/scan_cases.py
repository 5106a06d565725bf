"""Inputs and options shared by the tests of the teaching scans (test_scan.py) and of the fast
layer's fused scan (test_fast_scan.py)."""

from __future__ import annotations

import torch


def scan_inputs(b=2, d=4, l=19, n=3, groups=0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    return dict(
        u=torch.randn(b, d, l, generator=g, dtype=dtype),
        delta=torch.randn(b, d, l, generator=g, dtype=dtype) * 0.5,
        A=-torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1,
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
        D=torch.randn(d, generator=g, dtype=dtype),
        z=torch.randn(b, d, l, generator=g, dtype=dtype),
        delta_bias=torch.randn(d, generator=g, dtype=dtype) * 0.3,
    )


OPTIONS = {
    "plain": dict(keep=(), softplus=False, last=False, groups=0),
    "D+z": dict(keep=("D", "z"), softplus=False, last=True, groups=0),
    "bias+softplus": dict(keep=("delta_bias",), softplus=True, last=True, groups=0),
    "all, grouped B/C": dict(keep=("D", "z", "delta_bias"), softplus=True, last=True, groups=2),
}


def call_scan(fn, x, opt, **extra):
    kw = {k: x[k] for k in opt["keep"]}
    delta = x["delta"] if opt["softplus"] else x["delta"].abs()     # without softplus Δ must be ≥ 0
    return fn(x["u"], delta, x["A"], x["B"], x["C"], delta_softplus=opt["softplus"],
              return_last_state=opt["last"], **kw, **extra)


def scan_loss(out):
    y, h = out
    return (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum() + (h.abs() ** 2).sum()


def complex_inputs(b=2, d=3, l=9, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.complex(-torch.rand(d, n, generator=g, dtype=torch.float64) - 0.1,
                      torch.randn(d, n, generator=g, dtype=torch.float64) * 3)            # (d, n) complex
    return dict(u=torch.randn(b, d, l, generator=g, dtype=torch.float64),
                delta=torch.rand(b, d, l, generator=g, dtype=torch.float64) * 0.5, A=A,
                B=torch.randn(b, n, l, generator=g, dtype=torch.complex128),
                C=torch.randn(b, n, 2 * l, generator=g, dtype=torch.float64))           # (re, im) interleaved


def assert_scans_agree(scan, reference, x, opt, names, *, x_reference=None, atol=1e-11, grad_atol=1e-10):
    """``call_scan(scan, x, opt)`` equals ``call_scan(reference, x_reference or x, opt)``: values
    (y, last state), and the gradients of ``scan_loss`` with respect to the inputs in ``names``."""
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in (x_reference or x).items()}
    got, expected = call_scan(scan, leaves, opt), call_scan(reference, ref_leaves, opt)
    torch.testing.assert_close(got, expected, atol=atol, rtol=atol)
    grads = torch.autograd.grad(scan_loss(got), [leaves[k] for k in names])
    ref_grads = torch.autograd.grad(scan_loss(expected), [ref_leaves[k] for k in names])
    for name, g, e in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, e, atol=grad_atol, rtol=grad_atol, msg=lambda m, name=name: f"grad of {name}: {m}")
    return got
