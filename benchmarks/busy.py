"""A competing PyTorch program for the benchmarks' ``--busy`` option.

``with competitor(threads) as report:`` starts a second Python process that multiplies 1024 × 1024
float32 matrices in a loop on ``threads`` intra-op threads (by default as many as torch would use,
like a second notebook kernel left training or a test suite running beside the benchmark), waits
until it computes, and stops it on exit. ``report()`` then says how much CPU time it used, so a
printout shows that the machine really was loaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

_LOOP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(1024, 1024)
a @ a
print("ready", time.process_time(), flush=True)
while True:
    a @ a
"""


@contextlib.contextmanager
def competitor(threads: int | None = None):
    """Run the matrix-multiplying process for the duration of the block (see the module docstring)."""
    import torch

    threads = threads or torch.get_num_threads()
    proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(threads)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    usage, start = {}, None
    try:
        ready = proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError("the competing process did not start")
        startup_cpu = float(ready[1])            # CPU time of its imports, not part of the load
        start = time.perf_counter()
        yield lambda: _describe(threads, usage)
    finally:
        rusage = None
        if proc.poll() is None:                  # still running, as it should be: stop it, read its CPU time
            proc.send_signal(signal.SIGTERM)
            _, _, rusage = os.wait4(proc.pid, 0)
            proc.returncode = -signal.SIGTERM    # reaped here; keeps Popen from waiting again
        else:
            usage["exited"] = proc.returncode    # it died during the measurement: the load was not there
        proc.stdout.close()
        if start is not None and rusage is not None:
            usage.update(cpu=rusage.ru_utime + rusage.ru_stime - startup_cpu, wall=time.perf_counter() - start)


def _describe(threads: int, usage: dict) -> str:
    if "exited" in usage:
        return f"competing process EXITED early (code {usage['exited']}): the measurement was not under load"
    if not usage:
        return "competing process still running"
    return (f"competing process: matrix products on {threads} threads, {usage['cpu']:.1f} CPU-seconds in "
            f"{usage['wall']:.1f} s ({usage['cpu'] / max(usage['wall'], 1e-9):.2f} cores on average)")
