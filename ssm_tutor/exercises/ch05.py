"""Chapter 5 exercises: the parallel scan (notebook ``05_parallel_scan.ipynb``).

Expected answers come from ``ssm_tutor.scan``, whose tests compare it with a plain Python loop,
``torch.cumsum``/``torch.cumprod`` and the reference selective scan.
"""

from __future__ import annotations

import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.scan import combine, linear_scan


def _ab(shape, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g, dtype=torch.float64) * 1.8 - 0.9   # decays in (-0.9, 0.9)
    b = torch.randn(*shape, generator=g, dtype=torch.float64)
    return a, b


@exercise("05.1", "the associative combine operator (a, b) ∘ (a', b')", atol=1e-12, rtol=1e-12)
def combine_cases():
    yield "scalars", (torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.25), torch.tensor(-2.0)), {}, \
        combine(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.25), torch.tensor(-2.0))
    for seed, shape in enumerate([(5,), (3, 4)]):
        a1, b1 = _ab(shape, seed)
        a2, b2 = _ab(shape, seed + 10)
        yield f"tensors of shape {shape}", (a1, b1, a2, b2), {}, combine(a1, b1, a2, b2)
    a1, b1 = _ab((4,), 20)
    a2, b2 = _ab((4,), 21)
    yield "the earlier step comes first (swapped order gives a different answer)", (a2, b2, a1, b1), {}, \
        combine(a2, b2, a1, b1)


@exercise("05.2", "the Hillis-Steele scan", atol=1e-10, rtol=1e-10)
def hillis_steele_cases():
    for seed, shape in enumerate([(1,), (8,), (2, 13), (3, 2, 33)]):
        a, b = _ab(shape, seed)
        yield f"a, b of shape {shape}", (a, b), {}, linear_scan(a, b, "sequential")


@exercise("05.3", "the chunked scan", atol=1e-10, rtol=1e-10)
def chunked_cases():
    for seed, (shape, T) in enumerate([((8,), 4), ((2, 10), 3), ((3, 17), 5), ((4,), 8)]):
        a, b = _ab(shape, seed + 100)
        yield f"a, b of shape {shape}, chunk size {T}", (a, b, T), {}, linear_scan(a, b, "sequential")
