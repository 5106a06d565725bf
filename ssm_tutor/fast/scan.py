"""The fused selective scan for a CPU: the same recurrence as stage 5's teaching scans, arranged for speed.

``ssm_tutor.scan.selective_scan(method="fused")`` (the CPU default) calls :func:`fused_selective_scan`;
``tests/test_fast_scan.py`` holds it to the teaching layer (``selective_scan_ref`` and the
``linear_scan`` methods), values and gradients in float64, never the other way round.

What it does differently, none of it new mathematics:

* **chunks, never (b, d, l, n)**: for T = 64 steps at a time it builds Ā = exp(ΔA) and B̄u as a
  (T, b, d, n) block that fits in the cache, runs h_t = Ā_t h_{t-1} + B̄_t u_t over it in place
  (one ``addcmul_`` per step over all b·d·n states), and reads out y_t = C_t · h_t while h_t is
  still in the cache;
* **a recomputing backward** (``_FusedSelectiveScan``): the forward keeps one state per chunk,
  the backward recomputes each chunk from it and runs the adjoint recurrence backwards in time,
  as the official CUDA kernel does;
* **exp2**: Ā = 2^(Δ · A log₂e), cheaper than exp where PyTorch vectorises it (AVX2, AVX-512; what
  the CUDA kernel does too); with PyTorch's plain kernels exp is the cheaper one and is used;
* **time-major**: every tensor is indexed (time, batch, channel[, state]), so a time step is one
  contiguous slice; (b, d, l) inputs that are views of time-major memory (the fast mixer's) are
  read and written in place;
* **threads** (:mod:`ssm_tutor.fast.threads`): one intra-op thread (no OpenMP barrier per
  operation, which stalls for a time slice whenever another program holds a core) plus a helper
  thread that prepares the next chunks; on a busy machine it degrades to one thread's speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssm_tutor.fast.threads import scan_workers
from ssm_tutor.selective import compute_dtype, per_channel, step_size
from ssm_tutor.validate import positive_int, validate_scan_args

__all__ = ["fused_selective_scan"]

LOG2_E = 1.4426950408889634   # log2(e): exp(x) = 2^(x · log2 e)


def _exp2_is_cheaper() -> bool:
    """Whether Ā is computed as 2^(Δ · A log₂e) rather than exp(ΔA) on this machine's vector path.

    The exponential is the scan's single most expensive operation. PyTorch's AVX2 and AVX-512
    kernels vectorise exp2 and it is ~1.8x cheaper than exp there (0.85 against 1.51 ns per float32
    on the course's AVX2 CPU, measured); the official CUDA kernel uses exp2f for the same reason.
    PyTorch's plain kernels (other CPUs, or ``ATEN_CPU_CAPABILITY=default``) compute exp2 one
    element at a time, ~1.5x dearer than their exp (4.1 against 2.8 ns), so there exp is used."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


USE_EXP2 = _exp2_is_cheaper()   # fixed for the process: PyTorch picks its vector path at start-up


def exponent_scale(A):
    """A · log₂e when Ā is computed with exp2 (:data:`USE_EXP2`), else A itself."""
    return A * LOG2_E if USE_EXP2 else A


def _discretize(dt_c, dtu_c, A_scaled, B_c, dA_buf, H_buf):
    """Ā_t = exp(Δ_t A) and B̄_t u_t = Δ_t u_t B_t for one chunk of T steps, into the (≥ T, b, d, n)
    buffers. Time-major arguments: Δ_c, (Δu)_c (T, b, d) (may be strided views: the products read
    them in place, cheaper than a transposing copy), B_c (T, b, g, n); A_scaled (d, n) from
    :func:`exponent_scale`. Returns the (T, b, d, n) views (Ā, B̄u).

    With exp2, A_scaled is A · log2(e) and Ā = 2^(Δ · A_scaled); its rounding changes Ā by about
    |ΔA| float ulps, far below the scan's tolerance."""
    T, b, g, n = B_c.shape
    d = dt_c.shape[2]
    k = d // g
    dA, H = dA_buf[:T], H_buf[:T]
    torch.mul(dt_c.unsqueeze(-1), A_scaled, out=dA)                                   # ΔA (· log2 e): (T, b, d, n)
    if USE_EXP2:
        dA.exp2_()                                                                    # Ā = 2^(ΔA log2 e) = exp(ΔA)
    else:
        dA.exp_()
    torch.mul(dtu_c.unflatten(2, (g, k)).unsqueeze(-1), B_c.unsqueeze(3), out=H.view(T, b, g, k, n))  # B̄u
    return dA, H


def _recur(dA, H, h, C_c=None, y_c=None):
    """h_t = Ā_t h_{t-1} + B̄_t u_t over one chunk, in place: H (T, b, d, n) holds B̄u and is
    overwritten with h_t, starting from the state h (b, d, n). With C_c (T, b, g, n) and y_c
    (T, b, d) given, also writes y_t = C_t · h_t into y_c. Returns H."""
    T, b, d, n = H.shape
    prev = h
    if y_c is not None and b * C_c.shape[2] == 1:
        # one matrix-vector product per step, while h_t is still in the cache
        steps = zip(dA.unbind(0), H.unbind(0), H.view(T, d, n).unbind(0), C_c.view(T, n).unbind(0),
                    y_c.view(T, d).unbind(0))
        for a_t, h_t, h_mat, c_t, y_t in steps:
            h_t.addcmul_(a_t, prev)                                                   # h_t = Ā_t h_{t-1} + B̄_t u_t
            torch.mv(h_mat, c_t, out=y_t)                                             # y_t = C_t · h_t
            prev = h_t                                                                # in place: H now holds h
        return H
    for a_t, h_t in zip(dA.unbind(0), H.unbind(0)):
        h_t.addcmul_(a_t, prev)                                                       # h_t = Ā_t h_{t-1} + B̄_t u_t
        prev = h_t
    if y_c is not None:
        g = C_c.shape[2]
        torch.matmul(H.view(T, b, g, d // g, n), C_c.unsqueeze(-1), out=y_c.view(T, b, g, d // g, 1))  # C_t · h_t
    return H


def _chunks(l: int, T: int) -> list[tuple[int, int]]:
    return [(t0, min(t0 + T, l)) for t0 in range(0, l, T)]


class _FusedSelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward pass (like the official CUDA kernel):
    the forward keeps only the state entering each chunk, (chunks, b, d, n); the backward
    recomputes each chunk's states from it and runs the adjoint recurrence backwards in time

        λ_t = ∂L/∂h_t = C_t ∂L/∂y_t + Ā_{t+1} λ_{t+1},

    from which ∂L/∂(B̄u)_t = λ_t and ∂L/∂Ā_t = λ_t h_{t-1} give every input's gradient.

    Both passes split each chunk's work in two (:class:`ssm_tutor.fast.threads.ScanWorkers`):
    the forward prepares Ā and B̄u of the next chunks on a helper thread while this one runs the
    recurrence; the backward recomputes the states of the next chunks (they only need the saved
    state entering each chunk) while this one runs the adjoint recurrence and the gradients."""

    @staticmethod
    def forward(ctx, u, dt, A, Bg, Cg, chunk_size, h0):
        b, d, l = u.shape
        n = A.shape[1]
        T = min(chunk_size, l)
        chunks = _chunks(l, T)
        with scan_workers(b * d * n) as workers:
            BT = Bg.permute(3, 0, 1, 2).contiguous()                                   # (l, b, g, n)
            CT = Cg.permute(3, 0, 1, 2).contiguous()                                   # (l, b, g, n)
            dtu = dt * u                                                               # Δ u: (b, d, l)
            y = torch.empty_like(u)                                                    # (b, d, l), u's memory layout
            dtT, dtuT, yT = dt.permute(2, 0, 1), dtu.permute(2, 0, 1), y.permute(2, 0, 1)   # (l, b, d) views, no copy
            # Time-major inputs at batch 1 (the fast mixer's) make yT contiguous: each chunk's
            # y_t = C_t · h_t is then written straight into y; otherwise (any batch > 1, or
            # channel-major inputs) through a one-chunk buffer and a copy.
            y_buf = None if yT.is_contiguous() else u.new_empty(T, b, d)               # one chunk of y, time-major
            buffers = [(u.new_empty(T, b, d, n), u.new_empty(T, b, d, n)) for _ in range(workers.depth)]
            A_scaled = exponent_scale(A)                                                    # (d, n)
            starts = [h0.clone()]                                                      # h_{-1} (0 unless continuing), then each chunk's

            def prepare(c, slot):                                                      # Ā, B̄u of chunk c
                t0, t1 = chunks[c]
                return _discretize(dtT[t0:t1], dtuT[t0:t1], A_scaled, BT[t0:t1], *buffers[slot])

            def run(c, prepared):                                                      # h_t and y_t of chunk c
                t0, t1 = chunks[c]
                y_c = yT[t0:t1] if y_buf is None else y_buf[: t1 - t0]
                H = _recur(*prepared, starts[-1], CT[t0:t1], y_c)
                if y_buf is not None:
                    y[:, :, t0:t1] = y_c.permute(1, 2, 0)                              # a cache-sized transpose
                starts.append(H[-1].clone())

            workers.run(prepare, run, len(chunks))
        h = starts.pop()                                                               # h_L
        if any(ctx.needs_input_grad):                   # inference keeps nothing
            ctx.save_for_backward(u, dt, A, Bg, Cg, torch.stack(starts))              # starts: (chunks, b, d, n)
        ctx.chunk_size = T
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        u, dt, A, Bg, Cg, starts = ctx.saved_tensors
        T = ctx.chunk_size
        b, d, l = u.shape
        n, g = A.shape[1], Bg.shape[1]
        k = d // g
        chunks = _chunks(l, T)[::-1]                                                   # last chunk first
        with scan_workers(b * d * n) as workers:
            dtT, uT = dt.permute(2, 0, 1).contiguous(), u.permute(2, 0, 1).contiguous()   # (l, b, d)
            BT, CT = Bg.permute(3, 0, 1, 2).contiguous(), Cg.permute(3, 0, 1, 2).contiguous()  # (l, b, g, n)
            dtuT = dtT * uT
            gyT = (gy if gy is not None else u.new_zeros(b, d, l)).permute(2, 0, 1).contiguous()  # (l, b, d)
            g_dtT, g_uT = torch.empty_like(dtT), torch.empty_like(uT)
            g_BT, g_CT = torch.empty_like(BT), torch.empty_like(CT)
            g_A = torch.zeros_like(A)
            buffers = [(u.new_empty(T, b, d, n), u.new_empty(T, b, d, n)) for _ in range(workers.depth)]
            A_scaled = exponent_scale(A)                                                    # as in the forward
            carry = gh_last.clone() if gh_last is not None else u.new_zeros(b, d, n)   # Ā_{t1} λ_{t1}, or ∂L/∂h_L

            def recompute(i, slot):                                                    # Ā and h_t of a chunk again
                t0, t1 = chunks[i]
                dA, H = _discretize(dtT[t0:t1], dtuT[t0:t1], A_scaled, BT[t0:t1], *buffers[slot])
                return dA, _recur(dA, H, starts[t0 // T])

            def adjoint(i, states):
                nonlocal carry, g_A
                dA, H = states
                t0, t1 = chunks[i]
                Tc = t1 - t0
                H5 = H.view(Tc, b, g, k, n)
                # λ_t = C_t ∂L/∂y_t + Ā_{t+1} λ_{t+1}, backwards through the chunk
                lam = (gyT[t0:t1].view(Tc, b, g, k, 1) * CT[t0:t1].unsqueeze(3)).view(Tc, b, d, n)
                steps_A, steps_L = dA.unbind(0), lam.unbind(0)
                steps_L[Tc - 1].add_(carry)
                for t in range(Tc - 2, -1, -1):
                    steps_L[t].addcmul_(steps_A[t + 1], steps_L[t + 1])
                carry = steps_A[0] * steps_L[0]
                lam5 = lam.view(Tc, b, g, k, n)
                # y_t = C_t · h_t  ->  ∂L/∂C_t = Σ_{d in group} ∂L/∂y_t h_t
                g_CT[t0:t1] = torch.einsum("tbgkn,tbgk->tbgn", H5, gyT[t0:t1].view(Tc, b, g, k))
                # B̄u_t = Δ_t u_t B_t with ∂L/∂(B̄u)_t = λ_t
                lamB = torch.einsum("tbgkn,tbgn->tbgk", lam5, BT[t0:t1]).reshape(Tc, b, d)  # Σ_n λ B
                g_BT[t0:t1] = torch.einsum("tbgkn,tbgk->tbgn", lam5, dtuT[t0:t1].view(Tc, b, g, k))
                g_uT[t0:t1] = lamB * dtT[t0:t1]
                # Ā_t = exp(Δ_t A) with ∂L/∂Ā_t = λ_t h_{t-1}  ->  Q = λ_t h_{t-1} Ā_t = ∂L/∂(Δ_t A)
                Q = lam.mul_(dA)                                                       # reuses λ's memory
                Q[1:].mul_(H[:-1])                                                     # h_{t-1} = H[t-1] ...
                Q[0].mul_(starts[t0 // T])                                             # ... and the chunk's start
                g_dtT[t0:t1] = lamB * uT[t0:t1] + (Q * A).sum(-1)                      # Σ_n Q A: (T, b, d)
                # Σ over (t, b) as a product and a sum: ~4x faster here than the einsum, which
                # first copies Q into a (d, t·b, n) batch of tiny matrix products
                g_A += (Q * dtT[t0:t1].unsqueeze(-1)).sum((0, 1))

            workers.run(recompute, adjoint, len(chunks))
        return (g_uT.permute(1, 2, 0), g_dtT.permute(1, 2, 0), g_A,
                g_BT.permute(1, 2, 3, 0), g_CT.permute(1, 2, 3, 0), None, carry)    # carry = ∂L/∂h_{-1}


def fused_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, chunk_size=64, initial_state=None):
    """The selective scan (signature and meaning of ``ssm_tutor.scan.selective_scan``), chunked and
    fused: the CPU default. Real A; B, C (b, n, l), (b, g, n, l) or (d, n). Differentiable
    through ``_FusedSelectiveScan``.

    NaN/inf inputs: instead of scanning all eight inputs for non-finite values up front (several
    passes over (b, d, l) tensors, ~15% of the run time), it checks the output's sum once; a NaN
    in any input reaches the output, and then the full check runs and names the argument.
    (An infinite input whose effect vanishes, e.g. A = -inf resetting the state, is accepted.)"""
    b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=False,
                                            allow_constant_BC=True)
    positive_int("chunk_size", chunk_size)
    real = compute_dtype(u.dtype)                                                     # float32, or float64
    u_c = u.to(real)
    dt = step_size(delta.to(real), None if delta_bias is None else delta_bias.to(real), delta_softplus)  # Δ (b, d, l)
    if groups == -1:                                   # time-invariant B or C: one group per channel
        Bg, Cg = (per_channel(X, b, d, l, real).transpose(2, 3) for X in (B, C))     # (b, d, n, l)
    else:
        Bg, Cg = (X.to(real).unsqueeze(1) if X.dim() == 3 else X.to(real) for X in (B, C))   # (b, g, n, l)
    h0 = u_c.new_zeros(b, d, n) if initial_state is None else initial_state.to(real)   # h_{-1}: (b, d, n)
    y, h = _FusedSelectiveScan.apply(u_c, dt, A.to(real), Bg, Cg, chunk_size, h0)
    if D is not None:
        y = torch.addcmul(y, u_c, D.to(real)[:, None])                                # + D u
    if z is not None:
        y = y * F.silu(z.to(real))                                                    # gate with SiLU(z)
    if not bool(torch.isfinite(y.sum() + h.sum())):
        validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=True)    # raises, naming the input
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y
