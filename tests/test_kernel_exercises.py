"""The exercises of chapter 6: a right answer PASSes, each typical mistake FAILs with its hint, a stub
is NOT ATTEMPTED. The answers of 06.1 are real Triton kernels (run by the interpreter on a CPU), so
that the hint for a swapped combine is tested against what Triton really computes."""

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ssm_tutor.exercises import check_exercise
from ssm_tutor.exercises.ch06 import reverse_recurrence_loop
from ssm_tutor.kernels._jit_helpers import linear_recurrence_combine
from ssm_tutor.selective import selective_scan_ref


@triton.jit
def _swapped_combine(a_left, b_left, a_right, b_right):
    return a_left * a_right, a_left * b_right + b_left


@triton.jit
def _reverse_kernel(a_ptr, g_ptr, G_last_ptr, G_ptr, length, BLOCK: tl.constexpr, SWAP: tl.constexpr,
                    CARRY: tl.constexpr, SHIFT: tl.constexpr):
    """G_t = g_t + a_{t+SHIFT} G_{t+1}, block by block from the end; SWAP and CARRY=False are mistakes."""
    row = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    G_next = tl.load(G_last_ptr + row)
    n_blocks = tl.cdiv(length, BLOCK)
    for i in range(0, n_blocks):
        t = (n_blocks - 1 - i) * BLOCK + lanes
        g = tl.load(g_ptr + row * length + t, mask=t < length, other=0.0)
        a_next = tl.load(a_ptr + row * length + t + SHIFT, mask=t + SHIFT < length, other=1.0)
        if SWAP:
            A_rev, G_loc = tl.associative_scan((a_next, g), axis=0, combine_fn=_swapped_combine, reverse=True)
        else:
            A_rev, G_loc = tl.associative_scan((a_next, g), axis=0, combine_fn=linear_recurrence_combine,
                                               reverse=True)
        G = G_loc + A_rev * G_next
        tl.store(G_ptr + row * length + t, G, mask=t < length)
        if CARRY:
            G_next = tl.sum(tl.where(lanes == 0, G, 0.0), axis=0)
        else:
            G_next = 0.0


def reverse_kernel(swap=False, carry=True, shift=1, block=16):
    def run(a, g, G_last):
        G = torch.empty_like(g)
        _reverse_kernel[(g.shape[0],)](a, g, G_last, G, g.shape[1], BLOCK=block, SWAP=swap, CARRY=carry,
                                       SHIFT=shift)
        return G
    return run


def stub(*args, **kwargs):
    raise NotImplementedError()


# ---- 06.1 -----------------------------------------------------------------------------------
def test_06_1_reverse_scan_kernel_passes(capsys):
    assert check_exercise("06.1", reverse_kernel()).passed
    assert "Exercise 06.1 [PASS]" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (reverse_kernel(swap=True), "LEFT argument is the LATER element"),
    (reverse_kernel(shift=0), "not a_t"),
    (lambda a, g, G_last: reverse_kernel()(a, g, torch.zeros_like(G_last)), "G_last"),
    (reverse_kernel(carry=False), "look at the carry"),
], ids=["swapped-combine", "a_t-instead-of-a_t+1", "ignores-G_last", "no-carry-between-blocks"])
def test_06_1_typical_mistakes_fail_with_their_hint(wrong, hint):
    result = check_exercise("06.1", wrong, verbose=False)
    assert result.status == "FAIL", result
    assert hint in result.message, result.message
    assert "np.float" not in result.message and "G:" in result.message       # named, plain numbers


def test_06_1_swapped_combine_emulation_is_what_triton_computes():
    g = torch.Generator().manual_seed(0)
    a, grad, G_last = torch.rand(2, 9, generator=g) + 0.2, torch.randn(2, 9, generator=g), torch.randn(2, generator=g)
    from ssm_tutor.exercises.ch06 import reverse_scan_swapped_combine
    torch.testing.assert_close(reverse_kernel(swap=True)(a, grad, G_last),
                               reverse_scan_swapped_combine(a.double(), grad.double(), G_last.double()).float())
    torch.testing.assert_close(reverse_kernel()(a, grad, G_last), reverse_recurrence_loop(a, grad, G_last))


# ---- 06.2 -----------------------------------------------------------------------------------
def _expand(X, d, group_of):
    return X[:, group_of]


def gated(u, delta, A, B, C, D, z, *, skip_in_gate=True, gate=F.silu, group=lambda c, d, g: c // (d // g)):
    """The exercise's answer in PyTorch (the checker checks values, not how they were computed)."""
    d, g = u.shape[1], B.shape[1]
    idx = [group(c, d, g) for c in range(d)]
    y = selective_scan_ref(u, delta, A, _expand(B, d, idx), _expand(C, d, idx))
    if skip_in_gate:
        return (y + D[:, None] * u) * gate(z)
    return y * gate(z) + D[:, None] * u


def test_06_2_right_answer_passes():
    assert check_exercise("06.2", gated).passed


@pytest.mark.parametrize("wrong,hint", [
    (lambda *x: gated(*x, skip_in_gate=False), "the skip goes inside the gate"),
    (lambda *x: gated(*x, gate=torch.sigmoid), "SiLU(z) = z · σ(z)"),
    (lambda *x: gated(*x, group=lambda c, d, g: c % g), "c // (d / g)"),
    (lambda u, delta, A, B, C, D, z: gated(u, delta, A, B, C, torch.zeros_like(D), z), "skip D u is missing"),
    (lambda u, delta, A, B, C, D, z: gated(u, delta, A, B, C, D, z, gate=lambda x: torch.ones_like(x)),
     "the gate is missing"),
], ids=["gate-before-skip", "sigmoid-not-silu", "round-robin-groups", "no-skip", "no-gate"])
def test_06_2_typical_mistakes_fail_with_their_hint(wrong, hint):
    result = check_exercise("06.2", wrong, verbose=False)
    assert result.status == "FAIL" and hint in result.message, result.message
    assert "y:" in result.message


# ---- 06.3 -----------------------------------------------------------------------------------
def gate_grads(u, y_ssm, z, D, dy, *, dsilu=lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))),
               with_skip=True, dD_dims=(0, 2), dD_gate=True):
    pre = y_ssm + D[:, None] * u if with_skip else y_ssm
    dD = (dy * (F.silu(z) if dD_gate else 1) * u).sum(dD_dims)
    return dy * pre * dsilu(z), dD


def test_06_3_right_answer_passes():
    assert check_exercise("06.3", gate_grads).passed


@pytest.mark.parametrize("wrong,hint", [
    (lambda *x: gate_grads(*x, dsilu=torch.sigmoid), "not σ(z)"),
    (lambda *x: gate_grads(*x, dsilu=lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))), "derivative of σ alone"),
    (lambda *x: gate_grads(*x, with_skip=False), "y_ssm + D u"),
    (lambda *x: gate_grads(*x, dD_dims=2), "sum ∂y · SiLU(z) · u over both"),
    (lambda *x: gate_grads(*x, dD_gate=False), "∂D goes through the gate"),
], ids=["silu-grad-is-sigmoid", "sigmoid-grad", "no-skip-in-dz", "dD-not-summed-over-batch", "dD-without-gate"])
def test_06_3_typical_mistakes_fail_with_their_hint(wrong, hint):
    result = check_exercise("06.3", wrong, verbose=False)
    assert result.status == "FAIL" and hint in result.message, result.message


def test_06_3_names_the_output_that_differs():
    result = check_exercise("06.3", lambda *x: (gate_grads(*x)[0], gate_grads(*x)[1] * 2), verbose=False)
    assert result.message.split(": ", 1)[1].startswith("dD:"), result.message


@pytest.mark.parametrize("exercise_id", ["06.1", "06.2", "06.3"])
def test_stub_is_not_attempted_and_a_malformed_answer_fails_cleanly(exercise_id):
    assert check_exercise(exercise_id, stub, verbose=False).status == "NOT ATTEMPTED"
    result = check_exercise(exercise_id, lambda *args: "not a tensor", verbose=False)
    assert result.status == "FAIL" and "expected a t" in result.message, result.message


# ---- end to end: `ssm-tutor check` on notebook 06's own exercise cells, with a mistake in each ----
MISTAKES = {   # grade id of the solution cell: (text of the right answer, a typical mistake, hint expected)
    "ex06-1-solution": ("a_ptr + row * length + t + 1, mask=t + 1 < length", "a_ptr + row * length + t, mask=t < length",
                        "not a_t"),
    "ex06-2-solution": ("y = (tl.sum(hs * Ct, axis=1) + D[:, None] * u) * z * tl.sigmoid(z)",
                        "y = tl.sum(hs * Ct, axis=1) * z * tl.sigmoid(z) + D[:, None] * u",
                        "the skip goes inside the gate"),
    "ex06-3-solution": ("dsilu = sig * (1 + z * (1 - sig))", "dsilu = sig", "not σ(z)"),
}


def test_ssm_tutor_check_fails_each_typical_mistake_in_the_notebook(tmp_path):
    """The setup cell and the exercise cells of notebooks/06_triton_kernel.ipynb, each solution with
    one typical mistake: `ssm-tutor check` must report FAIL, with the mistake's hint, for every one."""
    from notebook_mistakes import assert_check_fails_each_mistake

    assert_check_fails_each_mistake(tmp_path, "06_triton_kernel.ipynb", MISTAKES)
