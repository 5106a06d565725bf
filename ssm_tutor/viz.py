"""Small plotting helpers shared by the course notebooks: one style, labelled axes.

Every helper draws on a matplotlib ``Axes`` it is given (or a new one) and returns it, so a
notebook can lay figures out as it likes. Titles, axis labels and units are arguments, never
left blank.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["use_style", "to_numpy", "plot_signals", "plot_poles", "plot_kernels", "new_axes"]

STYLE = {
    "figure.figsize": (7.0, 3.2),
    "figure.dpi": 90,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
}


def use_style() -> None:
    """Apply the course's matplotlib style (call once at the top of a notebook)."""
    plt.rcParams.update(STYLE)


def to_numpy(x) -> np.ndarray:
    """Tensor or array-like -> numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def new_axes(ncols: int = 1, width: float = 7.0, height: float = 3.2):
    """A row of ``ncols`` axes: returns (fig, axes) with axes always a list."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def plot_signals(t, signals: dict, *, title: str, xlabel: str = "time t (s)", ylabel: str = "value",
                 ax=None, styles: dict | None = None):
    """Plot several signals against ``t``: ``signals`` maps a legend label to a 1-D series."""
    if ax is None:
        _, (ax,) = new_axes()
    t = to_numpy(t)
    for label, y in signals.items():
        ax.plot(t, to_numpy(y), label=label, **((styles or {}).get(label, {})))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(signals) > 1:
        ax.legend()
    return ax


def plot_poles(poles, *, title: str, discrete: bool = False, ax=None, label: str | None = None,
               marker: str = "x", color=None):
    """Mark poles in the complex plane with the stable region shaded: the left half-plane
    (Re λ < 0) for a continuous system, the unit disc (|λ| < 1) for a discrete one."""
    if ax is None:
        _, (ax,) = new_axes(width=4.0, height=3.6)
    p = to_numpy(poles).astype(complex).ravel()
    if discrete:
        th = np.linspace(0, 2 * np.pi, 200)
        ax.fill(np.cos(th), np.sin(th), color="tab:green", alpha=0.08, label=None)
        ax.plot(np.cos(th), np.sin(th), color="tab:green", lw=1, label="|z| = 1")
        ax.set_aspect("equal")
    else:
        ax.axvspan(-1e3, 0, color="tab:green", alpha=0.08)
        ax.axvline(0, color="tab:green", lw=1)
    ax.scatter(p.real, p.imag, marker=marker, s=60, color=color, label=label, zorder=3)
    span = max(1.2, 1.15 * float(np.max(np.abs(p))) if p.size else 1.2)
    ax.set_xlim(-span, span if discrete else max(0.3 * span, 1.15 * float(np.max(p.real, initial=0)) + 0.2))
    ax.set_ylim(-span, span)
    ax.set(title=title, xlabel="Re" + (" z" if discrete else " λ  (growth rate, 1/s; < 0 decays)"),
           ylabel="Im" + (" z" if discrete else " λ  (rad/s)"))
    if label is not None:
        ax.legend(loc="upper left")
    return ax


def plot_kernels(kernels: dict, *, title: str, xlabel: str = "lag l (steps)", ylabel: str = "K[l]", ax=None):
    """Plot convolution kernels (1-D each) against their lag: ``kernels`` maps label -> K."""
    if ax is None:
        _, (ax,) = new_axes()
    for label, K in kernels.items():
        ax.plot(to_numpy(K), label=label)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(kernels) > 1:
        ax.legend()
    return ax
