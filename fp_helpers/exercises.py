"""Closed forms and small runs behind the book's exercises and propositions (each runs in seconds).

- ``abs_sign_sum_pmf``: the law of ``|S|``, ``S`` a sum of ``k`` random signs (``S = <1, z>``);
- ``linear_robust_law``: exact robust accuracy of the best linear classifier ``sign(<u, x>)``;
- ``oracle_radius``: the robust radius of the purified oracle network on points with ``|S| = 1``;
- ``chebyshev_bound``: the bound on the robust accuracy of *any* bias-free linear classifier;
- ``linear_model`` / ``best_linear``: the linear models ``<w, x>`` and ``<u, x>``;
- ``random_direction_attack``: a control for the dense-direction attack;
- ``train_clean_quick`` / ``train_adversarial_quick``: clean training, and clean then FGM training, at the quick
  scale without per-step evaluation.
"""

from __future__ import annotations

import math

import torch

from .baselines import LinearModel
from .experiments import Setup, evaluate, setup, synthetic_config
from .networks import TwoLayerNet
from .training import train


def _check_dk(d: int, k: int) -> None:
    for name, v in (("d", d), ("k", k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if k > d:
        raise ValueError(f"k={k} must be at most d={d}")


def abs_sign_sum_pmf(k: int) -> dict[int, float]:
    """``{s: P(|S| = s)}`` for ``S`` the sum of ``k`` independent uniform signs."""
    _check_dk(k, k)
    out: dict[int, float] = {}
    for j in range(k + 1):  # j signs are +1
        s = abs(2 * j - k)
        out[s] = out.get(s, 0.0) + math.comb(k, j) / 2**k
    return dict(sorted(out.items()))


def linear_robust_law(d: int, k: int, noise: float, radius: float) -> float:
    """``P(margin > radius)`` for ``sign(<u, x>)`` with ``w* = 1`` and unit code magnitudes.

    The margin ``y <u, x>`` is ``|S| / sqrt(d)`` plus the noise along ``u``, a ``N(0, noise^2 / d)``
    variable (the noise is isotropic with total expected norm ``noise``). ``radius = 0`` gives the
    clean accuracy.
    """
    _check_dk(d, k)
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    sd = noise / math.sqrt(d)
    total = 0.0
    for s, p in abs_sign_sum_pmf(k).items():
        gap = s / math.sqrt(d) - radius
        total += p * (float(gap > 0) if sd == 0 else 0.5 * math.erfc(-gap / (sd * math.sqrt(2))))
    return total


def oracle_radius(k: int, beta: float = 0.1, scale: float = 10.0, rho: float = 0.5, q: int = 3) -> float:
    """``(1 - beta - kappa / c) / sqrt(k)`` with ``kappa = (1 - 1/q) rho``: the l2 robust radius of the
    purified oracle (``w_j = c M_j``, dead zone ``beta``) at a noise-free point with ``|S| = 1``.

    Valid when it is at most ``2 beta sqrt(k)`` and ``1 - beta - rho / c`` (see the theory chapter)."""
    _check_dk(k, k)
    kappa = (1 - 1 / q) * rho
    return (1 - beta - kappa / scale) / math.sqrt(k)


def chebyshev_bound(d: int, k: int, noise: float, radius: float) -> float:
    """``min(1, (k + noise^2) / (d radius^2))``: no bias-free linear classifier is robust at ``radius``
    on a larger share of points."""
    _check_dk(d, k)
    if radius <= 0:
        return 1.0
    return min(1.0, (k + noise**2) / (d * radius**2))


def linear_model(w: torch.Tensor) -> LinearModel:
    """The bias-free linear model ``f(x) = <w, x>``."""
    if w.ndim != 1:
        raise ValueError(f"w must be a vector, got shape {tuple(w.shape)}")
    lin = LinearModel(w.shape[0], device=w.device)
    with torch.no_grad():
        lin.w.copy_(w)
    return lin


def best_linear(dist) -> LinearModel:
    """The linear model ``f(x) = <u, x>`` of a :class:`~fp_helpers.sparse_coding.SparseCoding`."""
    return linear_model(dist.u)


def random_direction_attack(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Move every point by ``eps`` along its own uniformly random direction (a control: no gradient,
    no knowledge of ``u``)."""
    r = torch.randn(x.shape, generator=generator, device=x.device)
    return x + eps * r / r.norm(dim=1, keepdim=True)


def _clean_quick(overrides: dict | None, seed: int) -> tuple[TwoLayerNet, Setup, torch.Tensor]:
    cfg = synthetic_config("quick", overrides, seed=seed)
    s = setup(cfg)
    net = TwoLayerNet(cfg.d, cfg.net_config(), generator=s.gen, device=s.device)
    W0 = net.snapshot()
    train(net, s.dist, cfg.clean_train_config(), s.gen, progress=False)
    return net, s, W0


def train_clean_quick(overrides: dict | None = None, seed: int = 0) -> tuple[TwoLayerNet, Setup, dict]:
    """Clean training at the ``quick`` scale with ``overrides`` (e.g. ``{"noise": 1.0}``), without the
    per-step evaluation of the chapters; returns the network, its set-up and ``evaluate``'s numbers."""
    net, s, W0 = _clean_quick(overrides, seed)
    return net, s, evaluate(net, s, W0)


def train_adversarial_quick(overrides: dict | None = None, seed: int = 0) -> tuple[TwoLayerNet, Setup, dict]:
    """:func:`train_clean_quick`, then FGM training from the clean weights with the profile's schedule (what
    the adversarial-training chapter does, at the ``quick`` scale); the same return values, for the
    adversarially trained network."""
    net, s, W0 = _clean_quick(overrides, seed)
    train(net, s.dist, s.cfg.adv_train_config(), s.gen, progress=False)
    return net, s, evaluate(net, s, W0)


def margin_edge(d: int, k: int, noise: float, radius: float, rel: float = 0.02) -> dict:
    """Where ``radius`` sits in the law of the best linear classifier's margin (:func:`linear_robust_law`).

    Without noise the margin takes the values ``s / sqrt(d)``, ``s`` in the support of ``|S|``
    (:func:`abs_sign_sum_pmf`); the law jumps at each. ``{"atom": s whose margin s / sqrt(d) lies within a
    relative ``rel`` of ``radius`` (``None``: none does), "below": the law at ``radius (1 - rel)``, "at": at
    ``radius``, "above": at ``radius (1 + rel)``}``. A radius on an atom is a knife edge: a robust accuracy
    read there changes by a large step under a small change of the radius."""
    _check_dk(d, k)
    if not (isinstance(rel, (int, float)) and not isinstance(rel, bool) and 0 < rel < 1):
        raise ValueError(f"rel must be a number in (0, 1), got {rel!r}")
    if not (isinstance(radius, (int, float)) and not isinstance(radius, bool) and radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    atoms = [s for s in abs_sign_sum_pmf(k) if s > 0 and abs(s / math.sqrt(d) - radius) <= rel * radius]
    return {"atom": atoms[0] if atoms else None,
            "below": linear_robust_law(d, k, noise, radius * (1 - rel)),
            "at": linear_robust_law(d, k, noise, radius),
            "above": linear_robust_law(d, k, noise, radius * (1 + rel))}
