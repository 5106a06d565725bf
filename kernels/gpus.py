"""The GPU figures the traffic and roofline models use, each with where it comes from.

Notebook: ``notebooks/06_triton_kernel.ipynb`` (section "What bounds the time").

Vendor figures: HBM bandwidth, L2 size, SM count and boost clock from NVIDIA's H100 and A100
datasheets (the clock is the one that makes the quoted FP32 peak: 67 TFLOPS = 132 SMs × 128 lanes ×
2 flops × 1.98 GHz for the H100 SXM, 19.5 TFLOPS = 108 × 64 × 2 × 1.41 GHz for the A100).
Per-SM rates from the CUDA C++ Programming Guide's table of arithmetic-instruction throughput
(compute capability 8.0 and 9.0): 16 results per clock per SM for the special functions (exp2,
log2, reciprocal: the multi-function unit that every ``tl.exp`` uses), 32 for warp shuffles.
For comparison, FlashAttention-3 (Shah et al. 2024, Section 3) quotes 3.9 TFLOPS of special
functions for an H100 SXM5, the same order as 132 × 16 × 1.98 GHz = 4.2 × 10¹² per second.

``launch_s`` is an assumption, not a measurement: the time one eager PyTorch op costs when ops
are small (Python dispatch plus a kernel launch, "several microseconds" as notebook 5 says).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU", "GPUS", "gpu_spec"]


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float            # HBM bytes per second
    l2_bytes: float             # L2 cache size in bytes
    sms: int                    # streaming multiprocessors
    clock_hz: float             # boost clock
    special_per_sm_clock: int = 16     # exp2 / log2 / reciprocal results per clock per SM
    shuffles_per_sm_clock: int = 32    # warp-shuffle results (lanes) per clock per SM
    launch_s: float = 5e-6             # ASSUMED cost of one small eager PyTorch op

    @property
    def special_rate(self) -> float:
        """Special-function results (e.g. exponentials) per second, whole GPU."""
        return self.sms * self.special_per_sm_clock * self.clock_hz

    @property
    def shuffle_rate(self) -> float:
        """Warp-shuffle lane results per second, whole GPU."""
        return self.sms * self.shuffles_per_sm_clock * self.clock_hz


GPUS = {
    "H100": GPU("H100 SXM", bandwidth=3.35e12, l2_bytes=50e6, sms=132, clock_hz=1.98e9),
    "A100": GPU("A100 SXM 80GB", bandwidth=2.0e12, l2_bytes=40e6, sms=108, clock_hz=1.41e9),
}


def gpu_spec(gpu) -> GPU:
    """A :class:`GPU` from its name ("H100", "A100") or itself."""
    if isinstance(gpu, GPU):
        return gpu
    if gpu not in GPUS:
        raise ValueError(f"gpu must be one of {sorted(GPUS)} or a kernels.gpus.GPU, got {gpu!r}")
    return GPUS[gpu]
