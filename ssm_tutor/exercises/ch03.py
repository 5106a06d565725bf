"""Exercises of chapter 3 (notebooks/03_convolution_view.ipynb): the convolution view.

Expected answers come from ``scipy.signal.dimpulse`` and ``numpy.convolve``.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.ch02 import random_zoh_system


@exercise("03.1", "the SSM convolution kernel", atol=1e-10, rtol=1e-8)
def kernel_cases():
    rng = np.random.default_rng(31)
    for n, L in [(1, 8), (3, 30), (5, 64)]:
        Ad, Bd = random_zoh_system(rng, n)
        C = rng.standard_normal((1, n))
        _, (h,) = scipy.signal.dimpulse((Ad, Bd, C, np.zeros((1, 1)), 0.1), n=L + 2)  # h[l+1] = C Ā^l B̄
        yield f"n={n}, L={L}", (torch.tensor(Ad), torch.tensor(Bd), torch.tensor(C), L), {}, \
            torch.tensor(h[1:L + 1, 0].copy())


@exercise("03.2", "causal convolution with the FFT", atol=1e-9, rtol=1e-8)
def fft_conv_cases():
    rng = np.random.default_rng(32)
    for L in [1, 7, 64, 100]:
        u, K = rng.standard_normal(L), rng.standard_normal(L)
        yield f"L={L}", (torch.tensor(u), torch.tensor(K)), {}, torch.tensor(np.convolve(u, K)[:L])
