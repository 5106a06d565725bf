"""The fused forward kernel of the selective scan (stage 6; Mamba paper, Section 3.3.2).

One program = one batch element × BLOCK_D channels × one slice of the state indices (all n of
them unless the launch splits n, see ``config.launch_config``). It walks the sequence in chunks
of CHUNK positions. Per chunk it reads u, Δ, z (BLOCK_D × CHUNK) from global memory once, and
then, for each state index k of its slice in turn, reads B[k], C[k] (CHUNK values) and on the chip

    Δ  = softplus(Δ + delta_bias)                       (both optional; once per chunk)
    Ā  = exp(Δ · A[:, k]),  B̄u = Δ · u · B[k]           (BLOCK_D, CHUNK) tiles in registers
    h  = scan of h_t = Ā_t h_{t-1} + B̄u_t along the chunk, from the carried state h[:, k]
    y += C[k] · h                                       (the read-out, summed over k)

then adds D · u, multiplies by SiLU(z), and writes y. The carried state h, a (BLOCK_D, n) tile,
lives in registers for the whole sequence; the (b, d, l, n) tensors Ā, B̄u and h of the
reference never exist in global memory. When a backward will follow it also writes the state at
the end of every chunk, (b, d, n_chunks, n): the checkpoints the backward restarts from.

With the state split in S slices, program s writes its share of y to slice s of a
(S, b, d, l) buffer that the wrapper sums: y = Σ_s (C·h)_s · SiLU(z) + D u · SiLU(z) is linear in
the parts, so each program applies the gate to its own part and only slice 0 adds D u.

Why loop over k instead of making (BLOCK_D, n, CHUNK) tiles: the scan then runs along the
fastest axis of a 2-D tile, which Triton lays out with several consecutive time steps in each
thread (the layout of the coalesced loads), so most of the scan is sequential inside a thread and
only a few steps cross threads — the same split as the official CUDA kernel's
per-thread items + block scan — and y needs no reduction across threads.

All arithmetic runs in A's dtype: the wrapper hands A over as float32 (float64 for float64
inputs) and converts every tile to it after loading, so bf16/fp16 inputs accumulate in float32.
"""

import triton
import triton.language as tl

from ._jit_helpers import column, discretised_delta, linear_recurrence_combine, set_column


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,     # inputs
    y_ptr, states_ptr, last_ptr,                                       # outputs
    dim, length, dstate, groups, n_chunks, states_per, y_slice,        # sizes
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, SPLIT: tl.constexpr,
):
    # Layouts (all contiguous): u, delta, z (b, d, l); y (b, d, l), or (S, b, d, l) with SPLIT,
    # slices y_slice elements apart; A (d, n); B, C (b, groups, n, l); D, bias (d,);
    # states (b, d, n_chunks, n); last (b, d, n).
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)                                  # which slice of the state indices
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)          # (BD,) this program's channels
    if SPLIT:   # my state indices are k_first ... k_stop - 1, my output is slice pid_s
        k_first = pid_s * states_per
        k_stop = tl.minimum(k_first + states_per, dstate)
        y_out = y_ptr + pid_s * y_slice
    else:       # (a separate branch: the slice offset alone costs ~30 registers per thread)
        k_first = 0
        k_stop = dstate
        y_out = y_ptr
    offs_n = tl.arange(0, BLOCK_N)                            # (BN,) column j holds state k_first + j
    offs_t = tl.arange(0, CHUNK)                              # (T,)  position inside a chunk
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (k_first + offs_n < k_stop)[None, :]
    group = (pid_d * BLOCK_D) // (dim // groups)              # the wrapper keeps a block inside one group
    acc = A_ptr.dtype.element_ty                              # float32, or float64 for float64 inputs

    if HAS_D:   # only slice 0 adds the skip D u (the other slices load zeros)
        D = tl.load(D_ptr + offs_d, mask=mask_d & (pid_s == 0), other=0.0).to(acc)   # (BD,)
    else:
        D = tl.zeros((BLOCK_D,), dtype=acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)    # (BD,)
    else:
        bias = tl.zeros((BLOCK_D,), dtype=acc)

    row = (pid_b * dim + offs_d) * length                      # (BD,) start of each channel's row
    bc_start = (pid_b * groups + group) * dstate * length      # start of B[b, group], C[b, group]
    state_row = (pid_b * dim + offs_d) * n_chunks * dstate     # (BD,) rows of the checkpoints

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=acc)                # the carried state: registers
    for c in range(0, n_chunks):
        t = c * CHUNK + offs_t                                 # (T,) absolute positions
        mask_t = t < length
        m_dt = mask_d[:, None] & mask_t[None, :]               # (BD, T)
        tile = row[:, None] + t[None, :]                       # (BD, T) offsets into (b, d, l)
        u = tl.load(u_ptr + tile, mask=m_dt, other=0.0).to(acc)             # (BD, T)
        raw = tl.load(delta_ptr + tile, mask=m_dt, other=0.0).to(acc)       # (BD, T)
        dt = discretised_delta(raw, bias, m_dt, HAS_BIAS, SOFTPLUS)         # (BD, T), 0 when padded
        dtu = dt * u
        y = tl.zeros((BLOCK_D, CHUNK), dtype=acc)
        for k in range(k_first, k_stop):                       # one state index at a time
            j = k - k_first                                    # its column in h
            A_k = tl.load(A_ptr + offs_d * dstate + k, mask=mask_d, other=0.0)                # (BD,)
            B_k = tl.load(B_ptr + bc_start + k * length + t, mask=mask_t, other=0.0).to(acc)  # (T,)
            C_k = tl.load(C_ptr + bc_start + k * length + t, mask=mask_t, other=0.0).to(acc)  # (T,)
            dA = tl.exp(dt * A_k[:, None])                     # Ā:  (BD, T)
            dBu = dtu * B_k[None, :]                           # B̄u: (BD, T)
            # (a_cum_t, h_loc_t) with h_t = a_cum_t · h_start + h_loc_t inside the chunk
            a_cum, h_loc = tl.associative_scan((dA, dBu), axis=1, combine_fn=linear_recurrence_combine)
            hs = a_cum * column(h, offs_n, j)[:, None] + h_loc                # h_t: (BD, T)
            y += hs * C_k[None, :]                             # y_t += C_t[k] h_t[k]
            # carry the state at the chunk's last position (padding leaves it unchanged)
            h = set_column(h, offs_n, j, tl.sum(tl.where(offs_t[None, :] == CHUNK - 1, hs, 0.0), axis=1))
        if HAS_D:
            y += D[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + tile, mask=m_dt, other=0.0).to(acc)
            y = y * z * tl.sigmoid(z)                          # · SiLU(z)
        tl.store(y_out + tile, y.to(y_ptr.dtype.element_ty), mask=m_dt)
        if SAVE_STATES:
            tl.store(states_ptr + state_row[:, None] + c * dstate + k_first + offs_n[None, :], h, mask=mask_dn)

    last_row = (pid_b * dim + offs_d) * dstate
    tl.store(last_ptr + last_row[:, None] + k_first + offs_n[None, :], h, mask=mask_dn)
