"""``selective_scan_triton``: the fused Triton selective scan as a ``torch.autograd.Function``.

Notebook: ``notebooks/06_triton_kernel.ipynb``. Same signature and meaning as
``ssm_tutor.selective.selective_scan_ref`` (and the official ``selective_scan_fn``):

    Δ = softplus(delta + delta_bias),  h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,
    y_t = (C_t · h_t + D u_t) · SiLU(z_t)

On a CUDA tensor the kernels run compiled. On a CPU tensor they run in the Triton interpreter,
which must have been switched on (``TRITON_INTERPRET=1``) before this module was imported,
because ``@triton.jit`` decides between compiling and interpreting when a kernel is defined.
"""

from __future__ import annotations

import os

import torch

from ssm_tutor.validate import validate_scan_args

from .config import LaunchConfig, grid_size, launch_config
from .selective_scan_bwd import selective_scan_bwd_kernel
from .selective_scan_fwd import selective_scan_fwd_kernel

__all__ = ["selective_scan_triton", "launch_config", "INTERPRETED", "LaunchConfig"]

#: Whether the kernels above were defined under the Triton interpreter (read once, at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

_INTERPRETER_HELP = (
    "selective_scan_triton got CPU tensors, but the Triton kernels were compiled for a GPU: "
    "TRITON_INTERPRET was not '1' when ssm_tutor.kernels was imported. To run them on a CPU, set "
    "the variable before the import, e.g. `import os; os.environ['TRITON_INTERPRET'] = '1'` as the "
    "first lines of your script or notebook (or `TRITON_INTERPRET=1 python ...`), then restart the "
    "Python process and import ssm_tutor.kernels again; or move the tensors to a CUDA device."
)


def _sm_count(u: torch.Tensor) -> int | None:
    """Streaming multiprocessors of u's CUDA device (None on a CPU: launch_config assumes an H100)."""
    if u.device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(u.device).multi_processor_count


def _check_device(u: torch.Tensor) -> None:
    if u.device.type == "cpu":
        if not INTERPRETED:
            raise RuntimeError(_INTERPRETER_HELP)
    elif u.device.type != "cuda":
        raise ValueError(f"u must be on a CUDA device (or the CPU under the Triton interpreter), got {u.device}")


class SelectiveScanTriton(torch.autograd.Function):
    """Forward: the fused kernel, saving one state per chunk. Backward: recompute and reverse-scan."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, config, save):
        b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=False)
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        cfg = config if config is not None else launch_config(
            d, n, groups, batch=b, elem_size=u.element_size(), sm_count=_sm_count(u), interpreted=INTERPRETED)
        g = max(groups, 1)
        n_chunks = -(-l // cfg.chunk)
        split = cfg.n_split > 1
        # Contiguous copies in the kernel's layouts; B, C become (b, g, n, l) even when ungrouped.
        u_, delta_ = u.contiguous(), delta.contiguous()
        A_ = A.to(compute).contiguous()                                     # (d, n) sets the compute dtype
        B_ = B.reshape(b, g, n, l).contiguous()
        C_ = C.reshape(b, g, n, l).contiguous()
        z_ = z.contiguous() if z is not None else u_
        D_ = D.contiguous() if D is not None else A_
        bias_ = delta_bias.contiguous() if delta_bias is not None else A_
        # y (b, d, l) in u's dtype; with the state split, one partial y per slice, summed below
        y = torch.empty(cfg.n_split, b, d, l, device=u.device, dtype=compute) if split else torch.empty_like(u_)
        last = torch.empty(b, d, n, device=u.device, dtype=compute)         # (b, d, n)
        states = (torch.empty(b, d, n_chunks, n, device=u.device, dtype=compute) if save else last)
        selective_scan_fwd_kernel[grid_size(b, d, cfg)](
            u_, delta_, A_, B_, C_, D_, z_, bias_, y, states, last,
            d, l, n, g, n_chunks, cfg.states_per_program(n), b * d * l if split else 0,
            BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CHUNK=cfg.chunk,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), SAVE_STATES=save, SPLIT=split, num_warps=cfg.num_warps,
        )
        if split:
            y = y.sum(0).to(u.dtype)
        if save:
            keep = lambda given, made: made if given is not None else None   # contiguous copies, or None
            ctx.save_for_backward(u_, delta_, A_, B_, C_, keep(D, D_), keep(z, z_), keep(delta_bias, bias_), states)
            ctx.meta = (b, d, l, n, groups, cfg, bool(delta_softplus), A.dtype, B.shape, C.shape)
        if return_last_state:
            return y, last
        return y

    @staticmethod
    def backward(ctx, dy, *rest):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        b, d, l, n, groups, cfg, softplus, A_dtype, B_shape, C_shape = ctx.meta
        g = max(groups, 1)
        compute = A.dtype
        n_chunks = states.shape[2]
        S = cfg.n_split
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        # du, dΔ, dz (b, d, l) in the inputs' dtypes; with the state split, (S, b, d, l) partial sums
        parts = lambda like: (torch.empty(S, b, d, l, device=u.device, dtype=compute) if S > 1
                              else torch.empty_like(like))
        du, ddelta = parts(u), parts(delta)
        dz = parts(z) if z is not None else du
        dB = torch.zeros(b, g, n, l, device=u.device, dtype=compute)       # atomics accumulate here
        dC = torch.zeros(b, g, n, l, device=u.device, dtype=compute)
        dA_part = torch.empty(b, d, n, device=u.device, dtype=compute)     # per-batch partial sums
        dD_part = torch.empty(b, d, device=u.device, dtype=compute)
        dbias_part = torch.empty(S, b, d, device=u.device, dtype=compute)  # per slice and batch
        dlast = rest[0] if rest and rest[0] is not None else None
        selective_scan_bwd_kernel[grid_size(b, d, cfg)](
            u, delta, A, B, C, D if D is not None else A, z if z is not None else u,
            delta_bias if delta_bias is not None else A, states,
            dy, dlast.contiguous() if dlast is not None else A,
            du, ddelta, dz, dB, dC, dA_part, dD_part, dbias_part,
            d, l, n, g, n_chunks, cfg.states_per_program(n), b * d * l if S > 1 else 0, b * d,
            BLOCK_D=cfg.block_d, BLOCK_N=cfg.block_n, CHUNK=cfg.chunk,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus, HAS_DLAST=dlast is not None, SPLIT=S > 1, num_warps=cfg.num_warps,
        )
        if S > 1:
            du, ddelta = du.sum(0).to(u.dtype), ddelta.sum(0).to(delta.dtype)
            dz = dz.sum(0).to(z.dtype) if z is not None else None
        dA = dA_part.sum(0).to(A_dtype)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else None
        dbias = dbias_part.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
        dB = dB.reshape(B_shape).to(B.dtype)
        dC = dC.reshape(C_shape).to(C.dtype)
        return (du, ddelta, dA, dB, dC, dD, dz if z is not None else None, dbias, None, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, *, block_d=None, chunk=None, num_warps=None, n_split=None,
                          check_finite=None):
    """The selective scan by the fused Triton kernels (forward and backward).

    Args, shapes and result as :func:`ssm_tutor.selective.selective_scan_ref`: u, delta, z (b, d, l);
    A (d, n); B, C (b, n, l) or (b, g, n, l); D, delta_bias (d,). Returns y (b, d, l) in u's dtype,
    and with ``return_last_state`` also h_L (b, d, n) in float32 (float64 for float64 inputs).
    ``block_d``, ``chunk`` (powers of two), ``num_warps`` and ``n_split`` (how many programs share
    the n state indices of one block of channels) override :func:`launch_config`'s choice.
    Arithmetic is float32 for fp16/bf16/fp32 inputs, float64 for float64.

    Gradients flow to u, delta, A, B, C, D, z and delta_bias (and from the last state, when it is
    returned and used).

    ``check_finite`` (default: on for CPU tensors, off for CUDA ones) raises a ValueError naming the
    first input that holds NaN or ±inf. On a GPU the check would cost a device synchronisation and
    a second read of every input, which is most of what the fused kernel saves, so it is opt-in.
    """
    if check_finite is None:
        check_finite = isinstance(u, torch.Tensor) and u.device.type == "cpu"
    b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=check_finite)
    _check_device(u)
    cfg = None
    if any(v is not None for v in (block_d, chunk, num_warps, n_split)):
        cfg = launch_config(d, n, groups, batch=b, elem_size=u.element_size(), block_d=block_d, chunk=chunk,
                            num_warps=num_warps, n_split=n_split, sm_count=_sm_count(u), interpreted=INTERPRETED)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, cfg, save)
