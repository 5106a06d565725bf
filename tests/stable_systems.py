"""Random stable continuous-time systems, shared by the stage-2 and stage-3 tests."""

import math

import numpy as np


def random_stable_AB(n: int, p: int, seed: int):
    """A (n, n) with every eigenvalue's real part <= -0.2, and B (n, p), as float64 NumPy arrays."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / math.sqrt(n)
    A -= (np.max(np.linalg.eigvals(A).real) + 0.2) * np.eye(n)
    return A, rng.standard_normal((n, p))
