"""The GPU benchmark script's CPU-side logic: argument handling, the no-GPU exit, the interpreter
dry run, and compiling the kernels for a CUDA architecture without a GPU."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_triton_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_triton_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, env_drop=(), timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_defaults_are_the_issue_shapes_and_bad_arguments_are_refused(capsys):
    bench = load_script()
    args = bench.parse_args([])
    assert (args.batch, args.dim, args.dstate) == (8, 2048, 16)
    assert args.lengths == [512, 2048, 8192] and args.dtypes == ["bf16", "fp32"]
    for bad in (["--chunk", "12"], ["--block-d", "0"], ["--lengths", "0"], ["--dtypes", "int8"], ["--reps", "0"],
                ["--n-split", "0"], ["--n-split", "17"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    err = capsys.readouterr().err
    assert "must be a power of two" in err and "--n-split must be between 1 and --dstate = 16" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")
def test_without_cuda_it_exits_cleanly_with_a_message():
    out = run()
    assert out.returncode == 0, out.stderr
    assert "skipped: no CUDA device" in out.stdout and "--cpu-check" in out.stdout


def test_cpu_check_runs_every_path_under_the_interpreter():
    out = run("--cpu-check", "--lengths", "512", "--dtypes", "fp32")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "matches selective_scan_ref, values and gradients" in out.stdout
    assert "roofline model" in out.stdout and "model >= ms (bound)" in out.stdout
    assert "b=8 d=2048 L=  512 n=16 fp32" in out.stdout           # the traffic figures of the shape asked for
    assert "forward+backward" in out.stdout and "triton" in out.stdout


def test_device_check_passes_the_kernel_and_catches_a_wrong_one(monkeypatch):
    """The check that runs on the GPU before any timing, exercised on the CPU (interpreter)."""
    bench = load_script()
    assert bench.check_on_device("cpu", shape=(1, 4, 9, 4)) == []
    import ssm_tutor.kernels.selective_scan as wrapper
    real = wrapper.selective_scan_triton
    monkeypatch.setattr(wrapper, "selective_scan_triton",
                        lambda *a, n_split=None, **kw: real(*a, n_split=n_split, **kw) * (1.1 if n_split == 2 else 1))
    failures = bench.check_on_device("cpu", shape=(1, 4, 9, 4))
    assert failures and all("n_split=2" in f for f in failures) and failures[0].startswith("y (n_split=2)")


def test_kernels_compile_for_an_h100_without_a_gpu():
    pytest.importorskip("triton.backends.nvidia")
    out = run("--compile-check", "90", "--dtypes", "bf16", env_drop=("TRITON_INTERPRET",))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert out.stdout.count("compiled;") == 2, out.stdout
