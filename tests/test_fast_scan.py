"""The fast layer's fused CPU scan (ssm_tutor.fast.scan) held to the teaching layer: stage 4's
``selective_scan_ref`` and stage 5's ``linear_scan`` methods, values and gradients in float64,
for every option, layout, chunk size and thread count. Never the other way round."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from ssm_tutor.fast import scan as fast_scan
from ssm_tutor.fast import threads
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


@pytest.mark.parametrize("use_exp2", [True, False])
def test_fused_scan_with_exp_or_exp2_matches_the_reference(monkeypatch, use_exp2):
    """Both exponentials (the choice follows PyTorch's vector path, see fast.scan.USE_EXP2)."""
    monkeypatch.setattr(fast_scan, "USE_EXP2", use_exp2)
    opt = dict(OPTIONS["all, grouped B/C"], last=True)
    assert_scans_agree(partial(fused_selective_scan, chunk_size=8), selective_scan_ref,
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


# ---------------------------------------------------------------------------------------------
# the helper thread (ssm_tutor.fast.threads): same numbers, same autograd modes, nothing left running
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def with_helper(monkeypatch):
    """Use the helper thread even for the small test states (and two intra-op threads to allow it)."""
    monkeypatch.setattr(threads, "MIN_STATES_FOR_HELPER", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("option", ["D+z", "all, grouped B/C"])
@pytest.mark.parametrize("b", [1, 3])
def test_helper_thread_gives_the_same_values_and_gradients(with_helper, option, b):
    opt = dict(OPTIONS[option], last=True)
    x = scan_inputs(b=b, groups=opt["groups"], l=37)
    assert threads.scan_workers(b * 4 * 3).helper
    assert_scans_agree(partial(fused_selective_scan, chunk_size=4), selective_scan_ref, x, opt,
                       ["u", "delta", "A", "B", "C"] + list(opt["keep"]))
    assert torch.get_num_threads() == 2                          # the caller's setting is back


def test_helper_thread_under_inference_mode_and_no_grad(with_helper):
    x = scan_inputs(l=30, dtype=torch.float32)
    expected = selective_scan_ref(**x, delta_softplus=True)
    with torch.inference_mode():
        torch.testing.assert_close(fused_selective_scan(**x, delta_softplus=True, chunk_size=3), expected)
    with torch.no_grad():
        torch.testing.assert_close(fused_selective_scan(**x, delta_softplus=True, chunk_size=3), expected)


def test_helper_error_reaches_the_caller_and_nothing_keeps_running(with_helper):
    done = []

    def produce(i, slot):
        if i == 4:
            raise RuntimeError("boom in chunk 4")
        return i

    with pytest.raises(RuntimeError, match="boom in chunk 4"):
        with threads.scan_workers(10**6) as workers:
            workers.run(produce, lambda i, item: done.append((i, item)), 10)
    assert done == [(i, i) for i in range(4)]                    # in order, each item its own
    assert torch.get_num_threads() == 2


def test_workers_visit_every_item_in_order_with_slots_never_shared_in_flight(with_helper):
    seen = []
    with threads.scan_workers(10**6, depth=3) as workers:
        assert torch.get_num_threads() == 1                       # no OpenMP team inside the scan
        workers.run(lambda i, slot: (i, slot), lambda i, item: seen.append(item), 11)
    assert seen == [(i, i % 3) for i in range(11)]
    with threads.scan_workers(10**6) as workers:                  # one item: no helper needed
        workers.run(lambda i, slot: (i, slot), lambda i, item: seen.append(item), 1)
    assert seen[-1] == (0, 0)


def test_no_helper_when_torch_is_told_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not threads.scan_workers(10**6).helper
    finally:
        torch.set_num_threads(before)
