"""Tile sizes of the selective-scan kernels (no Triton import: the traffic model uses them too)."""

from __future__ import annotations

import os

__all__ = ["LaunchConfig", "launch_config"]


class LaunchConfig(tuple):
    """(BLOCK_D, BLOCK_N, CHUNK, num_warps) as chosen by :func:`launch_config`."""

    __slots__ = ()

    def __new__(cls, block_d, block_n, chunk, num_warps):
        return super().__new__(cls, (block_d, block_n, chunk, num_warps))

    block_d = property(lambda self: self[0])
    block_n = property(lambda self: self[1])
    chunk = property(lambda self: self[2])
    num_warps = property(lambda self: self[3])


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def launch_config(d: int, n: int, groups: int = 0, *, elem_size: int = 4, block_d: int | None = None,
                  chunk: int | None = None, num_warps: int | None = None,
                  interpreted: bool | None = None) -> LaunchConfig:
    """Pick the tile sizes: BLOCK_D channels × CHUNK time steps (and BLOCK_N = next_pow2(n)).

    Each program scans (BLOCK_D, CHUNK) tiles along time. On a GPU, Triton lays such a tile out
    like the coalesced loads of u and Δ: 16 bytes (8 bf16 or 4 fp32 values) of consecutive time
    steps per thread, threads along time next, then along channels. With CHUNK = 8 threads × that
    vector and BLOCK_D = 16 over 4 warps, a scan has 3 rounds of warp shuffles for every 8 (bf16)
    or 4 (fp32) steps a thread scans on its own. These are the defaults; the GPU benchmark can
    sweep others. A block of channels must not straddle two groups of B and C, so with g > 1
    groups BLOCK_D also divides d / g. Under the interpreter smaller tiles waste less on padding.
    """
    if interpreted is None:
        interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    block_n = _next_pow2(n)
    if chunk is None:
        chunk = 16 if interpreted else 8 * max(1, 16 // elem_size)
    if block_d is None:
        block_d = 8 if interpreted else 16
    for name, v in (("chunk", chunk), ("block_d", block_d)):
        if not isinstance(v, int) or not _is_pow2(v):
            raise ValueError(f"{name} must be a power of two (tl.arange needs one), got {v!r}")
    block_d = min(block_d, _next_pow2(d))
    if groups > 1:                         # keep every block inside one group of channels
        per_group = d // groups
        block_d = min(block_d, per_group & -per_group)   # largest power of two dividing d / g
    if num_warps is None:
        num_warps = 4
    return LaunchConfig(block_d, block_n, chunk, num_warps)
