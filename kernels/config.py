"""Tile sizes and grid of the selective-scan kernels (no Triton import: the traffic model uses them too).

Notebook: ``notebooks/06_triton_kernel.ipynb`` (section "Filling the GPU").

A launch is a grid of ``batch × ⌈d / BLOCK_D⌉ × n_split`` programs. One program scans BLOCK_D
channels for ``⌈n / n_split⌉`` state indices along the whole sequence, one (BLOCK_D, CHUNK) tile
at a time, so its work is a serial chain of ``(l / CHUNK) × (n / n_split)`` tile scans. The GPU
runs programs side by side; a grid with fewer warps than the GPU has warp schedulers leaves
schedulers idle however fast each program is.
"""

from __future__ import annotations

import os

__all__ = ["LaunchConfig", "launch_config", "grid_size", "H100_SMS", "WARP_SCHEDULERS_PER_SM",
           "MIN_STATES_PER_PROGRAM"]

#: Streaming multiprocessors of an H100 SXM, the default when no CUDA device says otherwise.
H100_SMS = 132
#: Warp schedulers (SM sub-partitions) per SM on Volta, Ampere and Hopper: each issues for its own warps.
WARP_SCHEDULERS_PER_SM = 4
#: Warps per scheduler that the default grid aims for: every scheduler gets one.
WARPS_PER_SCHEDULER = 1
#: A program keeps at least this many state indices (a split finer than that only adds partial outputs).
MIN_STATES_PER_PROGRAM = 4


class LaunchConfig(tuple):
    """(BLOCK_D, BLOCK_N, CHUNK, num_warps, n_split) as chosen by :func:`launch_config`.

    BLOCK_N is the power of two that holds one program's ``⌈n / n_split⌉`` state indices.
    """

    __slots__ = ()

    def __new__(cls, block_d, block_n, chunk, num_warps, n_split=1):
        return super().__new__(cls, (block_d, block_n, chunk, num_warps, n_split))

    block_d = property(lambda self: self[0])
    block_n = property(lambda self: self[1])
    chunk = property(lambda self: self[2])
    num_warps = property(lambda self: self[3])
    n_split = property(lambda self: self[4])

    def states_per_program(self, n: int) -> int:
        """How many of the n state indices one program scans: ⌈n / n_split⌉."""
        return -(-n // self.n_split)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and x > 0 and x & (x - 1) == 0


def grid_size(batch: int, d: int, cfg: LaunchConfig) -> tuple[int, int, int]:
    """The launch grid (batch, ⌈d / BLOCK_D⌉, n_split); its product is the number of programs."""
    return (batch, -(-d // cfg.block_d), cfg.n_split)


def launch_config(d: int, n: int, groups: int = 0, *, batch: int = 1, elem_size: int = 4,
                  block_d: int | None = None, chunk: int | None = None, num_warps: int | None = None,
                  n_split: int | None = None, sm_count: int | None = None,
                  interpreted: bool | None = None) -> LaunchConfig:
    """Pick the tiles and the grid: BLOCK_D channels × CHUNK time steps, split n in ``n_split`` slices.

    The tile. On a GPU, Triton lays a (BLOCK_D, CHUNK) tile out like the coalesced loads of u and Δ:
    16 bytes (8 bf16 or 4 fp32 values) of consecutive time steps per thread, 8 threads along time,
    4 channels per warp. So CHUNK = 8 × that vector, and num_warps = BLOCK_D / 4 keeps every warp
    the same shape whatever BLOCK_D is: a scan has 3 rounds of warp shuffles for every 8 (bf16) or
    4 (fp32) steps a thread scans on its own.

    The grid. ``batch × ⌈d / BLOCK_D⌉`` programs is 96 at batch 1 and d = 1536 (Mamba-130M's inner
    width) with BLOCK_D = 16: fewer than the 132 SMs of an H100, and 384 warps for its 528 warp
    schedulers. Smaller blocks do not add warps (each warp still owns 4 channels); splitting the
    state index does: ``n_split`` programs share one block of channels, each scanning ⌈n / n_split⌉
    of the n state indices, and their partial outputs are added afterwards. The default doubles
    ``n_split`` (keeping at least 4 state indices per program) until the grid has a warp for every
    warp scheduler of ``sm_count`` SMs (132 when not given). The split is not free: each slice
    writes a partial y (and, in the backward, partial ∂u, ∂Δ, ∂z) in float32 that the wrapper adds
    up, so large batches, which fill the GPU anyway, keep n_split = 1.

    A block of channels must not straddle two groups of B and C, so with g > 1 groups BLOCK_D also
    divides d / g. Under the interpreter (``interpreted``; default: ``TRITON_INTERPRET=1``) smaller
    tiles waste less on padding and nothing is split unless asked.
    """
    if interpreted is None:
        interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    for name, v in dict(d=d, n=n, batch=batch).items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if chunk is None:
        chunk = 16 if interpreted else 8 * max(1, 16 // elem_size)
    if block_d is None:
        block_d = 8 if interpreted else 16
    for name, v in (("chunk", chunk), ("block_d", block_d)):
        if not _is_pow2(v):
            raise ValueError(f"{name} must be a power of two (tl.arange needs one), got {v!r}")
    if n_split is not None and (not isinstance(n_split, int) or not 1 <= n_split <= n):
        raise ValueError(f"n_split must be an integer from 1 to n = {n}, got {n_split!r}")
    block_d = min(block_d, _next_pow2(d))
    if groups > 1:                         # keep every block inside one group of channels
        per_group = d // groups
        block_d = min(block_d, per_group & -per_group)   # largest power of two dividing d / g
    if num_warps is None:
        num_warps = max(1, block_d // 4)   # 4 channels per warp
    if n_split is None:
        n_split = 1
        if not interpreted:
            sms = sm_count or H100_SMS
            target_warps = WARPS_PER_SCHEDULER * WARP_SCHEDULERS_PER_SM * sms
            warps = batch * -(-d // block_d) * num_warps
            while warps * n_split < target_warps and n // (2 * n_split) >= MIN_STATES_PER_PROGRAM:
                n_split *= 2
    block_n = _next_pow2(-(-n // n_split))
    return LaunchConfig(block_d, block_n, chunk, num_warps, n_split)
