"""The shared argument checks (ssm_tutor.validate): each names the argument, what was expected
and what came. The scan-argument check is specified in tests/test_selective.py (through the
reference scan that calls it); here are its layouts that only the complex / time-invariant
options open."""

from dataclasses import dataclass

import pytest
import torch

from ssm_tutor import validate as V


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_positive_int_names_the_argument_and_the_value(value):
    with pytest.raises(ValueError, match=rf"^width must be a positive integer, got {value!r}$".replace("(", r"\(")
                       .replace(")", r"\)")):
        V.positive_int("width", value)


def test_positive_int_and_friends_accept_good_values():
    assert V.positive_int("n", 3) == 3
    assert V.non_negative_int("k", 0) == 0
    V.check_positive(a=1, b=2)
    with pytest.raises(ValueError, match="b must be a positive integer, got 0"):
        V.check_positive(a=1, b=0)
    with pytest.raises(ValueError, match="k must be a non-negative integer, got -1"):
        V.non_negative_int("k", -1)
    assert V.finite_number("t", 2) == 2.0
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="t must be a finite number"):
            V.finite_number("t", bad)
    with pytest.raises(ValueError, match="t must be at least 0"):
        V.finite_number("t", -0.5, minimum=0)
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        V.check_choice("mode", "c", ("a", "b"))


def test_check_tensor_reports_type_kind_dims_and_device():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        V.check_tensor("x", [1.0])
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        V.check_tensor("x", torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="ids must be an integer tensor, got dtype torch.float32"):
        V.check_tensor("ids", torch.zeros(2), kind="integer")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, d\), got shape \(3,\)"):
        V.check_tensor("x", torch.zeros(3), dims=2, shape="(batch, d)")
    with pytest.raises(ValueError, match="x is on device meta but cpu was expected"):
        V.check_tensor("x", torch.zeros(3, device="meta"), device="cpu")
    assert V.check_tensor("z", torch.zeros(2, dtype=torch.complex64), kind="real or complex").shape == (2,)


def test_meta_and_non_finite_tensors_are_named():
    with pytest.raises(ValueError, match="w is on the meta device: it has a shape but no values"):
        V.check_has_data("w", torch.empty(2, device="meta"))
    with pytest.raises(ValueError, match="w contains 2 NaN or infinite value"):
        V.require_finite("w", torch.tensor([1.0, float("nan"), float("-inf")]))
    V.require_finite("w", torch.zeros(0))


@pytest.mark.parametrize("ids, dim, error, message", [
    ([[1, 2]], 2, TypeError, "input_ids must be a torch.Tensor of token ids, got list"),
    (torch.zeros(1, 2), 2, TypeError, r"integer token ids of dtype torch.long .* got dtype torch.float32"),
    (torch.zeros(1, 2, dtype=torch.bool), 2, TypeError, "got dtype torch.bool"),
    (torch.zeros(1, 2, dtype=torch.uint8), 2, TypeError, "got dtype torch.uint8"),
    (torch.zeros(3, dtype=torch.long), 2, ValueError, r"must have shape \(batch, length\), got shape \(3,\)"),
    (torch.zeros(3, 1, dtype=torch.long), 1, ValueError, r"must have shape \(batch,\), got shape \(3, 1\)"),
    (torch.zeros(2, 0, dtype=torch.long), 2, ValueError, "is empty"),
    (torch.tensor([[0, 7]]), 2, ValueError, r"ids in \[0, 7\] but vocab_size is 7: every id must be in \[0, 6\]"),
    (torch.tensor([[-1, 3]]), 2, ValueError, r"ids in \[-1, 3\]"),
    (torch.zeros(1, 2, dtype=torch.long, device="meta"), 2, ValueError, "meta device"),
])
def test_token_ids_check(ids, dim, error, message):
    with pytest.raises(error, match=message):
        V.check_token_ids(ids, 7, dim=dim)


def test_token_ids_of_both_integer_widths_pass():
    V.check_token_ids(torch.tensor([[0, 6]]), 7)
    V.check_token_ids(torch.tensor([0, 6], dtype=torch.int32), 7, dim=1, name="token_ids")


def test_cache_check_names_type_and_batch():
    @dataclass
    class Cache:
        batch: int

    @dataclass
    class OtherCache:
        batch: int

    V.check_cache(Cache(2), Cache, 2)
    with pytest.raises(TypeError, match="cache must be a Cache from init_cache, got OtherCache"):
        V.check_cache(OtherCache(2), Cache, 2)
    with pytest.raises(ValueError, match="token_ids has batch 3 but the cache was made for batch 2"):
        V.check_cache(Cache(2), Cache, 3)


def test_layer_input_check():
    with pytest.raises(ValueError, match=r"L: x must have shape \(batch, length, d\) with d = 4, got shape \(2, 3\)"):
        V.check_layer_input(torch.zeros(2, 3), 4, "L")
    with pytest.raises(TypeError, match="L: x must be a floating-point tensor"):
        V.check_layer_input(torch.zeros(1, 2, 4, dtype=torch.long), 4, "L")
    with pytest.raises(ValueError, match="meta device"):
        V.check_layer_input(torch.zeros(1, 2, 4, device="meta"), 4, "L")


# --- the scan arguments: what the options open ------------------------------------------------

def _scan_args(b=2, d=4, l=5, n=3):
    return dict(u=torch.randn(b, d, l), delta=torch.rand(b, d, l), A=-torch.rand(d, n),
                B=torch.randn(b, n, l), C=torch.randn(b, n, l))


def test_complex_A_is_refused_by_default_with_the_method_that_takes_it():
    a = _scan_args()
    a["A"], a["B"], a["C"] = (a[k].to(torch.complex64) for k in ("A", "B", "C"))
    with pytest.raises(TypeError, match=r"A must be real for this scan implementation.*selective_scan_ref"):
        V.validate_scan_args(**a)
    assert V.validate_scan_args(**a, allow_complex=True) == (2, 4, 5, 3, 0)


def test_constant_B_C_are_refused_by_default_and_shape_checked_when_allowed():
    a = _scan_args()
    a["B"], a["C"] = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"B has shape \(4, 3\): time-invariant B, C of shape \(d, n\)"):
        V.validate_scan_args(**a)
    sizes = V.validate_scan_args(**a, allow_constant_BC=True)
    assert sizes.groups == -1 and sizes.batch == 2 and sizes.n == 3
    a["C"] = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"C must have shape \(d, n\) = \(4, 3\) like A"):
        V.validate_scan_args(**a, allow_constant_BC=True)


def test_complex_layouts_interleaved_and_mismatched():
    a = _scan_args()
    a["A"] = a["A"].to(torch.complex64)
    a["B"] = torch.randn(2, 3, 10)                               # (b, n, 2l): (re, im) pairs along time
    a["C"] = torch.randn(2, 3, 5, dtype=torch.complex64)        # (b, n, l) complex
    assert V.validate_scan_args(**a, allow_complex=True).length == 5
    a["B"] = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"B must have shape \(batch, n, length\) = \(2, 3, 10 = 2 · length"):
        V.validate_scan_args(**a, allow_complex=True)
    b = _scan_args()
    b["B"] = b["B"].to(torch.complex64)
    with pytest.raises(TypeError, match="B is complex .* but A is real"):
        V.validate_scan_args(**b, allow_complex=True)
    c = _scan_args()
    c["u"] = c["u"].to(torch.complex64)
    with pytest.raises(TypeError, match="u must be real"):
        V.validate_scan_args(**c, allow_complex=True)
    w = _scan_args()
    w = {k: v.double() for k, v in w.items()}
    w["A"] = w["A"].to(torch.complex64)
    with pytest.raises(TypeError, match="float64 must be used for all arguments or none"):
        V.validate_scan_args(**w, allow_complex=True)


def test_negative_step_sizes_are_named():
    V.check_step_sizes(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"2 negative step size\(s\) \(smallest -2\).*grows without bound"):
        V.check_step_sizes(torch.tensor([[-1.0, 0.5, -2.0]]))
