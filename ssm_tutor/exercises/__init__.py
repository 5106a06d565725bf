"""Self-checking exercises: one module per chapter (``ch01.py`` … ``ch08.py``).

A notebook exercise asks the learner to write a function; the cell after it calls
``check_exercise("02.1", their_function)``. The checker runs the learner's function
and the reference on the chapter's test cases and prints one line:

    Exercise 02.1 [PASS] zero-order hold for a scalar system: matches the reference on 4 cases
    Exercise 02.1 [FAIL] zero-order hold for a scalar system: case 2 (dt=0.5): output differs ...
    Exercise 02.1 [NOT ATTEMPTED] zero-order hold for a scalar system: the stub still raises NotImplementedError

The line's ``Exercise <id> [<STATUS>]`` prefix is what ``ssm-tutor check`` reads back.

Adding an exercise to a chapter::

    from ssm_tutor.exercises import exercise

    @exercise("02.1", "zero-order hold for a scalar system")
    def zoh_scalar_cases():
        # yields (description, args, kwargs, expected): expected from a reference nobody here wrote
        ...
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ssm_tutor.check import mismatch

__all__ = ["exercise", "check_exercise", "ExerciseResult", "EXERCISES", "compare", "load_chapter"]

PASS, FAIL, NOT_ATTEMPTED = "PASS", "FAIL", "NOT ATTEMPTED"


@dataclass
class Exercise:
    id: str
    title: str
    cases: Callable[[], Iterable[tuple]]          # -> (description, args, kwargs, expected)
    atol: float = 1e-6
    rtol: float = 1e-5
    compare: Callable[[Any, Any, float, float], str | None] | None = None  # None means ok, else a message


@dataclass
class ExerciseResult:
    id: str
    title: str
    status: str
    message: str
    details: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def __str__(self) -> str:
        return f"Exercise {self.id} [{self.status}] {self.title}: {self.message}"

    def _ipython_display_(self) -> None:
        """Show nothing as a cell's result: ``check_exercise`` has already printed the line."""


EXERCISES: dict[str, Exercise] = {}


def exercise(exercise_id: str, title: str, *, atol: float = 1e-6, rtol: float = 1e-5, compare=None):
    """Register a generator of test cases as the exercise ``exercise_id`` ("CC.N")."""

    def register(cases):
        EXERCISES[exercise_id] = Exercise(exercise_id, title, cases, atol, rtol, compare)
        return cases

    return register


def load_chapter(chapter: str) -> None:
    """Import ``ssm_tutor.exercises.chNN`` so its exercises are registered."""
    importlib.import_module(f"ssm_tutor.exercises.ch{chapter}")


def compare(expected, got, atol: float, rtol: float, where: str = "output") -> str | None:
    """Return None when ``got`` equals ``expected`` (same structure, same shapes, close values),
    else a message that names what differs: which output, which shape, by how much."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{where}: expected a tuple of {len(expected)} items, got {type(got).__name__}"
        if len(got) != len(expected):
            return f"{where}: expected {len(expected)} items, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            msg = compare(e, g, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(expected, (bool, int, str)):
        return None if got == expected else f"{where}: expected {expected!r}, got {got!r}"
    if got is None:
        return f"{where}: got None (did the function forget to return?)"
    return mismatch(expected, got, atol=atol, rtol=rtol, what=where)


def check_exercise(exercise_id: str, answer: Callable, *, verbose: bool = True) -> ExerciseResult:
    """Run the learner's ``answer`` on every case of exercise ``exercise_id`` and report.

    Prints (and returns) PASS when every case matches the reference, FAIL with the first
    case that differs and why, or NOT ATTEMPTED while the stub raises NotImplementedError.
    A wrong or unfinished answer never raises, so a notebook with unfinished exercises still
    runs to the end. It raises KeyError for an unknown id, and, under nbgrader (which sets
    NBGRADER_EXECUTION and scores a grade cell by whether it raises), AssertionError unless PASS.
    """
    chapter = exercise_id.split(".")[0]
    if exercise_id not in EXERCISES:
        try:
            load_chapter(chapter)
        except ModuleNotFoundError as err:
            if err.name != f"ssm_tutor.exercises.ch{chapter}":
                raise                      # the chapter exists but needs a missing package: say that
            raise KeyError(f"no exercise {exercise_id!r}: there is no chapter {chapter!r} "
                           f"(expected an id like '02.1')") from None
    if exercise_id not in EXERCISES:
        raise KeyError(f"no exercise {exercise_id!r}; chapter {chapter} defines "
                       f"{sorted(k for k in EXERCISES if k.startswith(chapter + '.'))}")
    ex = EXERCISES[exercise_id]
    n = 0
    result = None
    for description, args, kwargs, expected in ex.cases():
        n += 1
        try:
            got = answer(*args, **kwargs)
        except NotImplementedError:
            result = ExerciseResult(ex.id, ex.title, NOT_ATTEMPTED,
                                    "the stub still raises NotImplementedError; replace it with your code")
            break
        except Exception as err:  # the learner's code crashed: say where
            tb = traceback.format_exception_only(type(err), err)[-1].strip()
            result = ExerciseResult(ex.id, ex.title, FAIL, f"case {n} ({description}) raised {tb}")
            break
        cmp = ex.compare or compare
        msg = cmp(expected, got, ex.atol, ex.rtol)
        if msg:
            result = ExerciseResult(ex.id, ex.title, FAIL, f"case {n} ({description}): {msg}")
            break
    if n == 0:
        raise RuntimeError(f"exercise {ex.id} has no test cases: its generator yielded nothing")
    if result is None:
        result = ExerciseResult(ex.id, ex.title, PASS, f"matches the reference on {n} cases")
    if verbose:
        print(result)
    if os.environ.get("NBGRADER_EXECUTION") and not result.passed:
        # nbgrader (autograde / validate) scores a grade cell by whether it raises
        raise AssertionError(str(result))
    return result
