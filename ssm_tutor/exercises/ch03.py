"""Exercises of chapter 3 (notebooks/03_convolution_view.ipynb): the convolution view and S4.

03.1  one recurrent step of an LTI layer (d diagonal channels, a batch): expected values from
      ``scipy.signal.dlsim`` run one step from the given state, channel by channel;
03.2  a causal convolution computed block by block with FFTs (overlap-add): expected values from
      ``numpy.convolve``;
03.3  solving a diagonal-plus-rank-1 system in O(N) (Sherman–Morrison, the rank-1 Woodbury identity):
      expected values from ``numpy.linalg.solve`` on the dense matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from ssm_tutor.exercises import exercise
from ssm_tutor.exercises.feedback import Answer, Mistake, close, compare_answer


# ----------------------------------------------------------------------------------------------
# 03.1 one recurrent step of an LTI layer
# ----------------------------------------------------------------------------------------------

def _dlsim_step(Ad, Bd, C, D, u_t, h):
    """One step of d diagonal channels by scipy.signal.dlsim. dlsim's state x[k] is the state before
    u[k] (our h_{t-1}), so our y_t = C h_t + D u_t is dlsim's output with matrices (C Ā, C B̄ + D)."""
    b, d, n = h.shape
    y, h_new = np.zeros((b, d)), np.zeros((b, d, n))
    for i in range(b):
        for c in range(d):
            A_, B_ = np.diag(Ad[c]), Bd[c][:, None]
            C_, D_ = C[c][None, :], np.array([[D[c]]])
            _, yc, xc = scipy.signal.dlsim((A_, B_, C_ @ A_, C_ @ B_ + D_, 1.0), np.array([u_t[i, c], 0.0]),
                                           x0=h[i, c])
            y[i, c], h_new[i, c] = yc[0, 0], xc[1]
    return y, h_new


@exercise("03.1", "one recurrent step of an LTI layer", atol=1e-10, rtol=1e-8, compare=compare_answer)
def lti_step_cases():
    rng = np.random.default_rng(31)
    for b, d, n in [(1, 1, 1), (2, 3, 4), (3, 2, 8)]:
        A = -rng.uniform(0.1, 4.0, (d, n))                    # S4D-Real-like decay rates
        dt = rng.uniform(0.01, 0.5, (d, 1))
        Ad, Bd = np.exp(dt * A), np.expm1(dt * A) / A * rng.standard_normal((d, n))
        C, D = rng.standard_normal((d, n)), rng.standard_normal(d)
        u_t, h = rng.standard_normal((b, d)), rng.standard_normal((b, d, n))
        y, h_new = _dlsim_step(Ad, Bd, C, D, u_t, h)
        T = [torch.tensor(x) for x in (Ad, Bd, C, D, u_t, h)]
        h_next = T[0] * T[5] + T[1] * T[4][..., None]
        mistakes = (
            Mistake("y_t is read from the new state: update h first, then y_t = Σ_n C h_t + D u_t "
                    "(the x_k-not-x_{k−1} convention of notebook 2)",
                    looks=lambda got, T=T: close(got[0], (T[2] * T[5]).sum(-1) + T[3] * T[4], atol=1e-9)),
            Mistake("the skip term D u_t is missing from y_t",
                    looks=lambda got, T=T, h_next=h_next: close(got[0], (T[2] * h_next).sum(-1), atol=1e-9)),
            Mistake("the state update is h_t = Ā ⊙ h_{t−1} + B̄ ⊙ u_t, with u_t (b, d) broadcast over the "
                    "state axis: u_t[..., None]",
                    looks=lambda got, h_new=h_new: not close(got[1], torch.tensor(h_new), atol=1e-9)),
        )
        yield f"b={b}, d={d}, n={n}", tuple(T), {}, Answer(
            (torch.tensor(y), torch.tensor(h_new)), names=("y_t (b, d)", "h (b, d, n)"), mistakes=mistakes,
            hint="per channel and state: h_t = Ā h_{t−1} + B̄ u_t; y_t = Σ_n C h_t + D u_t")


# ----------------------------------------------------------------------------------------------
# 03.2 causal convolution by blocks (overlap-add)
# ----------------------------------------------------------------------------------------------

def _fft_blocks_no_pad(u, K, block):
    """The typical mistake: each block convolved with a circular FFT of size `block` (no padding)."""
    y = torch.zeros_like(u)
    for s in range(0, u.shape[0], block):
        seg = u[s:s + block]
        n = seg.shape[0]
        y[s:s + n] = torch.fft.irfft(torch.fft.rfft(seg, n=n) * torch.fft.rfft(K, n=n), n=n)
    return y


def _blocks_without_tails(u, K, block):
    """The other typical mistake: each block convolved correctly but its tail dropped, not carried."""
    y = torch.zeros_like(u)
    for s in range(0, u.shape[0], block):
        seg = u[s:s + block]
        y[s:s + seg.shape[0]] = torch.tensor(np.convolve(seg.numpy(), K.numpy())[:seg.shape[0]])
    return y


@exercise("03.2", "causal convolution by blocks (overlap-add)", atol=1e-9, rtol=1e-8, compare=compare_answer)
def overlap_add_cases():
    rng = np.random.default_rng(32)
    for L, M, block in [(8, 3, 4), (64, 16, 16), (100, 7, 32), (257, 32, 64)]:
        u, K = rng.standard_normal(L), rng.standard_normal(M)
        ut, Kt = torch.tensor(u), torch.tensor(K)
        mistakes = (
            Mistake("a block's FFT needs room for the whole linear convolution of the block with K, "
                    "block + len(K) − 1 points; without padding its tail wraps onto its start",
                    gives=_fft_blocks_no_pad(ut, Kt, block)),
            Mistake("each block's convolution is longer than the block: add its last len(K) − 1 values into the "
                    "start of the next block's output (the overlap in overlap-add)",
                    gives=_blocks_without_tails(ut, Kt, block)),
        )
        yield f"L={L}, len(K)={M}, block={block}", (ut, Kt, block), {}, Answer(
            torch.tensor(np.convolve(u, K)[:L]), names=("y (L,)",), mistakes=mistakes,
            hint="y_k = Σ_j K_j u_{k−j}: split u into blocks, convolve each with K (padded FFT) and add the "
                 "pieces at their offsets")


# ----------------------------------------------------------------------------------------------
# 03.3 a diagonal-plus-rank-1 solve in O(N)
# ----------------------------------------------------------------------------------------------

@exercise("03.3", "solve a diagonal-plus-low-rank system in O(N)", atol=1e-10, rtol=1e-8, compare=compare_answer)
def dplr_solve_cases():
    rng = np.random.default_rng(33)
    for N in [1, 4, 16, 64]:
        lam = -0.5 + 1j * rng.standard_normal(N) * N         # S4-like: Re = −½, spread imaginary parts
        z = complex(rng.uniform(0.1, 2.0), rng.standard_normal())
        diag = z - lam                                        # the resolvent's diagonal, g − Λ
        p = rng.standard_normal(N) + 1j * rng.standard_normal(N)
        q = rng.standard_normal(N) + 1j * rng.standard_normal(N)
        rhs = rng.standard_normal(N) + 1j * rng.standard_normal(N)
        M = np.diag(diag) + np.outer(p, q.conj())             # diag(d) + p q*
        x = np.linalg.solve(M, rhs)
        T = [torch.tensor(v) for v in (diag, p, q, rhs)]
        mistakes = (
            Mistake("q* is the conjugate transpose: use q.conj() in the inner products (the test vectors are complex)",
                    gives=torch.tensor(np.linalg.solve(np.diag(diag) + np.outer(p, q), rhs))),
            Mistake("check the sign of the correction: (D + p q*)⁻¹ = D⁻¹ − D⁻¹p q*D⁻¹ / (1 + q*D⁻¹p)",
                    gives=torch.tensor(np.linalg.solve(np.diag(diag) - np.outer(p, q.conj()), rhs))),
            Mistake("that is D⁻¹ b alone: the rank-1 term p q* changes the answer",
                    gives=torch.tensor(rhs / diag)),
        )
        yield f"N={N}", tuple(T), {}, Answer(torch.tensor(x), names=("x (N,)",), mistakes=mistakes,
                                            hint="try x = D⁻¹b − α D⁻¹p, put it into (D + p q*) x = b and "
                                                 "solve for the scalar α: only divisions and inner products")
