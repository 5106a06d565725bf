"""The benchmarks' ``--busy`` option: a competing process really runs for the measurement and is gone after.

No timings are asserted (they belong to the benchmarks' printouts); what is checked is that the
option starts a process that computes, reports its CPU time, stops it, and that the benchmarks
still compare outputs and print their ratios with it.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from busy import competitor  # noqa: E402


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def started(monkeypatch):
    """The processes ``competitor`` starts, recorded."""
    import subprocess as sp
    procs, real_popen = [], sp.Popen

    def recording_popen(*args, **kwargs):
        procs.append(real_popen(*args, **kwargs))
        return procs[-1]

    monkeypatch.setattr(sp, "Popen", recording_popen)
    return procs


def test_competitor_computes_during_the_block_and_is_stopped_after(started):
    with competitor(1) as report:
        assert len(started) == 1 and started[0].poll() is None     # running inside the block
        assert report() == "competing process still running"
        time.sleep(0.5)
    assert not _alive(started[0].pid)                              # stopped and reaped
    text = report()
    assert text.startswith("competing process: matrix products on 1 threads"), text
    cpu = float(text.split(", ")[1].split(" CPU-seconds")[0])
    assert cpu > 0.0, text                                         # it really computed


def test_competitor_that_dies_is_reported_not_hidden(started):
    with competitor(1) as report:
        started[0].kill()                                          # as if it crashed mid-measurement
        started[0].wait()
    assert "EXITED early" in report(), report()


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})


def test_bench_model_busy_at_a_toy_size():
    result = _run("bench_model.py", "--hidden", "32", "--layers", "2", "--vocab", "50", "--length", "40",
                  "--new-tokens", "6", "--reps", "1", "--threads", "1", "--busy", "--busy-threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISMATCH" not in result.stdout
    assert "competing process: matrix products on 1 threads" in result.stdout, result.stdout
    assert any(line.startswith("RATIOS (busy) ") for line in result.stdout.splitlines()), result.stdout


def test_bench_scan_busy_at_a_short_length():
    result = _run("bench_scan.py", "--length", "64", "--repeats", "1", "--threads", "1", "--no-memory",
                  "--busy", "--busy-threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outputs agree" in result.stdout
    assert "competing process: matrix products on 1 threads" in result.stdout, result.stdout
    assert "speed-up of ssm_tutor over transformers (busy)" in result.stdout, result.stdout
