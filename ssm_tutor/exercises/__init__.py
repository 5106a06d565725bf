"""Self-checking exercises: one module per chapter (``ch01.py`` … ``ch08.py``).

A notebook exercise asks the learner to write a function; the cell after it calls
``check_exercise("02.1", their_function)``. The checker runs the learner's function
and the reference on the chapter's test cases and prints one line:

    Exercise 02.1 [PASS] zero-order hold for a scalar system: matches the reference on 4 cases
    Exercise 02.1 [FAIL] zero-order hold for a scalar system: case 2 (dt=0.5): output differs ...
    Exercise 02.1 [NOT ATTEMPTED] zero-order hold for a scalar system: the stub still raises NotImplementedError

The printed line is for the learner. ``ssm-tutor check`` does not read it back (a cell can
print anything): it starts the kernel with ``SSM_TUTOR_RESULTS`` naming a private file, and
``check_exercise`` appends one JSON record per result to that file, which the command then
reads cell by cell (see ``ssm_tutor.cli`` and the instructor guide). Each check also has a time
limit (``TIME_LIMIT`` seconds for all its cases, or ``SSM_TUTOR_TIME_LIMIT``): an answer that never
returns is reported as a FAIL instead of hanging the notebook.

Adding an exercise to a chapter::

    from ssm_tutor.exercises import exercise

    @exercise("02.1", "zero-order hold for a scalar system")
    def zoh_scalar_cases():
        # yields (description, args, kwargs, expected): expected from a reference nobody here wrote
        ...
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from ssm_tutor.check import mismatch

__all__ = ["exercise", "check_exercise", "ExerciseResult", "EXERCISES", "compare", "load_chapter",
           "TIME_LIMIT", "RESULTS_ENV", "TIME_LIMIT_ENV"]

PASS, FAIL, NOT_ATTEMPTED = "PASS", "FAIL", "NOT ATTEMPTED"

#: seconds one ``check_exercise`` call may take, all cases together (the slowest course exercise
#: takes about 3 s on a 2-core CPU)
TIME_LIMIT = 60.0
#: environment variables set by ``ssm-tutor check`` in the kernel it starts
RESULTS_ENV = "SSM_TUTOR_RESULTS"        # file that receives one JSON record per result
TIME_LIMIT_ENV = "SSM_TUTOR_TIME_LIMIT"  # overrides TIME_LIMIT
# read once, at import (before the learner's code runs), and taken out of os.environ so that a
# learner's code does not come across it; this keeps printed text away from the results, it is
# not a sandbox (see book/instructors.md)
_RESULTS_FILE = os.environ.pop(RESULTS_ENV, None)


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


def _origin(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def exercise(exercise_id: str, title: str, *, atol: float = 1e-6, rtol: float = 1e-5, compare=None):
    """Register a generator of test cases as the exercise ``exercise_id`` ("CC.N").

    An id belongs to one generator: registering a *different* function under an id already taken
    raises ValueError naming both (two exercises with one id would silently check the wrong
    thing). The same function registered again (a notebook cell run twice, a reloaded chapter)
    replaces its earlier self.
    """

    def register(cases):
        old = EXERCISES.get(exercise_id)
        if old is not None and _origin(old.cases) != _origin(cases):
            raise ValueError(f"exercise id {exercise_id!r} is already registered by {_origin(old.cases)} "
                             f"({old.title!r}); {_origin(cases)} ({title!r}) needs another id")
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


class ExerciseTimeout(BaseException):
    """Raised inside a check that ran past its time limit. A BaseException, like
    KeyboardInterrupt, so that an ``except Exception`` in the learner's code does not swallow it."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise ExerciseTimeout in the main thread after ``seconds`` (SIGALRM; a no-op where there is
    none, i.e. on Windows or outside the main thread). A long call into C (one huge matrix
    product) is interrupted when it returns to Python. An outer timer is restored afterwards."""
    if seconds is None or not hasattr(signal, "setitimer") \
            or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise ExerciseTimeout()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:  # someone else's timer was running: give it back what is left of it
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _default_time_limit() -> float:
    text = os.environ.get(TIME_LIMIT_ENV)
    if text is None:
        return TIME_LIMIT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIME_LIMIT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def _record(result: "ExerciseResult") -> None:
    """Append the result to the file ``ssm-tutor check`` reads (when it started this kernel)."""
    if _RESULTS_FILE is None:
        return
    with open(_RESULTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(asdict(result)) + "\n")


def check_exercise(exercise_id: str, answer: Callable, *, verbose: bool = True,
                   time_limit: float | None = None) -> ExerciseResult:
    """Run the learner's ``answer`` on every case of exercise ``exercise_id`` and report.

    Prints (and returns) PASS when every case matches the reference, FAIL with the first
    case that differs and why, or NOT ATTEMPTED while the stub raises NotImplementedError.
    A wrong or unfinished answer never raises, so a notebook with unfinished exercises still
    runs to the end; an answer still running after ``time_limit`` seconds (all cases together;
    default ``TIME_LIMIT``, or the ``SSM_TUTOR_TIME_LIMIT`` environment variable) is stopped and
    FAILs. It raises KeyError for an unknown id, and, under nbgrader (which sets
    NBGRADER_EXECUTION and scores a grade cell by whether it raises), AssertionError unless PASS.
    Under ``ssm-tutor check`` the result is also written to the command's private results file.
    """
    if time_limit is None:
        time_limit = _default_time_limit()
    elif not (isinstance(time_limit, (int, float)) and not isinstance(time_limit, bool)
              and math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
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
    where = "preparing case 1"                  # what was running if the time runs out
    try:
        with _time_limit(time_limit):
            for description, args, kwargs, expected in ex.cases():
                n += 1
                where = f"case {n} ({description})"
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
                where = f"preparing case {n + 1}"
    except ExerciseTimeout:
        result = ExerciseResult(ex.id, ex.title, FAIL,
                                f"{where} did not finish within the time limit of {time_limit:g} s "
                                f"(all cases together); does a loop in your code never end?")
    if n == 0 and result is None:
        raise RuntimeError(f"exercise {ex.id} has no test cases: its generator yielded nothing")
    if result is None:
        result = ExerciseResult(ex.id, ex.title, PASS, f"matches the reference on {n} cases")
    _record(result)
    if verbose:
        print(result)
    if os.environ.get("NBGRADER_EXECUTION") and not result.passed:
        # nbgrader (autograde / validate) scores a grade cell by whether it raises
        raise AssertionError(str(result))
    return result
