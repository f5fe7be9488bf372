"""The two-layer network ``f(x) = sum_i sigma(<w_i, x>)`` with an odd smoothed, thresholded ReLU.

``sigma(t) = sign(t) * h(max(|t| - b_i, 0))`` with the smoothed ReLU
``h(u) = u^q / (q rho^(q-1))`` for ``u <= rho`` and ``u - (1 - 1/q) rho`` beyond. The dead zone
``b_i = beta * ||w_i||`` is relative to the neuron's norm and is not differentiated (``beta = 0``
gives the plain odd smoothed ReLU). Output weights are fixed to one, as in the paper's learner.

Besides the autograd ``forward`` (used by the attacks, which treat every model alike), the network has
closed-form gradients (``grads``): training never builds an autograd graph, which is what makes the
synthetic chapters fast on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    m: int = 300
    q: int = 3
    rho: float = 0.5
    beta: float = 0.0  # dead zone b_i = beta * ||w_i||
    init_std: float = 0.01  # per-coordinate std of the Gaussian initialisation

    def validate(self) -> "NetConfig":
        if not isinstance(self.m, int) or isinstance(self.m, bool) or self.m < 1:
            raise ValueError(f"m (number of neurons) must be a positive int, got {self.m!r}")
        if not isinstance(self.q, int) or self.q < 1:
            raise ValueError(f"q must be an int >= 1, got {self.q!r}")
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ValueError(f"rho must be a finite number > 0, got {self.rho!r}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta (dead zone) must be a finite number >= 0, got {self.beta!r}")
        if not (self.init_std > 0 and math.isfinite(self.init_std)):
            raise ValueError(f"init_std must be a finite number > 0, got {self.init_std!r}")
        return self


def smoothed_relu(u: torch.Tensor, rho: float, q: int) -> torch.Tensor:
    """``h(u)`` for ``u >= 0``: polynomial ``u^q/(q rho^(q-1))`` up to ``rho``, linear beyond."""
    return torch.where(u <= rho, u.pow(q) / (q * rho ** (q - 1)), u - (1 - 1 / q) * rho)


def smoothed_relu_grad(u: torch.Tensor, rho: float, q: int) -> torch.Tensor:
    """``h'(u)`` for ``u >= 0``."""
    return torch.where(u <= rho, (u / rho).pow(q - 1), torch.ones_like(u))


def _act_parts(t: torch.Tensor, b: torch.Tensor | float, rho: float, q: int):
    """Branch-free ``(sigma_b(t), sigma_b'(t))``.

    With ``u = max(|t| - b, 0)`` and ``a = min(u, rho)``: ``h(u) = a^q / (q rho^(q-1)) + (u - a)`` and
    ``h'(u) = (a / rho)^(q-1)``; both agree with the piecewise definition on each side of ``rho`` and
    vanish in the dead zone. One pass of a few elementwise kernels instead of two ``where`` chains,
    which is what a CPU training step spends its time on.
    """
    u = t.abs()
    if not (isinstance(b, float) and b == 0.0):
        u = u.sub_(b).clamp_min_(0.0)
    a = u.clamp_max(rho)
    s = a * (1.0 / rho)
    dh = s * s if q == 3 else s.pow(q - 1)
    h = (a * dh).mul_(1.0 / q).add_(u).sub_(a)
    return torch.copysign(h, t), dh


def odd_activation(t: torch.Tensor, b: torch.Tensor | float, rho: float, q: int) -> torch.Tensor:
    """``sign(t) h(max(|t| - b, 0))``: odd, flat on ``[-b, b]``, smooth elsewhere."""
    return _act_parts(t, b, rho, q)[0]


def odd_activation_grad(t: torch.Tensor, b: torch.Tensor | float, rho: float, q: int) -> torch.Tensor:
    """Derivative of :func:`odd_activation` in ``t`` (an even function, zero in the dead zone)."""
    return _act_parts(t, b, rho, q)[1]


class TwoLayerNet(nn.Module):
    """``f(x) = sum_i sigma_b(<w_i, x>)``; the trainable weight matrix is ``W`` of shape ``(m, d)``."""

    def __init__(self, d: int, config: NetConfig = NetConfig(), generator: torch.Generator | None = None,
                 device=None, weight: torch.Tensor | None = None):
        super().__init__()
        self.config = config.validate()
        self.beta = float(config.beta)
        if weight is None:
            weight = torch.randn(config.m, d, generator=generator, device=device) * config.init_std
        if weight.shape != (config.m, d):
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected (m, d) = ({config.m}, {d})")
        self.W = nn.Parameter(weight.clone())

    @property
    def weight(self) -> torch.Tensor:
        """The effective ``(m, d)`` weight matrix (its rows are the neurons)."""
        return self.W

    @property
    def d(self) -> int:
        return self.weight.shape[1]

    def thresholds(self, weight: torch.Tensor) -> torch.Tensor | float:
        if self.beta == 0:
            return 0.0
        return self.beta * weight.detach().norm(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected (n, d) with d = {self.d}")
        w = self.weight
        pre = x @ w.T
        c = self.config
        return odd_activation(pre, self.thresholds(w), c.rho, c.q).sum(1)

    @torch.no_grad()
    def grads(self, x: torch.Tensor, y: torch.Tensor, need_weight: bool = True, need_input: bool = False,
              input_of: str = "loss"):
        """Closed-form logistic loss, its gradient in the weights and/or per-example input gradients.

        Returns ``(loss, grad_W or None, grad_x or None, margins)`` where ``margins = y f(x)``.
        The loss is the mean of ``log(1 + exp(-y f(x)))``; ``grad_x`` is the gradient of each example's
        own loss (not divided by n), or with ``input_of="margin"`` the gradient of ``-y f(x)``: the same
        direction without the factor ``sigmoid(-y f(x))``, which fp32 rounds to zero for large margins
        (what an attack that normalises the step needs).
        """
        if input_of not in ("loss", "margin"):
            raise ValueError(f"input_of must be 'loss' or 'margin', got {input_of!r}")
        w = self.weight
        c = self.config
        b = self.thresholds(w)
        pre = x @ w.T
        act, G = _act_parts(pre, b, c.rho, c.q)
        f = act.sum(1)
        margins = y * f
        loss = torch.nn.functional.softplus(-margins).mean()
        dl_df = -y * torch.sigmoid(-margins)  # per-example dLoss/df
        grad_w = grad_x = None
        if need_input:
            coef = -y if input_of == "margin" else dl_df
            grad_x = (G * coef[:, None] if need_weight else G.mul_(coef[:, None])) @ w
        if need_weight:
            grad_w = G.mul_(dl_df[:, None]).T @ x / x.shape[0]
        return loss, grad_w, grad_x, margins

    @torch.no_grad()
    def sgd_step(self, grad_w: torch.Tensor, lr: float) -> None:
        self.W.sub_(grad_w, alpha=lr)

    def snapshot(self) -> torch.Tensor:
        return self.weight.detach().clone()


class LowRankTwoLayerNet(TwoLayerNet):
    """The network with weight ``W_base + A B^T`` where only the rank-``r`` factors ``A, B`` train.

    ``A`` starts at zero, so the network starts exactly at ``W_base`` (the clean weights); ``B`` starts
    as a random Gaussian with orthonormal-scale columns (as in LoRA).
    """

    def __init__(self, base: TwoLayerNet, rank: int, generator: torch.Generator | None = None):
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        m, d = base.weight.shape
        if rank > min(m, d):
            raise ValueError(f"rank={rank} must be at most min(m, d) = {min(m, d)}")
        super().__init__(d, base.config, weight=base.weight.detach())
        self.beta = base.beta
        dev = base.weight.device
        del self.W
        self.register_buffer("W_base", base.weight.detach().clone())
        self.A = nn.Parameter(torch.zeros(m, rank, device=dev))
        self.B = nn.Parameter(torch.randn(d, rank, generator=generator, device=dev) / math.sqrt(d))
        self.rank = rank

    @property
    def weight(self) -> torch.Tensor:
        return self.W_base + self.A @ self.B.T

    @property
    def update(self) -> torch.Tensor:
        """The learned update ``A B^T`` (rank at most ``r``)."""
        return self.A @ self.B.T

    @torch.no_grad()
    def sgd_step(self, grad_w: torch.Tensor, lr: float) -> None:
        # chain rule through W = W_base + A B^T, both factors updated from the same point
        grad_a = grad_w @ self.B
        grad_b = grad_w.T @ self.A
        self.A.sub_(grad_a, alpha=lr)
        self.B.sub_(grad_b, alpha=lr)


class AdamLowRankTwoLayerNet(LowRankTwoLayerNet):
    """:class:`LowRankTwoLayerNet` whose factors take Adam steps (the optimiser LoRA is trained with) instead
    of SGD steps: :func:`fp_helpers.training.train` hands ``sgd_step`` the gradient in ``W`` and the step's
    size ``lr``, and Adam (``torch.optim.Adam``, default betas) moves ``A`` and ``B`` from the chain rule's
    gradients. Adam's step is about ``lr`` per coordinate whatever the gradient's scale, which SGD's is not:
    through ``W = W_base + A B^T`` SGD's step in ``W`` is scaled by ``A A^T`` and ``B B^T``."""

    def __init__(self, base: TwoLayerNet, rank: int, generator: torch.Generator | None = None):
        super().__init__(base, rank, generator=generator)
        self._adam = torch.optim.Adam([self.A, self.B], lr=1e-3)

    @torch.no_grad()
    def sgd_step(self, grad_w: torch.Tensor, lr: float) -> None:
        self.A.grad = grad_w @ self.B
        self.B.grad = grad_w.T @ self.A
        for group in self._adam.param_groups:
            group["lr"] = lr
        self._adam.step()
        self.A.grad = self.B.grad = None


def purified_oracle(dist, scale: float = 10.0, beta: float = 0.1, config: NetConfig | None = None) -> TwoLayerNet:
    """The purified network of the theory: one neuron per atom, ``w_j = scale * M_j``, dead zone ``beta``.

    Each neuron reacts to its own atom only, so a perturbation must move the ~k active coordinates
    themselves to change the output: its l2 robust radius is about ``(1 - beta) / sqrt(k)``, against
    ``~1/sqrt(d)`` for the linear classifier on the points with the smallest margin.
    """
    cfg = config or NetConfig(m=dist.d, beta=beta)
    return TwoLayerNet(dist.d, cfg, weight=scale * dist.atoms.clone())
