"""How the fused scan uses the cores: a helper thread that prepares chunks ahead, no thread barriers.

Why not PyTorch's own intra-op threads? They split each tensor operation over an OpenMP team,
and every split operation ends at a barrier that waits for the slowest thread. On an idle machine
that costs microseconds. When another program computes on the same cores (a second notebook
kernel multiplying matrices, a test suite), a thread of the team is often waiting for a core,
and each barrier then waits a scheduler time slice, milliseconds. The fused scan makes about 100
such splits per call. Measured on the shared 2-core machine (load average 14, b=1, d=1536, n=16,
L=2048): the scan took 4.1 s on two OpenMP threads against 1.3 s on one; the three chunk-wide
operations of one chunk 76 ms on two threads against 3.3 ms on one.

So the scan runs on one intra-op thread and, where a second core may help, splits the work by
*task* rather than by operation: a helper thread computes Ā = exp(ΔA) and B̄u for the next chunks
(``produce``) while the calling thread runs the recurrence of the current one (``consume``).
The two meet once per chunk, not once per operation, and wait for each other blocked in the
kernel (no spinning), so a thread that loses its core delays the other only when the helper's
lead of ``depth - 1`` chunks runs out; if the helper has not even started the chunk the caller
needs, the caller computes it itself. At worst the scan runs at one thread's speed.

PyTorch releases the GIL inside its operations, so the two Python threads really run at once;
the helper makes three operations per chunk and holds the GIL rarely.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["scan_workers", "ScanWorkers", "MIN_STATES_FOR_HELPER"]

#: states per time step (b·d·n) from which a helper thread pays: below it a chunk's three
#: operations take microseconds and handing them to another thread costs about as much.
MIN_STATES_FOR_HELPER = 8192

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    """The one helper thread, made on first use (and again in a forked child, which has none)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssm_tutor-scan")
            _pool_pid = os.getpid()
        return _pool


class ScanWorkers:
    """``with ScanWorkers(per_step) as workers:`` this thread runs on one intra-op thread (the old
    count is restored on exit) and ``workers.run(produce, consume, count)`` calls
    ``consume(i, produce(i, slot))`` for i = 0 … count − 1 in order, ``produce`` running up to
    ``depth − 1`` items ahead on the helper thread when there is one.

    ``slot`` (0 … depth − 1) names the buffer a ``produce`` call may write: no two items that can
    be in flight at once share one. A helper is used when torch may use two threads or more
    (``torch.get_num_threads()``, so ``torch.set_num_threads(1)`` turns it off) and the state has
    at least :data:`MIN_STATES_FOR_HELPER` entries per step."""

    def __init__(self, per_step: int, depth: int = 3):
        self.helper = torch.get_num_threads() >= 2 and per_step >= MIN_STATES_FOR_HELPER
        self.depth = depth if self.helper else 1

    def __enter__(self) -> ScanWorkers:
        self._threads = torch.get_num_threads()
        if self._threads != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc) -> None:
        if self._threads != 1:
            torch.set_num_threads(self._threads)

    def run(self, produce, consume, count: int) -> None:
        if not self.helper or count == 1:
            for i in range(count):
                consume(i, produce(i, 0))
            return
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def on_helper(i):                      # the caller's autograd modes, one intra-op thread
            if torch.get_num_threads() != 1:
                torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return produce(i, i % self.depth)

        pool = _helper_pool()
        ahead = {i: pool.submit(on_helper, i) for i in range(min(self.depth - 1, count))}
        try:
            for i in range(count):
                if i + self.depth - 1 < count:        # the slot of item i - 1, consumed already
                    ahead[i + self.depth - 1] = pool.submit(on_helper, i + self.depth - 1)
                future = ahead.pop(i)
                item = produce(i, i % self.depth) if future.cancel() else future.result()   # not started: do it here
                consume(i, item)
        finally:                                      # an error, or an interrupt: let nothing write on
            for future in ahead.values():
                future.cancel()
            for future in ahead.values():
                if not future.cancelled():
                    future.exception()                # waits for it to finish


def scan_workers(per_step: int, depth: int = 3) -> ScanWorkers:
    """:class:`ScanWorkers` for a scan whose state has ``per_step`` = b·d·n entries."""
    return ScanWorkers(per_step, depth)
