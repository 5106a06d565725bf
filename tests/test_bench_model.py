"""The model benchmark runs end to end at a toy size and checks the outputs it times.

The timings themselves are not asserted (they belong to the benchmark's printout, not to a test);
what is checked is that the script still runs, compares the two models' outputs and reports every
ratio, so it cannot rot between the sessions that measure with it.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_model.py"


def test_bench_model_runs_at_a_toy_size_and_outputs_agree():
    result = subprocess.run([sys.executable, str(SCRIPT), "--hidden", "32", "--layers", "2", "--vocab", "50",
                             "--length", "40", "--new-tokens", "6", "--reps", "1", "--threads", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum("OK" in line for line in lines) == 5, result.stdout       # backbone, 2 heads, forward, generation
    assert "MISMATCH" not in result.stdout
    ratios = [line for line in lines if line.startswith("RATIOS ")]
    assert len(ratios) == 1 and all(k in ratios[0] for k in ("backbone", "forward", "generation")), result.stdout
