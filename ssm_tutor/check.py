"""A tiny shared helper that compares a new formulation against the previous one.

Every notebook step ends with ``check(reference, candidate, "what")``: the new
view (the convolution, the parallel scan, the Triton kernel) must equal the old
one (the recurrence, the sequential scan, the PyTorch scan) to a tolerance.
The printed line names the tolerance rather than the measured error, so a
notebook prints the same text on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check", "mismatch"]


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            return x.resolve_conj().numpy()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _widen(x: np.ndarray) -> np.ndarray:
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _plain(x) -> str:
    """A NumPy scalar as a learner would write it: 0.25, (1+2j), nan — not np.float64(0.25)."""
    return repr(x.item() if hasattr(x, "item") else x)


def mismatch(reference, candidate, *, atol: float, rtol: float, what: str = "output") -> str | None:
    """None when ``candidate`` equals ``reference`` within ``atol + rtol * |reference|`` elementwise,
    else one sentence naming what differs: the shape, the non-finite values, or the worst element
    with both values, the error and how many elements are out of tolerance. Nothing is broadcast."""
    ref, cand = _as_numpy(reference), _as_numpy(candidate)
    if ref.shape != cand.shape:
        return f"{what}: expected shape {tuple(ref.shape)}, got shape {tuple(cand.shape)}"
    if ref.size == 0:
        return None
    ref64, cand64 = _widen(ref), _widen(cand)
    # NaN and ±inf must sit in the same places with the same values on both sides (a NaN in
    # the reference would otherwise compare as "not out of tolerance" and pass anything)
    ref_bad, cand_bad = ~np.isfinite(ref64), ~np.isfinite(cand64)
    if ref_bad.any() or cand_bad.any():
        same = (ref_bad == cand_bad) & ((ref64 == cand64) | (np.isnan(ref64) & np.isnan(cand64)) | ~ref_bad)
        if not same.all():
            return (f"{what}: {int(cand_bad.sum())} of {cand.size} values are NaN or infinite, the reference has "
                    f"{int(ref_bad.sum())}, and they do not sit in the same places with the same values")
        ref64, cand64 = np.where(ref_bad, 0, ref64), np.where(cand_bad, 0, cand64)
    err = np.abs(ref64 - cand64)
    allowed = atol + rtol * np.abs(ref64)
    if not np.any(err > allowed):
        return None
    idx = np.unravel_index(np.argmax(err - allowed), err.shape)
    return (f"{what}: differs from the reference by up to {float(err.max()):.3g}; "
            f"at index {tuple(int(i) for i in idx)} expected {_plain(ref64[idx])}, got {_plain(cand64[idx])}; "
            f"{int(np.sum(err > allowed))} of {err.size} elements out of tolerance (atol={atol:g}, rtol={rtol:g})")


def check(reference, candidate, what: str = "candidate", *, atol: float = 1e-6, rtol: float = 1e-5,
          quiet: bool = False) -> None:
    """Assert that ``candidate`` equals ``reference`` elementwise within ``atol + rtol * |reference|``.

    Works on tensors, arrays and (nested) tuples or lists of them. Shapes must match
    exactly: nothing is broadcast. On success prints one deterministic line (it names the
    tolerance, not the measured error, so every machine prints the same); on failure raises
    ``AssertionError`` naming the worst element, its two values and the error.
    """
    if isinstance(reference, (tuple, list)):
        if not isinstance(candidate, (tuple, list)) or len(candidate) != len(reference):
            raise AssertionError(f"{what}: expected a sequence of {len(reference)} items, got {type(candidate).__name__}")
        for i, (r, c) in enumerate(zip(reference, candidate)):
            check(r, c, f"{what}[{i}]", atol=atol, rtol=rtol, quiet=True)
        if not quiet:
            print(f"✓ {what} matches the reference (atol={atol:g}, rtol={rtol:g})")
        return
    problem = mismatch(reference, candidate, atol=atol, rtol=rtol, what=what)
    if problem:
        raise AssertionError(problem)
    if not quiet:
        print(f"✓ {what} matches the reference (atol={atol:g}, rtol={rtol:g}, shape {tuple(_as_numpy(reference).shape)})")
