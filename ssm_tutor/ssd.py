"""Stage 11: Mamba-2's state space duality (SSD): one map, three ways to compute it.

Notebook: ``notebooks/11_mamba2_ssd.ipynb``. Paper: Dao & Gu, *Transformers are SSMs:
Generalized Models and Efficient Algorithms Through Structured State Space Duality* (2024):
Section 3 (SSMs are semiseparable matrices), Section 5 (the scalar-A restriction, SSD),
Section 6 (the chunked, hardware-efficient algorithm and its cost).

Mamba-2 restricts Mamba's A to one negative scalar per *head*. A head takes inputs
x_t ∈ R^P (P = head_dim), a step Δ_t > 0 and, shared by the heads of a group, B_t, C_t ∈ R^N:

    a_t = exp(Δ_t A)                         a scalar decay in (0, 1]
    h_t = a_t h_{t-1} + (Δ_t x_t) B_tᵀ        the state h_t is a (P × N) matrix
    y_t = h_t C_t                            (+ D x_t, the skip, added by ``ssd_scan``)

Unrolled, y_t = Σ_{s ≤ t} (C_t · B_s) (a_{s+1} ⋯ a_t) Δ_s x_s, so y = M x̄ with x̄_s = Δ_s x_s and

    M_ts = (C_t · B_s) · exp(Σ_{s<k≤t} Δ_k A)   for s ≤ t,   0 above the diagonal.

M is the causal "attention" matrix C Bᵀ (queries C, keys B, values x̄) masked, not by 0/1, but by
the decay matrix L_ts = exp(segsum(ΔA)_ts): a *1-semiseparable* matrix (every block below the
diagonal has rank ≤ N). Three algorithms compute the same y:

* :func:`ssd_recurrent` -- the recurrence, one step at a time (:func:`ssd_step`): O(L) work,
  L sequential steps, a constant-size state: how Mamba-2 generates text;
* :func:`ssd_quadratic` -- the matrix M materialised (:func:`ssd_matrix`): O(L²) work, all of
  it matrix products, like attention;
* :func:`ssd_chunked` -- the paper's algorithm (Section 6): split the sequence into chunks of Q
  steps; inside a chunk use the quadratic form (diagonal blocks of M), between chunks pass a
  state (the off-diagonal blocks are low rank). Its four steps are :func:`chunk_diagonal_blocks`,
  :func:`chunk_states`, :func:`pass_states` and :func:`chunk_off_diagonal_blocks`.

:func:`ssd_scan` wraps them with the signature and meaning of ``mamba_ssm``'s
``mamba_chunk_scan_combined`` (dt bias, softplus, dt limits, D, the gate z, initial and final
states); by default it runs the fast CPU version in ``ssm_tutor.fast.ssd``, which the tests hold
to these teaching forms.

Shapes (the official layout): x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n) with g
groups dividing h (head i reads group i // (h / g)), D (h,) or (h, p), states (b, h, p, n).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ssm_tutor.convolution import compute_dtype
from ssm_tutor.validate import check_choice, validate_ssd_args

__all__ = ["segsum", "heads_from_groups", "ssd_step", "ssd_recurrent", "ssd_matrix", "ssd_quadratic",
           "chunk_diagonal_blocks", "chunk_states", "pass_states", "chunk_off_diagonal_blocks",
           "ssd_chunked", "ssd_scan", "SSD_METHODS", "matmul_flops"]

SSD_METHODS = ("fast", "chunked", "recurrent")


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------

def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of a (..., T), stably: S (..., T, T) with

        S[..., t, s] = a_{s+1} + a_{s+2} + … + a_t   for s ≤ t (0 on the diagonal),   -inf for s > t,

    so exp(S) is the lower-triangular decay matrix L_ts = a-products from step s+1 to t.

    The obvious formula, cumsum(a)_t - cumsum(a)_s, subtracts two running totals: after one very
    negative entry (a state reset) both totals are huge and their difference loses every digit,
    or is (-inf) - (-inf) = NaN. Here each segment is summed on its own: the (T, T) matrix of
    terms a_k for s < k (and 0 elsewhere) is summed down its columns.
    """
    step = torch.arange(a.shape[-1], device=a.device)
    terms = torch.where(step[:, None] > step, a.unsqueeze(-1), 0.0)   # terms[..., k, s] = a_k if k > s: (..., T, T)
    sums = terms.cumsum(dim=-2)                                # sums[..., t, s] = Σ_{s<k≤t} a_k
    return sums.masked_fill(step[:, None] < step, -math.inf)   # s > t: -inf


def heads_from_groups(B: torch.Tensor, h: int) -> torch.Tensor:
    """B or C (..., g, n) -> (..., h, n): head i uses group i // (h / g) (a copy when g < h)."""
    g = B.shape[-2]
    return B if g == h else B.repeat_interleave(h // g, dim=-2)


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence (Section 3.1 with the scalar A of Section 5.1):

        h_t = exp(Δ_t A) h_{t-1} + (Δ_t x_t) B_tᵀ,        y_t = h_t C_t

    state (b, h, p, n) is h_{t-1}; x (b, h, p); dt (b, h) (Δ, already positive); A (h,);
    B, C (b, g, n). Returns (y_t (b, h, p), h_t (b, h, p, n)); nothing is modified in place.
    """
    h = x.shape[1]
    B, C = heads_from_groups(B, h), heads_from_groups(C, h)            # (b, h, n)
    decay = torch.exp(dt * A)                                          # a_t: (b, h)
    new_state = decay[:, :, None, None] * state \
        + (dt[:, :, None] * x)[:, :, :, None] * B[:, :, None, :]       # (b, h, p, n)
    y = torch.einsum("bhpn,bhn->bhp", new_state, C)                    # (b, h, p)
    return y, new_state


# ----------------------------------------------------------------------------------------------
# the two classic views: recurrence and matrix
# ----------------------------------------------------------------------------------------------

def ssd_recurrent(x, dt, A, B, C, initial_states=None):
    """The linear form: :func:`ssd_step` once per time step, h_0 = ``initial_states`` (or 0).

    x (b, l, h, p), dt (b, l, h) (positive), A (h,), B, C (b, l, g, n), initial_states
    (b, h, p, n) or None. Returns (y (b, l, h, p), h_l (b, h, p, n)). No skip D here.
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    state = x.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(x.dtype)
    ys = []
    for t in range(l):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1), state                                # (b, l, h, p), (b, h, p, n)


def ssd_matrix(dt, A, B, C):
    """The matrix M of the map y = M x (Section 3.2, with x̄ = Δ x folded into M's columns):

        M[b, h, t, s] = (C_t · B_s) · exp(segsum(Δ A)[t, s]) · Δ_s      (0 for s > t)

    dt (b, l, h), A (h,), B, C (b, l, g, n). Returns M (b, h, l, l): the attention-like scores
    C Bᵀ, masked by the decay matrix L = exp(segsum(ΔA)) instead of a 0/1 causal mask.
    Memory O(h l²): for teaching and short sequences.
    """
    h = dt.shape[-1]
    scores = torch.einsum("bthn,bshn->bhts", heads_from_groups(C, h), heads_from_groups(B, h))   # C_t · B_s
    L = torch.exp(segsum((dt * A).transpose(1, 2)))                    # decay mask: (b, h, l, l)
    return scores * L * dt.transpose(1, 2)[:, :, None, :]              # (b, h, l, l)


def ssd_quadratic(x, dt, A, B, C):
    """The quadratic ("attention") form: y = M x with M from :func:`ssd_matrix`.

    x (b, l, h, p) -> y (b, l, h, p). O(l²) work, no state, no sequential steps.
    """
    return torch.einsum("bhts,bshp->bthp", ssd_matrix(dt, A, B, C), x)


# ----------------------------------------------------------------------------------------------
# the chunked algorithm (Section 6), in its four steps
# ----------------------------------------------------------------------------------------------
# Layout inside the chunked algorithm: the sequence is cut into c chunks of Q steps,
#   xbar = Δ x  (b, c, Q, h, p),   B, C (b, c, Q, h, n),   dA = Δ A  (b, h, c, Q).

def chunk_diagonal_blocks(xbar, dA, B, C):
    """Step 1, the diagonal blocks of M: each chunk's output from its own inputs, by the
    quadratic form inside the chunk. Y_diag[t] = Σ_{s ≤ t in the chunk} (C_t · B_s) L_ts x̄_s.
    Returns (b, c, Q, h, p)."""
    L = torch.exp(segsum(dA))                                          # (b, h, c, Q, Q)
    scores = torch.einsum("bcthn,bcshn->bhcts", C, B)                  # C_t · B_s: (b, h, c, Q, Q)
    return torch.einsum("bhcts,bcshp->bcthp", scores * L, xbar)


def chunk_states(xbar, dA, B):
    """Step 2, the right factors of the low-rank blocks: the state each chunk would leave
    behind if it started from zero, Σ_s exp(dA_{s+1} + … + dA_Q) x̄_s B_sᵀ. The decays to the
    chunk's end are the last row of its decay matrix exp(segsum(dA)). Returns (b, c, h, p, n)."""
    decay_to_end = torch.exp(segsum(dA)[..., -1, :])                   # exp(Σ_{s<k≤Q} dA_k): (b, h, c, Q)
    weighted = xbar * decay_to_end.permute(0, 2, 3, 1)[..., None]      # x̄_s decayed to the chunk's end
    return torch.einsum("bcshn,bcshp->bchpn", B, weighted)             # Σ_s (decayed x̄_s) B_sᵀ


def pass_states(states, dA, initial_states=None):
    """Step 3, the middle factors: the state *entering* each chunk, from the chunk states and
    the total decay of every chunk. It is the same recurrence one level up (c steps instead of
    l), written here in its matrix form with :func:`segsum` over the chunks' total log-decays:

        S_k = Σ_{j < k} exp(T_{j+1} + … + T_{k-1}) states_j + exp(T_0 + … + T_{k-1}) S_0

    states (b, c, h, p, n), dA (b, h, c, Q), initial_states (b, h, p, n) or None (zero).
    Returns (entering (b, c, h, p, n), final (b, h, p, n)).
    """
    b, c, h, p, n = states.shape
    start = states.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(states.dtype)
    states = torch.cat([start[:, None], states], dim=1)               # chunk "-1" is the initial state
    totals = F.pad(dA.sum(-1), (1, 0))                                 # (b, h, c + 1): T_{-1} = 0, T_0 … T_{c-1}
    decay = torch.exp(segsum(totals))                                  # (b, h, c + 1, c + 1)
    out = torch.einsum("bhkj,bjhpn->bkhpn", decay, states)             # state after chunk k - 1
    return out[:, :-1], out[:, -1]


def chunk_off_diagonal_blocks(C, dA, entering):
    """Step 4, the left factors: each chunk's output from the state entering it,
    Y_off[t] = exp(dA_1 + … + dA_t) · S_k C_t. Returns (b, c, Q, h, p)."""
    decay_from_start = torch.exp(torch.cumsum(dA, dim=-1))             # (b, h, c, Q)
    y = torch.einsum("bcthn,bchpn->bcthp", C, entering)                # S_k C_t: (b, c, Q, h, p)
    return y * decay_from_start.permute(0, 2, 3, 1)[..., None]


def ssd_chunked(x, dt, A, B, C, chunk_size, initial_states=None):
    """The chunked algorithm (Section 6, the paper's Listing 1 in four named steps).

    x (b, l, h, p), dt (b, l, h) (positive), A (h,), B, C (b, l, g, n); any l (the last chunk is
    padded with Δ = 0 steps, which neither decay the state nor add to it). Returns
    (y (b, l, h, p), final state (b, h, p, n)). Equal to :func:`ssd_recurrent` and
    :func:`ssd_quadratic` for every chunk size.
    """
    b, l, h, p = x.shape
    Q = chunk_size
    pad = (-l) % Q
    c = (l + pad) // Q

    def chunks(t):                                                     # (b, l, ...) -> (b, c, Q, ...)
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(b, c, Q, *t.shape[2:])

    xbar = chunks(x * dt[..., None])                                   # x̄ = Δ x: (b, c, Q, h, p)
    Bh, Ch = chunks(heads_from_groups(B, h)), chunks(heads_from_groups(C, h))   # (b, c, Q, h, n)
    dA = chunks(dt * A).permute(0, 3, 1, 2)                            # Δ A: (b, h, c, Q)

    y_diag = chunk_diagonal_blocks(xbar, dA, Bh, Ch)                   # 1. inside each chunk
    states = chunk_states(xbar, dA, Bh)                                # 2. what each chunk leaves
    entering, final = pass_states(states, dA, initial_states)         # 3. across chunks
    y_off = chunk_off_diagonal_blocks(Ch, dA, entering)               # 4. from the entering state
    y = (y_diag + y_off).reshape(b, c * Q, h, p)[:, :l]
    return y, final


# ----------------------------------------------------------------------------------------------
# the public scan: mamba_chunk_scan_combined's signature
# ----------------------------------------------------------------------------------------------

def ssd_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
             dt_softplus=False, dt_limit=(0.0, math.inf), return_final_states=False, method="fast"):
    """Mamba-2's SSD scan with the signature and meaning of ``mamba_ssm``'s
    ``mamba_chunk_scan_combined`` (without its packed-sequence options ``seq_idx``/``cu_seqlens``):

        Δ = clamp(softplus(dt + dt_bias), *dt_limit)      (bias and softplus optional)
        h_t = exp(Δ_t A) h_{t-1} + (Δ_t x_t) B_tᵀ,  h_0 = initial_states (or 0)
        y_t = h_t C_t + D x_t,   then y ← y · SiLU(z)

    Args:
        x (b, l, h, p); dt (b, l, h); A (h,) (negative); B, C (b, l, g, n) with g dividing h;
        chunk_size: the block size Q of the chunked algorithm (any positive int; the result does
        not depend on it beyond rounding); D (h,) or (h, p); z (b, l, h, p); dt_bias (h,);
        initial_states (b, h, p, n); dt_limit (low, high); any length l ≥ 1.
        method: "fast" (``ssm_tutor.fast.ssd``, the default), "chunked" (:func:`ssd_chunked`,
        the four steps as written in the notebook) or "recurrent" (:func:`ssd_recurrent`).

    Returns y (b, l, h, p) in x's dtype and, with ``return_final_states``, h_l (b, h, p, n) in
    the compute dtype (float32; float64 for float64 inputs; half precision accumulates in
    float32). Differentiable by autograd with every method.
    """
    check_choice("method", method, SSD_METHODS)
    validate_ssd_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit, check_finite=False)
    compute = compute_dtype(x.dtype)
    x_c = x.to(compute)
    delta = dt.to(compute)
    if dt_bias is not None:
        delta = delta + dt_bias.to(compute)
    if dt_softplus:
        delta = F.softplus(delta)
    delta = delta.clamp(min=dt_limit[0], max=dt_limit[1])             # Δ: (b, l, h)
    args = (x_c, delta, A.to(compute), B.to(compute), C.to(compute))
    h0 = None if initial_states is None else initial_states.to(compute)
    if method == "fast":
        from ssm_tutor.fast.ssd import ssd_chunk_scan
        y, final = ssd_chunk_scan(*args, chunk_size, h0)
    elif method == "chunked":
        y, final = ssd_chunked(*args, chunk_size, h0)
    else:
        y, final = ssd_recurrent(*args, h0)
    if D is not None:
        y = y + x_c * (D.to(compute)[:, None] if D.dim() == 1 else D.to(compute))
    if z is not None:
        y = y * F.silu(z.to(compute))
    # A NaN or infinity in any input reaches the output; only then pay for the full check,
    # which names the argument (checking every input up front costs a pass over each).
    if y.device.type != "meta" and not bool(torch.isfinite(y.sum() + final.sum())):   # meta: shapes only
        validate_ssd_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit, check_finite=True)
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y


# ----------------------------------------------------------------------------------------------
# counting the work
# ----------------------------------------------------------------------------------------------

class _MatmulFlopCounter(TorchDispatchMode):
    """Sees every ATen operation run inside it and adds up the matrix products' FLOPs."""

    PRODUCTS = {torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm, torch.ops.aten.baddbmm}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False        # a plain counter: do not import torch._dynamo (seconds) to wrap it

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.PRODUCTS:
            first = args[1] if func.overloadpacket in (torch.ops.aten.addmm, torch.ops.aten.baddbmm) else args[0]
            self.flops += 2 * first.shape[-1] * out.numel()            # k multiply-adds per output entry
        return out


def matmul_flops(fn, *args, **kwargs) -> int:
    """Call ``fn(*args, **kwargs)`` and return the FLOPs of the matrix products PyTorch ran for it
    (every ``einsum`` that sums over an index becomes one), a multiply-add counting 2. Elementwise
    work is not counted. ``tests/test_exercises_ch11.py`` checks it against PyTorch's own
    ``torch.utils.flop_counter.FlopCounterMode``, which counts the same but first imports the
    compiler stack, several seconds (so do "meta" tensors, whose operations go through it too)."""
    # Inference mode and tensors made in it bypass Python dispatch modes: they would count 0.
    inference = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_inference()]
    if inference:
        raise ValueError(f"matmul_flops: arguments {inference} were made under torch.inference_mode, and "
                         f"inference tensors skip the counter; make them outside it (or under torch.no_grad)")
    with torch.inference_mode(False), torch.no_grad(), _MatmulFlopCounter() as counter:
        fn(*args, **kwargs)
    return counter.flops
