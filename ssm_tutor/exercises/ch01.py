"""Exercises of chapter 1 (notebooks/01_continuous_ssm.ipynb): the continuous SSM.

Expected answers come from SciPy (``scipy.linalg.expm``, ``scipy.linalg.eigvals``) and, for
the mass–spring–damper, from Newton's law written out as matrices.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ssm_tutor.exercises import exercise


@exercise("01.1", "the mass–spring–damper as a state space model", atol=1e-12, rtol=1e-12)
def msd_cases():
    for m, k, c in [(1.0, 1.0, 0.2), (2.0, 8.0, 1.0), (0.5, 3.0, 0.0)]:
        # Newton: m x'' = -k x - c x' + u, state (position, velocity), output the position
        A = torch.tensor([[0.0, 1.0], [-k / m, -c / m]], dtype=torch.float64)
        B = torch.tensor([[0.0], [1.0 / m]], dtype=torch.float64)
        C = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        yield f"m={m}, k={k}, c={c}", (m, k, c), {}, (A, B, C)


@exercise("01.2", "impulse response from the matrix exponential", atol=1e-8, rtol=1e-7)
def impulse_cases():
    rng = np.random.default_rng(12)
    for n, p, q in [(1, 1, 1), (2, 1, 1), (4, 2, 3)]:
        A = rng.standard_normal((n, n)) - 1.5 * np.eye(n)
        B, C = rng.standard_normal((n, p)), rng.standard_normal((q, n))
        t = np.linspace(0.0, 3.0, 16)
        expected = np.stack([C @ scipy.linalg.expm(A * tk) @ B for tk in t])   # (L, q, p)
        args = tuple(torch.tensor(x) for x in (A, B, C, t))
        yield f"n={n}, p={p}, q={q}", args, {}, torch.tensor(expected)


@exercise("01.3", "is the system stable?")
def stability_cases():
    cases = {
        "two decaying modes": [[-1.0, 0.0], [0.0, -0.1]],
        "a growing mode": [[-1.0, 0.0], [0.0, 0.1]],
        "a decaying oscillation": [[-0.2, 3.0], [-3.0, -0.2]],
        "an undamped oscillation (Re λ = 0)": [[0.0, 3.0], [-3.0, 0.0]],
        "a non-normal stable matrix": [[-1.0, 50.0], [0.0, -2.0]],
        "negative diagonal, yet a growing mode": [[-1.0, 3.0], [3.0, -1.0]],
        "a 3-state system with one slow decaying mode": [[-0.5, 2.0, 0.0], [-2.0, -0.5, 1.0], [0.0, 0.0, -0.05]],
    }
    for name, A in cases.items():
        expected = bool(np.all(scipy.linalg.eigvals(np.array(A)).real < 0))
        yield name, (torch.tensor(A, dtype=torch.float64),), {}, expected
