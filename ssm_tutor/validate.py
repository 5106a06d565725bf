"""The argument checks every stage shares, in one place.

A teaching function calls one of these at its top and then reads like the paper; every check
raises an error that names the argument, says what was expected and what came:

* numbers:  :func:`positive_int`, :func:`check_positive`, :func:`non_negative_int`, :func:`finite_number`,
  :func:`positive_number`, :func:`check_choice`;
* the command lines (``ssm-tutor``, ``python -m ssm_tutor.train``): the argparse types
  :data:`positive_int_arg`, :data:`non_negative_int_arg`, :data:`positive_float_arg`,
  :data:`non_negative_float_arg`;
* tensors:  :func:`check_tensor` (type, dtype kind, dimensions, device), :func:`require_finite`,
  :func:`check_has_data` (no meta tensors), :func:`check_layer_input` ((batch, length, d) inputs);
* tokens:   :func:`check_token_ids` -- the one check of token ids for every language model --
  and :func:`check_mask` (attention masks, left padding);
* caches:   :func:`check_cache` -- the type and batch of a recurrent cache;
* several tensors at once: :func:`check_required`, :func:`check_same_device`, :func:`check_one_precision`
  (float64 for all or none), :func:`check_shape`;
* the selective scan: :func:`validate_scan_args` (the official ``selective_scan_fn`` layout) and
  :func:`check_step_sizes` (a negative Δ without softplus makes the state grow without bound);
  the linear scan h_t = a_t h_{t-1} + b_t: :func:`validate_linear_scan_args`;
* the SSD scan (stage 11): :func:`validate_ssd_args` (``mamba_chunk_scan_combined``'s layout) and
  :func:`check_step_limit` (a (low, high) range for Δ).

TypeError means a wrong type or dtype, ValueError a wrong shape, device or value.
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple

import torch

__all__ = ["positive_int", "non_negative_int", "check_positive", "check_choice", "check_tensor",
           "require_finite", "check_has_data", "check_layer_input", "check_token_ids", "check_mask", "check_cache",
           "validate_scan_args", "check_step_sizes", "ScanSizes", "finite_number", "positive_number",
           "positive_int_arg", "non_negative_int_arg", "positive_float_arg", "non_negative_float_arg",
           "check_required", "check_same_device", "check_one_precision", "check_shape", "validate_ssd_args",
           "SSDSizes", "check_step_limit", "validate_linear_scan_args"]


# ----------------------------------------------------------------------------------------------
# numbers
# ----------------------------------------------------------------------------------------------

def positive_int(name: str, value) -> int:
    """``value`` if it is an int ≥ 1 (not a bool), else ValueError "name must be a positive integer, got …"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value) -> int:
    """``value`` if it is an int ≥ 0 (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_positive(**values) -> None:
    """``check_positive(d=d, n=n)``: every keyword must be a positive int (see :func:`positive_int`)."""
    for name, value in values.items():
        positive_int(name, value)


def check_choice(name: str, value, choices) -> None:
    """ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------

_KINDS = {
    "float": ("a floating-point", lambda t: t.is_floating_point()),
    "real or complex": ("a floating-point or complex", lambda t: t.is_floating_point() or t.is_complex()),
    "integer": ("an integer", lambda t: not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)),
}


def check_tensor(name: str, x, *, kind: str = "float", dims: int | None = None, shape: str | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Check that ``x`` is a ``torch.Tensor`` of dtype ``kind`` ("float", "real or complex" or
    "integer"), with ``dims`` dimensions (``shape`` describes them in the message, e.g.
    "(batch, d, length)") and on ``device``. Returns x."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    words, ok = _KINDS[kind]
    if not ok(x):
        raise TypeError(f"{name} must be {words} tensor, got dtype {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have shape {shape or f'with {dims} dimensions'}, got shape {tuple(x.shape)}")
    if device is not None and x.device != torch.device(device):
        raise ValueError(f"{name} is on device {x.device} but {torch.device(device)} was expected; "
                         f"move it with .to({str(torch.device(device))!r})")
    return x


def check_has_data(name: str, x: torch.Tensor) -> None:
    """A tensor on the "meta" device has a shape but no values; computing with it fails deep
    inside torch. Refuse it here, with the likely cause."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: it has a shape but no values (a model built under "
                         f"torch.device('meta') or with empty weights). Load real weights first, e.g. "
                         f"with from_pretrained, or move the tensor with .to_empty(device='cpu') and initialise it")


def require_finite(name: str, x: torch.Tensor) -> None:
    """ValueError "name contains k NaN or infinite value(s) out of N" unless every entry is finite."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s) out of {x.numel()}")


def check_layer_input(x, d: int, where: str) -> None:
    """A layer's input x: a floating-point tensor of shape (batch, length, d) with real values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d:
        raise ValueError(f"{where}: x must have shape (batch, length, d) with d = {d}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: x must be a floating-point tensor, got dtype {x.dtype}")
    check_has_data(f"{where}: x", x)


# ----------------------------------------------------------------------------------------------
# token ids and caches (every language model)
# ----------------------------------------------------------------------------------------------

def check_token_ids(ids, vocab_size: int, *, name: str = "input_ids", dim: int = 2,
                    device: torch.device | None = None) -> None:
    """The one check of token ids: an integer tensor (torch.long or torch.int32) of shape
    (batch, length) (``dim=2``) or (batch,) (``dim=1``), not empty, with every id in
    [0, vocab_size), on ``device`` (the model's) when given."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.long, torch.int32):
        raise TypeError(f"{name} must hold integer token ids of dtype torch.long (int64) or torch.int32, "
                        f"got dtype {ids.dtype}")
    shape = "(batch, length)" if dim == 2 else "(batch,)"
    if ids.dim() != dim:
        raise ValueError(f"{name} must have shape {shape}, got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token")
    check_has_data(name, ids)
    if device is not None and ids.device != device:
        raise ValueError(f"{name} is on device {ids.device} but the model is on {device}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} holds ids in [{lo}, {hi}] but vocab_size is {vocab_size}: "
                         f"every id must be in [0, {vocab_size - 1}], i.e. in [0, {vocab_size})")


def check_mask(mask, input_ids: torch.Tensor, *, left_padded: bool = False) -> None:
    """An attention mask for ``input_ids``: a tensor of its shape and device holding 1 for a
    token and 0 for padding (bool, integer or float), at least one token per row; with
    ``left_padded`` the zeros must all come first in each row (prompts padded on the left, so
    that every row ends with its own last token)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    if mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on device {mask.device} but input_ids is on {input_ids.device}")
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if not bool((mask != 0).any(-1).all()):
        rows = (mask == 0).all(-1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask has rows with no token at all: {rows[:8]}")
    if left_padded and mask.shape[-1] > 1 and not bool((mask[:, 1:].int() >= mask[:, :-1].int()).all()):
        raise ValueError("attention_mask must be left-padded here (every row: zeros for the padding, then ones "
                         "for the prompt), so that each row's last position is its own last token")


def check_cache(cache, cache_type: type, batch: int, *, made_by: str = "init_cache") -> None:
    """A recurrent cache must be a ``cache_type`` (from ``made_by``) made for ``batch`` sequences
    (``cache.batch``)."""
    if not isinstance(cache, cache_type):
        article = "an" if cache_type.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"cache must be {article} {cache_type.__name__} from {made_by}, got {type(cache).__name__}")
    if cache.batch != batch:
        raise ValueError(f"token_ids has batch {batch} but the cache was made for batch {cache.batch}")


# ----------------------------------------------------------------------------------------------
# several tensors at once (the scans' arguments)
# ----------------------------------------------------------------------------------------------

def check_required(tensors: dict, names) -> None:
    """TypeError "name is required, got None" for the first of ``names`` that is None in ``tensors``."""
    for name in names:
        if tensors[name] is None:
            raise TypeError(f"{name} is required, got None")


def check_same_device(tensors: dict, reference: str) -> None:
    """Every tensor of ``tensors`` (None entries skipped) on the device of ``tensors[reference]``."""
    device = tensors[reference].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on device {t.device} but {reference} is on {device}; "
                             f"move them to one device")


def _is_wide(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float64, torch.complex128)


def check_one_precision(tensors: dict) -> None:
    """64-bit precision (float64 / complex128) for all of ``tensors`` (None entries skipped) or none."""
    present = {name: t for name, t in tensors.items() if t is not None}
    wide = [name for name, t in present.items() if _is_wide(t)]
    if wide and len(wide) != len(present):
        narrow = [f"{name} ({t.dtype})" for name, t in present.items() if not _is_wide(t)]
        raise TypeError(f"float64 must be used for all arguments or none: {', '.join(wide)} are float64 "
                        f"(or complex128) but {', '.join(narrow)} are not")


def check_shape(name: str, t: torch.Tensor | None, expected: str, want) -> None:
    """ValueError "name must have shape {expected} = want, got shape …" unless t (when given) has shape ``want``."""
    if t is not None and tuple(t.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {expected} = {tuple(want)}, got shape {tuple(t.shape)}")


# ----------------------------------------------------------------------------------------------
# the selective scan's arguments (stage 4 onwards)
# ----------------------------------------------------------------------------------------------

class ScanSizes(NamedTuple):
    """What :func:`validate_scan_args` found: unpacks as ``b, d, l, n, groups``.

    groups: 0 for B, C of shape (b, n, l), g for (b, g, n, l), and -1 when B or C is
    time-invariant, of shape (d, n)."""
    batch: int
    d: int
    length: int
    n: int
    groups: int


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def _shape_error(name: str, expected: str, got: torch.Tensor) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got shape {tuple(got.shape)}")


def validate_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, check_finite: bool = True,
                       allow_complex: bool = False, allow_constant_BC: bool = False) -> ScanSizes:
    """Check the selective-scan arguments against the official ``selective_scan_fn`` layout and
    return :class:`ScanSizes` ``(batch, d, length, n, groups)``.

    Shapes: u, delta, z (b, d, l) with l ≥ 1; A (d, n); D, delta_bias (d,); B and C each
    (b, n, l), or (b, g, n, l) with g dividing d (channel c reads group c // (d/g)), or -- with
    ``allow_constant_BC`` -- (d, n), the same for every time step (an LTI system). Nothing is
    broadcast.

    Complex A (``allow_complex``): each complex entry of A stands for a conjugate pair of real
    states (S4D-Lin) and the scan returns y = 2 Re(C h). B and C may then be complex, or real
    with the real and imaginary parts interleaved along time, (b, n, 2l) or (b, g, n, 2l), as
    ``mamba_ssm`` takes them. With real A, B and C must be real.

    Types: u, delta, z, D, delta_bias real floating point; delta and z have u's dtype; B and C
    the same precision; 64-bit precision (float64/complex128) is all-or-nothing. A, D and
    delta_bias may be float32 while u is float16/bfloat16, as in the official kernel. Every
    tensor on u's device.

    Values: with ``check_finite`` (the default) a NaN or infinite entry raises, naming the argument.

    The defaults (real A, time-varying B and C) are what every fast implementation takes; a
    method that takes more passes ``allow_complex`` / ``allow_constant_BC``, and the error for
    a method that cannot says which one can.
    """
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    check_required(tensors, ("u", "delta", "A", "B", "C"))
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex() and name in ("u", "delta", "z", "D", "delta_bias"):
            raise TypeError(f"{name} must be real, got complex dtype {t.dtype}")
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    check_same_device(tensors, "u")
    check_has_data("u", u)
    complex_A = A.is_complex()
    if complex_A and not allow_complex:
        raise TypeError(f"A must be real for this scan implementation, got complex dtype {A.dtype}; the reference "
                        f"scan (selective_scan_ref, or selective_scan(method='reference' / 'sequential')) "
                        f"takes complex A (S4D-Lin)")
    for name in ("B", "C"):
        if tensors[name].is_complex() and not complex_A:
            raise TypeError(f"{name} is complex ({tensors[name].dtype}) but A is real ({A.dtype}): complex B and C "
                            f"go with a complex A (conjugate-pair modes); with a real A they must be real")
    for name in ("delta", "z"):
        t = tensors[name]
        if t is not None and t.dtype != u.dtype:
            raise TypeError(f"{name} must have u's dtype {u.dtype}, got {t.dtype}")
    if _real_dtype(C) != _real_dtype(B):
        raise TypeError(f"C must have B's dtype {B.dtype} (or its complex/real twin), got {C.dtype}")
    check_one_precision(tensors)
    present = {name: t for name, t in tensors.items() if t is not None}

    if u.dim() != 3:
        raise _shape_error("u", "(batch, d, length)", u)
    b, d, l = u.shape
    if l == 0:
        raise ValueError("u has length 0: the scan needs at least one time step")
    if delta.shape != u.shape:
        raise _shape_error("delta", f"(batch, d, length) = {tuple(u.shape)} like u", delta)
    if A.dim() != 2 or A.shape[0] != d:
        raise _shape_error("A", f"(d, n) with d = {d}", A)
    n = A.shape[1]
    layouts = {}
    for name, t in (("B", B), ("C", C)):
        l_t = 2 * l if complex_A and not t.is_complex() else l       # interleaved (re, im) pairs
        along = f"{l_t} = 2 · length, real and imaginary parts interleaved" if l_t != l else f"{l}"
        if t.dim() == 2:
            if not allow_constant_BC:
                raise ValueError(f"{name} has shape {tuple(t.shape)}: time-invariant B, C of shape (d, n) are not "
                                 f"taken by this scan implementation; the reference scan (selective_scan_ref, or "
                                 f"selective_scan(method='reference')) takes them, or expand {name} to "
                                 f"(batch, n, length)")
            if t.shape != (d, n):
                raise _shape_error(name, f"(d, n) = {(d, n)} like A", t)
            layouts[name] = -1
        elif t.dim() == 3:
            if t.shape != (b, n, l_t):
                raise _shape_error(name, f"(batch, n, length) = ({b}, {n}, {along})", t)
            layouts[name] = 0
        elif t.dim() == 4:
            g = t.shape[1]
            if t.shape[0] != b or t.shape[2:] != (n, l_t) or g == 0 or d % g != 0:
                raise _shape_error(name, f"(batch, groups, n, length) = ({b}, g, {n}, {along}) with g "
                                         f"dividing d = {d}", t)
            layouts[name] = g
        else:
            raise _shape_error(name, f"(batch, n, length) = {(b, n, l)}, (batch, groups, n, length) or (d, n)", t)
    if layouts["B"] > 0 and layouts["C"] > 0 and layouts["B"] != layouts["C"]:
        raise ValueError(f"B has {layouts['B']} groups but C has {layouts['C']}; they must agree")
    if (layouts["B"] > 0) != (layouts["C"] > 0) and -1 not in layouts.values():
        raise ValueError(f"B and C must both be grouped or both not: got B {tuple(B.shape)}, C {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise _shape_error(name, f"(d,) = ({d},)", t)
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", f"(batch, d, length) = {tuple(u.shape)} like u", z)

    if check_finite:
        for name, t in present.items():
            require_finite(name, t)
    groups = -1 if -1 in layouts.values() else layouts["B"]
    return ScanSizes(b, d, l, n, groups)


def validate_linear_scan_args(a, b, h0=None) -> None:
    """The linear scan's arguments: a and b tensors of one shape (…, L) with L ≥ 1, one dtype
    (floating point or complex) and one device; h0, if given, of shape (…) (a's without the time
    axis) on that device."""
    check_tensor("a", a, kind="real or complex")
    check_tensor("b", b, kind="real or complex")
    if a.shape != b.shape:
        raise ValueError(f"a must have the shape of b, {tuple(b.shape)}, got shape {tuple(a.shape)}")
    if a.dim() == 0 or a.shape[-1] == 0:
        raise ValueError(f"a and b need a non-empty last (time) axis, got shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"a is on device {a.device} but b is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"a has dtype {a.dtype} but b has {b.dtype}; give both the same dtype")
    if h0 is not None:
        check_tensor("h0", h0, kind="real or complex", device=a.device)
        if h0.shape != a.shape[:-1]:
            raise ValueError(f"h0 must have shape {tuple(a.shape[:-1])} (a's shape without the time axis), "
                             f"got shape {tuple(h0.shape)}")


def check_step_sizes(delta: torch.Tensor) -> None:
    """Δ (after delta_bias, when delta_softplus is off) must be ≥ 0: with A < 0 a negative step
    makes |exp(Δ A)| > 1, and the state grows without bound instead of decaying."""
    if bool((delta < 0).any()):
        worst = float(delta.min())
        count = int((delta < 0).sum())
        raise ValueError(f"delta (+ delta_bias) has {count} negative step size(s) (smallest {worst:.3g}) and "
                         f"delta_softplus=False: a negative Δ makes exp(Δ·A) > 1 for A < 0, so the state grows "
                         f"without bound. Pass delta_softplus=True, or non-negative delta")


def finite_number(name: str, value, *, minimum: float | None = None) -> float:
    """A finite real number (not a bool), ≥ ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return float(value)


def positive_number(name: str, value, *, why: str = "") -> float:
    """A finite real number > 0 (not a bool); ``why`` is added to the message (what 0 would do)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number{why}, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# command-line arguments
# ----------------------------------------------------------------------------------------------

def _argument_type(kind: type, minimum: float, inclusive: bool, words: str):
    """An argparse type: a finite ``kind`` (int or float) ≥ minimum (> when not ``inclusive``);
    anything else is refused with "expected a {words} integer/number, got …"."""
    noun = "integer" if kind is int else "number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {words} {noun}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a {words} {noun}, got {text}")
        return value

    parse.__name__ = f"{words.replace('-', '_')}_{kind.__name__}"     # argparse names the type in errors
    return parse


positive_int_arg = _argument_type(int, 1, True, "positive")
non_negative_int_arg = _argument_type(int, 0, True, "non-negative")
positive_float_arg = _argument_type(float, 0.0, False, "positive")
non_negative_float_arg = _argument_type(float, 0.0, True, "non-negative")


# ----------------------------------------------------------------------------------------------
# the SSD scan's arguments (stage 11)
# ----------------------------------------------------------------------------------------------

class SSDSizes(NamedTuple):
    """What :func:`validate_ssd_args` found: unpacks as ``b, l, h, p, g, n``."""
    batch: int
    length: int
    heads: int
    head_dim: int
    groups: int
    n: int


def check_step_limit(name: str, limit) -> tuple[float, float]:
    """A range (low, high) for the step size Δ, with 0 ≤ low ≤ high (high may be inf), as a tuple of floats."""
    if (not isinstance(limit, (tuple, list)) or len(limit) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in limit)
            or not 0 <= limit[0] <= limit[1]):
        raise ValueError(f"{name} must be a pair (low, high) with 0 <= low <= high, got {limit!r}")
    return float(limit[0]), float(limit[1])


def validate_ssd_args(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                      dt_limit=(0.0, math.inf), *, check_finite: bool = True) -> SSDSizes:
    """Check the SSD scan's arguments against ``mamba_ssm``'s ``mamba_chunk_scan_combined`` layout
    and return :class:`SSDSizes` ``(batch, length, heads, head_dim, groups, n)``.

    Shapes: x and z (b, l, h, p) with l ≥ 1; dt (b, l, h); A and dt_bias (h,); B and C
    (b, l, g, n) with g dividing h (head i reads group i // (h/g)); D (h,) or (h, p);
    initial_states (b, h, p, n). Nothing is broadcast. Types: every tensor real floating point,
    on x's device, float64 for all or none. chunk_size a positive int, dt_limit
    (:func:`check_step_limit`). With ``check_finite`` a NaN or infinite entry raises, naming the argument.
    """
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    check_required(tensors, ("x", "dt", "A", "B", "C"))
    for name, t in tensors.items():
        if t is not None:
            check_tensor(name, t)                                   # a real floating-point tensor
    check_same_device(tensors, "x")
    check_one_precision(tensors)
    positive_int("chunk_size", chunk_size)
    check_step_limit("dt_limit", dt_limit)

    if x.dim() != 4:
        raise _shape_error("x", "(batch, length, heads, head_dim)", x)
    b, l, h, p = x.shape
    if l == 0:
        raise ValueError("x has length 0: the scan needs at least one time step")
    check_shape("dt", dt, "(batch, length, heads)", (b, l, h))
    check_shape("A", A, "(heads,)", (h,))
    if B.dim() != 4 or B.shape[:2] != (b, l) or B.shape[2] == 0 or h % B.shape[2] != 0:
        raise ValueError(f"B must have shape (batch, length, groups, state) = ({b}, {l}, g, n) with g dividing "
                         f"heads = {h}, got shape {tuple(B.shape)}")
    g, n = B.shape[2:]
    check_shape("C", C, "(batch, length, groups, state) like B", (b, l, g, n))
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape (heads,) = ({h},) or (heads, head_dim) = ({h}, {p}), "
                         f"got shape {tuple(D.shape)}")
    check_shape("z", z, "(batch, length, heads, head_dim) like x", (b, l, h, p))
    check_shape("dt_bias", dt_bias, "(heads,)", (h,))
    check_shape("initial_states", initial_states, "(batch, heads, head_dim, state)", (b, h, p, n))
    if check_finite:
        for name, t in tensors.items():
            if t is not None:
                require_finite(name, t)
    return SSDSizes(b, l, h, p, g, n)
