"""Stage 5: the parallel scan (the teaching layer).

Notebook: ``notebooks/05_parallel_scan.ipynb``. Paper: Gu & Dao, *Mamba* (2023), Section 3.3.2
("hardware-aware algorithm": the scan is parallelised, the (b, d, l, n) state never leaves
fast memory); Blelloch (1990) "Prefix sums and their applications"; Hillis & Steele (1986).

Every selective SSM is, per channel d and state index n, the first-order linear recurrence

    h_t = a_t · h_{t-1} + b_t            with a_t = exp(Δ_t A),  b_t = Δ_t B_t u_t.

Its steps compose with the associative operator on pairs

    (a, b) ∘ (a', b') = (a · a',  a' · b + b')           ("first (a, b), then (a', b')")

so h_t is the second component of the prefix product (a_0, b_0) ∘ … ∘ (a_t, b_t), and any
parallel prefix-sum algorithm computes it. Four of them, each a short function over (…, L) tensors:

    function                 work (combines)       depth (parallel rounds)
    sequential_scan          L − 1                 L − 1
    hillis_steele_scan       L log L − L + 1       ⌈log₂ L⌉
    blelloch_scan            ≈ 3 L                 2 ⌈log₂ L⌉ + 1   (up-sweep, down-sweep, one last round)
    chunked_scan             ≈ 2 L                 ≈ 2 √L

``linear_scan(a, b, method)`` picks one; ``scan_cost`` counts the work and depth by running the
code with a :class:`ScanCost` passed in (each round of each function reports the positions it
combined), rather than trusting the table. ``selective_scan`` has the official
``selective_scan_fn`` signature and runs any of them, the reference, the fused CPU scan of the
fast layer (:mod:`ssm_tutor.fast.scan`, the CPU default) or stage 6's Triton kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ssm_tutor.selective import compute_dtype, per_channel, selective_scan_ref, step_size
from ssm_tutor.validate import check_shape, check_tensor, positive_int, validate_linear_scan_args, validate_scan_args

__all__ = [
    "combine",
    "sequential_scan",
    "hillis_steele_scan",
    "blelloch_up_sweep",
    "blelloch_down_sweep",
    "blelloch_scan",
    "chunked_scan",
    "linear_scan",
    "selective_scan",
    "scan_cost",
    "ScanCost",
    "LINEAR_SCAN_METHODS",
    "SELECTIVE_SCAN_METHODS",
    "auto_method",
]


# ----------------------------------------------------------------------------------------------
# The associative operator, and a counter the scans report their rounds to
# ----------------------------------------------------------------------------------------------

def combine(a1, b1, a2, b2):
    """(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2): apply step 1, then step 2.

    As maps h ↦ a·h + b, composing h ↦ a1 h + b1 and then h ↦ a2 h + b2 gives
    h ↦ a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2). Composition of maps is associative,
    so is ∘; it is not commutative (the earlier step comes first). Its identity is (1, 0).
    """
    return a1 * a2, a2 * b1 + b2


@dataclass
class ScanCost:
    """What a scan did: ``work`` = combines (one per pair of time steps combined, whatever the
    batch size), ``depth`` = rounds (vectorised steps that must wait for the previous one).

    With ``record=True`` it also keeps, for every round, its phase name and the (source,
    destination) positions it combined, ``steps = [(phase, [(src, dst), ...]), ...]``, so that
    figures are drawn from what the code did, not from a separate drawing."""

    work: int = 0
    depth: int = 0
    record: bool = False
    steps: list = field(default_factory=list)

    def round(self, phase: str, src, dst) -> None:
        """One round that combined position ``src[i]`` into ``dst[i]`` for every i (ranges or lists)."""
        if len(dst) == 0:
            return
        self.work += len(dst)
        self.depth += 1
        if self.record:
            self.steps.append((phase, list(zip(src, dst))))


def tally(cost: ScanCost | None, phase: str, src, dst) -> None:
    """Report one round to ``cost`` (nothing happens when cost is None, as in ordinary runs)."""
    if cost is not None:
        cost.round(phase, src, dst)


# ----------------------------------------------------------------------------------------------
# h_t = a_t h_{t-1} + b_t along the last axis, four ways. a, b: (…, L) -> h: (…, L), h_{-1} = 0
# ----------------------------------------------------------------------------------------------

def sequential_scan(a, b, cost=None):
    """The loop: one step per round, each waiting for the previous one. Work L − 1, depth L − 1."""
    h = [b[..., 0]]                                          # h_0 = a_0 · 0 + b_0: (…,)
    for t in range(1, a.shape[-1]):
        h.append(a[..., t] * h[-1] + b[..., t])              # h_t = a_t h_{t-1} + b_t
        tally(cost, "sequential", [t - 1], [t])
    return torch.stack(h, dim=-1)                            # (…, L)


def hillis_steele_scan(a, b, cost=None):
    """Hillis & Steele (1986): in round k every position t ≥ 2^k takes in position t − 2^k.

    Afterwards position t holds the product of the 2^(k+1) steps ending at t (or of all steps
    0..t), so ⌈log₂ L⌉ rounds suffice; round k does L − 2^k combines (work O(L log L))."""
    L = a.shape[-1]
    k = 1                                                    # the offset, 2^round
    while k < L:
        a_k, b_k = combine(a[..., :-k], b[..., :-k], a[..., k:], b[..., k:])   # (t − k) ∘ t for t ≥ k
        a = torch.cat([a[..., :k], a_k], dim=-1)             # (…, L): positions t < k are finished
        b = torch.cat([b[..., :k], b_k], dim=-1)
        tally(cost, f"offset {k}", range(L - k), range(k, L))
        k *= 2
    return b


def blelloch_up_sweep(a, b, cost=None):
    """Blelloch's up-sweep (a reduction tree): combine neighbours pairwise, level by level.

    a, b: (…, N) with N a power of two. Returns the tree as a list of levels, ``tree[0] = (a, b)``
    (the N steps) and ``tree[k]`` = the products of the N / 2^k blocks of 2^k consecutive steps,
    (…, N / 2^k) each; ``tree[-1]`` is the product of the whole sequence. Work N − 1, depth log₂ N.
    (In ``cost`` a block is named by its last position, as in the in-place array version.)"""
    N = a.shape[-1]
    tree = [(a, b)]
    while a.shape[-1] > 1:
        a, b = combine(a[..., 0::2], b[..., 0::2], a[..., 1::2], b[..., 1::2])   # left block ∘ right block
        s = N // (2 * a.shape[-1])                                               # the children's block length
        tally(cost, "up-sweep", range(s - 1, N, 2 * s), range(2 * s - 1, N, 2 * s))
        tree.append((a, b))
    return tree


def blelloch_down_sweep(tree, cost=None):
    """Blelloch's down-sweep: from the up-sweep's tree, the exclusive prefix of every position,

        P_t = (a_0, b_0) ∘ … ∘ (a_{t-1}, b_{t-1}),     P_0 = (1, 0), the identity.

    Walking down from the root (whose prefix is the identity: nothing comes before the whole
    sequence), every node hands its prefix P to its left child unchanged, and P ∘ (left child's
    block) to its right child. Work N − 1, depth log₂ N. Returns (a_P, b_P), (…, N) each."""
    a_root, b_root = tree[-1]
    a_P, b_P = torch.ones_like(a_root), torch.zeros_like(b_root)   # the root's prefix: (…, 1)
    N = tree[0][0].shape[-1]
    for a, b in reversed(tree[:-1]):                          # the levels below the root, down to the leaves
        a_r, b_r = combine(a_P, b_P, a[..., 0::2], b[..., 0::2])   # right child: P ∘ (left sibling's block)
        a_P = torch.stack([a_P, a_r], dim=-1).flatten(-2)     # (…, 2 · nodes): left child, right child, …
        b_P = torch.stack([b_P, b_r], dim=-1).flatten(-2)
        s = N // a.shape[-1]                                  # this level's block length
        tally(cost, "down-sweep", range(s - 1, N, 2 * s), range(2 * s - 1, N, 2 * s))
    return a_P, b_P


def blelloch_scan(a, b, cost=None):
    """Blelloch (1990): up-sweep, down-sweep (an exclusive scan), then one round more to
    include each step itself: h_t = P_t ∘ (a_t, b_t). Work ≈ 3 L, depth 2 log₂ N + 1.

    A length that is not a power of two is padded with identity steps (a, b) = (1, 0)."""
    L = a.shape[-1]
    N = 1 << (L - 1).bit_length()                             # the next power of two ≥ L
    a_N = F.pad(a, [0, N - L], value=1.0)                     # (…, N)
    b_N = F.pad(b, [0, N - L], value=0.0)
    a_P, b_P = blelloch_down_sweep(blelloch_up_sweep(a_N, b_N, cost), cost)      # exclusive prefixes
    _, h = combine(a_P[..., :L], b_P[..., :L], a, b)          # h_t = P_t ∘ (a_t, b_t), applied to h_{-1} = 0
    tally(cost, "inclusive", range(L), range(L))
    return h


def chunked_scan(a, b, chunk_size=None, cost=None):
    """Split time into chunks of T steps (default ⌊√L⌋). (1) Scan every chunk on its own, all
    chunks at once; (2) carry the state from chunk to chunk, one step per chunk; (3) fold each
    chunk's incoming state into its prefixes, all at once. Depth ≈ T + L/T (≈ 2√L), work ≈ 2 L.
    This is the shape of the GPU kernel: a thread block owns a chunk, only states cross chunks."""
    L = a.shape[-1]
    T = chunk_size or max(1, math.isqrt(L))
    nc = -(-L // T)                                           # number of chunks
    a = F.pad(a, [0, nc * T - L], value=1.0).unflatten(-1, (nc, T))   # (…, chunks, T), identity padding
    b = F.pad(b, [0, nc * T - L], value=0.0).unflatten(-1, (nc, T))
    # (1) the prefix products inside every chunk, a loop over T vectorised over the chunks
    a_loc, b_loc = [a[..., 0]], [b[..., 0]]                   # (…, chunks) each
    for t in range(1, T):
        a_t, b_t = combine(a_loc[-1], b_loc[-1], a[..., t], b[..., t])
        a_loc.append(a_t)
        b_loc.append(b_t)
        tally(cost, "within chunks", range(t - 1, nc * T, T), range(t, nc * T, T))
    a_loc = torch.stack(a_loc, dim=-1)                        # (…, chunks, T): product of a within the chunk
    b_loc = torch.stack(b_loc, dim=-1)                        # (…, chunks, T): the state had the chunk started at 0
    # (2) the carry: the state entering chunk c is h_in[c] = a_loc[c-1, -1] h_in[c-1] + b_loc[c-1, -1]
    h_in = [torch.zeros_like(b_loc[..., 0, 0])]               # nothing enters chunk 0: (…,)
    for c in range(1, nc):
        h_in.append(a_loc[..., c - 1, -1] * h_in[-1] + b_loc[..., c - 1, -1])
        tally(cost, "carry", [(c - 1) * T - 1], [c * T - 1])  # (position −1: the zero start)
    h_in = torch.stack(h_in, dim=-1)                          # (…, chunks)
    # (3) fold in: h = a_loc · h_in + b_loc at every position at once
    h = a_loc * h_in[..., None] + b_loc                       # (…, chunks, T)
    tally(cost, "fold in", [t // T * T - 1 for t in range(T, L)], range(T, L))
    return h.flatten(-2)[..., :L]                             # (…, L)


_LINEAR_SCANS = {"sequential": sequential_scan, "hillis_steele": hillis_steele_scan,
                 "blelloch": blelloch_scan, "chunked": chunked_scan}
LINEAR_SCAN_METHODS = tuple(_LINEAR_SCANS)
SELECTIVE_SCAN_METHODS = ("fused",) + LINEAR_SCAN_METHODS + ("reference", "triton")


def linear_scan(a: torch.Tensor, b: torch.Tensor, method: str = "sequential", h0: torch.Tensor | None = None,
                *, chunk_size: int | None = None, cost: ScanCost | None = None) -> torch.Tensor:
    """Solve h_t = a_t · h_{t-1} + b_t along the last axis, with h_{-1} = h0 (0 by default).

    Args:
        a, b: (…, L) tensors of one shape, dtype (real or complex) and device.
        method: "sequential", "hillis_steele", "blelloch" or "chunked" (see the module's table).
        h0: (…) optional initial state; folded into the first step as b_0 ← a_0 h0 + b_0.
        chunk_size: chunk length T for "chunked" (default ⌊√L⌋).
        cost: a :class:`ScanCost` that this call's rounds are added to.

    Returns h of shape (…, L). Every method is plain differentiable PyTorch.
    """
    validate_linear_scan_args(a, b, h0)
    if method not in _LINEAR_SCANS:
        raise ValueError(f"method must be one of {LINEAR_SCAN_METHODS}, got {method!r}")
    if h0 is not None:
        b = torch.cat([(a[..., :1] * h0.to(b.dtype)[..., None] + b[..., :1]), b[..., 1:]], dim=-1)
    if method == "chunked":
        return chunked_scan(a, b, None if chunk_size is None else positive_int("chunk_size", chunk_size), cost)
    return _LINEAR_SCANS[method](a, b, cost)


def scan_cost(method: str, L: int, record: bool = False, **kwargs) -> ScanCost:
    """Count the work (combines) and depth (rounds) of ``linear_scan(method)`` at length L by
    running it once on a length-L sequence (``record=True`` also keeps which positions each
    round combined; ``kwargs`` go to ``linear_scan``, e.g. ``chunk_size``)."""
    cost = ScanCost(record=record)
    x = torch.ones(positive_int("L", L), dtype=torch.float64)
    with torch.no_grad():
        linear_scan(x, x, method, cost=cost, **kwargs)
    return cost


# ----------------------------------------------------------------------------------------------
# selective_scan: Ā = exp(ΔA) and B̄u as (b, d, n, l) tensors, then any linear scan
# ----------------------------------------------------------------------------------------------

def _selective_via_linear_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                               method, chunk_size, initial_state=None):
    """The textbook route: materialise a = Ā = exp(ΔA) and b = B̄u as (b, d, n, l), run ``linear_scan``."""
    b, d, l, n, _ = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, allow_complex=True,
                                       allow_constant_BC=True)
    dtype, real = u.dtype, compute_dtype(u.dtype)                              # real: float32, or float64
    state = real.to_complex() if A.is_complex() else real                      # complex A: complex state
    u = u.to(real)
    dt = step_size(delta.to(real), None if delta_bias is None else delta_bias.to(real), delta_softplus)  # Δ (b, d, l)
    B_t = per_channel(B, b, d, l, state).transpose(2, 3)                       # B_t per channel: (b, d, n, l)
    C_t = per_channel(C, b, d, l, state).transpose(2, 3)                       # (b, d, n, l)
    A_bar = torch.exp(dt[:, :, None, :] * A.to(state)[None, :, :, None])       # Ā = exp(Δ A): (b, d, n, l)
    Bu = (dt * u)[:, :, None, :] * B_t                                         # B̄u = Δ B u: (b, d, n, l)
    h0 = None if initial_state is None else initial_state.to(state)           # h_{-1}: (b, d, n), or 0
    h = linear_scan(A_bar, Bu, method, h0=h0, chunk_size=chunk_size)           # h_t: (b, d, n, l)
    y = (C_t * h).sum(2)                                                       # y_t = C_t · h_t: (b, d, l)
    if y.is_complex():
        y = 2 * y.real                                                         # a conjugate pair: 2 Re(C h)
    if D is not None:
        y = y + D.to(real)[:, None] * u                                        # the skip D u
    if z is not None:
        y = y * F.silu(z.to(real))                                             # the gate
    y = y.to(dtype)
    return (y, h[..., -1]) if return_last_state else y


#: the methods that take a complex A (``selective_scan`` refuses it for the others, naming these)
COMPLEX_A_METHODS = LINEAR_SCAN_METHODS + ("reference",)


def auto_method(device: torch.device | str, complex_A: bool = False) -> str:
    """The method ``selective_scan(method="auto")`` uses on ``device``.

    CPU: "fused" (:mod:`ssm_tutor.fast.scan`), the fastest method on a CPU. Notebook 05
    ("Measured on this CPU") times every method at b=1, d=64, n=16, L=512 each time it runs and
    asserts fused's lead (more than 2x faster than any other method; the others' order varies
    with the vector path, threads and load); ``benchmarks/bench_scan.py`` measures it at
    Mamba's layer size against ``transformers``. The figures depend on the machine, so none is
    quoted here. The textbook methods lose because they write (b, d, n, l) tensors to main
    memory and, for Hillis-Steele and Blelloch, do 3-9x more work than the loop (L = 1024).

    CUDA: "triton" (stage 6, one program per block of channels, state kept in SRAM) when
    ``ssm_tutor.kernels`` provides it, else "fused".

    Complex A (``complex_A``): "sequential", the fastest of the methods that take it.
    """
    if complex_A:
        return "sequential"
    if torch.device(device).type == "cuda":
        try:
            from ssm_tutor.kernels import selective_scan_triton  # noqa: F401
            return "triton"
        except Exception:
            return "fused"
    return "fused"


def _refuse_complex_A(method: str, A) -> None:
    if isinstance(A, torch.Tensor) and A.is_complex() and method not in COMPLEX_A_METHODS:
        raise TypeError(f"selective_scan(method={method!r}) takes a real A only, got complex dtype {A.dtype}; "
                        f"complex A (S4D-Lin) is taken by the methods {', '.join(map(repr, COMPLEX_A_METHODS))} "
                        f"(and by 'auto', which picks {auto_method('cpu', complex_A=True)!r})")


def _one_group_per_channel(B, C, b, d, l, sizes_groups):
    """Time-invariant B or C, (d, n), for a scan that takes only the time-varying layouts: both as
    (b, g = d, n, l), one group per channel (a copy: b·d·n·l numbers each)."""
    if sizes_groups != -1:
        return B, C
    return tuple(per_channel(X, b, d, l).transpose(2, 3) for X in (B, C))   # (b, d, n, l)


def _triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    try:
        from ssm_tutor.kernels import selective_scan_triton
    except ImportError as err:
        raise RuntimeError(
            "method='triton' needs ssm_tutor.kernels.selective_scan_triton (stage 6) and Triton; "
            f"it could not be imported ({err}). Use method='fused' on a CPU.") from err
    # shapes here; selective_scan_triton validates again and decides about the NaN check
    # (off on CUDA, where it would cost a device sync and a second read of every input)
    b, d, l, _, groups = validate_scan_args(u, delta, A, B, C, D, z, delta_bias, check_finite=False,
                                            allow_constant_BC=True)
    if not delta_softplus:
        real = compute_dtype(u.dtype)
        step_size(delta.to(real), None if delta_bias is None else delta_bias.to(real))   # refuses a negative Δ
    B, C = _one_group_per_channel(B, C, b, d, l, groups)
    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, method="auto", chunk_size=None, initial_state=None):
    """Mamba's selective scan, with the signature and meaning of the official ``selective_scan_fn``.

        Δ = softplus(delta + delta_bias)        (each step optional)
        h_t = exp(Δ_t A) · h_{t-1} + Δ_t B_t u_t
        y_t = C_t · h_t + D u_t,   then y ← y · SiLU(z)

    Args:
        u, delta: (b, d, l); A: (d, n); B, C: (b, n, l), grouped (b, g, n, l) or time-invariant
        (d, n); D, delta_bias: (d,); z: (b, d, l). Checked by ``validate_scan_args`` (errors name
        the argument). A negative Δ without softplus raises (the state would grow).
        method: "auto" (see :func:`auto_method`), "fused" (:mod:`ssm_tutor.fast.scan`: chunked, never
            materialises (b, d, l, n); the CPU default), "sequential", "hillis_steele", "blelloch",
            "chunked" (materialise Ā, B̄u and run :func:`linear_scan`), "reference"
            (``selective_scan_ref``) or "triton" (``ssm_tutor.kernels``, stage 6).
        chunk_size: time steps per chunk for "fused" (default 64) and "chunked" (default ⌊√l⌋).
        initial_state: the state (b, d, n) to start from, default 0: the state an earlier chunk of
            the same sequence ended in, so a long sequence can be read in pieces (chunked
            prefill). Every method but "triton" (NotImplementedError).

    Beyond the real, time-varying layout, as ``mamba_ssm``'s ``selective_scan_fn``:
    time-invariant B, C of shape (d, n) -- every method; complex A (S4D-Lin, y = 2 Re(C h)), with
    complex B/C or real ones with (re, im) interleaved along time -- the four ``linear_scan``
    methods and "reference" ("auto" picks "sequential"); "fused" and "triton" raise a TypeError
    that names the methods that take it.

    Returns y (b, d, l) in u's dtype and, if ``return_last_state``, h_L (b, d, n) in the compute
    dtype (float32, or float64 for float64 inputs). float16/bfloat16 inputs accumulate in float32.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method == "auto":
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        method = auto_method(u.device, complex_A=isinstance(A, torch.Tensor) and A.is_complex())
    if method not in SELECTIVE_SCAN_METHODS:
        raise ValueError(f"method must be 'auto' or one of {SELECTIVE_SCAN_METHODS}, got {method!r}")
    if chunk_size is not None:
        positive_int("chunk_size", chunk_size)
    _refuse_complex_A(method, A)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if initial_state is not None:
        if method == "triton":
            raise NotImplementedError("method='triton' cannot start from an initial_state; use method='fused' "
                                      "(the CPU default) or 'reference'")
        if isinstance(u, torch.Tensor) and u.dim() == 3 and isinstance(A, torch.Tensor) and A.dim() == 2:
            check_tensor("initial_state", initial_state, kind="real or complex", device=u.device)
            check_shape("initial_state", initial_state, "(b, d, n)", (u.shape[0], u.shape[1], A.shape[1]))
    if method == "fused":
        from ssm_tutor.fast.scan import fused_selective_scan           # the fast layer (imports this module's peers)
        return fused_selective_scan(*args, chunk_size=chunk_size or 64, initial_state=initial_state)
    if method in LINEAR_SCAN_METHODS:
        return _selective_via_linear_scan(*args, method, chunk_size if method == "chunked" else None, initial_state)
    if method == "reference":
        return selective_scan_ref(*args, initial_state)
    return _triton(*args)
