"""The fast layer's fused CPU scan (ssm_tutor.fast.scan) held to the teaching layer: stage 4's
``selective_scan_ref`` and stage 5's ``linear_scan`` methods, values and gradients in float64,
for every option, layout, chunk size and thread count. Never the other way round."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from ssm_tutor.fast.scan import fused_selective_scan
from ssm_tutor.scan import LINEAR_SCAN_METHODS, selective_scan
from ssm_tutor.selective import selective_scan_ref

from scan_cases import OPTIONS, assert_scans_agree, call_scan, scan_inputs


@pytest.mark.parametrize("teaching", ("reference",) + LINEAR_SCAN_METHODS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_fused_equals_every_teaching_scan_values_and_gradients(teaching, option):
    opt = dict(OPTIONS[option], last=True)
    assert_scans_agree(partial(fused_selective_scan, chunk_size=8), partial(selective_scan, method=teaching),
                       scan_inputs(groups=opt["groups"], l=21), opt, ["u", "delta", "A", "B", "C"] + list(opt["keep"]))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 19, 100])
def test_fused_scan_any_chunk_size(chunk_size):
    opt = OPTIONS["all, grouped B/C"]
    x = scan_inputs(groups=2)
    torch.testing.assert_close(call_scan(fused_selective_scan, x, opt, chunk_size=chunk_size),
                               call_scan(selective_scan_ref, x, opt), atol=1e-11, rtol=1e-11)


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """The same values as t (b, d, l), stored time-major: a (b, d, l) view of a (b, l, d) tensor."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("option", ["D+z", "all, grouped B/C"])
@pytest.mark.parametrize("chunk_size", [4, 64])
@pytest.mark.parametrize("b", [1, 2])
def test_fused_scan_time_major_inputs(option, chunk_size, b):
    """The fast mixer hands the scan (b, d, l) views of time-major memory; the fused scan then writes
    y in place chunk by chunk (batch 1). Values, layout and gradients must not depend on the layout."""
    opt = dict(OPTIONS[option], last=True)
    x = scan_inputs(b=b, groups=opt["groups"], l=23)
    assert not _time_major(x["u"]).is_contiguous() and _time_major(x["u"]).transpose(1, 2).is_contiguous()
    tm = {k: _time_major(v) if k in ("u", "delta", "z") else v for k, v in x.items()}
    names = ["u", "delta", "A", "B", "C"] + list(opt["keep"])
    y, _ = assert_scans_agree(partial(fused_selective_scan, chunk_size=chunk_size), selective_scan_ref, tm, opt, names,
                              x_reference=x)
    assert y.transpose(1, 2).is_contiguous()                      # the output keeps the input's layout


def test_fused_scan_passes_gradcheck():
    x = scan_inputs(b=1, d=2, l=7, n=2)
    args = [x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    assert torch.autograd.gradcheck(
        lambda u, dl, A, B, C, D, z, db: fused_selective_scan(u, dl, A, B, C, D, z, db, delta_softplus=True,
                                                              return_last_state=True, chunk_size=3),
        args)


def test_fused_scan_time_invariant_B_C_gradients():
    x = scan_inputs(b=2, d=4, l=9, n=3)
    g = torch.Generator().manual_seed(5)
    x["B"], x["C"] = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert_scans_agree(partial(fused_selective_scan, chunk_size=4), selective_scan_ref, x,
                       dict(OPTIONS["all, grouped B/C"], groups=0), list(x))


def test_complex_A_is_refused_by_the_fused_scan_naming_the_methods_that_take_it():
    from scan_cases import complex_inputs
    with pytest.raises(TypeError, match=r"A must be real.*selective_scan_ref"):
        fused_selective_scan(**complex_inputs())
