"""Stage 5: the parallel scan, and a fast selective scan for the CPU.

Notebook: ``notebooks/05_parallel_scan.ipynb``. Paper: Gu & Dao, *Mamba* (2023), Section 3.3.2
("hardware-aware algorithm": the scan is parallelised, the (b, d, l, n) state never leaves
fast memory); Blelloch (1990) "Prefix sums and their applications"; Hillis & Steele (1986).

Every selective SSM is, per channel d and state index n, the first-order linear recurrence

    h_t = a_t · h_{t-1} + b_t            with a_t = exp(Δ_t A),  b_t = Δ_t B_t u_t.

Its steps compose with the associative operator on pairs

    (a, b) ∘ (a', b') = (a · a',  a' · b + b')           ("first (a, b), then (a', b')")

so h_t is the second component of the prefix product (a_1, b_1) ∘ … ∘ (a_t, b_t), and any
parallel prefix-sum algorithm computes it. This module has four of them in ``linear_scan``:

    method           work (combines)       depth (parallel steps)
    "sequential"     L − 1                 L − 1
    "hillis_steele"  L log L − L + 1       ⌈log₂ L⌉
    "blelloch"       ≈ 3 L                 ≈ 2 ⌈log₂ L⌉ + 1
    "chunked"        ≈ 2 L                 ≈ 2 √L

(``scan_cost`` counts them by running the instrumented code, rather than trusting the table),
and ``selective_scan`` with the official ``selective_scan_fn`` signature on top of them, plus
``"fused"``: a chunked loop that never materialises the (b, d, l, n) tensors, with a hand-written
backward pass that recomputes each chunk from the state entering it. It is the fastest method on
a CPU and ``method="auto"``'s choice there (``auto_method`` gives the measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ssm_tutor.selective import compute_dtype, per_channel, selective_scan_ref, step_size
from ssm_tutor.validate import check_shape, check_tensor, validate_scan_args

__all__ = [
    "combine",
    "linear_scan",
    "selective_scan",
    "scan_cost",
    "ScanCost",
    "LINEAR_SCAN_METHODS",
    "SELECTIVE_SCAN_METHODS",
    "auto_method",
]

LINEAR_SCAN_METHODS = ("sequential", "hillis_steele", "blelloch", "chunked")
SELECTIVE_SCAN_METHODS = ("fused",) + LINEAR_SCAN_METHODS + ("reference", "triton")


# ----------------------------------------------------------------------------------------------
# The associative operator and the cost counter
# ----------------------------------------------------------------------------------------------

@dataclass
class ScanCost:
    """Counts what a scan does: ``work`` = combine operations (one per pair of time steps
    combined, whatever the batch size), ``depth`` = parallel steps (vectorised combine calls
    that must wait for the previous one).

    With ``record=True`` it also keeps, for every parallel step, its phase name and the
    (source, destination) positions it combined, ``steps = [(phase, [(src, dst), ...]), ...]``,
    so the notebook's figures are drawn from what the code did, not from a separate drawing."""

    work: int = 0
    depth: int = 0
    record: bool = False
    steps: list = field(default_factory=list)

    def add(self, combines: int, steps: int = 1, phase: str = "", pairs=None) -> None:
        if combines <= 0:
            return
        self.work += int(combines)
        self.depth += int(steps)
        if self.record:
            self.steps.append((phase, list(pairs() if callable(pairs) else (pairs or []))))


def combine(a1, b1, a2, b2):
    """(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2): apply step 1, then step 2.

    As maps h ↦ a·h + b, composing h ↦ a1 h + b1 and then h ↦ a2 h + b2 gives
    h ↦ a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2). Composition of maps is associative,
    so is ∘; it is not commutative (the earlier step comes first).
    """
    return a1 * a2, a2 * b1 + b2


def _check_ab(a, b, h0):
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"a and b must be torch.Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"a must have the shape of b, {tuple(b.shape)}, got shape {tuple(a.shape)}")
    if a.dim() == 0 or a.shape[-1] == 0:
        raise ValueError(f"a and b need a non-empty last (time) axis, got shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"a is on device {a.device} but b is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"a has dtype {a.dtype} but b has {b.dtype}; give both the same dtype")
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0 must be a torch.Tensor, got {type(h0).__name__}")
        if h0.shape != a.shape[:-1]:
            raise ValueError(f"h0 must have shape {tuple(a.shape[:-1])} (a's shape without the time axis), "
                             f"got shape {tuple(h0.shape)}")
        if h0.device != a.device:
            raise ValueError(f"h0 is on device {h0.device} but a is on {a.device}")


# ----------------------------------------------------------------------------------------------
# linear_scan: h_t = a_t h_{t-1} + b_t along the last axis, four ways
# ----------------------------------------------------------------------------------------------

def _scan_sequential(a, b, cost):
    """One combine per step, each waiting for the previous one: work L − 1, depth L − 1."""
    hs = [b[..., 0]]
    for t in range(1, a.shape[-1]):
        hs.append(a[..., t] * hs[-1] + b[..., t])          # (a, b)_t applied to h_{t-1}
        cost.add(1, phase="sequential", pairs=[(t - 1, t)])
    return torch.stack(hs, dim=-1)


def _scan_hillis_steele(a, b, cost):
    """Hillis & Steele (1986): at step k every position t ≥ 2^k combines with t − 2^k.

    After step k, position t holds the product of the 2^(k+1) steps ending at t, so
    ⌈log₂ L⌉ steps suffice; each does L − 2^k combines (work O(L log L))."""
    L = a.shape[-1]
    offset = 1
    while offset < L:
        a_new, b_new = combine(a[..., :-offset], b[..., :-offset], a[..., offset:], b[..., offset:])
        a = torch.cat([a[..., :offset], a_new], dim=-1)
        b = torch.cat([b[..., :offset], b_new], dim=-1)
        cost.add(L - offset, phase=f"offset {offset}",
                 pairs=lambda: [(t - offset, t) for t in range(offset, L)])
        offset *= 2
    return b


def _scan_blelloch(a, b, cost):
    """Blelloch (1990): an up-sweep builds block products in a balanced tree, a down-sweep
    hands each block the product of everything before it (an exclusive scan), and one last
    combine with the element itself makes it inclusive. Work O(L), depth O(log L).

    Lengths that are not powers of two are padded with the identity step (a, b) = (1, 0)."""
    L = a.shape[-1]
    N = 1 << max(L - 1, 0).bit_length()                     # next power of two ≥ L
    if N != L:
        pad = [0, N - L]
        a_x = F.pad(a, pad, value=1.0)                      # identity: h ↦ 1·h + 0
        b_x = F.pad(b, pad, value=0.0)
    else:
        a_x, b_x = a, b
    # Up-sweep: at level k, node i·2^(k+1) + 2^(k+1) − 1 (right child) absorbs its left sibling.
    stride = 1
    while stride < N:
        left = slice(stride - 1, N, 2 * stride)
        right = slice(2 * stride - 1, N, 2 * stride)
        a_r, b_r = combine(a_x[..., left], b_x[..., left], a_x[..., right], b_x[..., right])
        a_x, b_x = a_x.clone(), b_x.clone()                 # out-of-place, so autograd can follow
        a_x[..., right], b_x[..., right] = a_r, b_r
        cost.add(N // (2 * stride), phase="up-sweep",
                 pairs=lambda: zip(range(stride - 1, N, 2 * stride), range(2 * stride - 1, N, 2 * stride)))
        stride *= 2
    # Down-sweep: the root gets the identity (nothing comes before the whole sequence);
    # each node passes its prefix P to its left child and P ∘ (left child's block) to its right.
    a_x, b_x = a_x.clone(), b_x.clone()
    a_x[..., N - 1], b_x[..., N - 1] = 1.0, 0.0
    stride = N // 2
    while stride >= 1:
        left = slice(stride - 1, N, 2 * stride)
        right = slice(2 * stride - 1, N, 2 * stride)
        a_l, b_l = a_x[..., left], b_x[..., left]           # the left block's product
        a_p, b_p = a_x[..., right], b_x[..., right]         # the prefix before the parent block
        a_r, b_r = combine(a_p, b_p, a_l, b_l)
        a_x, b_x = a_x.clone(), b_x.clone()
        a_x[..., left], b_x[..., left] = a_p, b_p
        a_x[..., right], b_x[..., right] = a_r, b_r
        cost.add(N // (2 * stride), phase="down-sweep",       # (the left child's copy of P is free)
                 pairs=lambda: zip(range(stride - 1, N, 2 * stride), range(2 * stride - 1, N, 2 * stride)))
        stride //= 2
    # Inclusive scan: the exclusive prefix, then the step itself.
    _, h = combine(a_x[..., :L], b_x[..., :L], a, b)
    cost.add(L, phase="inclusive", pairs=lambda: [(t, t) for t in range(L)])
    return h


def _scan_chunked(a, b, cost, chunk_size=None):
    """Split time into chunks of T steps. (1) Scan every chunk on its own, all chunks at once;
    (2) carry the state from chunk to chunk, one combine per chunk; (3) fold each chunk's
    incoming state into its local prefixes, all at once. Depth ≈ T + L/T, ≈ 2√L at T = √L.
    This is the shape of the GPU kernel: a thread block owns a chunk, only states cross chunks."""
    L = a.shape[-1]
    T = chunk_size or max(1, math.isqrt(L))
    nc = -(-L // T)                                          # number of chunks
    pad = nc * T - L
    if pad:
        a = F.pad(a, [0, pad], value=1.0)
        b = F.pad(b, [0, pad], value=0.0)
    a_c = a.reshape(*a.shape[:-1], nc, T)                    # (..., chunks, T)
    b_c = b.reshape(*b.shape[:-1], nc, T)
    # (1) local inclusive prefixes inside each chunk (a sequential scan, vectorised over chunks)
    A_loc, B_loc = [a_c[..., 0]], [b_c[..., 0]]
    for t in range(1, T):
        a_t, b_t = combine(A_loc[-1], B_loc[-1], a_c[..., t], b_c[..., t])
        A_loc.append(a_t)
        B_loc.append(b_t)
        cost.add(nc, phase="within chunks", pairs=lambda: [(c * T + t - 1, c * T + t) for c in range(nc)])
    A_loc = torch.stack(A_loc, dim=-1)                       # (..., chunks, T): product of a within chunk
    B_loc = torch.stack(B_loc, dim=-1)                       # (..., chunks, T): state if the chunk started at 0
    # (2) carry: the state entering chunk c is h_in[c] = A_tot[c-1] h_in[c-1] + B_tot[c-1]
    h_in = [torch.zeros_like(B_loc[..., 0, -1])]
    for c in range(1, nc):
        h_in.append(A_loc[..., c - 1, -1] * h_in[-1] + B_loc[..., c - 1, -1])
        cost.add(1, phase="carry", pairs=[((c - 1) * T - 1, c * T - 1)])  # -1: the zero start
    h_in = torch.stack(h_in, dim=-1)                          # (..., chunks)
    # (3) fold in: h = A_loc · h_in + B_loc, every position at once (the first chunk has h_in = 0)
    h = A_loc * h_in[..., None] + B_loc
    cost.add(L - min(T, L), phase="fold in",
             pairs=lambda: [(c * T - 1, c * T + t) for c in range(1, nc) for t in range(T) if c * T + t < L])
    return h.reshape(*h.shape[:-2], nc * T)[..., :L]


def linear_scan(a: torch.Tensor, b: torch.Tensor, method: str = "sequential", h0: torch.Tensor | None = None,
                *, chunk_size: int | None = None, cost: ScanCost | None = None) -> torch.Tensor:
    """Solve h_t = a_t · h_{t-1} + b_t along the last axis, with h_{-1} = h0 (0 by default).

    Args:
        a, b: (..., L) tensors of one shape, dtype and device.
        method: "sequential", "hillis_steele", "blelloch" or "chunked" (see the module table).
        h0: (...) optional initial state; folded into the first step as b_0 ← a_0 h0 + b_0.
        chunk_size: chunk length T for "chunked" (default ⌈√L⌉-ish).
        cost: a ``ScanCost`` to add this call's combine count and depth to.

    Returns h of shape (..., L). Every method is plain differentiable PyTorch.
    """
    _check_ab(a, b, h0)
    if method not in LINEAR_SCAN_METHODS:
        raise ValueError(f"method must be one of {LINEAR_SCAN_METHODS}, got {method!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    cost = cost if cost is not None else ScanCost()
    if h0 is not None:
        b = torch.cat([(a[..., 0] * h0.to(b.dtype) + b[..., 0]).unsqueeze(-1), b[..., 1:]], dim=-1)
    if method == "sequential":
        return _scan_sequential(a, b, cost)
    if method == "hillis_steele":
        return _scan_hillis_steele(a, b, cost)
    if method == "blelloch":
        return _scan_blelloch(a, b, cost)
    return _scan_chunked(a, b, cost, chunk_size)


def scan_cost(method: str, L: int, record: bool = False, **kwargs) -> ScanCost:
    """Count the work (combines) and depth (parallel steps) of ``linear_scan(method)`` at length L
    by running it once on a length-L sequence and counting what it does (``record=True`` also
    keeps which positions each step combined)."""
    cost = ScanCost(record=record)
    x = torch.ones(L, dtype=torch.float64)
    with torch.no_grad():
        linear_scan(x, x, method, cost=cost, **kwargs)
    return cost


# ----------------------------------------------------------------------------------------------
# selective_scan
# ----------------------------------------------------------------------------------------------

def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float16, bfloat16, float32) accumulates in float32."""
    return compute_dtype(u.dtype)


def _discretize_delta(delta, delta_bias, delta_softplus, dtype):
    """Δ (b, d, l) by stage 4's rule (a negative Δ without softplus is refused, named)."""
    return step_size(delta.to(dtype), None if delta_bias is None else delta_bias.to(dtype), delta_softplus)


def _grouped(X: torch.Tensor, d: int, dtype) -> torch.Tensor:
    """B or C as (b, g, n, l) with g = 1 for the ungrouped (b, n, l) layout."""
    X = X.to(dtype)
    return X.unsqueeze(1) if X.dim() == 3 else X


def _finish(y, u, D, z, dtype_in, compute):
    """y + D u (the skip), then y · SiLU(z) (the gate), returned in ``dtype_in``."""
    if D is not None:
        y = torch.addcmul(y, u, D.to(compute)[:, None])
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(dtype_in)


def _selective_via_linear_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, method,
                               initial_state=None):
    """The textbook route: materialise Ā = exp(ΔA) and B̄u as (b, d, n, l), run ``linear_scan``."""
    b, d, l, n, _ = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, allow_complex=True,
                                       allow_constant_BC=True)
    compute = _compute_dtype(u)
    state = compute.to_complex() if A.is_complex() else compute                 # complex A: complex state
    u_c = u.to(compute)
    dt = _discretize_delta(delta, delta_bias, delta_softplus, compute)          # (b, d, l)
    Bc, Cc = per_channel(B, b, d, l, state), per_channel(C, b, d, l, state)     # (b, d, l, n) each
    a = torch.exp(dt[:, :, None, :] * A.to(state)[None, :, :, None])             # Ā: (b, d, n, l)
    x = ((dt * u_c)[..., None] * Bc).transpose(2, 3)                             # B̄u: (b, d, n, l)
    h0 = None if initial_state is None else initial_state.to(state)                # h_{-1}: (b, d, n)
    h = linear_scan(a, x, method, h0=h0)                                          # (b, d, n, l)
    y = (h * Cc.transpose(2, 3)).sum(2)                                           # y_t = C_t · h_t: (b, d, l)
    if y.is_complex():
        y = 2 * y.real                                                            # conjugate pairs
    y = _finish(y, u_c, D, z, u.dtype, compute)
    return (y, h[..., -1]) if return_last_state else y


class _intra_op_threads:
    """Run a block with ``k`` intra-op threads, then restore the previous count.

    The fused scan makes a few small tensor operations per time step. Splitting an operation
    over threads costs a barrier; when one step touches few numbers (see ``_threads_for``), the
    barrier costs more than the split saves (and far more when the cores are shared with other
    processes: measured 4-5x slower on this 2-core box), so small problems run on one thread."""

    def __init__(self, k: int):
        self.k = k

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.k != self.old:
            torch.set_num_threads(self.k)

    def __exit__(self, *exc):
        if self.k != self.old:
            torch.set_num_threads(self.old)


def _threads_for(per_step: int) -> int:
    """Intra-op threads for a scan whose state has ``per_step`` = b·d·n entries.

    Small states run on one thread: each time step is a handful of tiny ops, and a thread
    barrier per op costs more than it saves (and stalls badly when other jobs share the cores).
    From about 8k entries up the chunk-wide ops (exp(ΔA), B̄u over T steps) are large enough to
    split: at b=1, d=1536, n=16 on an idle 2-core machine, 2 threads took 188 ms against 261 ms."""
    return max(1, min(torch.get_num_threads(), per_step // 8192))


LOG2_E = 1.4426950408889634   # log2(e): exp(x) = 2^(x · log2 e)


def _chunk_states(dt_c, dtu_c, A2, B_c, h, dA_out, H_out, C_c=None, y_c=None):
    """One chunk of T steps, all arguments time-major: Δ_c, (Δu)_c (T, b, d) (may be strided views:
    the products read them in place, cheaper than a transposing copy), B_c, C_c (T, b, g, n).
    Builds Ā = exp(ΔA) and B̄u into the (T, b, d, n) buffers, then runs the recurrence
    h_t = Ā_t h_{t-1} + B̄_t u_t in place from the state ``h``, so that H_out[t] holds h_t. With
    C_c and y_c (T, b, d) given, also writes y_t = C_t · h_t into y_c.

    A2 is A · log2(e), so that Ā = exp(ΔA) = 2^(Δ · A2): the exponential is the scan's single
    most expensive operation, and PyTorch's exp2 is ~1.6x cheaper than its exp on this CPU
    (0.88 against 1.42 ns per float32, measured). The official CUDA kernel does the same (exp2f);
    the rounding of A2 changes Ā by about |ΔA| float ulps, far below the scan's tolerance."""
    T, b, g, n = B_c.shape
    d = dt_c.shape[2]
    k = d // g
    dA, H = dA_out[:T], H_out[:T]
    torch.mul(dt_c.unsqueeze(-1), A2, out=dA)                                         # ΔA·log2 e: (T, b, d, n)
    dA.exp2_()                                                                        # Ā = exp(ΔA)
    torch.mul(dtu_c.unflatten(2, (g, k)).unsqueeze(-1), B_c.unsqueeze(3), out=H.view(T, b, g, k, n))  # B̄u: (T, b, d, n)
    steps_A, steps_H = dA.unbind(0), H.unbind(0)
    if y_c is not None and b * g == 1:
        # one matrix-vector product per step, while h_t is still in the cache
        steps = zip(steps_A, steps_H, H.view(T, d, n).unbind(0), C_c.view(T, n).unbind(0), y_c.view(T, d).unbind(0))
        prev = h
        for a_t, h_t, h_mat, c_t, y_t in steps:
            h_t.addcmul_(a_t, prev)                                                   # h_t = Ā_t h_{t-1} + B̄_t u_t
            torch.mv(h_mat, c_t, out=y_t)                                             # y_t = C_t · h_t
            prev = h_t                                                                # in place: H now holds h
        return dA, H
    prev = h
    for a_t, h_t in zip(steps_A, steps_H):
        h_t.addcmul_(a_t, prev)                                                       # h_t = Ā_t h_{t-1} + B̄_t u_t
        prev = h_t
    if y_c is not None:
        torch.matmul(H.view(T, b, g, k, n), C_c.unsqueeze(-1), out=y_c.view(T, b, g, k, 1))  # y_t = C_t · h_t
    return dA, H


class _FusedSelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward pass (like the official CUDA kernel):
    the forward keeps only the state entering each chunk, (chunks, b, d, n); the backward
    recomputes each chunk's states from it and runs the adjoint recurrence backwards in time

        λ_t = ∂L/∂h_t = C_t ∂L/∂y_t + Ā_{t+1} λ_{t+1},

    from which ∂L/∂(B̄u)_t = λ_t and ∂L/∂Ā_t = λ_t h_{t-1} give every input's gradient."""

    @staticmethod
    def forward(ctx, u, dt, A, Bg, Cg, chunk_size, h0):
        b, d, l = u.shape
        n = A.shape[1]
        T = min(chunk_size, l)
        with _intra_op_threads(_threads_for(b * d * n)):
            BT = Bg.permute(3, 0, 1, 2).contiguous()                                   # (l, b, g, n)
            CT = Cg.permute(3, 0, 1, 2).contiguous()                                   # (l, b, g, n)
            dtu = dt * u                                                               # Δ u: (b, d, l)
            y = torch.empty_like(u)                                                    # (b, d, l), u's memory layout
            dtT, dtuT, yT = dt.permute(2, 0, 1), dtu.permute(2, 0, 1), y.permute(2, 0, 1)   # (l, b, d) views, no copy
            # Time-major inputs at batch 1 (MambaMixer's, when generating or benchmarking) make yT
            # contiguous: each chunk's y_t = C_t · h_t is then written straight into y; otherwise
            # (any batch > 1, or channel-major inputs) through a one-chunk buffer and a copy.
            y_buf = None if yT.is_contiguous() else u.new_empty(T, b, d)               # one chunk of y, time-major
            dA_buf, H_buf = u.new_empty(T, b, d, n), u.new_empty(T, b, d, n)           # (T, b, d, n)
            h = h0.clone()                                                             # h_{-1} (0 unless continuing)
            A2 = A * LOG2_E                                                            # (d, n)
            starts = []
            for t0 in range(0, l, T):
                t1 = min(t0 + T, l)
                starts.append(h)
                y_c = yT[t0:t1] if y_buf is None else y_buf[: t1 - t0]
                _, H = _chunk_states(dtT[t0:t1], dtuT[t0:t1], A2, BT[t0:t1], h, dA_buf, H_buf,
                                     CT[t0:t1], y_c)                                   # and y_t = C_t · h_t
                if y_buf is not None:
                    y[:, :, t0:t1] = y_c.permute(1, 2, 0)                              # a cache-sized transpose
                h = H[-1].clone()
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
        with _intra_op_threads(_threads_for(b * d * n)):
            dtT, uT = dt.permute(2, 0, 1).contiguous(), u.permute(2, 0, 1).contiguous()   # (l, b, d)
            BT, CT = Bg.permute(3, 0, 1, 2).contiguous(), Cg.permute(3, 0, 1, 2).contiguous()  # (l, b, g, n)
            dtuT = dtT * uT
            gyT = (gy if gy is not None else u.new_zeros(b, d, l)).permute(2, 0, 1).contiguous()  # (l, b, d)
            g_dtT, g_uT = torch.empty_like(dtT), torch.empty_like(uT)
            g_BT, g_CT = torch.empty_like(BT), torch.empty_like(CT)
            g_A = torch.zeros_like(A)
            dA_buf, H_buf = u.new_empty(T, b, d, n), u.new_empty(T, b, d, n)
            carry = gh_last.clone() if gh_last is not None else u.new_zeros(b, d, n)   # Ā_{t1} λ_{t1}, or ∂L/∂h_L
            A2 = A * LOG2_E                                                            # as in the forward
            for c in reversed(range(starts.shape[0])):
                t0 = c * T
                t1 = min(t0 + T, l)
                Tc = t1 - t0
                dA, H = _chunk_states(dtT[t0:t1], dtuT[t0:t1], A2, BT[t0:t1], starts[c], dA_buf, H_buf)
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
                Q[0].mul_(starts[c])                                                   # ... and the chunk's start
                g_dtT[t0:t1] = lamB * uT[t0:t1] + (Q * A).sum(-1)                      # Σ_n Q A: (T, b, d)
                # Σ over (t, b) as a product and a sum: ~4x faster here than the einsum, which
                # first copies Q into a (d, t·b, n) batch of tiny matrix products
                g_A += (Q * dtT[t0:t1].unsqueeze(-1)).sum((0, 1))
        return (g_uT.permute(1, 2, 0), g_dtT.permute(1, 2, 0), g_A,
                g_BT.permute(1, 2, 3, 0), g_CT.permute(1, 2, 3, 0), None, carry)   # carry = ∂L/∂h_{-1}


def _selective_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size,
                     initial_state=None):
    """The chunked, fused scan: the CPU default. Differentiable through ``_FusedSelectiveScan``.

    NaN/inf inputs: instead of scanning all eight inputs for non-finite values up front (several
    passes over (b, d, l) tensors, ~15% of the run time), it checks the output's sum once; a NaN
    in any input reaches the output, and then the full check runs and names the argument.
    (An infinite input whose effect vanishes, e.g. A = -inf resetting the state, is accepted.)"""
    b, d, l, n, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=False,
                                            allow_constant_BC=True)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    compute = _compute_dtype(u)
    u_c = u.to(compute)
    dt = _discretize_delta(delta, delta_bias, delta_softplus, compute)                # Δ: (b, d, l)
    Bg, Cg = _grouped(B, d, compute), _grouped(C, d, compute)                         # (b, g, n, l)
    if groups == -1:                                              # time-invariant B or C: one group per channel
        Bg, Cg = (per_channel(X, b, d, l, compute).transpose(2, 3) for X in (B, C))  # (b, d, n, l)
    h0 = u_c.new_zeros(b, d, n) if initial_state is None else initial_state.to(compute)   # h_{-1}: (b, d, n)
    y, h = _FusedSelectiveScan.apply(u_c, dt, A.to(compute), Bg, Cg, chunk_size or 64, h0)
    y = _finish(y, u_c, D, z, compute, compute)                                       # + D u, gate with SiLU(z)
    if not bool(torch.isfinite(y.sum() + h.sum())):
        validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=True)    # raises, naming the input
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def auto_method(device: torch.device | str) -> str:
    """The method ``selective_scan(method="auto")`` uses on ``device``.

    CPU: "fused". Measured on a 2-core AMD EPYC (torch 2.13, float32, other jobs sharing the
    cores), every method at b=1, d=64, n=16, L=512 (notebook 05): fused 24 ms, reference 54 ms,
    sequential 59 ms, hillis_steele 76 ms, chunked 99 ms, blelloch 257 ms; and at Mamba's
    layer size b=1, d=1536, n=16, L=2048 (``benchmarks/bench_scan.py``): fused about 6.9x faster
    than transformers' ``mamba_selective_scan`` with 55 MiB instead of 831 MiB of peak memory.
    The textbook methods lose because they write (b, d, l, n) tensors to main memory and, for
    Hillis-Steele and Blelloch, do 3-11x more work than the loop; two cores cannot hide it.

    CUDA: "triton" (stage 6, one program per block of channels, state kept in SRAM) when
    ``ssm_tutor.kernels`` provides it, else "fused". Not measured here: no GPU was available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from ssm_tutor.kernels import selective_scan_triton  # noqa: F401
            return "triton"
        except Exception:
            return "fused"
    return "fused"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, method="auto", chunk_size=None, initial_state=None):
    """Mamba's selective scan, with the signature and meaning of the official ``selective_scan_fn``.

        Δ = softplus(delta + delta_bias)        (each step optional)
        h_t = exp(Δ_t A) · h_{t-1} + Δ_t B_t u_t
        y_t = C_t · h_t + D u_t,   then y ← y · SiLU(z)

    Args:
        u, delta: (b, d, l); A: (d, n); B, C: (b, n, l) or grouped (b, g, n, l); D, delta_bias: (d,);
        z: (b, d, l). Checked by ``validate_scan_args`` (errors name the argument).
        method: "auto" (the fastest for u's device, see ``auto_method``), "fused" (chunked, never
            materialises (b, d, l, n); the CPU default), "sequential", "hillis_steele", "blelloch",
            "chunked" (materialise Ā, B̄u and run ``linear_scan``), "reference"
            (``selective_scan_ref``) or "triton" (``ssm_tutor.kernels``, stage 6).
        chunk_size: time steps per chunk for "fused" (default 64).
        initial_state: h_0 (b, d, n) to start from, default 0 (the state an earlier chunk of the
            sequence ended in: chunked prefill). Every method but "triton".

    What each method takes beyond the official real layout: time-invariant B, C of shape (d, n)
    -- every method but "triton"; complex A (S4D-Lin, y = 2 Re(C h)) -- "reference" and the four
    ``linear_scan`` methods ("auto" then picks "sequential"); the others raise an error that
    names the method that can. A negative Δ without softplus raises (the state would grow).

    Returns y (b, d, l) in u's dtype and, if ``return_last_state``, h_L (b, d, n) in the compute
    dtype (float32, or float64 for float64 inputs). float16/bfloat16 inputs accumulate in float32.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method == "auto":
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        method = auto_method(u.device)
        if isinstance(A, torch.Tensor) and A.is_complex():
            method = "sequential"                                   # the fused and Triton scans take real A
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if initial_state is not None and isinstance(u, torch.Tensor) and u.dim() == 3 and isinstance(A, torch.Tensor) \
            and A.dim() == 2:
        check_tensor("initial_state", initial_state, kind="real or complex", device=u.device)
        check_shape("initial_state", initial_state, "(b, d, n)", (u.shape[0], u.shape[1], A.shape[1]))
    if method == "fused":
        return _selective_fused(*args, chunk_size, initial_state)
    if method in LINEAR_SCAN_METHODS:
        return _selective_via_linear_scan(*args, method, initial_state)
    if method == "reference":
        return selective_scan_ref(*args, initial_state)
    if method == "triton" and initial_state is not None:
        raise NotImplementedError("method='triton' cannot start from an initial_state; use method='fused' "
                                  "(the CPU default) or 'reference'")
    if method == "triton":
        # shapes only: selective_scan_triton validates again and decides about the NaN check
        # (off on CUDA, where it would cost a device sync and a second read of every input)
        validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=False)
        if not delta_softplus:
            _discretize_delta(delta, delta_bias, False, _compute_dtype(u))   # refuses a negative Δ, named
        try:
            from ssm_tutor.kernels import selective_scan_triton
        except ImportError as err:
            raise RuntimeError(
                "method='triton' needs ssm_tutor.kernels.selective_scan_triton (stage 6) and Triton; "
                f"it could not be imported ({err}). Use method='fused' on a CPU.") from err
        return selective_scan_triton(*args)
    raise ValueError(f"method must be 'auto' or one of {SELECTIVE_SCAN_METHODS}, got {method!r}")
