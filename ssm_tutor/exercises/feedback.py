"""Feedback that teaches: named outputs, plain numbers, and a hint for each typical mistake.

A chapter's case generator yields, as the ``expected`` item of a case, an :class:`Answer`, and the
exercise is registered with ``compare=compare_answer``::

    @exercise("02.1", "the largest stable Euler step", compare=compare_answer)
    def cases():
        yield "msd", (A,), {}, Answer(0.0625, names=("dt_max",),
                                      mistakes=[Mistake("only Re λ counted ...", 0.125)])

A wrong answer is then reported by the name of the output that differs (``Bd``, not ``output[1]``),
with plain numbers (``0.0625``, not ``np.float64(0.0625)``), and, when the learner's output is what a
known typical mistake produces, with that mistake's hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ssm_tutor.check import mismatch

__all__ = ["Answer", "Mistake", "compare_answer", "close"]


@dataclass(frozen=True)
class Mistake:
    """A typical mistake: its hint, and either the output it produces (compared with the same
    tolerance as the answer) or a predicate ``looks(got) -> bool`` that recognises it."""

    hint: str
    gives: Any = None
    looks: Callable[[Any], bool] | None = None

    def matches(self, got, names, atol: float, rtol: float) -> bool:
        try:
            if self.looks is not None:
                return bool(self.looks(got))
            return _differs(self.gives, got, names, atol, rtol) is None
        except Exception:  # a predicate that cannot read this output does not match it
            return False


@dataclass(frozen=True)
class Answer:
    """What a checker expects.

    value: the right output, a tensor / array / number / bool, or a tuple of them;
    names: one name per output (``("Ad", "Bd")``), or one name for a single output;
    mistakes: typical mistakes, tried in order, the first that matches gives its hint;
    hint: said when the output is wrong in a way no listed mistake explains;
    view: applied to the learner's output before comparing (e.g. "the eigenvalues of your A");
        it may raise ``ValueError`` with a message for an output it cannot read.
    diagnose: ``diagnose(value, got) -> hint or None``, tried after the listed mistakes, for a
        mistake whose hint depends on the output (e.g. "positions t >= 16 are right": a block boundary).
    """

    value: Any
    names: tuple[str, ...] = ("output",)
    mistakes: tuple[Mistake, ...] = field(default_factory=tuple)
    hint: str = ""
    view: Callable[[Any], Any] | None = None
    diagnose: Callable[[Any, Any], str | None] | None = None


def close(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """True when two numbers (or same-shape tensors/arrays) agree within ``atol + rtol·|b|``:
    for writing :class:`Mistake` predicates."""
    a, b = _as_array(a), _as_array(b)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def compare_answer(expected: Answer, got, atol: float, rtol: float) -> str | None:
    """None when ``got`` is right; otherwise which output differs and how, then a hint."""
    if not isinstance(expected, Answer):
        raise TypeError(f"compare_answer needs an Answer as the expected value, got {type(expected).__name__}")
    seen = got
    if expected.view is not None:
        try:
            seen = expected.view(got)
        except ValueError as err:
            return _with_hint(str(err), expected, got, atol, rtol, skip_values=True)
    problem = _differs(expected.value, seen, expected.names, atol, rtol)
    if problem is None:
        return None
    return _with_hint(problem, expected, got, atol, rtol)


# ----------------------------------------------------------------------------------------------

def _with_hint(problem: str, expected: Answer, got, atol, rtol, skip_values: bool = False) -> str:
    for mistake in expected.mistakes:
        if skip_values and mistake.looks is None:
            continue
        if mistake.matches(got, expected.names, atol, rtol):
            return f"{problem}. Hint: {mistake.hint}"
    if expected.diagnose is not None and not skip_values:
        try:
            hint = expected.diagnose(expected.value, got)
        except Exception:  # a diagnosis that cannot read this output says nothing
            hint = None
        if hint:
            return f"{problem}. Hint: {hint}"
    return f"{problem}. Hint: {expected.hint}" if expected.hint else problem


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.resolve_conj() if x.is_complex() else x
        return x.numpy().astype(np.complex128 if x.is_complex() else np.float64)
    return np.asarray(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)


def _number(x) -> float | complex | None:
    """A Python number from a number or a one-element 0-d tensor/array; None otherwise."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float, complex, np.number)):
        return x.item() if isinstance(x, np.number) else x
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 0:
        return x.item()
    return None


def _describe(x) -> str:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {type(x).__name__} of shape {tuple(x.shape)}"
    return type(x).__name__


def _differs(expected, got, names, atol: float, rtol: float) -> str | None:
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)):
            return f"expected a tuple {tuple(names)} of {len(expected)} items, got {_describe(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items {tuple(names)}, got {len(got)}"
        for name, e, g in zip(names, expected, got):
            problem = _differs(e, g, (name,), atol, rtol)
            if problem:
                return problem
        return None
    name = names[0]
    if got is None:
        return f"{name}: got None (did the function forget to return?)"
    if isinstance(expected, bool):
        value = bool(got) if isinstance(got, (bool, np.bool_)) or (
            isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.numel() == 1) else None
        if value is None:
            return f"{name}: expected the bool {expected}, got {_describe(got)}"
        return None if value == expected else f"{name}: expected {expected}, got {value}"
    if isinstance(expected, (int, float)):
        value = _number(got)
        if value is None or isinstance(value, complex):
            return f"{name}: expected a real number, got {_describe(got)}"
        if abs(value - expected) <= atol + rtol * abs(expected):
            return None
        return (f"{name}: expected {expected:.10g}, got {value:.10g} (off by {abs(value - expected):.3g}; "
                f"tolerance atol={atol:g}, rtol={rtol:g})")
    if isinstance(expected, torch.Tensor) and not isinstance(got, (torch.Tensor, np.ndarray, list)):
        return f"{name}: expected a tensor of shape {tuple(expected.shape)}, got {_describe(got)}"
    return mismatch(expected, got, atol=atol, rtol=rtol, what=name)
