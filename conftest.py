"""Shared pytest set-up for `pytest --nbval` (tests/ and notebooks/).

The Triton interpreter must be switched on before any `@triton.jit` function is defined,
so it is set here, at import time, when there is no CUDA GPU. Notebook kernels started by
nbval inherit this environment.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing reaches the network at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # torch missing: let the tests report it
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
