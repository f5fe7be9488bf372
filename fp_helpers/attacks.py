"""Attacks: FGM, PGD (l2 and l-inf, random restarts, best-iterate tracking) and the dense-direction attack.

Every attack works on any model ``x -> scores``:

- binary models return a vector ``f(x)`` of shape ``(n,)`` and labels are ``y in {-1, +1}``;
  the margin is ``y f(x)`` and the loss is the logistic loss;
- multi-class models return logits ``(n, C)`` and integer labels; the margin is
  ``logit_y - max_{j != y} logit_j`` and the loss is cross-entropy.

A point is classified correctly when its margin is positive. Models that expose closed-form input
gradients (``model.grads``) are attacked with them; all others through autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .runs import check_norm


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"attack radius tau must be a finite number >= 0, got {eps!r}")
    return float(eps)


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Points ``x`` (one per row) and labels ``y``: tensors, as many labels as points, at least one point,
    every coordinate finite. ``ValueError`` / ``TypeError`` naming what is wrong otherwise."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (n, ...) points and y (n,) labels with the same n; got x {tuple(x.shape)} "
                         f"and y {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is empty (0 points); give at least one point")
    if x.is_floating_point():
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise ValueError(f"x has {bad} non-finite entries (NaN or inf); every input must be finite")


def _margins_from_scores(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.ndim == 1:
        return y * out
    true = out.gather(1, y[:, None]).squeeze(1)
    other = out.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def margins(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example classification margin (positive = correct)."""
    with torch.no_grad():
        return _margins_from_scores(model(x), y)


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    check_batch(x, y)
    return (margins(model, x, y) > 0).float().mean().item()


def gradient_and_margins(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss's steepest-ascent direction at each input, and the margins at ``x``, from one forward pass.

    Binary models: the gradient of ``-y f(x)``, which is the logistic loss's gradient divided by
    ``sigmoid(-y f(x))``: the same direction, but it does not vanish where fp32 rounds that factor to zero
    (margins beyond about 88; below 1e-12 beyond about 28), so points with large margins are attacked too.
    Multi-class models: the cross-entropy's gradient, and for the rare points where it is exactly zero
    (every other class's probability underflows) the gradient of the margin. Closed form for models
    with ``grads``, autograd otherwise. Attacks normalise it, so its per-example scale does not matter.
    """
    if hasattr(model, "grads") and y.dtype.is_floating_point:
        _, _, g, m = model.grads(x, y, need_weight=False, need_input=True, input_of="margin")
        return g, m
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = model(xr)
        m = _margins_from_scores(out, y)
        if out.ndim == 1:
            loss = -m.sum()
        else:
            # the cross-entropy's gradient in the logits is softmax - onehot: exactly zero when every other
            # class's probability is 0 in fp32. Those points take the margin's gradient instead, in the same
            # backward pass (no host synchronisation, no second pass).
            with torch.no_grad():
                p = torch.softmax(out.float(), 1)
                saturated = (p.scatter(1, y[:, None], 0.0).sum(1) == 0).to(out.dtype)
            loss = F.cross_entropy(out, y, reduction="sum") - (saturated * m).sum()
        (g,) = torch.autograd.grad(loss, xr)
    return g, m.detach()


def input_gradient(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss's steepest-ascent direction at each input (see :func:`gradient_and_margins`)."""
    return gradient_and_margins(model, x, y)[0]


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` for gradient ``g`` (per example)."""
    if norm == "l2":
        # scaled by its largest entry first: a gradient of norm 1e-25 (whose square underflows) still gives a
        # unit step; an all-zero gradient gives no step
        flat = g.flatten(1)
        tiny = torch.finfo(flat.dtype).tiny
        flat = flat / flat.abs().amax(1, keepdim=True).clamp_min(tiny)
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(tiny)).view_as(g)
    return g.sign()


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "l2":
        flat = delta.flatten(1)
        n = flat.norm(dim=1).clamp_min(1e-12)
        return (flat * (eps / n).clamp(max=1.0)[:, None]).view_as(delta)
    return delta.clamp(-eps, eps)


def _clip(x_adv: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return x_adv if clip is None else x_adv.clamp(*clip)


def fgm(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2",
        clip: tuple[float, float] | None = None) -> torch.Tensor:
    """Fast Gradient Method: one step of length ``eps`` along the steepest-ascent direction of the loss.

    l2: ``x + eps g/||g||``; l-inf: ``x + eps sign(g)`` (FGSM).
    """
    eps = _check_eps(eps)
    norm = check_norm(norm)
    g = input_gradient(model, x, y)
    return _clip(x + eps * _unit(g, norm), clip).detach()


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    if norm == "l2":
        d = noise[0].numel()
        r = torch.rand(x.shape[0], generator=generator, device=x.device).pow(1.0 / d) * eps
        return _unit(noise, "l2") * r.view(-1, *([1] * (x.ndim - 1)))
    return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2", steps: int = 20,
        step_size: float | None = None, restarts: int = 1, generator: torch.Generator | None = None,
        clip: tuple[float, float] | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss inside the ``norm`` ball of radius ``eps``.

    Run 0 starts at ``x``; runs ``1..restarts-1`` start at uniform random points of the ball (drawn for every
    point, so the generator's stream does not depend on the model). Every iterate is scored, the starts
    included: each point keeps the iterate with the smallest margin seen, and a point stops being attacked
    once an iterate misclassifies it (margin <= 0: the attack has succeeded there, and later restarts skip
    it). A point's iterates do not depend on the other points, and the starts of runs ``0..R-1`` do not depend
    on ``restarts``, so with the same generator more restarts can never make the attack weaker; more steps
    change the step size and so the whole path, and are not guaranteed to be stronger (the chapters check
    it). The margins come from the same forward pass as the gradient (one pass per step).
    Step size defaults to ``2.5 eps / steps`` (Madry et al.).

    With ``clip`` every iterate is clipped to the box before it is scored and differentiated, but the
    perturbation carried to the next step is not, so in l2 part of the budget can sit outside the box and the
    attack is weaker than one that projects on the box too (a test builds such a case). The CIFAR-10 chapter
    measures what this costs on its models (:func:`fp_helpers.cifar_experiments.attack_strength`, the box
    check). It is kept as is because every saved result was made with it.
    """
    eps = _check_eps(eps)
    norm = check_norm(norm)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    best_x = x.detach().clone()
    best_m = margins(model, x, y)
    if eps == 0:
        return best_x
    for r in range(restarts):
        start = torch.zeros_like(x) if r == 0 else _random_start(x, eps, norm, generator)
        idx = (best_m > 0).nonzero().squeeze(1)  # the points no iterate has misclassified yet
        xs, ys, delta = x[idx], y[idx], start[idx]
        for step in range(steps + 1):
            if idx.numel() == 0:
                break
            x_adv = _clip(xs + delta, clip)
            if step < steps:
                g, m = gradient_and_margins(model, x_adv, ys)
            else:
                m = margins(model, x_adv, ys)
            better = m < best_m[idx]
            best_m[idx[better]] = m[better]
            best_x[idx[better]] = x_adv[better].detach()
            if step == steps:
                break
            delta = _project(delta + alpha * _unit(g, norm), eps, norm)
            alive = m > 0
            if not bool(alive.all()):
                idx, xs, ys, delta = idx[alive], xs[alive], ys[alive], delta[alive]
    return best_x


def dense_direction_attack(x: torch.Tensor, y: torch.Tensor, eps: float, u: torch.Tensor,
                           norm: str = "l2") -> torch.Tensor:
    """Move every point by ``eps`` against its label along the dense direction ``u`` (``-y eps u``).

    In l-inf the same idea is ``-y eps sign(u)``. This is the worst case for the linear classifier
    ``sign(<u, x>)`` and nearly the cheapest attack on a clean network full of dense mixtures.
    """
    eps = _check_eps(eps)
    norm = check_norm(norm)
    direction = u / u.norm() if norm == "l2" else u.sign()
    return x - eps * y[:, None] * direction[None, :]


def atom_attack(x: torch.Tensor, y: torch.Tensor, eps: float, atoms: torch.Tensor, k: int,
                agreeing: bool = False) -> torch.Tensor:
    """Move every point's active atoms against its label, without a gradient (l2): the ``k`` atoms with the
    largest ``|<M_j, x>|`` (``atoms``: the ``d x d`` dictionary ``M``, atoms as columns), or with ``agreeing`` only
    those of them whose coefficient has the label's sign (the atoms that carry it, for a positive ``w*``), each
    moved by ``-y eps / sqrt(n_moved)``: ``delta = -y eps sum_j M_j / sqrt(n_moved)``, of norm ``eps``. The worst
    case of a network that thresholds single atoms (the book's purified oracle) and blind to any masking of
    the gradient: a check of robustness that PGD cannot fool."""
    eps = _check_eps(eps)
    check_batch(x, y)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= atoms.shape[1]:
        raise ValueError(f"k must be an int in [1, {atoms.shape[1]}] (the number of active atoms), got {k!r}")
    coef = x @ atoms
    top = coef.abs().topk(k, dim=1).indices
    pick = torch.zeros_like(coef, dtype=torch.bool).scatter_(1, top, True)
    if agreeing:
        pick &= torch.sign(coef) == y[:, None]
    n_moved = pick.sum(1, keepdim=True).clamp_min(1)
    direction = (pick.to(x.dtype) / n_moved.sqrt()) @ atoms.T  # sum of the moved atoms, unit norm
    return x - eps * y[:, None] * direction


@dataclass(frozen=True)
class AttackSpec:
    """A named attack with its settings, so results can say exactly what was run."""

    name: str = "pgd"  # "fgm", "pgd", "dense"
    norm: str = "l2"
    steps: int = 20
    restarts: int = 1

    def describe(self, eps: float) -> str:
        if self.name == "pgd":
            return f"PGD-{self.steps} x{self.restarts} restarts, {self.norm}, eps={eps:g}"
        return f"{self.name.upper()}, {self.norm}, eps={eps:g}"


ATTACKS = ("fgm", "pgd", "dense")


def attack(model, x, y, eps, spec: AttackSpec, generator=None, u: torch.Tensor | None = None,
           clip=None) -> torch.Tensor:
    if spec.name == "fgm":
        return fgm(model, x, y, eps, spec.norm, clip=clip)
    if spec.name == "pgd":
        return pgd(model, x, y, eps, spec.norm, spec.steps, restarts=spec.restarts, generator=generator, clip=clip)
    if spec.name == "dense":
        if u is None:
            raise ValueError("the dense-direction attack needs the dense direction u")
        return dense_direction_attack(x, y, eps, u, spec.norm)
    raise ValueError(f"unknown attack {spec.name!r}; allowed attacks are {', '.join(ATTACKS)}")


def robust_accuracy(model, x, y, eps, spec: AttackSpec = AttackSpec(), generator=None, u=None,
                    clip=None, batch_size: int = 4096) -> float:
    """Share of points still classified correctly after the attack ``spec`` at radius ``eps``."""
    check_batch(x, y)
    _check_eps(eps)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        xa = attack(model, xb, yb, eps, spec, generator=generator, u=u, clip=clip)
        correct += (margins(model, xa, yb) > 0).sum().item()
    return correct / x.shape[0]


def robust_curve(model, x, y, radii, spec: AttackSpec = AttackSpec(), generator=None, u=None) -> list[float]:
    """Robust accuracy at each radius in ``radii`` (same attack, same points)."""
    return [robust_accuracy(model, x, y, float(r), spec, generator=generator, u=u) for r in radii]


def empirical_robust_radius(model, x, y, radii, spec: AttackSpec = AttackSpec(), generator=None, u=None):
    """Per point, the largest radius of the increasing grid ``radii`` at which the attack still fails
    (0 for points misclassified at every radius, including unperturbed ones). An upper bound on the true
    robust radius, up to the grid's resolution."""
    radii = [float(r) for r in radii]
    if any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError(f"radii must be strictly increasing, got {radii!r}")
    out = torch.zeros(x.shape[0], device=x.device)
    alive = margins(model, x, y) > 0
    for r in radii:
        xa = attack(model, x, y, r, spec, generator=generator, u=u)
        alive &= margins(model, xa, y) > 0
        out = torch.where(alive, torch.full_like(out, r), out)
    return out


def robust_curve_nested(model, x, y, radii, spec: AttackSpec = AttackSpec(), generator=None, u=None) -> list[float]:
    """Robust accuracy over an increasing grid of radii, counting a point as robust at ``r`` only if the
    attack failed at every radius ``<= r`` of the grid.

    The balls are nested, so a point broken at ``r`` is truly broken at every larger radius: this is still
    an upper bound on the true robust accuracy, monotone by construction, and cheaper (only surviving
    points are attacked again). With one deterministic start per point it is never above
    :func:`robust_curve`; with random restarts the two draw different starts.
    """
    radii = [float(r) for r in radii]
    if any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError(f"radii must be strictly increasing, got {radii!r}")
    alive = margins(model, x, y) > 0
    out = []
    for r in radii:
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            xa = attack(model, x[idx], y[idx], r, spec, generator=generator, u=u)
            alive[idx] = margins(model, xa, y[idx]) > 0
        out.append(alive.sum().item() / x.shape[0])
    return out
