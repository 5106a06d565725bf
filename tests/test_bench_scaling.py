"""The scaling benchmark runs end to end at toy sizes (``--quick``) and writes every figure the notebook
reads. Timings are not asserted; what is checked is what does not depend on the machine: the JSON's
layout, FLOP slopes, allocated cache sizes (constant for Mamba, growing in doublings for the KV cache),
the derived GPU figures, and that the long-context pass reads the shipped checkpoint."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scaling.py"


def test_bench_scaling_quick_runs_every_section(tmp_path):
    out = tmp_path / "scaling.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--reps", "1", "--steps", "2",
                             "--only", "forward", "generation", "throughput", "long-context", "--long-lengths", "96", "32",
                             "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("SLOPES", "CROSSOVER", "GENERATION", "THROUGHPUT", "GPU (DERIVED", "MILLION TOKENS"):
        assert any(s.startswith(line) for s in result.stdout.splitlines()), (line, result.stdout)
    r = json.loads(out.read_text())
    assert r["command"].startswith("python benchmarks/bench_scaling.py --quick")
    assert set(r["load_average"]) >= {"start", "after_forward", "after_long_context"}

    f = r["forward"]
    assert f["lengths"] == [32, 64, 128, 256] and len(f["mamba"]["seconds"]) == 4
    assert abs(f["fits"]["slope_flops_mamba"] - 1) < 1e-9               # every Mamba part is linear in L
    assert f["fits"]["slope_flops_transformer"] > 1                       # attention adds an L² part
    assert all(p > 0 for p in f["mamba"]["peak_bytes"] + f["transformer"]["peak_bytes"])
    assert f["naive_attention"]["lengths"] == [32, 64, 128]

    g = r["generation"]
    m, t = g["mamba"], g["transformer"]
    assert len(set(m["allocated_bytes"])) == 1 and m["allocated_bytes"] == m["shape_bytes"]   # constant state
    assert all(a >= s for a, s in zip(t["allocated_bytes"], t["shape_bytes"]))                  # room reserved
    at = dict(zip(g["contexts"], t["allocated_bytes"]))
    assert at[1] == at[256] and at[257] == 2 * at[256]                                         # the doubling

    tp = r["throughput"]
    assert tp["batches"] == [1, 2, 4] and len(tp["mamba"]["tokens_per_second"]) == 3
    gpu = tp["gpu_derived"]
    assert gpu["derived"] is True and gpu["transformer"]["max_batch"] < gpu["mamba"]["max_batch"]

    lc = r["long_context"]
    assert lc["lengths"] == [32, 96] and lc["num_examples"] == [2, 2] and lc["chunk"] == 40   # --long-lengths, sorted
    assert lc["tokens"] == [64, 192] and lc["correct"] == [round(2 * a) for a in lc["accuracy"]]
    assert all(lo <= a <= hi for a, (lo, hi) in zip(lc["accuracy"], lc["interval_95"]))
    assert lc["cache_bytes_per_sequence"] > 0 and len(lc["stepped_tokens_per_second"]) == 2
