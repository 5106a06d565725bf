"""A memory-traffic model of the selective scan: bytes between the GPU's HBM and the chip.

Notebook: ``notebooks/06_triton_kernel.ipynb`` (sections "How many bytes move" and "What bounds
the time"). The Mamba paper (Section 3.3.2) fuses the scan so that the (b, d, l, n) tensors Ā, B̄u
and h never reach HBM, and reports the fused scan up to 20–40× faster than a standard PyTorch
scan (Section 4.5). This module counts the bytes; :mod:`ssm_tutor.kernels.roofline` adds what
else bounds the time (exponentials, warp shuffles, kernel launches), because bytes alone are not
the whole story.

Each implementation is a list of *passes*: one PyTorch op (or one kernel) reading and writing
whole tensors, and how many times it is launched (a time loop launches its ops once per step).
What stays in the L2 cache (50 MB on an H100, 40 MB on an A100) costs no HBM traffic:

* a tensor that lives for one step of a time loop, (b, d, n) — the state h, or Ā_t h before
  B̄u_t is added — is written and read back within microseconds; while a few of them fit in L2
  (``3 b d n`` elements ≤ the L2 size) the model leaves them out of the HBM count;
* whole-sequence tensors, (b, d, l) and (b, d, l, n), are assumed larger than L2 (true at every
  shape the notebook quotes), so each op that reads or writes one pays for it in HBM;
* the fused kernel's repeated reads of B and C by the d/BLOCK_D programs of one batch element
  hit L2 (B and C are n/d of the traffic).

Symbols: b batch, d channels, l length, n state size, g groups of B/C (1 when ungrouped);
s bytes per element of u, Δ, B, C, z, y (2 for bf16/fp16, 4 for fp32); c bytes of the compute
dtype (4; 8 for float64), which is also the dtype of A, D, delta_bias and the states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import launch_config
from .gpus import GPUS, gpu_spec

__all__ = ["Traffic", "traffic", "compare", "GPU_BANDWIDTH", "implied_time", "IMPLEMENTATIONS", "element_size",
           "step_tensors_in_l2", "measure_op_traffic"]

#: Peak HBM bandwidth in bytes per second, as the vendor quotes it (H100 SXM 3.35 TB/s; A100 about 2.0 TB/s).
GPU_BANDWIDTH = {name: spec.bandwidth for name, spec in GPUS.items()}

#: "reference": stage 4's ``selective_scan_ref`` (a time loop over materialised (b, d, l, n) tensors);
#: "parallel": stage 5's ``selective_scan(method="hillis_steele")``, a parallel scan in PyTorch
#: without fusion; "sequential": a PyTorch time loop that never builds a (b, d, l, n) tensor;
#: "fused": the Triton kernels of this stage.
IMPLEMENTATIONS = ("reference", "parallel", "sequential", "fused")

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
    passes: list = field(default_factory=list)    # (label, bytes read, bytes written, launches)

    def add(self, label: str, read: float = 0, written: float = 0, launches: int = 1) -> None:
        self.passes.append((label, int(read), int(written), int(launches)))

    @property
    def read(self) -> int:
        return sum(p[1] for p in self.passes)

    @property
    def written(self) -> int:
        return sum(p[2] for p in self.passes)

    @property
    def total(self) -> int:
        return self.read + self.written

    @property
    def launches(self) -> int:
        """Kernels launched (each eager PyTorch op is one; a time loop's ops once per step)."""
        return sum(p[3] for p in self.passes)

    def time(self, gpu: str = "H100") -> float:
        """Seconds to move ``total`` bytes at the GPU's peak bandwidth (a lower bound on run time)."""
        return implied_time(self.total, gpu)

    def table(self) -> str:
        rows = [f"{self.implementation}: {self.total / 1e6:,.1f} MB in {self.launches:,} kernel launches"]
        rows += [f"  {label:<52} read {r / 1e6:10,.1f} MB   write {w / 1e6:10,.1f} MB"
                 + (f"   ×{k:,}" if k > 1 else "") for label, r, w, k in self.passes]
        return "\n".join(rows)


def implied_time(nbytes: float, gpu="H100") -> float:
    """Seconds to move ``nbytes`` at the GPU's peak HBM bandwidth."""
    return nbytes / gpu_spec(gpu).bandwidth


def step_tensors_in_l2(b: int, d: int, n: int, compute_bytes: int, l2_bytes: float) -> bool:
    """Whether a time loop's per-step (b, d, n) tensors stay in L2: the few alive at once
    (the state, Ā_t h, the next state: 3 of them) fit in the cache."""
    return 3 * b * d * n * compute_bytes <= l2_bytes


def _check_sizes(b, d, l, n, groups):
    for name, v in dict(b=b, d=d, l=l, n=n).items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if groups and (not isinstance(groups, int) or groups < 0 or d % groups):
        raise ValueError(f"groups must be 0 (ungrouped) or a positive divisor of d = {d}, got {groups!r}")


def traffic(implementation: str, b: int, d: int, l: int, n: int, dtype="fp32", *, groups: int = 0,
            has_D: bool = True, has_z: bool = True, has_bias: bool = True, softplus: bool = True,
            backward: bool = False, chunk: int | None = None, n_split: int | None = None,
            gpu="H100", l2_bytes: float | None = None) -> Traffic:
    """Count the global-memory bytes (and kernel launches) of one selective scan of shape (b, d, l, n).

    implementation: one of :data:`IMPLEMENTATIONS` (see there).
    backward: count forward *and* backward (training). For "fused" that is the forward saving one
        state per chunk plus the backward kernel; for the PyTorch versions the backward is
        estimated as twice the forward's traffic and launches (autograd re-reads what the forward
        saved and writes a gradient of the same size), an estimate, not an op-by-op count.
    chunk, n_split: the fused kernel's chunk length and state split (default: what
        :func:`launch_config` picks for this shape on ``gpu``).
    gpu: whose L2 size (and SM count, for the fused kernel's grid) to use; ``l2_bytes`` overrides
        the L2 size (0: no cache at all, every pass pays in full).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    _check_sizes(b, d, l, n, groups)
    spec = gpu_spec(gpu)
    l2 = spec.l2_bytes if l2_bytes is None else l2_bytes
    s = element_size(dtype)
    c = 8 if s == 8 else 4
    g = max(groups, 1)
    E = b * d * l              # elements of u, Δ, z, y
    Ebc = b * g * n * l        # elements of B (or C)
    Ebig = b * d * l * n       # elements of Ā, B̄u, h over all time
    params = d * n * c + (d * c if has_D else 0) + (d * c if has_bias else 0)
    t = Traffic(implementation)

    if implementation == "fused":
        cfg = launch_config(d, n, groups, batch=b, elem_size=s, chunk=chunk, n_split=n_split,
                            sm_count=spec.sms, interpreted=False)
        n_chunks = -(-l // cfg.chunk)
        S = cfg.n_split
        t.add("read u, Δ" + (", z" if has_z else ""), (2 + has_z) * E * s, 0, 0)
        t.add("read B, C", 2 * Ebc * s, 0, 0)
        t.add("read A, D, delta_bias", params, 0, 0)
        if S == 1:
            t.add("write y", 0, E * s)                    # the kernel's one launch
        else:   # one partial y per slice of the states, summed (and cast) by PyTorch
            t.add(f"write {S} partial y (S, b, d, l)", 0, S * E * c)
            t.add("y = sum of the partials" + (", cast" if s != c else ""), S * E * c, E * s, 1 + (s != c))
        t.add("write last state (b, d, n)", 0, b * d * n * c, 0)
        if backward:
            states = b * d * n_chunks * n * c
            t.add("write chunk states (b, d, l/T, n)", 0, states, 0)
            t.add("bwd: read u, Δ, dy" + (", z" if has_z else ""), (3 + has_z) * E * s)
            t.add("bwd: read B, C", 2 * Ebc * s, 0, 0)
            t.add("bwd: read A, D, delta_bias, chunk states", params + states, 0, 0)
            grads = 2 + has_z                             # du, dΔ (, dz)
            if S == 1:
                t.add("bwd: write du, dΔ" + (", dz" if has_z else ""), 0, grads * E * s, 0)
            else:
                t.add(f"bwd: write {S} partial du, dΔ" + (", dz" if has_z else ""), 0, grads * S * E * c, 0)
                t.add("bwd: sum the partials" + (", cast" if s != c else ""), grads * S * E * c, grads * E * s,
                      grads * (1 + (s != c)))
            # dB, dC: zero-filled float32 buffers, atomics merged in L2, then cast to the input dtype.
            t.add("bwd: dB, dC (zero, accumulate, cast)", 2 * 2 * Ebc * c, 2 * (2 * Ebc * c + Ebc * s), 4)
            # dA, dD, ddelta_bias: one partial sum per batch element, summed over b by PyTorch.
            t.add("bwd: dA, dD, dbias partials (b, ·) + sum", b * params, b * params + params, 3)
        return t

    # The PyTorch versions share the element-wise prologue and epilogue. Each pass below is one op
    # of the code (stage 4's selective_scan_ref, stage 5's _selective_via_linear_scan); a pass with
    # launches=l runs once per time step. E c bytes is a (b, d, l) float32 tensor, Ebig c a (b, d, l, n) one.
    cast = s != c
    in_l2 = step_tensors_in_l2(b, d, n, c, l2)
    if cast:    # u.to(float32), delta.to(...), B, C (and z) likewise: one copy each
        t.add("cast u, Δ, B, C" + (", z" if has_z else "") + " to float32",
              ((2 + has_z) * E + 2 * Ebc) * s, ((2 + has_z) * E + 2 * Ebc) * c, 4 + has_z)
    if has_bias:    # step_size: delta + delta_bias[:, None]
        t.add("Δ + delta_bias", E * c + d * c, E * c)
    if softplus:    # step_size: F.softplus(delta)
        t.add("softplus(Δ)", E * c, E * c)
    else:           # step_size refuses a negative Δ: (delta < 0).any(), one flag back to the host
        t.add("check Δ ≥ 0: delta < 0 (a bool per element)", E * c, E)
        t.add("check Δ ≥ 0: any(...)", E, 1)
    if groups > 1 and implementation != "sequential":   # per_channel: repeat_interleave B and C per channel
        t.add("repeat B, C per channel (b, d, l, n)", 2 * Ebc * c, 2 * Ebig * c, 2)
    bc_read = Ebig if groups > 1 and implementation != "sequential" else Ebc   # else broadcast views

    if implementation in ("reference", "parallel"):
        # Ā = exp(Δ A): the product is broadcast to a (b, d, l, n) tensor, then exponentiated
        t.add("Δ ⊗ A: a (b, d, l, n) tensor", E * c + d * n * c, Ebig * c)
        t.add("Ā = exp(Δ A)", Ebig * c, Ebig * c)
        # B̄u = (Δ u) ⊗ B: Δ u, then broadcast against B (a view of B, or its per-channel copy)
        t.add("Δ u", 2 * E * c, E * c)
        t.add("B̄u = (Δ u) ⊗ B", E * c + bc_read * c, Ebig * c)
    if implementation == "reference":
        # selective_scan_loop: h = 0, then four small ops per step on (b, d, n) step tensors. While
        # they fit in L2 (in_l2) only Ā_t, B̄u_t and C_t come from HBM and only y_t goes back.
        step = 0 if in_l2 else Ebig * c        # the step tensors' bytes over all l steps
        where = "in L2" if in_l2 else "in HBM"
        t.add("h = 0 (b, d, n)", 0, b * d * n * c)
        t.add(f"loop: Ā_t h (h {where})", Ebig * c + step, step, l)
        t.add(f"loop: h = Ā_t h + B̄u_t (h {where})", step + Ebig * c, step, l)
        t.add(f"loop: h · C_t (h {where})", step + bc_read * c, step, l)
        t.add(f"loop: y_t = Σ_n h · C_t (h {where})", step, E * c, l)
        t.add("stack the y_t", E * c, E * c)
    elif implementation == "parallel":
        rounds, read, written, offset = 0, 0, 0, 1
        while offset < l:   # combine the two shifted parts (a1 a2, a2 b1, + b2: 3 ops), concatenate a and b (2 ops)
            part = Ebig * (l - offset) // l
            read += 6 * part + 2 * Ebig
            written += 3 * part + 2 * Ebig
            rounds, offset = rounds + 1, 2 * offset
        if rounds:
            t.add(f"Hillis–Steele: {rounds} rounds of combine + concatenate", read * c, written * c, 5 * rounds)
        # y = (C_t * h).sum(n): a (b, d, n, l) product, then the sum over n
        t.add("h · C", Ebig * c + bc_read * c, Ebig * c)
        t.add("y = Σ_n h · C", Ebig * c, E * c)
    else:  # sequential: six small ops per step, only the y_t are kept
        if in_l2:   # every (b, d, n) step tensor stays in L2: inputs read once, y_t written once
            t.add("loop: Ā_t, B̄u_t, h, y_t (step tensors in L2)",
                  (2 * E + 2 * Ebc) * c + d * n * c, E * c, 6 * l)
        else:
            t.add("loop: Ā_t = exp(Δ_t ⊗ A)", E * c + Ebig * c, 2 * Ebig * c, 2 * l)
            t.add("loop: B̄u_t = (Δ_t u_t) ⊗ B_t", 2 * E * c + bc_read * c, E * c + Ebig * c, 2 * l)
            t.add("loop: h = Ā_t h + B̄u_t (one addcmul)", 3 * Ebig * c, Ebig * c, l)
            t.add("loop: y_t = C_t · h_t", Ebig * c + bc_read * c, E * c, l)
        t.add("stack the y_t", E * c, E * c)
    if has_D:
        if implementation == "sequential":     # one addcmul
            t.add("y + D u (addcmul)", 2 * E * c + d * c, E * c)
        else:                                   # y + D[:, None] * u: two ops
            t.add("u D, y + u D", 3 * E * c + d * c, 2 * E * c, 2)
    if has_z:   # y * F.silu(z)
        t.add("SiLU(z), y · SiLU(z)", 3 * E * c, 2 * E * c, 2)
    if cast:
        t.add("cast y to the input dtype", E * c, E * s)
    if backward:
        fwd_read, fwd_written, fwd_launches = t.read, t.written, t.launches
        t.add("backward (estimate: 2 × forward)", 2 * fwd_read, 2 * fwd_written, 2 * fwd_launches)
    return t


def compare(b: int, d: int, l: int, n: int, dtype="fp32", gpu="H100", **options) -> dict:
    """``{implementation: (bytes, seconds to move them at gpu's bandwidth)}`` for every implementation."""
    out = {}
    for impl in IMPLEMENTATIONS:
        tr = traffic(impl, b, d, l, n, dtype, gpu=gpu, **options)
        out[impl] = (tr.total, tr.time(gpu))
    return out


def _distinct_bytes(x: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view covers (a broadcast dimension, stride 0, counts once)."""
    return math.prod(size for size, stride in zip(x.shape, x.stride()) if stride != 0) * x.element_size()


def measure_op_traffic(fn, *args, **kwargs) -> Traffic:
    """Run ``fn`` on CPU tensors and record every PyTorch op it dispatches, with no cache at all:
    each op reads the distinct bytes of its tensor inputs and writes its outputs (views cost
    nothing). This is what the model's passes for a PyTorch implementation claim, op by op, with
    ``l2_bytes=0``; the tests and the notebook compare the two."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    measured = Traffic(getattr(fn, "__name__", "measured"))

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if not func.is_view and func is not torch.ops.aten._local_scalar_dense.default:
                # factories such as u.new_zeros(...) take a tensor for its dtype and device only
                factory = name.startswith("new_") or name.endswith("_like")
                inputs = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor) and not factory]
                outputs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
                measured.add(name, sum(map(_distinct_bytes, inputs)), sum(x.numel() * x.element_size() for x in outputs))
            return out

    with Recorder():
        fn(*args, **kwargs)
    return measured
