"""The SSD benchmark runs end to end at a toy size and checks the outputs it times.

The timings are not asserted (they belong to the benchmark's printout); what is checked is that the
script still runs, compares each pair of outputs and reports every ratio, so it cannot rot
between the sessions that measure with it.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_ssd.py"


def test_bench_ssd_runs_at_a_toy_size_and_outputs_agree():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.endswith(", OK)") for line in lines) == 5, result.stdout   # scan, backbone, head, forward, vs Mamba-1
    assert "MISMATCH" not in result.stdout
    ratios = [line for line in lines if line.startswith("RATIOS ")]
    assert len(ratios) == 1 and all(k in ratios[0] for k in ("scan", "backbone", "forward", "ssd_vs_mamba1")), result.stdout
