"""The backward kernel of the selective scan: recompute the states, then scan in reverse.

Same grid as the forward (one program = one batch element × BLOCK_D channels × one slice of the
state indices), but it walks the chunks from last to first. For chunk c, and inside it for each
state index k of its slice, it

1. restarts the forward from the saved checkpoint h_{start of c}[:, k] (zeros for c = 0) and
   recomputes Ā, B̄u and the chunk's states h_t on the chip (recomputation instead of storing a
   (b, d, l, n) tensor: the trade FlashAttention makes too);
2. forms g_t = ∂L/∂h_t through y_t alone = C_t · ∂L/∂y_t, where ∂L/∂y_t has already been taken
   back through the z gate;
3. runs the reverse recurrence G_t = g_t + Ā_{t+1} G_{t+1} with an associative scan
   (reverse=True), starting from the G carried over from the chunk after this one;
4. reads off every gradient from G_t, h_t and h_t - B̄u_t = Ā_t h_{t-1}:

       ∂B̄u_t = G_t                 → ∂u, ∂Δ, ∂B
       ∂Ā_t  = G_t h_{t-1}          → ∂Δ (via A Ā_t), ∂A (via Δ_t Ā_t)
       ∂C_t  = Σ_d ∂y_t h_t

Reductions that cross programs:
* ∂B, ∂C (b, groups, n, l) are sums over the channels of a group, which several programs share:
  each program sums its own BLOCK_D channels in registers and ``tl.atomic_add``s the resulting
  CHUNK values into a float32 (float64) buffer. A partial buffer per program instead would be
  (b, d/BLOCK_D, n, l): a tensor as large as those we refuse to materialise. (Atomics make the
  order of those float additions, hence the last bits of ∂B and ∂C, vary from run to run.)
* ∂A (d, n), ∂D and ∂delta_bias (d,) are sums over the batch: each program writes its partial
  sum to a (b, d, n) / (b, d) buffer that PyTorch sums over b afterwards. Small and deterministic.
* With the state split in S slices, ∂u, ∂Δ, ∂z and ∂delta_bias are sums over the slices (each is
  linear in the slice's G and h): program s writes slice s of an (S, b, d, l) / (S, b, d) buffer
  that the wrapper sums, and only slice 0 adds the skip's terms (D ∂y to ∂u, ∂y u to ∂D).
"""

import triton
import triton.language as tl

from ._jit_helpers import column, discretised_delta, linear_recurrence_combine, set_column


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr,   # forward inputs
    dy_ptr, dlast_ptr,                                                            # incoming grads
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,  # outputs
    dim, length, dstate, groups, n_chunks, states_per, dl_slice, d_slice,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, SPLIT: tl.constexpr,
):
    # Layouts as in the forward; dy (b, d, l); du, ddelta, dz (b, d, l), or (S, b, d, l) with
    # SPLIT, slices dl_slice elements apart; dB, dC (b, groups, n, l) in the compute dtype
    # (atomics); dA_part (b, d, n); dD_part (b, d); dbias_part (S, b, d), slices d_slice apart.
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)          # (BD,)
    if SPLIT:   # my state indices are k_first ... k_stop - 1, my share of du, ddelta, dz is slice pid_s
        k_first = pid_s * states_per
        k_stop = tl.minimum(k_first + states_per, dstate)
        du_ptr += pid_s * dl_slice
        ddelta_ptr += pid_s * dl_slice
        dz_ptr += pid_s * dl_slice
        dbias_part_ptr += pid_s * d_slice
    else:       # (a separate branch: the slice offsets alone cost registers)
        k_first = 0
        k_stop = dstate
    offs_n = tl.arange(0, BLOCK_N)                            # (BN,) column j holds state k_first + j
    offs_t = tl.arange(0, CHUNK)                              # (T,)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (k_first + offs_n < k_stop)[None, :]
    group = (pid_d * BLOCK_D) // (dim // groups)
    acc = A_ptr.dtype.element_ty

    if HAS_D:   # only slice 0 carries the skip's terms (the other slices load zeros)
        D = tl.load(D_ptr + offs_d, mask=mask_d & (pid_s == 0), other=0.0).to(acc)
    else:
        D = tl.zeros((BLOCK_D,), dtype=acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    else:
        bias = tl.zeros((BLOCK_D,), dtype=acc)

    row = (pid_b * dim + offs_d) * length
    bc_start = (pid_b * groups + group) * dstate * length
    state_row = (pid_b * dim + offs_d) * n_chunks * dstate
    dn_row = (pid_b * dim + offs_d) * dstate                   # rows of (b, d, n) buffers
    dn_cols = dn_row[:, None] + k_first + offs_n[None, :]      # (BD, BN) my columns of them

    # G_carry[:, j] = ∂L/∂h at the first position of the chunk after this one (for the final
    # chunk: the last state's gradient, which the padded positions pass through unchanged).
    if HAS_DLAST:
        G_carry = tl.load(dlast_ptr + dn_cols, mask=mask_dn, other=0.0).to(acc)
    else:
        G_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=acc)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=acc)
    dD_acc = tl.zeros((BLOCK_D,), dtype=acc)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=acc)

    for i in range(0, n_chunks):
        c = n_chunks - 1 - i                                   # walk the chunks backwards
        t = c * CHUNK + offs_t
        mask_t = t < length
        m_dt = mask_d[:, None] & mask_t[None, :]
        tile = row[:, None] + t[None, :]                       # (BD, T) offsets into (b, d, l)
        u = tl.load(u_ptr + tile, mask=m_dt, other=0.0).to(acc)
        raw = tl.load(delta_ptr + tile, mask=m_dt, other=0.0).to(acc)
        dt = discretised_delta(raw, bias, m_dt, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        # Δ one step ahead, for Ā_{t+1} in the reverse recurrence (0, so Ā = 1, past the end)
        m_dt1 = mask_d[:, None] & (t + 1 < length)[None, :]
        raw1 = tl.load(delta_ptr + tile + 1, mask=m_dt1, other=0.0).to(acc)
        dt1 = discretised_delta(raw1, bias, m_dt1, HAS_BIAS, SOFTPLUS)

        # the output gradient, back through the z gate (∂z needs y, so it waits for the k loop)
        dy = tl.load(dy_ptr + tile, mask=m_dt, other=0.0).to(acc)          # (BD, T)
        if HAS_Z:
            z = tl.load(z_ptr + tile, mask=m_dt, other=0.0).to(acc)
            sig = tl.sigmoid(z)
            dy_ssm = dy * z * sig                              # ∂L/∂(y before the gate)
        else:
            dy_ssm = dy
        du = dy_ssm * D[:, None]                               # the skip's share of ∂u (0 without D)
        ddt = tl.zeros((BLOCK_D, CHUNK), dtype=acc)
        y_ssm = tl.zeros((BLOCK_D, CHUNK), dtype=acc)

        for k in range(k_first, k_stop):
            j = k - k_first                                    # its column in G_carry, dA_acc
            A_k = tl.load(A_ptr + offs_d * dstate + k, mask=mask_d, other=0.0)                # (BD,)
            B_k = tl.load(B_ptr + bc_start + k * length + t, mask=mask_t, other=0.0).to(acc)  # (T,)
            C_k = tl.load(C_ptr + bc_start + k * length + t, mask=mask_t, other=0.0).to(acc)  # (T,)
            # 1. recompute this chunk's states h_t[:, k] from the checkpoint at its start
            h0 = tl.load(states_ptr + state_row + (c - 1) * dstate + k, mask=mask_d & (c > 0), other=0.0)
            dA = tl.exp(dt * A_k[:, None])                     # Ā:  (BD, T)
            dBu = dtu * B_k[None, :]                           # B̄u: (BD, T)
            a_cum, h_loc = tl.associative_scan((dA, dBu), axis=1, combine_fn=linear_recurrence_combine)
            hs = a_cum * h0[:, None] + h_loc                   # h_t: (BD, T)
            if HAS_Z:
                y_ssm += hs * C_k[None, :]
            # ∂C[k]: sum over my channels, then over programs (atomics)
            tl.atomic_add(dC_ptr + bc_start + k * length + t, tl.sum(dy_ssm * hs, axis=0), mask=mask_t)

            # 2.-3. reverse scan G_t = g_t + Ā_{t+1} G_{t+1}, from the carried G
            dA_next = tl.exp(dt1 * A_k[:, None])               # Ā_{t+1}: (BD, T)
            g = dy_ssm * C_k[None, :]                          # ∂L/∂h_t through y_t only
            a_rev, G = tl.associative_scan((dA_next, g), axis=1, combine_fn=linear_recurrence_combine,
                                           reverse=True)
            G = G + a_rev * column(G_carry, offs_n, j)[:, None]  # ∂L/∂h_t, whole future included
            G_carry = set_column(G_carry, offs_n, j, tl.sum(tl.where(offs_t[None, :] == 0, G, 0.0), axis=1))

            # 4. gradients of this chunk's inputs
            tl.atomic_add(dB_ptr + bc_start + k * length + t, tl.sum(G * dtu, axis=0), mask=mask_t)
            GB = G * B_k[None, :]
            Gah = G * (hs - dBu)                               # G_t Ā_t h_{t-1}: (BD, T)
            du += GB * dt
            ddt += GB * u + Gah * A_k[:, None]
            dA_acc = set_column(dA_acc, offs_n, j, column(dA_acc, offs_n, j) + tl.sum(Gah * dt, axis=1))

        if HAS_Z:
            y_pre = y_ssm + D[:, None] * u                     # the output before the gate (my share)
            dz = dy * y_pre * sig * (1.0 + z * (1.0 - sig))    # d SiLU(z)/dz = σ(z)(1 + z(1 - σ(z)))
            tl.store(dz_ptr + tile, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
        dD_acc += tl.sum(dy_ssm * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw + bias[:, None])        # softplus'(x) = σ(x)
        ddt = tl.where(m_dt, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + tile, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddelta_ptr + tile, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)

    tl.store(dA_part_ptr + dn_cols, dA_acc, mask=mask_dn)
    bd_row = pid_b * dim + offs_d
    tl.store(dD_part_ptr + bd_row, dD_acc, mask=mask_d & (pid_s == 0))
    tl.store(dbias_part_ptr + bd_row, dbias_acc, mask=mask_d)
