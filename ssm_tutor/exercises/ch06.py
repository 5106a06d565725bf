"""Exercises of chapter 6 (``notebooks/06_triton_kernel.ipynb``): the Triton SRAM kernel.

06.1  a reverse scan in Triton: G_t = g_t + a_{t+1} G_{t+1}, the gradient recurrence of
      h_t = a_t h_{t-1} + b_t, walked from the last block to the first; expected values from
      PyTorch autograd through stage 5's sequential :func:`ssm_tutor.scan.linear_scan`.
06.2  the D skip, the SiLU gate and grouped B, C added to the blocked selective-scan kernel;
      expected values from stage 4's :func:`ssm_tutor.selective.selective_scan_ref`.
06.3  the gradients of the gate and the skip, ∂z and ∂D, for y = (y_ssm + D u) · SiLU(z);
      expected values from PyTorch autograd.

Each case's expected answer is a :class:`ssm_tutor.exercises.feedback.Answer`: the right outputs
with their names, and what each typical mistake returns instead, so that a wrong answer that
equals a known mistake gets that mistake's hint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, compare_answer
from ssm_tutor.scan import linear_scan
from ssm_tutor.selective import selective_scan_ref


def _device() -> str:
    """Where a learner's Triton kernel runs: the GPU when there is one, else the interpreter's CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ 06.1 the reverse scan
def reverse_recurrence_loop(a, g, G_last, *, shift: int = 1):
    """G_t = g_t + a_{t+shift} G_{t+1} backwards from G_{L-1} = g_{L-1} + a_{L-1+shift} G_last,
    where a past the end is 1. shift = 1 is the right recurrence, shift = 0 the index mistake."""
    L = g.shape[-1]
    ones = torch.ones_like(a[..., :1])
    a_next = torch.cat([a, ones], dim=-1)[..., shift:shift + L]        # (rows, L): a_{t+shift}
    G = torch.empty_like(g)
    carry = G_last
    for t in reversed(range(L)):
        carry = g[..., t] + a_next[..., t] * carry
        G[..., t] = carry
    return G


def reverse_scan_swapped_combine(a, g, G_last):
    """What tl.associative_scan(..., reverse=True) returns over one block with the combine's
    arguments swapped, then folded with G_last as a correct kernel would: the mistake of
    treating the left argument as the *earlier* element under reverse=True."""
    L = g.shape[-1]
    a_next = torch.cat([a[..., 1:], torch.ones_like(a[..., :1])], dim=-1)
    # reverse=True is flip, scan, flip (Triton's interpreter and JAX): the accumulator, the
    # combine's left argument, holds the *later* positions. The swapped combine puts them right.
    acc_a, acc_b = a_next[..., L - 1].clone(), g[..., L - 1].clone()
    out_a, out_b = torch.empty_like(g), torch.empty_like(g)
    out_a[..., L - 1], out_b[..., L - 1] = acc_a, acc_b
    for t in reversed(range(L - 1)):
        x_a, x_b = a_next[..., t], g[..., t]
        acc_a, acc_b = acc_a * x_a, acc_a * x_b + acc_b            # swapped: (a1 a2, a1 b2 + b1)
        out_a[..., t], out_b[..., t] = acc_a, acc_b
    return out_b + out_a * G_last[..., None]


def _block_boundary_hint(right, got) -> str | None:
    """When only the last positions are right, the carry between blocks is the suspect."""
    if not isinstance(got, torch.Tensor) or got.shape != right.shape or right.shape[-1] < 2:
        return None
    wrong = ((got.detach().cpu().double() - right.double()).abs() > 1e-4 + 1e-4 * right.double().abs())
    wrong_t = wrong.reshape(-1, right.shape[-1]).any(0)
    if not wrong_t.any() or wrong_t[-1]:
        return None
    first_right = int(torch.nonzero(wrong_t).max()) + 1
    return (f"positions t >= {first_right} are right and t = {first_right - 1} is wrong: the block after a "
            f"boundary is fine, so look at the carry — each block must pass on G at its *first* position "
            f"to the block before it, and the block before it adds Ā_{{t+1}} × that carry")


@exercise("06.1", "a reverse scan in Triton: G_t = g_t + a_{t+1} G_{t+1}", atol=1e-5, rtol=1e-5,
          compare=compare_answer)
def reverse_scan_cases():
    gen = torch.Generator().manual_seed(61)
    for rows, L in [(1, 1), (2, 7), (3, 16), (2, 37)]:
        a = torch.rand(rows, L, generator=gen, dtype=torch.float64) * 0.6 + 0.3   # (rows, L) in (0.3, 0.9)
        g = torch.randn(rows, L, generator=gen, dtype=torch.float64)              # ∂L/∂h_t directly
        G_last = torch.randn(rows, generator=gen, dtype=torch.float64)            # ∂L/∂h_{L-1} from outside
        # the outside reference: autograd through h_t = a_t h_{t-1} + b_t; G_t = ∂L/∂b_t
        b = torch.randn(rows, L, generator=gen, dtype=torch.float64, requires_grad=True)
        h = linear_scan(a, b, "sequential")                                        # (rows, L)
        loss = (g * h).sum() + (G_last * h[:, -1]).sum()
        (G,) = torch.autograd.grad(loss, b)
        f32 = lambda x: x.float()
        expected = Answer(f32(G), ("G",), mistakes=(
            Mistake("the combine's order under reverse=True: the scan runs from the end, so the combine's "
                    "LEFT argument is the LATER element; (a_l, b_l) ∘ (a_r, b_r) = (a_l a_r, a_r b_l + b_r) "
                    "applies the later step first, which is what G needs",
                    f32(reverse_scan_swapped_combine(a, g, G_last))),
            Mistake("G_t takes a_{t+1}, the factor of the step AFTER t (h_{t+1} = a_{t+1} h_t + b_{t+1}), "
                    "not a_t: load a one position ahead, with 1.0 past the end",
                    f32(reverse_recurrence_loop(a, g, G_last, shift=0))),
            Mistake("G_last, the gradient reaching the last state from outside, starts the carry of the "
                    "last block", f32(reverse_recurrence_loop(a, g, torch.zeros_like(G_last)))),
        ), diagnose=_block_boundary_hint)
        dev = _device()
        yield (f"rows={rows}, L={L}", (f32(a).to(dev), f32(g).to(dev), f32(G_last).to(dev)), {}, expected)


# ------------------------------------------------------------------ 06.2 skip, gate, groups
def _scan_inputs(gen, b, d, l, n, g):
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    u, z = r(b, d, l), r(b, d, l)                                   # (b, d, l)
    delta = torch.rand(b, d, l, generator=gen, dtype=torch.float64) * 0.5 + 0.05   # (b, d, l) > 0
    A = -torch.rand(d, n, generator=gen, dtype=torch.float64) - 0.5                # (d, n) < 0
    B, C = r(b, g, n, l), r(b, g, n, l)                             # (b, g, n, l)
    D = r(d)                                                        # (d,)
    return u, delta, A, B, C, D, z


def _per_channel(X, group_of):
    """(b, g, n, l) -> (b, d, n, l) with channel c reading group group_of[c] (one group per channel)."""
    return X[:, group_of]


@exercise("06.2", "the D skip, the SiLU gate and grouped B, C in the blocked kernel", atol=1e-5, rtol=1e-5,
          compare=compare_answer)
def gated_grouped_scan_cases():
    gen = torch.Generator().manual_seed(62)
    for b, d, l, n, g in [(1, 2, 5, 2, 1), (2, 4, 11, 4, 2), (1, 6, 9, 4, 2), (1, 4, 20, 2, 4)]:
        u, delta, A, B, C, D, z = _scan_inputs(gen, b, d, l, n, g)
        ref = lambda **kw: selective_scan_ref(u, delta, A, kw.pop("B", B), kw.pop("C", C), **kw).float()
        y_bare = ref()                                              # Σ_n C h, no skip, no gate
        modulo = [c % g for c in range(d)]                          # the wrong group of each channel
        mistakes = [
            Mistake("the skip goes inside the gate: y = (C·h + D u) · SiLU(z), not C·h · SiLU(z) + D u",
                    ref(z=z) + (D[:, None] * u).float()),
            Mistake("SiLU(z) = z · σ(z): the gate multiplies by z times its sigmoid, not by σ(z) alone",
                    ((y_bare.double() + D[:, None] * u) * torch.sigmoid(z)).float()),
            Mistake("the skip D u is missing: add D[c] · u before the gate", ref(z=z)),
            Mistake("the gate is missing: multiply by SiLU(z) = z · σ(z) at the end", ref(D=D)),
        ]
        if g > 1:                                                   # with one group every channel reads it
            mistakes.insert(2, Mistake("channel c reads the group c // (d / g): consecutive channels share "
                                       "a group (c % g spreads them round-robin)",
                                       ref(B=_per_channel(B, modulo), C=_per_channel(C, modulo), D=D, z=z)))
        expected = Answer(ref(D=D, z=z), ("y",), mistakes=tuple(mistakes))
        dev = _device()
        args = tuple(x.float().to(dev) for x in (u, delta, A, B, C, D, z))
        yield (f"b={b}, d={d}, l={l}, n={n}, g={g}", args, {}, expected)


# ------------------------------------------------------------------ 06.3 the gate's gradients
def _gate_grads(u, y_ssm, z, D, dy, *, silu_grad=None, skip_in_gate=True):
    """(∂z, ∂D) for y = (y_ssm + D u) · SiLU(z) by the formula, optionally with a mistake."""
    pre = y_ssm + D[:, None] * u if skip_in_gate else y_ssm
    sig = torch.sigmoid(z)
    dsilu = sig * (1 + z * (1 - sig)) if silu_grad is None else silu_grad(z)
    return dy * pre * dsilu, (dy * F.silu(z) * u).sum((0, 2))


@exercise("06.3", "the gradients of the gate and the skip, ∂z and ∂D", atol=1e-10, rtol=1e-8,
          compare=compare_answer)
def gate_gradient_cases():
    gen = torch.Generator().manual_seed(63)
    for b, d, l in [(1, 1, 1), (1, 2, 5), (2, 3, 7), (3, 4, 2)]:
        r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
        u, y_ssm, z, dy = r(b, d, l), r(b, d, l), r(b, d, l) * 2, r(b, d, l)
        D = r(d)
        # the outside reference: autograd
        zg, Dg = z.clone().requires_grad_(True), D.clone().requires_grad_(True)
        y = (y_ssm + Dg[:, None] * u) * F.silu(zg)
        dz, dD = torch.autograd.grad(y, (zg, Dg), dy)
        expected = Answer((dz, dD), ("dz", "dD"), mistakes=(
            Mistake("d SiLU(z)/dz is σ(z) + z σ(z)(1 − σ(z)) = σ(z)(1 + z(1 − σ(z))), not σ(z): "
                    "SiLU(z) = z σ(z) is a product, differentiate both factors",
                    _gate_grads(u, y_ssm, z, D, dy, silu_grad=torch.sigmoid)),
            Mistake("d SiLU(z)/dz is σ(z)(1 + z(1 − σ(z))); σ(z)(1 − σ(z)) is the derivative of σ alone",
                    _gate_grads(u, y_ssm, z, D, dy,
                                silu_grad=lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)))),
            Mistake("the gate multiplies the skip too: ∂z needs y_ssm + D u, the whole output before the gate",
                    _gate_grads(u, y_ssm, z, D, dy, skip_in_gate=False)),
            Mistake("D has one entry per channel, shared by every batch element and time step: "
                    "sum ∂y · SiLU(z) · u over both", (dz, (dy * F.silu(z) * u).sum(2))),
            Mistake("∂D goes through the gate: ∂y/∂D = SiLU(z) u, so ∂D = Σ ∂y · SiLU(z) · u",
                    (dz, (dy * u).sum((0, 2)))),
        ))
        yield (f"b={b}, d={d}, l={l}", (u, y_ssm, z, D, dy), {}, expected)
