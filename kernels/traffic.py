"""A memory-traffic model of the selective scan: bytes between the GPU's HBM and the chip.

Notebook: ``notebooks/06_triton_kernel.ipynb`` (section "How many bytes move"). The selective
scan does a few flops per byte, so on a GPU its time is set by memory traffic: the Mamba paper
(Section 3.3.2) fuses the scan so that the (b, d, l, n) tensors Ā, B̄u and h never reach HBM,
and reports the fused kernel 20–40× faster than a standard PyTorch scan. This module counts the
bytes so that claim becomes arithmetic.

Each implementation is a list of *passes*: one PyTorch op (or one kernel) reading and writing
whole tensors. The model assumes nothing survives in cache between two ops (true on a GPU once
a tensor is larger than the L2 cache, 50 MB on an H100) and, for the fused kernel, that the
repeated reads of B and C by the d/BLOCK_D programs of one batch element hit the L2 cache.

Symbols: b batch, d channels, l length, n state size, g groups of B/C (1 when ungrouped);
s bytes per element of u, Δ, B, C, z, y (2 for bf16/fp16, 4 for fp32); c bytes of the compute
dtype (4; 8 for float64), which is also the dtype of A, D, delta_bias and the states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import launch_config

__all__ = ["Traffic", "traffic", "compare", "GPU_BANDWIDTH", "implied_time", "IMPLEMENTATIONS", "element_size"]

#: Peak HBM bandwidth in bytes per second, as the vendor quotes it (H100 SXM 3.35 TB/s; A100 about 2.0 TB/s).
GPU_BANDWIDTH = {"H100": 3.35e12, "A100": 2.0e12}

IMPLEMENTATIONS = ("reference", "sequential", "fused")

_SIZES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "half": 2,
          "fp32": 4, "float32": 4, "float": 4, "fp64": 8, "float64": 8, "double": 8}


def element_size(dtype) -> int:
    """Bytes per element of a torch dtype or a name such as "bf16", "fp32"."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return torch.empty((), dtype=dtype).element_size()
    if isinstance(dtype, str) and dtype.lower() in _SIZES:
        return _SIZES[dtype.lower()]
    raise ValueError(f"dtype must be a torch floating dtype or one of {sorted(_SIZES)}, got {dtype!r}")


@dataclass
class Traffic:
    """Bytes read from and written to global memory by one implementation, pass by pass."""

    implementation: str
    passes: list = field(default_factory=list)    # (label, bytes read, bytes written)

    def add(self, label: str, read: float = 0, written: float = 0) -> None:
        self.passes.append((label, int(read), int(written)))

    @property
    def read(self) -> int:
        return sum(p[1] for p in self.passes)

    @property
    def written(self) -> int:
        return sum(p[2] for p in self.passes)

    @property
    def total(self) -> int:
        return self.read + self.written

    def time(self, gpu: str = "H100") -> float:
        """Seconds to move ``total`` bytes at the GPU's peak bandwidth (a lower bound on run time)."""
        return implied_time(self.total, gpu)

    def table(self) -> str:
        rows = [f"{self.implementation}: {self.total / 1e6:,.1f} MB"]
        rows += [f"  {label:<44} read {r / 1e6:10,.1f} MB   write {w / 1e6:10,.1f} MB" for label, r, w in self.passes]
        return "\n".join(rows)


def implied_time(nbytes: float, gpu: str = "H100") -> float:
    if gpu not in GPU_BANDWIDTH:
        raise ValueError(f"gpu must be one of {sorted(GPU_BANDWIDTH)}, got {gpu!r}")
    return nbytes / GPU_BANDWIDTH[gpu]


def _check_sizes(b, d, l, n, groups):
    for name, v in dict(b=b, d=d, l=l, n=n).items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if groups and (not isinstance(groups, int) or groups < 0 or d % groups):
        raise ValueError(f"groups must be 0 (ungrouped) or a positive divisor of d = {d}, got {groups!r}")


def traffic(implementation: str, b: int, d: int, l: int, n: int, dtype="fp32", *, groups: int = 0,
            has_D: bool = True, has_z: bool = True, has_bias: bool = True, softplus: bool = True,
            backward: bool = False, chunk: int | None = None) -> Traffic:
    """Count the global-memory bytes of one selective scan of shape (b, d, l, n).

    implementation:
        "reference"  ``selective_scan_ref``: builds Ā and B̄u as (b, d, l, n) tensors, then a time
                     loop of PyTorch ops on the (b, d, n) state.
        "sequential" a PyTorch time loop that never builds a (b, d, l, n) tensor, but whose state
                     and per-step Ā_t, B̄u_t are (b, d, n) tensors in HBM, written and read every step.
        "fused"      the Triton kernel: inputs read once, y written once; (b, d, n) states only.
    backward: count forward *and* backward (training). For "fused" that is the forward saving one
        state per chunk plus the backward kernel; for the PyTorch versions the backward is
        estimated as twice the forward's traffic (autograd re-reads what the forward saved and
        writes a gradient of the same size), which is an estimate, not an op-by-op count.
    chunk: the fused kernel's chunk length (default: its GPU launch configuration).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    _check_sizes(b, d, l, n, groups)
    s = element_size(dtype)
    c = 8 if s == 8 else 4
    g = max(groups, 1)
    E = b * d * l              # elements of u, Δ, z, y
    Ebc = b * g * n * l        # elements of B (or C)
    Eh = b * d * n             # elements of one state h
    Ebig = b * d * l * n       # elements of Ā, B̄u, h over all time
    params = d * n * c + (d * c if has_D else 0) + (d * c if has_bias else 0)
    t = Traffic(implementation)

    if implementation == "fused":
        T = chunk or launch_config(d, n, groups, elem_size=s, interpreted=False).chunk
        n_chunks = -(-l // T)
        t.add("read u, Δ" + (", z" if has_z else ""), (2 + has_z) * E * s)
        t.add("read B, C", 2 * Ebc * s)
        t.add("read A, D, delta_bias", params)
        t.add("write y", 0, E * s)
        t.add("write last state (b, d, n)", 0, Eh * c)
        if backward:
            t.add("write chunk states (b, d, l/T, n)", 0, b * d * n_chunks * n * c)
            t.add("bwd: read u, Δ, dy" + (", z" if has_z else ""), (3 + has_z) * E * s)
            t.add("bwd: read B, C", 2 * Ebc * s)
            t.add("bwd: read A, D, delta_bias, chunk states", params + b * d * n_chunks * n * c)
            t.add("bwd: write du, dΔ" + (", dz" if has_z else ""), 0, (2 + has_z) * E * s)
            # dB, dC: zero-filled float32 buffers, atomics merged in L2, then cast to the input dtype.
            t.add("bwd: dB, dC (zero, accumulate, cast)", 2 * 2 * Ebc * c, 2 * (2 * Ebc * c + Ebc * s))
            # dA, dD, ddelta_bias: one partial sum per batch element, summed over b by PyTorch.
            t.add("bwd: dA, dD, dbias partials (b, ·) + sum", b * params, b * params + params)
        return t

    # The two PyTorch versions share the element-wise prologue and epilogue.
    cast = s != c
    if cast:
        t.add("cast u, Δ, B, C to float32", (2 * E + 2 * Ebc) * s, (2 * E + 2 * Ebc) * c)
    if has_bias:
        t.add("Δ + delta_bias", E * c + d * c, E * c)
    if softplus:
        t.add("softplus(Δ)", E * c, E * c)
    if groups > 1:
        t.add("repeat B, C per channel (b, d, n, l)", 2 * Ebc * c, 2 * Ebig * c)
    bc_read = Ebig if groups > 1 else Ebc       # ungrouped B, C are broadcast views

    if implementation == "reference":
        t.add("Ā = exp(einsum(Δ, A)): write, read, write", E * c + d * n * c + Ebig * c, 2 * Ebig * c)
        t.add("B̄u = einsum(Δ, B, u) via a (b,d,l,n) temporary", 2 * E * c + bc_read * c + Ebig * c, 2 * Ebig * c)
        t.add("loop: h = Ā_t h + B̄u_t (mul, add)", 4 * Ebig * c, 2 * Ebig * c)
        t.add("loop: y_t = C_t · h_t", Ebig * c + bc_read * c, E * c)
        t.add("stack the y_t", E * c, E * c)
    else:  # sequential
        t.add("loop: Ā_t = exp(Δ_t A) (outer product, exp)", E * c + Ebig * c, 2 * Ebig * c)
        t.add("loop: B̄u_t = (Δ_t u_t) B_t", 2 * E * c + bc_read * c, E * c + Ebig * c)
        t.add("loop: h = Ā_t h + B̄u_t (one addcmul)", 3 * Ebig * c, Ebig * c)
        t.add("loop: y_t = C_t · h_t", Ebig * c + bc_read * c, E * c)
    if has_D:
        t.add("y + D u", 2 * E * c + d * c, E * c)
    if has_z:
        t.add("y · SiLU(z)", 3 * E * c if cast else 3 * E * s, 2 * E * c)
    if cast:
        t.add("cast y to the input dtype", E * c, E * s)
    if backward:
        fwd_read, fwd_written = t.read, t.written
        t.add("backward (estimate: 2 × forward)", 2 * fwd_read, 2 * fwd_written)
    return t


def compare(b: int, d: int, l: int, n: int, dtype="fp32", gpu: str = "H100", **options) -> dict:
    """``{implementation: (bytes, implied seconds on gpu)}`` for the three implementations."""
    out = {}
    for impl in IMPLEMENTATIONS:
        tr = traffic(impl, b, d, l, n, dtype, **options)
        out[impl] = (tr.total, tr.time(gpu))
    return out
