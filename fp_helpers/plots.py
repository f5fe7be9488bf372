"""One plotting style and the book's recurring figures. Every function returns the matplotlib figure."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import purification as pur

PALETTE = {"clean": "#d1495b", "adversarial": "#00798c", "linear": "#edae49", "scratch": "#66a182",
           "init": "#8d96a3"}


def set_style() -> None:
    """The book's style: seaborn's whitegrid with a paper context and readable fonts."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "figure.figsize": (7.0, 3.6), "legend.frameon": False})


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def training_curves(histories: Mapping[str, "object"], keys: Sequence[tuple[str, str]] | None = None,
                    step_offsets: Mapping[str, int] | None = None):
    """Metrics over training steps, one panel per metric, one line per run (``name -> History``)."""
    keys = keys or [("clean_acc", "clean accuracy"), ("robust_acc", "PGD robust accuracy"),
                    ("mixture_norm_median", "median mixture norm"), ("top1_energy_median", "median top-1 energy")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 2.9), sharex=True)
    for name, hist in histories.items():
        off = (step_offsets or {}).get(name, 0)
        steps = np.array(hist.column("step")) + off
        for ax, (key, label) in zip(np.atleast_1d(axes), keys):
            ax.plot(steps, hist.column(key), label=name, color=PALETTE.get(name.split()[0]))
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("SGD step")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def robust_curves(curves: Mapping[str, tuple], tau: float | None = None, xlabel: str = r"$\ell_2$ radius $\tau$"):
    """Robust accuracy vs radius. ``curves[name] = (radii, accs)`` with ``accs`` of shape (radii,) or
    (seeds, radii); several seeds are drawn as mean +- one standard deviation."""
    fig, ax = plt.subplots(figsize=(5.4, 3.4))
    for name, (radii, accs) in curves.items():
        a = np.atleast_2d(_np(accs))
        mean, sd = a.mean(0), a.std(0)
        color = PALETTE.get(name.split()[0])
        label = name + (f" ({a.shape[0]} seeds)" if a.shape[0] > 1 else "")
        ax.plot(radii, mean, marker="o", ms=3, label=label, color=color)
        if a.shape[0] > 1:
            ax.fill_between(radii, mean - sd, mean + sd, alpha=0.2, color=color)
    if tau is not None:
        ax.axvline(tau, color="k", ls=":", lw=1)
        ax.text(tau, 0.02, r" $\tau$", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (PGD)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectra(weights: Mapping[str, torch.Tensor], M: torch.Tensor, n_neurons: int = 40, n_atoms: int = 20):
    """Heat maps of sorted atom spectra ``<w_i, M_j>^2/||w_i||^2`` for the first neurons of each net."""
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.0), squeeze=False)
    for ax, (name, W) in zip(axes[0], weights.items()):
        S = _np(pur.atom_spectrum(W[:n_neurons], M)).copy()
        S = -np.sort(-S, axis=1)[:, :n_atoms]
        im = ax.imshow(S, aspect="auto", cmap="mako_r" if _has_seaborn() else "viridis", vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("atoms, strongest first")
        ax.set_ylabel("neuron")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="share of energy")
    return fig


def metric_histograms(values: Mapping[str, torch.Tensor], xlabel: str, bins=30, vline: float | None = None):
    """Overlaid histograms of one per-neuron metric for several networks."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, v in values.items():
        ax.hist(_np(v), bins=bins, alpha=0.55, label=name, color=PALETTE.get(name.split()[0]))
    if vline is not None:
        ax.axvline(vline, color="k", ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("neurons")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _has_seaborn() -> bool:
    try:
        import seaborn  # noqa: F401
        return True
    except ImportError:
        return False
