"""What bounds the time of a selective scan on a GPU: bytes, exponentials, shuffles or launches.

Notebook: ``notebooks/06_triton_kernel.ipynb`` (section "What bounds the time").

A kernel cannot finish before its slowest resource has done its share. Each *ceiling* below is
the time one resource alone would need, at the GPU's peak rate (:mod:`ssm_tutor.kernels.gpus`):

* memory:  bytes moved to and from HBM (:func:`ssm_tutor.kernels.traffic.traffic`) / bandwidth;
* special: special-function results (every ``exp``, ``log``, reciprocal) / the GPU's rate, 16 per
  clock per SM: Ā_t = exp(Δ_t A) costs one per (b, d, l, n) element, so a scan with n = 16 asks
  the special-function units for 16 results per 2–4 bytes of input;
* shuffle: lanes moved by warp shuffles / 32 per clock per SM: the cross-thread rounds of the
  chunk's associative scan and of the reductions that read one element of a register tile;
* launch:  kernel launches × an ASSUMED few microseconds each (eager PyTorch ops).

The predicted time is the largest ceiling (a lower bound: real kernels overlap their resources
imperfectly). Counts for the fused kernel are read off its code; the shuffle count is an estimate
from the tile layout :func:`~ssm_tutor.kernels.config.launch_config` describes (8 threads along time,
so log₂ 8 = 3 rounds per scan or reduction). Nothing here was measured on a GPU: that is what
``benchmarks/bench_triton_gpu.py`` is for, and it prints these predictions next to its timings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import launch_config
from .gpus import gpu_spec
from .traffic import IMPLEMENTATIONS, _check_sizes, element_size, traffic

__all__ = ["Ceilings", "special_ops", "shuffle_lanes", "ceilings", "THREADS_ALONG_TIME"]

#: Threads that share one channel's CHUNK time steps in the fused kernel's tile layout.
THREADS_ALONG_TIME = 8


@dataclass(frozen=True)
class Ceilings:
    """Seconds each resource alone would need; ``time`` is the largest, ``bound`` its name."""

    implementation: str
    memory: float
    special: float
    shuffle: float
    launch: float

    @property
    def time(self) -> float:
        return max(self.memory, self.special, self.shuffle, self.launch)

    @property
    def bound(self) -> str:
        named = {"memory": self.memory, "special functions": self.special, "shuffles": self.shuffle,
                 "launches": self.launch}
        return max(named, key=named.get)

    def row(self) -> str:
        us = lambda s: f"{s * 1e6:10,.1f}"
        return (f"{self.implementation:>10}: memory {us(self.memory)} µs  exp/special {us(self.special)} µs  "
                f"shuffles {us(self.shuffle)} µs  launches {us(self.launch)} µs  -> {self.bound}-bound, "
                f"≥ {self.time * 1e6:,.1f} µs")


def special_ops(b: int, d: int, l: int, n: int, *, has_z: bool = True, softplus: bool = True,
                backward: bool = False) -> int:
    """Special-function results of the fused kernel(s), counted from their code.

    Forward, per (b, d, l) position: n exponentials for Ā = exp(Δ A[:, k]), 2 for softplus
    (exp, log), 2 for SiLU's sigmoid (exp, reciprocal). The backward recomputes Ā_t and computes
    Ā_{t+1} (2n), the softplus of Δ_t and Δ_{t+1} (4), softplus' = σ (2) and σ(z) (2).
    """
    per_position = n + 2 * softplus + 2 * has_z
    if backward:
        per_position += 2 * n + 4 * softplus + 2 * softplus + 2 * has_z
    return b * d * l * per_position


def shuffle_lanes(b: int, d: int, l: int, n: int, chunk: int, *, backward: bool = False) -> int:
    """Estimated warp-shuffle lanes of the fused kernel(s), from the tile layout.

    Per channel, state index and chunk, T = 8 threads share the chunk's time steps. A two-value
    associative scan costs each of them 2 (log₂T + 1) shuffles, reading one element of a tile
    (the carried state at the chunk's end) log₂T. Forward: one scan + one read, T (3 log₂T + 2)
    lanes. Backward: two scans (recompute h, reverse scan G), the read of G at the chunk's start
    and the sum of ∂A over the chunk, T (6 log₂T + 4) lanes. The sums over channels for ∂B, ∂C
    cross warps through shared memory and are not counted.
    """
    T = THREADS_ALONG_TIME
    r = int(math.log2(T))
    per_row_chunk = T * (3 * r + 2)
    if backward:
        per_row_chunk += T * (6 * r + 4)
    return b * d * n * -(-l // chunk) * per_row_chunk


def ceilings(implementation: str, b: int, d: int, l: int, n: int, dtype="fp32", *, gpu="H100",
             backward: bool = False, has_z: bool = True, softplus: bool = True, **options) -> Ceilings:
    """The four ceilings of one implementation (see the module docstring) on ``gpu``.

    ``options`` go to :func:`~ssm_tutor.kernels.traffic.traffic` (groups, has_D, has_bias, chunk,
    n_split, l2_bytes). The PyTorch implementations are given the fused kernel's special-function
    count too (they compute the same exponentials) and no shuffles.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    _check_sizes(b, d, l, n, options.get("groups", 0))
    spec = gpu_spec(gpu)
    tr = traffic(implementation, b, d, l, n, dtype, gpu=spec, backward=backward, has_z=has_z,
                 softplus=softplus, **options)
    special = special_ops(b, d, l, n, has_z=has_z, softplus=softplus, backward=backward) / spec.special_rate
    shuffle = 0.0
    if implementation == "fused":
        chunk = options.get("chunk") or launch_config(d, n, elem_size=element_size(dtype), interpreted=False).chunk
        shuffle = shuffle_lanes(b, d, l, n, chunk, backward=backward) / spec.shuffle_rate
    return Ceilings(implementation, tr.total / spec.bandwidth, special, shuffle, tr.launches * spec.launch_s)
