"""Small ``@triton.jit`` building blocks shared by the forward and backward kernels.

Nothing here touches global memory: these run on values already in registers.
"""

import triton
import triton.language as tl


@triton.jit
def linear_recurrence_combine(a_left, b_left, a_right, b_right):
    """The associative operator of h_t = a_t · h_{t-1} + b_t (Blelloch 1990, Section 1.4).

    Applying (a_left, b_left) and then (a_right, b_right) to a state h gives
    a_right · (a_left · h + b_left) + b_right = (a_left · a_right) · h + (a_right · b_left + b_right).
    """
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def softplus(x):
    """log(1 + e^x), switching to x above 20 like ``torch.nn.functional.softplus``."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def discretised_delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ = softplus(raw + bias) (each step optional) on a (BLOCK_D, CHUNK) tile; 0 where masked.

    Δ = 0 makes a padded position harmless: Ā = exp(0 · A) = 1 and B̄u = 0, so the state passes through.
    """
    dt = raw
    if HAS_BIAS:
        dt = dt + bias[:, None]
    if SOFTPLUS:
        dt = softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def column(x, offs_n, k):
    """x[:, k] of a small (BLOCK_D, BLOCK_N) register tile (registers cannot be indexed: mask and sum)."""
    return tl.sum(tl.where(offs_n[None, :] == k, x, 0.0), axis=1)


@triton.jit
def set_column(x, offs_n, k, value):
    """x with column k replaced by ``value`` (BLOCK_D,)."""
    return tl.where(offs_n[None, :] == k, value[:, None], x)
