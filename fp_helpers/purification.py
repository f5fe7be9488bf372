"""Purification metrics: how a neuron's weight splits into dictionary atoms and a dense mixture.

All functions take weight matrices with one neuron per row, ``W`` of shape ``(m, d)``, and the
dictionary ``M`` of shape ``(d, d)`` whose columns are the atoms.

- atom spectrum: ``|<w_i, M_j>|^2 / ||w_i||^2`` (sums to one over ``j``);
- top-1 atom energy: the largest entry of the spectrum;
- mixture norm: relative norm of ``w_i`` outside its ``top`` strongest atoms ("dense mixture");
- mixture alignment: ``|cos|`` of that residual with the dense direction ``u``;
- ``|cos(w_i, w_i^0)|``: distance from the initialisation (near 1 = lazy / NTK regime);
- the principle: ``w_i = beta_i w_i' + v_i`` with ``v_i`` orthogonal to ``w_i'`` and the ratio
  ``||beta_i w_i'|| / ||v_i||`` (> 1: the robust feature dominates the clean neuron).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check(W: torch.Tensor, M: torch.Tensor | None = None) -> None:
    if W.ndim != 2:
        raise ValueError(f"weights must be a 2-d (neurons x inputs) matrix, got shape {tuple(W.shape)}")
    if M is not None and (M.ndim != 2 or M.shape[0] != W.shape[1]):
        raise ValueError(f"dictionary has shape {tuple(M.shape)}, expected ({W.shape[1]}, n_atoms)")


def atom_spectrum(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``(m, n_atoms)`` energies ``<w_i, M_j>^2 / ||w_i||^2``."""
    _check(W, M)
    c = (W @ M).pow(2)
    return c / W.pow(2).sum(1, keepdim=True).clamp_min(1e-30)


def top_energy(W: torch.Tensor, M: torch.Tensor, top: int = 1) -> torch.Tensor:
    """Share of each neuron's energy in its ``top`` strongest atoms."""
    return atom_spectrum(W, M).topk(top, dim=1).values.sum(1)


def mixture_residual(W: torch.Tensor, M: torch.Tensor, top: int = 2) -> torch.Tensor:
    """``w_i`` minus its projection on its ``top`` strongest atoms."""
    _check(W, M)
    coef = W @ M
    keep = torch.zeros_like(coef).scatter_(1, coef.abs().topk(top, dim=1).indices, 1.0)
    return W - (coef * keep) @ M.T


def mixture_norm(W: torch.Tensor, M: torch.Tensor, top: int = 2) -> torch.Tensor:
    """Relative norm of each neuron outside its ``top`` strongest atoms (in ``[0, 1]``)."""
    return (1 - top_energy(W, M, top)).clamp_min(0).sqrt()


def abs_cos_rows(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Row-wise ``|cos|`` between two matrices of the same shape (or a matrix and one vector)."""
    if B.ndim == 1:
        B = B.expand_as(A)
    if A.shape != B.shape:
        raise ValueError(f"shape mismatch: {tuple(A.shape)} vs {tuple(B.shape)}")
    num = (A * B).sum(1).abs()
    return num / (A.norm(dim=1) * B.norm(dim=1)).clamp_min(1e-30)


def mixture_alignment(W: torch.Tensor, M: torch.Tensor, u: torch.Tensor, top: int = 2) -> torch.Tensor:
    """``|cos|`` between each neuron's dense mixture and the dense direction ``u``."""
    return abs_cos_rows(mixture_residual(W, M, top), u)


@dataclass
class Decomposition:
    """The principle's decomposition ``w_i = beta_i w_i' + v_i`` (``v_i`` orthogonal to ``w_i'``)."""

    beta: torch.Tensor  # (m,)
    purified: torch.Tensor  # beta_i w_i'   (m, d)
    residual: torch.Tensor  # v_i           (m, d)
    ratio: torch.Tensor  # ||beta_i w_i'|| / ||v_i||   (m,)

    @property
    def holds_fraction(self) -> float:
        return (self.ratio > 1).float().mean().item()


def decompose(W_clean: torch.Tensor, W_adv: torch.Tensor) -> Decomposition:
    """Split each clean neuron into its component along the adversarially trained one, plus the rest."""
    _check(W_clean)
    if W_clean.shape != W_adv.shape:
        raise ValueError(f"shape mismatch: clean {tuple(W_clean.shape)} vs adversarial {tuple(W_adv.shape)}")
    beta = (W_clean * W_adv).sum(1) / W_adv.pow(2).sum(1).clamp_min(1e-30)
    purified = beta[:, None] * W_adv
    residual = W_clean - purified
    ratio = purified.norm(dim=1) / residual.norm(dim=1).clamp_min(1e-30)
    return Decomposition(beta, purified, residual, ratio)


def summary(W: torch.Tensor, M: torch.Tensor, u: torch.Tensor, W0: torch.Tensor | None = None,
            top: int = 2) -> dict[str, float]:
    """Medians over neurons of the purification metrics (the numbers the chapters quote)."""
    out = {
        "top1_energy_median": top_energy(W, M, 1).median().item(),
        "mixture_norm_median": mixture_norm(W, M, top).median().item(),
        "mixture_alignment_median": mixture_alignment(W, M, u, top).median().item(),
        "weight_norm_median": W.norm(dim=1).median().item(),
    }
    if W0 is not None:
        out["cos_init_median"] = abs_cos_rows(W, W0).median().item()
    return out


def spectral_energy_share(t: torch.Tensor, min_radius: float) -> torch.Tensor:
    """Share of each 2-D map's spectral energy at radial frequency ``>= min_radius`` (cycles per pixel,
    0 to ~0.71; the Nyquist frequency is 0.5 per axis).

    ``t`` has shape ``(..., H, W)`` (filters ``(out, in, k, k)`` or images ``(n, c, H, W)``); the result has
    the shape of ``t.shape[:-2]``. With a tiny ``min_radius`` this is the energy outside the constant (DC)
    component; with 0.25 it is the energy above half the Nyquist frequency ("high frequency").
    """
    if t.ndim < 2:
        raise ValueError(f"need maps of shape (..., H, W), got shape {tuple(t.shape)}")
    if not (0 <= min_radius < 1):
        raise ValueError(f"min_radius must lie in [0, 1), got {min_radius!r}")
    H, W = t.shape[-2:]
    power = torch.fft.fft2(t.double()).abs().pow(2)
    fy = torch.fft.fftfreq(H, dtype=torch.float64, device=t.device)
    fx = torch.fft.fftfreq(W, dtype=torch.float64, device=t.device)
    radius = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
    high = (power * (radius >= min_radius)).sum((-2, -1))
    return (high / power.sum((-2, -1)).clamp_min(1e-300)).float()


@dataclass
class UpdateSpectrum:
    """Singular-value profile of a weight update ``Delta = W_to - W_from`` (the low-rank question)."""

    singular_values: torch.Tensor  # (min(m, d),), descending
    energy_share: torch.Tensor  # cumulative share of ||Delta||_F^2 in the top 1, 2, ... directions
    relative_size: float  # ||Delta||_F / ||W_from||_F
    top_direction: torch.Tensor  # first right singular vector of Delta, shape (d,)

    def share(self, rank: int) -> float:
        """Share of the update's energy that the best rank-``rank`` approximation keeps."""
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        return self.energy_share[min(rank, len(self.energy_share)) - 1].item()


def update_spectrum(W_from: torch.Tensor, W_to: torch.Tensor) -> UpdateSpectrum:
    """How low-rank is the update that took ``W_from`` (e.g. the clean weights) to ``W_to`` (adversarial)?"""
    _check(W_from)
    if W_from.shape != W_to.shape:
        raise ValueError(f"shape mismatch: {tuple(W_from.shape)} vs {tuple(W_to.shape)}")
    delta = (W_to - W_from).double()
    _, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    energy = S.pow(2)
    share = energy.cumsum(0) / energy.sum().clamp_min(1e-300)
    rel = (delta.norm() / W_from.double().norm().clamp_min(1e-300)).item()
    return UpdateSpectrum(S.float(), share.float(), rel, Vh[0].to(W_from.dtype))


def update_directions(W_from: torch.Tensor, W_to: torch.Tensor, u: torch.Tensor) -> dict[str, float]:
    """Where the update ``Delta = W_to - W_from`` points relative to the dense direction ``u``:

    - ``cos_top_u``: ``|cos|`` between ``Delta``'s first right singular vector and ``u``;
    - ``u_share``: the share of ``||Delta||_F^2`` along ``u``, ``||Delta u||^2 / (||Delta||_F^2 ||u||^2)`` (1 for
      ``Delta = a u^T``, subtracting a multiple of ``u`` from every neuron; about ``1 / d`` for a random update);
    - ``u_kept``: how much of the weights' projection on ``u`` is left, with its sign: the least-squares coefficient
      of ``W_to u`` on ``W_from u``, ``<W_to u, W_from u> / ||W_from u||^2`` (1: untouched; 0: every neuron's
      component along ``u`` removed; negative: reversed; above 1: amplified);
    - ``u_kept_norm``: the same without the sign, ``||W_to u|| / ||W_from u||``.

    For a zero update the first two are 0 and the last two 1."""
    _check(W_from)
    if W_from.shape != W_to.shape:
        raise ValueError(f"shape mismatch: {tuple(W_from.shape)} vs {tuple(W_to.shape)}")
    if u.shape != (W_from.shape[1],):
        raise ValueError(f"u has shape {tuple(u.shape)}, expected ({W_from.shape[1]},)")
    Wf, Wt, u = W_from.double(), W_to.double(), u.double()
    u = u / u.norm().clamp_min(1e-300)
    delta = Wt - Wf
    energy = delta.pow(2).sum()
    if energy == 0:
        return {"cos_top_u": 0.0, "u_share": 0.0, "u_kept": 1.0, "u_kept_norm": 1.0}
    top = torch.linalg.svd(delta, full_matrices=False)[2][0]
    pf, pt = Wf @ u, Wt @ u  # every neuron's component along u, before and after
    return {"cos_top_u": (top @ u).abs().item(), "u_share": ((delta @ u).pow(2).sum() / energy).item(),
            "u_kept": ((pt @ pf) / pf.pow(2).sum().clamp_min(1e-300)).item(),
            "u_kept_norm": (pt.norm() / pf.norm().clamp_min(1e-300)).item()}


def truncated_update(W_from: torch.Tensor, W_to: torch.Tensor, rank: int) -> torch.Tensor:
    """``W_from + Delta_r``: the update replaced by its best rank-``rank`` approximation (Eckart-Young).

    This is the best any rank-``rank`` method could do *if* it had to land near ``W_to``: when the
    truncated network is not robust, the robust solution that adversarial training found is not low-rank.
    """
    _check(W_from)
    if W_from.shape != W_to.shape:
        raise ValueError(f"shape mismatch: {tuple(W_from.shape)} vs {tuple(W_to.shape)}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    delta = (W_to - W_from).double()
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, S.numel())
    return W_from + ((U[:, :r] * S[:r]) @ Vh[:r]).to(W_from.dtype)
