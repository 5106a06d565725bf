"""Stage 6: the hardware-aware selective scan in Triton (installed as ``ssm_tutor.kernels``).

Notebook: ``notebooks/06_triton_kernel.ipynb``.

* :func:`selective_scan_triton` — the fused forward kernel and the recomputing backward kernel,
  as a ``torch.autograd.Function`` with the standard selective-scan signature.
* :func:`launch_config` — tile sizes and grid (``kernels/config.py``);
* :mod:`ssm_tutor.kernels.traffic` — bytes moved to and from GPU memory by each implementation,
  and the time that implies at a GPU's bandwidth;
* :mod:`ssm_tutor.kernels.roofline` — what else bounds the time (exponentials, warp shuffles,
  kernel launches), with the GPU figures of :mod:`ssm_tutor.kernels.gpus`.

Importing this package is cheap: Triton is imported only when a kernel is first asked for.
On a machine without a CUDA GPU set ``TRITON_INTERPRET=1`` *before* that first use (before
``from ssm_tutor.kernels import selective_scan_triton``), so the kernels are defined for the
Triton interpreter; otherwise calling them on CPU tensors raises an error saying so.
"""

from __future__ import annotations

import importlib

__all__ = ["selective_scan_triton", "launch_config", "traffic", "roofline", "gpus"]


def __getattr__(name):
    if name == "launch_config":
        return importlib.import_module(__name__ + ".config").launch_config
    if name in ("selective_scan_triton", "INTERPRETED"):
        try:
            selective_scan = importlib.import_module(__name__ + ".selective_scan")
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"ssm_tutor.kernels.{name} needs Triton (pip install 'ssm-tutor[triton]'): {err}"
            ) from err
        return getattr(selective_scan, name)
    if name in ("traffic", "roofline", "gpus"):
        return importlib.import_module(__name__ + "." + name)
    raise AttributeError(f"module 'ssm_tutor.kernels' has no attribute {name!r}")
