"""Low-complexity baselines for the lower-bound chapter: linear, polynomial-kernel and NTK models.

Every model here is a binary ``nn.Module`` ``x -> f(x)`` with a ``grads`` method (autograd, or a closed form
where the model has one: the linearised network, the NTK model, the polynomial kernel's sum over centres),
so the same attacks (:mod:`fp_helpers.attacks`) and the same training loop
(:func:`fp_helpers.training.train`) serve them and the two-layer network alike.

- :class:`LinearModel`: ``<w, x> + b``; its worst case in a norm ball has a closed form
  (:func:`linear_worst_case`), so its robust accuracy is exact.
- :class:`KernelModel`: ``f(x) = sum_i alpha_i K(c_i, x)`` for the polynomial kernel
  (:class:`PolyKernel`, degree p: exactly the degree-<= p polynomials on the span of the centres) or the
  two-layer network's neural tangent kernel at initialisation (:class:`NTKKernel`). Clean training is
  kernel ridge regression (:func:`fit_kernel_ridge`); adversarial training alternates a PGD attack on the
  training set with an exact refit on clean + adversarial points (:func:`fit_kernel_adversarial`).
- :class:`LinearisedNet`: the first-order Taylor expansion of the two-layer network around its
  initialisation, trained by SGD like the network itself (clean, FGM or PGD).
- :class:`SparsePolynomial`: ``sum_j w*_j <M_j, x>^p``, a degree-p polynomial that *knows* the dictionary
  (not learnable from a generic polynomial class at this sample size; it shows what the asymptotic
  polynomial lower bound does and does not cover).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import TwoLayerNet, _act_parts
from .runs import check_norm, threads

MODEL_KINDS = ("linear", "poly", "ntk", "ntk_linearised", "sparse_poly", "two_layer")


def _act_second(t: torch.Tensor, b: torch.Tensor | float, rho: float, q: int) -> torch.Tensor:
    """``sigma_b''(t)``, the derivative in ``t`` of ``sigma_b'`` (:func:`fp_helpers.networks._act_parts`) with
    the thresholds ``b`` held fixed: ``(q - 1) / rho (u / rho)^(q - 2) sign(t)`` where
    ``0 < u = |t| - b < rho``, and 0 in the dead zone and on the linear part."""
    u = t.abs()
    if not (isinstance(b, float) and b == 0.0):
        u = u - b
    if q == 1:
        return torch.zeros_like(t)
    s = u.clamp(0.0, rho).mul_(1.0 / rho)
    d = s.pow_(q - 2) if q != 3 else s
    return d.mul_(((u > 0) & (u < rho)).to(t.dtype)).mul_((q - 1) / rho).mul_(t.sign())


def _tangent(x: torch.Tensor, W0: torch.Tensor, b0, rho: float, q: int, V: torch.Tensor, c: float, base: bool):
    """``f(x) = [sum_j sigma(t_j)] + c sum_j sigma'(t_j) <v_j, x>`` with ``t = x W0^T`` (the first sum only when
    ``base``): the linearised network (:class:`LinearisedNet`) and the NTK model's primal form
    (:meth:`NTKKernel.primal`). Returns ``(f, sigma'(t), input_grad)``; ``input_grad(coef)`` is the gradient
    of ``coef_n f(x_n)`` at each point, in closed form:
    ``([sigma'(t)] + c sigma''(t) <v, x>) W0 + c sigma'(t) V`` scaled by ``coef`` (two matrix products,
    no autograd graph)."""
    t = x @ W0.T
    act, dact = _act_parts(t, b0, rho, q)
    z = x @ V.T
    f = c * (dact * z).sum(1)
    if base:
        f = act.sum(1) + f

    def input_grad(coef: torch.Tensor) -> torch.Tensor:
        a = _act_second(t, b0, rho, q).mul_(z).mul_(c)
        if base:
            a.add_(dact)
        coef = coef[:, None]
        return a.mul_(coef) @ W0 + (dact * (coef * c)) @ V

    return f, dact, input_grad


def _logistic_grads(f: torch.Tensor, y: torch.Tensor, input_grad, need_input: bool, input_of: str):
    """The parts of a binary model's ``grads`` that follow from ``f(x)`` and ``input_grad(coef)`` (see
    :meth:`AutogradModel.grads`): ``(mean loss, dLoss/df per point, input gradient or None, margins)``."""
    if input_of not in ("loss", "margin"):
        raise ValueError(f"input_of must be 'loss' or 'margin', got {input_of!r}")
    margins = y * f
    dl_df = -y * torch.sigmoid(-margins)
    grad_x = input_grad(-y if input_of == "margin" else dl_df) if need_input else None
    return F.softplus(-margins).mean(), dl_df, grad_x, margins


def check_degree(p) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise ValueError(f"polynomial degree must be an int >= 1, got {p!r}")
    return p


def check_kind(kind: str) -> str:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; allowed: {', '.join(MODEL_KINDS)}")
    return kind


class AutogradModel(nn.Module):
    """Binary model with the ``grads`` / ``sgd_step`` interface of :class:`TwoLayerNet`, through autograd."""

    beta = 0.0  # no dead zone (the training loop reads it)

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def grads(self, x: torch.Tensor, y: torch.Tensor, need_weight: bool = True, need_input: bool = False,
              input_of: str = "loss"):
        """``(mean logistic loss, [mean grad per parameter] or None, per-example input grad or None, margins)``;
        ``input_of="margin"``: the input gradient of ``-y f(x)`` instead (as :meth:`TwoLayerNet.grads`)."""
        if input_of not in ("loss", "margin"):
            raise ValueError(f"input_of must be 'loss' or 'margin', got {input_of!r}")
        params = self._trainable() if need_weight else []
        with torch.enable_grad():
            xr = x.detach().requires_grad_(need_input)
            margins = y * self(xr)
            per = F.softplus(-margins)
            gs = torch.autograd.grad(per.sum(), params, retain_graph=need_input) if params else ()
            grad_x = None
            if need_input:
                (grad_x,) = torch.autograd.grad((per if input_of == "loss" else -margins).sum(), xr)
        n = x.shape[0]
        grad_w = [g / n for g in gs] if need_weight else None
        return per.mean().detach(), grad_w, grad_x, margins.detach()

    @torch.no_grad()
    def sgd_step(self, grad_w, lr: float) -> None:
        for p, g in zip(self._trainable(), grad_w):
            p.sub_(g, alpha=lr)

    def snapshot(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.parameters()]).clone()


# ----------------------------------------------------------------------------------------------- linear


class LinearModel(AutogradModel):
    """``f(x) = <w, x> + b``, initialised at zero."""

    def __init__(self, d: int, device=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, device=device))
        self.b = nn.Parameter(torch.zeros((), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def _dual_norm(w: torch.Tensor, norm: str) -> torch.Tensor:
    return w.norm() if check_norm(norm) == "l2" else w.abs().sum()


def linear_worst_case(model: LinearModel, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2"):
    """The exact worst case of a linear model in the ``norm`` ball of radius ``eps``.

    Returns ``(x_adv, margins)``: the perturbed points ``x - y eps w/||w||_2`` (l2) or ``x - y eps sign(w)``
    (l-inf), and their margins ``y f(x) - eps ||w||_*`` (``||.||_*`` the dual norm), which no attack inside
    the ball can push lower.
    """
    w = model.w.detach()
    with torch.no_grad():
        m = y * model(x) - eps * _dual_norm(w, norm)
        direction = w / w.norm().clamp_min(1e-12) if norm == "l2" else w.sign()
        return x - eps * y[:, None] * direction[None, :], m


def linear_exact_robust_accuracy(model: LinearModel, x, y, eps: float, norm: str = "l2") -> float:
    return (linear_worst_case(model, x, y, eps, norm)[1] > 0).float().mean().item()


# ----------------------------------------------------------------------------------------------- kernels


class PolyKernel:
    """``K(a, b) = (1 + <a, b> / s)^p``: its RKHS is the polynomials of degree <= p.

    Explicit monomial features are out of reach at d = 400 (``C(403, 3) ~ 1.1e7`` features at p = 3,
    ``~1e9`` at p = 4); the kernel gives the same function class on the span of the centres, and it is
    what kernel methods use in practice. ``s`` (the typical ``||x||^2``) keeps the base near 1.
    """

    def __init__(self, degree: int, scale: float = 1.0):
        self.degree = check_degree(degree)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"kernel scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)
        self.name = f"poly_{degree}"

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (1.0 + a @ b.T / self.scale).pow(self.degree)

    def dual_value_and_input_grad(self, x: torch.Tensor, centres: torch.Tensor, alpha: torch.Tensor):
        """``f(x) = sum_i alpha_i K(c_i, x)`` (the same numbers as ``K(x, centres) @ alpha``) and
        ``input_grad(coef)``, the gradient of ``coef_n f(x_n)``: ``p / s (B^(p-1) * alpha) C`` with
        ``B = 1 + x C^T / s`` (two ``(n, n_centres)`` matrices and a few passes over them; autograd keeps
        several more)."""
        B = (x @ centres.T).div_(self.scale).add_(1.0)
        f = B.pow(self.degree) @ alpha

        def input_grad(coef: torch.Tensor) -> torch.Tensor:
            g = B.pow(self.degree - 1).mul_(alpha) @ centres
            return g.mul_((coef * (self.degree / self.scale))[:, None])

        return f, input_grad

    def primal(self, centres: torch.Tensor, alpha: torch.Tensor):
        """``x -> sum_i alpha_i K(c_i, x)`` written out in the input space, for degrees 1 and 2 (coefficients
        summed in float64 once): ``a + <w, x>`` and ``a + <w, x> + x^T Q x``. Higher degrees have ``d^p``
        coefficients (``None``: the model keeps the sum over centres)."""
        if self.degree > 2:
            return None
        C, al, s = centres.double(), alpha.double(), self.scale
        const = al.sum().to(centres.dtype)
        w = (self.degree * (C.T @ al) / s).to(centres.dtype)
        if self.degree == 1:
            return lambda x: x @ w + const
        Q = ((C.T * al) @ C / (s * s)).to(centres.dtype)
        return lambda x: ((x @ Q) * x).sum(1) + x @ w + const


class NTKKernel:
    """The empirical neural tangent kernel of a :class:`TwoLayerNet` at its current weights ``W0``.

    ``f(x) = sum_i sigma(<w_i, x>)`` gives ``grad_{w_i} f(x) = sigma'(<w_i, x>) x``, so
    ``K(a, b) = <a, b> * sum_i sigma'(<w_i, a>) sigma'(<w_i, b>) = (A B^T) * (S_A S_B^T)`` with
    ``S = sigma'(X W0^T)``: two matrix products per block, never a per-example Jacobian. The dead-zone
    thresholds are taken at ``W0`` and held fixed (as in the network, where they are not differentiated).
    ``scale`` divides the kernel (kernel ridge and the linearised model are invariant to it up to the
    ridge / step size, which are set relative to it).
    """

    def __init__(self, net: TwoLayerNet, scale: float = 1.0):
        W0 = net.weight.detach().clone()
        self.W0 = W0
        b = net.thresholds(W0)
        self.b0 = b.clone() if torch.is_tensor(b) else float(b)
        self.rho, self.q = net.config.rho, net.config.q
        self.scale = float(scale)
        self.name = "ntk"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``S(x) = sigma'(x W0^T)`` of shape ``(n, m)`` (differentiable in ``x``)."""
        return _act_parts(x @ self.W0.T, self.b0, self.rho, self.q)[1]

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T) * (self.features(a) @ self.features(b).T) / self.scale

    def primal(self, centres: torch.Tensor, alpha: torch.Tensor):
        """``x -> sum_i alpha_i K(c_i, x)`` written out: ``sum_j S_j(x) <v_j, x>`` with
        ``v_j = sum_i alpha_i S_j(c_i) c_i / scale`` (an ``(m, d)`` matrix, summed in float64 once), i.e. a
        linearised network. Per point ``m d`` operations instead of ``n_centres (d + m)``."""
        with torch.no_grad():
            S = self.features(centres).double()
            V = ((S * alpha.double()[:, None]).T @ centres.double() / self.scale).to(centres.dtype)
        return _TangentFunction(self, V)

    @torch.no_grad()
    def gram(self, a: torch.Tensor, b: torch.Tensor | None = None, block: int = 2048) -> torch.Tensor:
        """The ``(n_a, n_b)`` Gram matrix in row blocks (memory: the output plus one block)."""
        b = a if b is None else b
        Sb = self.features(b)
        out = torch.empty(a.shape[0], b.shape[0], device=a.device, dtype=a.dtype)
        for i in range(0, a.shape[0], block):
            ai = a[i:i + block]
            torch.mul(ai @ b.T, self.features(ai) @ Sb.T, out=out[i:i + block])
        return out.div_(self.scale)

    def mean_diag(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            return ((x * x).sum(1) * (self.features(x) ** 2).sum(1)).mean().item()


class _TangentFunction:
    """``x -> sum_j S_j(x) <v_j, x>`` (:meth:`NTKKernel.primal`), with its input gradient in closed form."""

    def __init__(self, kernel: NTKKernel, V: torch.Tensor):
        self.kernel, self.V = kernel, V

    def value_and_input_grad(self, x: torch.Tensor):
        k = self.kernel
        f, _, input_grad = _tangent(x, k.W0, k.b0, k.rho, k.q, self.V, 1.0, base=False)
        return f, input_grad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_and_input_grad(x)[0]


def ntk_torch_func(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Reference empirical NTK through ``torch.func``: per-example Jacobians, then their contraction
    (the recipe of the PyTorch "Neural Tangent Kernels" tutorial). Memory ``O(n * #params)``: small nets only."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def f_single(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    j1 = vmap(jacrev(f_single), (None, 0))(params, x1)
    j2 = vmap(jacrev(f_single), (None, 0))(params, x2)
    return sum(j1[k].flatten(1) @ j2[k].flatten(1).T for k in params)


class KernelModel(AutogradModel):
    """``f(x) = sum_i alpha_i K(c_i, x)`` with fixed centres ``c_i`` and coefficients ``alpha``.

    Where the kernel can write this function out in the input space (``kernel.primal``: the NTK, polynomials of
    degree 1 and 2), it is evaluated that way: the same function, at a cost that does not grow with the
    number of centres (thousands after adversarial refits), and without the cancellation of summing
    thousands of large ``alpha_i K(c_i, x)`` terms in float32. Recomputed whenever ``centres`` or ``alpha``
    change (``load_state_dict``, ``.to``)."""

    def __init__(self, kernel, centres: torch.Tensor, alpha: torch.Tensor):
        super().__init__()
        self.kernel = kernel
        self.register_buffer("centres", centres.detach().clone())
        self.register_buffer("alpha", alpha.detach().clone())
        self._primal_key = self._primal = None

    def dual(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over centres itself (what :meth:`forward` computes where no primal form exists)."""
        return self.kernel(x, self.centres) @ self.alpha

    def _primal_form(self):
        key = tuple((t.data_ptr(), t._version, t.device) for t in (self.centres, self.alpha))
        if key != self._primal_key:
            make = getattr(self.kernel, "primal", None)
            self._primal, self._primal_key = (make(self.centres, self.alpha) if make else None), key
        return self._primal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primal = self._primal_form()
        return self.dual(x) if primal is None else primal(x)

    @torch.no_grad()
    def grads(self, x: torch.Tensor, y: torch.Tensor, need_weight: bool = True, need_input: bool = False,
              input_of: str = "loss"):
        """As :meth:`AutogradModel.grads` (no trainable parameters: ``grad_w`` is ``[]``), in closed form where
        the kernel gives the input gradient (the NTK's primal form, the polynomial kernel's sum over
        centres); autograd otherwise (the polynomials of degree 1 and 2 in primal form: cheap either way)."""
        primal = self._primal_form()
        dual = getattr(self.kernel, "dual_value_and_input_grad", None) if primal is None else None
        closed = getattr(primal, "value_and_input_grad", None)
        if dual is None and closed is None:
            return super().grads(x, y, need_weight, need_input, input_of)
        f, input_grad = closed(x) if dual is None else dual(x, self.centres, self.alpha)
        loss, _, grad_x, margins = _logistic_grads(f, y, input_grad, need_input, input_of)
        return loss, ([] if need_weight else None), grad_x, margins


def _gram(kernel, a: torch.Tensor) -> torch.Tensor:
    if isinstance(kernel, NTKKernel):
        return kernel.gram(a)
    with torch.no_grad():
        return kernel(a, a)


def fit_kernel_ridge(kernel, x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> KernelModel:
    """Kernel ridge regression on the labels: ``alpha = (K + lambda I)^-1 y`` with ``lambda = ridge *
    mean(diag K)`` (so the ridge does not depend on the kernel's scale); solved in float64 by Cholesky."""
    if not (ridge > 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    K = _gram(kernel, x).double()
    lam = ridge * K.diagonal().mean()
    K.diagonal().add_(lam)
    return KernelModel(kernel, x, _solve_spd(K, y.double()).to(x.dtype))


def _solve_spd(K: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``K^-1 y`` by Cholesky; on a CPU in one thread: LAPACK's blocked factorisation sums in an order that
    depends on the thread count (at n = 6,000 the solutions of 1 and 2 threads differ in the last bits),
    and a run's numbers must not depend on how many threads or worker processes it had."""
    with threads(1) if K.device.type == "cpu" else contextlib.nullcontext():
        return torch.cholesky_solve(y[:, None], torch.linalg.cholesky(K)).squeeze(1)


def fit_kernel_adversarial(kernel, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2",
                           ridge: float = 1e-3, rounds: int = 2, attack_steps: int = 10,
                           generator: torch.Generator | None = None) -> KernelModel:
    """Adversarial training of a kernel model: start from kernel ridge on the clean set; then, each round,
    attack the training set with PGD against the current model and refit exactly on clean + adversarial
    points (the refit is the exact minimiser of the regularised loss on those points, by the representer
    theorem: the outer minimisation is solved exactly, the inner maximisation by PGD)."""
    from .attacks import pgd

    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    model = fit_kernel_ridge(kernel, x, y, ridge)
    for _ in range(rounds):
        xa = pgd(model, x, y, eps, norm, steps=attack_steps, restarts=1, generator=generator)
        model = fit_kernel_ridge(kernel, torch.cat([x, xa]), torch.cat([y, y]), ridge)
    return model


# ----------------------------------------------------------------------------------------------- NTK linearised


class LinearisedNet(AutogradModel):
    """``f_lin(x) = f(x; W0) + c sum_i sigma'(<w0_i, x>) <v_i, x>``: the network's first-order Taylor
    expansion around ``W0`` (``W = W0 + c V``; trainable ``V``, starts at 0).

    ``c = 1/sqrt(mean NTK diagonal)`` only rescales the step size (at init std 0.01 the raw tangent
    features are ~1e-3 small); the function class is exactly the linearised network's.
    """

    def __init__(self, net: TwoLayerNet, x_ref: torch.Tensor | None = None):
        super().__init__()
        self.kernel = NTKKernel(net)
        self.register_buffer("W0", self.kernel.W0)
        self.V = nn.Parameter(torch.zeros_like(self.W0))
        md = self.kernel.mean_diag(x_ref) if x_ref is not None else 1.0
        self.c = 1.0 / math.sqrt(max(md, 1e-30))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        return _tangent(x, self.W0, k.b0, k.rho, k.q, self.V, self.c, base=True)[0]

    @torch.no_grad()
    def grads(self, x: torch.Tensor, y: torch.Tensor, need_weight: bool = True, need_input: bool = False,
              input_of: str = "loss"):
        """As :meth:`AutogradModel.grads`, in closed form (:func:`_tangent`): the gradient in ``V`` is
        ``c (sigma'(t) * dLoss/df)^T x / n``. PGD training calls it 8 times per step; with autograd the
        lower-bound run's linearised stage took 65-67 s instead of 51-55 s (1 thread, interleaved:
        ``scripts/studies_ab.py grads``); ``tests/test_lower_bounds.py`` checks that the two agree."""
        k = self.kernel
        f, dact, input_grad = _tangent(x, self.W0, k.b0, k.rho, k.q, self.V, self.c, base=True)
        loss, dl_df, grad_x, margins = _logistic_grads(f, y, input_grad, need_input, input_of)
        grad_w = [(dact * (dl_df * (self.c / x.shape[0]))[:, None]).T @ x] if need_weight else None
        return loss, grad_w, grad_x, margins


# ----------------------------------------------------------------------------------------------- feature-aware


class SparsePolynomial(AutogradModel):
    """``f(x) = sum_j w*_j <M_j, x>^p`` (p odd): a degree-p polynomial built from the dictionary itself."""

    def __init__(self, dist, degree: int = 3):
        super().__init__()
        self.degree = check_degree(degree)
        if degree % 2 == 0:
            raise ValueError(f"the sparse polynomial needs an odd degree (an even one cannot tell signs), got {degree}")
        self.register_buffer("M", dist.M.clone())
        self.register_buffer("w_star", dist.w_star.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.M).pow(self.degree) @ self.w_star
