"""Exercises of chapter 2 (notebooks/02_discretization.ipynb): discretization.

Expected answers come from ``scipy.signal.cont2discrete`` and ``scipy.signal.dlsim``.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from ssm_tutor.exercises import exercise


@exercise("02.1", "zero-order hold for a diagonal system", atol=1e-10, rtol=1e-8)
def zoh_diagonal_cases():
    rng = np.random.default_rng(21)
    for n, dt in [(1, 0.1), (4, 0.5), (8, 0.01), (3, 2.0)]:
        a = -rng.uniform(0.1, 5.0, n)
        b = rng.standard_normal(n)
        Ad, Bd, *_ = scipy.signal.cont2discrete((np.diag(a), np.diag(b), np.eye(n), np.zeros((n, n))), dt, method="zoh")
        yield f"n={n}, dt={dt}", (torch.tensor(a), torch.tensor(b), dt), {}, (torch.tensor(np.diag(Ad).copy()),
                                                                            torch.tensor(np.diag(Bd).copy()))


@exercise("02.2", "the bilinear transform", atol=1e-10, rtol=1e-8)
def bilinear_cases():
    rng = np.random.default_rng(22)
    for n, p, dt in [(1, 1, 0.1), (3, 1, 0.5), (5, 2, 0.05)]:
        A = rng.standard_normal((n, n)) - 2.0 * np.eye(n)
        B = rng.standard_normal((n, p))
        Ad, Bd, *_ = scipy.signal.cont2discrete((A, B, np.eye(n), np.zeros((n, p))), dt, method="bilinear")
        yield f"n={n}, p={p}, dt={dt}", (torch.tensor(A), torch.tensor(B), dt), {}, (torch.tensor(Ad), torch.tensor(Bd))


def random_zoh_system(rng, n: int, dt: float = 0.1):
    """A random single-input system (A shifted to be mostly stable), discretised by SciPy's ZOH:
    (Ā (n, n), B̄ (n, 1)) as NumPy arrays. Shared by the stage-2 and stage-3 checkers."""
    A = rng.standard_normal((n, n)) - 2.0 * np.eye(n)
    Ad, Bd, *_ = scipy.signal.cont2discrete((A, rng.standard_normal((n, 1)), np.eye(n), np.zeros((n, 1))),
                                            dt, method="zoh")
    return Ad, Bd


@exercise("02.3", "run the discrete recurrence", atol=1e-10, rtol=1e-8)
def recurrence_cases():
    rng = np.random.default_rng(23)
    for n, L in [(1, 5), (3, 20), (6, 50)]:
        Ad, Bd = random_zoh_system(rng, n)
        C, u = rng.standard_normal((1, n)), rng.standard_normal(L)
        # ours: x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k; dlsim's state is x_{k-1}
        _, y, _ = scipy.signal.dlsim((Ad, Bd, C @ Ad, C @ Bd, 0.1), u[:, None])
        yield f"n={n}, L={L}", (torch.tensor(Ad), torch.tensor(Bd), torch.tensor(C), torch.tensor(u)), {}, \
            torch.tensor(y[:, 0].copy())
