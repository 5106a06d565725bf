"""The fast CPU version of Mamba-2's chunked SSD scan (the teaching version: ``ssm_tutor.ssd``).

Same algorithm as :func:`ssm_tutor.ssd.ssd_chunked`, Section 6 of Dao & Gu (2024), arranged for a
CPU; ``benchmarks/bench_ssd.py`` measures it against transformers' ``mamba2_chunk_scan``:

* **Chunk by chunk, state carried.** One chunk at a time, with the state entering it: every
  intermediate is one chunk big (h·Q² numbers for the decay mask) and stays in cache, instead of
  the whole sequence's (b, h, c, Q, Q) masks and scores. Step 3 becomes the plain recurrence
  S ← exp(ΣdA) S + (chunk state), which costs c small updates instead of a (c × c) product.
* **C Bᵀ once per group, not per head.** The scores C_t · B_s do not depend on the head; with
  g groups and h heads they are computed g times, not h times (24x fewer at Mamba-2's usual
  g = 1, 24 heads). Likewise the state update and the state-to-output product are one matrix
  product per group, with all of the group's heads side by side: (n × Q) · (Q × k·p) and
  (Q × n) · (n × k·p), k = h / g, instead of h thin (n × Q) · (Q × p) ones.
* **Time-major throughout.** x (b, l, h, p) is read in its own layout and y is written in it;
  for g = 1 the off-diagonal output (Q × n)·(n × h·p) lands directly in that layout.
* Decays inside a chunk are exp(cs_t - cs_s) from the chunk's cumulative sums of Δ A (as the
  official kernels do) rather than :func:`~ssm_tutor.ssd.segsum`'s (Q × Q) cumsum; the sums and their
  differences are taken in float64, so that after a huge decay (a state reset, cs ≈ -1e4) the small
  differences that follow keep their digits: float32 differences lost 3 of them (measured in
  ``tests/test_ssd.py``), float64 ones cost ~2 ms more per (24, 256, 256) chunk.

Plain tensor operations, so autograd differentiates it (tests compare the gradients with the
teaching version's). The arguments are already checked and prepared by ``ssd_scan``.
"""

from __future__ import annotations

import torch

__all__ = ["ssd_chunk_scan"]

LOG_FLOOR = -80.0   # exp(-80) ≈ 1.8e-35: smaller decays are rounded up to it (see _exp_floored_)


def _exp_floored_(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(max(log_decay, -80)), in place. PyTorch's vectorised exp takes a slow path for
    arguments whose result is subnormal or zero (below about -87 in float32): ~10x slower over a
    (24, 256, 256) decay mask, measured, and such decays are common (a chunk of 256 steps easily
    decays by e^-100). Rounding those decays up to e^-80 changes any output by at most
    1.8e-35 times its inputs' scale: far below float32 (and float64) precision."""
    return log_decay.clamp_(min=LOG_FLOOR).exp_()


def ssd_chunk_scan(x, dt, A, B, C, chunk_size: int, initial_states=None):
    """y and the final state of the SSD recurrence, chunk by chunk.

    x (b, l, h, p); dt (b, l, h), positive (after bias, softplus and limits); A (h,);
    B, C (b, l, g, n); initial_states (b, h, p, n) or None; all in one floating dtype.
    Returns (y (b, l, h, p), final state (b, h, p, n)).
    """
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    k = h // g
    Q = min(chunk_size, l)
    dA = dt * A                                                        # (b, l, h)
    xbar = x * dt.unsqueeze(-1)                                        # x̄ = Δ x: (b, l, h, p)
    # the state, one matrix per group with its k heads side by side: (b, g, n, k·p)
    if initial_states is None:
        S = x.new_zeros(b, g, n, k * p)
    else:
        S = initial_states.reshape(b, g, k, p, n).permute(0, 1, 4, 2, 3).reshape(b, g, n, k * p)
    lower = {}                                                         # 0/1 causal masks, per chunk length
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, dt, A, B, C, initial_states))
    ys = []
    for t0 in range(0, l, Q):
        t1 = min(t0 + Q, l)
        T = t1 - t0
        if T not in lower:
            step = torch.arange(T, device=x.device)
            lower[T] = (step[:, None] >= step).to(x.dtype)
        xc = xbar[:, t0:t1]                                            # (b, T, h, p)
        Bc = B[:, t0:t1].transpose(1, 2)                               # (b, g, T, n)
        Cc = C[:, t0:t1].transpose(1, 2)                               # (b, g, T, n)
        cs = dA[:, t0:t1].cumsum(1, dtype=torch.float64).transpose(1, 2).contiguous()   # Σ_{k≤t} dA_k: (b, h, T)

        # 1. diagonal block: (L ∘ C Bᵀ) x̄, with the causal C Bᵀ once per group
        scores = (Cc @ Bc.transpose(-1, -2)).mul_(lower[T])            # C_t · B_s, 0 for s > t: (b, g, T, T)
        L = (cs.unsqueeze(-1) - cs.unsqueeze(-2)).to(x.dtype).mul_(lower[T])   # segsum, 0 above the diagonal: (b, h, T, T)
        L = _exp_floored_(L)                                           # decays (1 above the diagonal: masked by scores)
        L5, scores5 = L.view(b, g, k, T, T), scores.unsqueeze(2)
        M = (L5 * scores5 if grad else L5.mul_(scores5)).view(b, h, T, T)
        y_diag = M @ xc.transpose(1, 2)                                # (b, h, T, p)

        # 4. the entering state's contribution: exp(cs_t) · S C_t, one product per group
        from_start = _exp_floored_(cs.to(x.dtype, copy=True))          # (b, h, T)
        y_off = (Cc @ S).view(b, g, T, k, p) * from_start.view(b, g, k, T).transpose(2, 3).unsqueeze(-1)
        ys.append(y_diag.transpose(1, 2) + y_off.permute(0, 2, 1, 3, 4).reshape(b, T, h, p))

        # 2 + 3. the state leaving the chunk: exp(cs_T) S + Σ_s exp(cs_T - cs_s) B_s x̄_sᵀ
        to_end = _exp_floored_((cs[:, :, -1:] - cs).to(x.dtype))       # (b, h, T)
        xw = (xc * to_end.transpose(1, 2).unsqueeze(-1)).view(b, T, g, k * p).transpose(1, 2)   # (b, g, T, k·p)
        S = (S.view(b, g, n, k, p) * from_start[:, :, -1].reshape(b, g, 1, k, 1)).view(b, g, n, k * p) \
            + Bc.transpose(-1, -2) @ xw                                # (b, g, n, k·p)
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]                 # (b, l, h, p)
    final = S.view(b, g, n, k, p).permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
    return y, final

