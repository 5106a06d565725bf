"""Stage 4: selection. Mamba's selective SSM (S6) and its readable reference scan.

Notebook: ``notebooks/04_selection.ipynb``. Paper: Gu & Dao, *Mamba: Linear-Time
Sequence Modeling with Selective State Spaces* (2023), Section 3.2 and Algorithm 2.

For every channel d and state index n the selective SSM runs the recurrence

    Ā_t = exp(Δ_t · A)               (zero-order hold for A)
    B̄_t = Δ_t · B_t                  (simplified Euler step for B)
    h_t = Ā_t · h_{t-1} + B̄_t · u_t
    y_t = C_t · h_t + D · u_t

where Δ_t, B_t and C_t depend on the input (that is the selection), and optionally
gates the output with SiLU(z_t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "validate_scan_args"]


def _shape_error(name: str, expected: str, got: torch.Tensor) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got shape {tuple(got.shape)}")


def validate_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Check the selective-scan arguments against the official layout and return
    ``(batch, d, length, n, groups)``; ``groups`` is 0 for B, C of shape (b, n, l).

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or (b, g, n, l) with g dividing d;
    D, delta_bias (d,). Every tensor must live on u's device, be floating point, and A must
    be real. Nothing is broadcast: a mismatch raises a ValueError naming the argument.
    """
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"{name} is on device {t.device} but u is on {u.device}; move them to one device")
    if u.dim() != 3:
        raise _shape_error("u", "(batch, d, length)", u)
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise _shape_error("delta", f"(batch, d, length) = {tuple(u.shape)} like u", delta)
    if A.dim() != 2 or A.shape[0] != d:
        raise _shape_error("A", f"(d, n) with d = {d}", A)
    n = A.shape[1]
    groups = 0
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            if t.shape != (b, n, l):
                raise _shape_error(name, f"(batch, n, length) = {(b, n, l)}", t)
        elif t.dim() == 4:
            g = t.shape[1]
            if t.shape[0] != b or t.shape[2:] != (n, l) or g == 0 or d % g != 0:
                raise _shape_error(name, f"(batch, groups, n, length) = ({b}, g, {n}, {l}) with g dividing d = {d}", t)
            if groups and g != groups:
                raise ValueError(f"B has {groups} groups but C has {g}; they must agree")
            groups = g
        else:
            raise _shape_error(name, f"(batch, n, length) = {(b, n, l)} or (batch, groups, n, length)", t)
    if (B.dim() == 4) != (C.dim() == 4):
        raise ValueError(f"B and C must both be grouped or both not: got B {tuple(B.shape)}, C {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise _shape_error(name, f"(d,) = ({d},)", t)
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", f"(batch, d, length) = {tuple(u.shape)} like u", z)
    return b, d, l, n, groups


def expand_groups(B: torch.Tensor, d: int) -> torch.Tensor:
    """(b, n, l) -> (b, d, n, l), or grouped (b, g, n, l) -> (b, d, n, l): channel c uses group c // (d // g)."""
    if B.dim() == 3:
        return B.unsqueeze(1).expand(-1, d, -1, -1)
    return B.repeat_interleave(d // B.shape[1], dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The selective scan, written as the plain loop over time (Mamba paper, Algorithm 2).

    Args (the official ``selective_scan_fn`` layout):
        u:      (b, d, l) input
        delta:  (b, d, l) step sizes Δ before bias and softplus
        A:      (d, n) real, usually negative (A = -exp(A_log))
        B, C:   (b, n, l), or (b, g, n, l) shared by d/g channels per group
        D:      (d,) skip connection, optional
        z:      (b, d, l) gate, optional: the output is multiplied by SiLU(z)
        delta_bias: (d,) added to Δ before the softplus, optional
        delta_softplus: apply softplus to Δ (+ bias)
        return_last_state: also return h_L of shape (b, d, n)

    Returns:
        y of shape (b, d, l) in u's dtype, and the last state (b, d, n) in float32 when asked.

    All arithmetic runs in float32 (float64 if the inputs are float64), whatever the input dtype.
    This version materialises the (b, d, l, n) tensors Ā and B̄u: clear, and memory-hungry.
    """
    b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]            # (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)
    B = expand_groups(B.to(compute), d)                           # (b, d, n, l)
    C = expand_groups(C.to(compute), d)                           # (b, d, n, l)

    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))   # Ā: (b, d, l, n)
    deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)   # B̄·u: (b, d, l, n)

    h = u.new_zeros(b, d, n)                                      # state: (b, d, n)
    ys = []
    for t in range(l):
        h = deltaA[:, :, t] * h + deltaB_u[:, :, t]              # h_t = Ā_t h_{t-1} + B̄_t u_t
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))  # y_t = C_t h_t
    y = torch.stack(ys, dim=-1)                                   # (b, d, l)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
