"""Baselines of the lower-bound chapter: NTK closed form, linear worst case, training behaviour, bad input."""

import json
import math

import pytest
import torch

from fp_helpers import baselines as bl
from fp_helpers.__main__ import main
from fp_helpers.attacks import AttackSpec, fgm, robust_accuracy, robust_curve, robust_curve_nested
from fp_helpers.lower_bounds import lower_bounds_config
from fp_helpers.networks import NetConfig, TwoLayerNet
from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig
from fp_helpers.training import TrainConfig, train
from fp_helpers.runs import threads


@pytest.fixture(scope="module")
def data():
    dist = SparseCoding(SparseCodingConfig(d=100, k=5), seed=0)
    g = torch.Generator().manual_seed(1)
    X, Y = dist.sample(800, g)
    xe, ye = dist.sample(600, g)
    return dist, X, Y, xe, ye


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_closed_form_ntk_equals_torch_func(beta):
    torch.manual_seed(0)
    net = TwoLayerNet(20, NetConfig(m=16, beta=beta, init_std=0.3), generator=torch.Generator().manual_seed(1))
    x1, x2 = torch.randn(9, 20), torch.randn(6, 20)
    ref = bl.ntk_torch_func(net, x1, x2)
    k = bl.NTKKernel(net)
    scale = ref.abs().max()
    assert ((k(x1, x2) - ref).abs().max() / scale) < 1e-5
    assert ((k.gram(x1, x2, block=4) - ref).abs().max() / scale) < 1e-5  # row blocks give the same matrix
    net64 = net.double()
    ref64 = bl.ntk_torch_func(net64, x1.double(), x2.double())
    assert (bl.NTKKernel(net64)(x1.double(), x2.double()) - ref64).abs().max() < 1e-10


def test_linearised_net_is_the_first_order_expansion():
    net = TwoLayerNet(30, NetConfig(m=20, init_std=0.3), generator=torch.Generator().manual_seed(2)).double()
    x = torch.randn(50, 30, dtype=torch.float64)
    lin = bl.LinearisedNet(net).double()
    assert torch.allclose(lin(x), net(x))  # V = 0: the network at initialisation
    V = torch.randn_like(lin.V)

    def remainder(eps):
        with torch.no_grad():
            lin.V.copy_(eps * V)
            moved = TwoLayerNet(30, net.config, weight=net.W.detach() + lin.c * eps * V)
            return (moved(x) - lin(x)).abs().max().item(), (moved(x) - net(x)).abs().max().item()

    (r1, c1), (r2, c2) = remainder(1e-3), remainder(5e-4)
    assert r1 < 0.05 * c1  # the expansion captures the change to first order ...
    assert 0.15 < r2 / r1 < 0.35 and 0.4 < c2 / c1 < 0.6  # ... the remainder is quadratic, the change linear
    # its tangent kernel (in V) is c^2 times the network's NTK
    K_lin = bl.ntk_torch_func(lin, x[:5], x[5:9])
    assert torch.allclose(K_lin, lin.c ** 2 * bl.NTKKernel(net)(x[:5], x[5:9]), rtol=1e-8, atol=1e-12)


def _autograd_and_closed_form(model, x, y, need_weight):
    """Both ways of ``grads``: the model's closed form and the generic autograd one, for loss and margin."""
    out = []
    for input_of in ("loss", "margin"):
        out.append((model.grads(x, y, need_weight, True, input_of),
                    bl.AutogradModel.grads(model, x, y, need_weight, True, input_of)))
    return out


def _assert_same_grads(pairs, rtol):
    for closed, auto in pairs:
        for a, b in zip(closed, auto):
            if isinstance(a, list):
                assert len(a) == len(b)
                for u, v in zip(a, b):
                    assert (u - v).abs().max() <= rtol * v.abs().max(), "weight gradient"
            else:
                assert (a - b).abs().max() <= rtol * b.abs().max() + 1e-300, "loss, input gradient or margins"


@pytest.mark.parametrize("beta,q", [(0.0, 3), (0.2, 3), (0.2, 2), (0.1, 4)])
def test_linearised_net_closed_form_grads_equal_autograd(beta, q):
    """LinearisedNet.grads (closed form, with the activation's second derivative) gives what autograd gives:
    loss, margins, the gradient in V and the input gradient of the loss and of the margin; with a dead zone
    (beta > 0), and with V away from 0 so the second-derivative term matters."""
    net = TwoLayerNet(30, NetConfig(m=20, beta=beta, q=q, rho=0.5, init_std=0.3),
                      generator=torch.Generator().manual_seed(2)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 30, generator=g, dtype=torch.float64)
    y = torch.randn(64, generator=g, dtype=torch.float64).sign()
    lin = bl.LinearisedNet(net, x_ref=x).double()
    with torch.no_grad():
        lin.V.copy_(torch.randn(lin.V.shape, generator=g, dtype=torch.float64) * 3)
    pairs = _autograd_and_closed_form(lin, x, y, need_weight=True)
    _assert_same_grads(pairs, 1e-10)
    # the second-derivative term is not negligible here (without it the input gradient is far off)
    k = lin.kernel
    no_second = (bl._act_parts(x @ lin.W0.T, k.b0, k.rho, k.q)[1] * y[:, None].neg()) @ (lin.W0 + lin.c * lin.V)
    assert (no_second - pairs[1][1][2]).abs().max() > 1e-3 * pairs[1][1][2].abs().max()
    # and the training loop's step from the closed form is autograd's step
    a, b = bl.LinearisedNet(net, x_ref=x).double(), bl.LinearisedNet(net, x_ref=x).double()
    for _ in range(3):
        a.sgd_step(a.grads(x, y)[1], 0.5)
        b.sgd_step(bl.AutogradModel.grads(b, x, y)[1], 0.5)
    assert torch.allclose(a.V, b.V, rtol=1e-10, atol=1e-14)


def _kernel_of(data, kernel):
    """The kernel ``kernel`` (``poly_<p>`` or ``ntk``) for the fixture's data, and the data in float64."""
    dist, X, Y, xe, ye = data
    X, Y, xe, ye = X.double(), Y.double(), xe.double(), ye.double()
    if kernel == "ntk":
        net = TwoLayerNet(dist.d, NetConfig(m=40, beta=0.1, init_std=0.3), generator=torch.Generator().manual_seed(3))
        k = bl.NTKKernel(net.double())
        k.scale = k.mean_diag(X)
    else:
        k = bl.PolyKernel(int(kernel[-1]), (X * X).sum(1).mean().item())
    return k, X, Y, xe, ye


@pytest.mark.parametrize("kernel", ["poly_3", "poly_4", "ntk"])
def test_kernel_model_closed_form_grads_equal_autograd(data, kernel):
    """KernelModel.grads in closed form (the polynomial kernel's sum over centres, the NTK's primal form)
    equals autograd on a model fitted with adversarial points among its centres; no weight gradient."""
    k, X, Y, xe, ye = _kernel_of(data, kernel)
    model = bl.fit_kernel_adversarial(k, X, Y, 0.2, rounds=1, attack_steps=3, generator=torch.Generator().manual_seed(0))
    pairs = _autograd_and_closed_form(model, xe, ye, need_weight=True)
    assert pairs[0][0][1] == [] and pairs[0][1][1] == []
    _assert_same_grads(pairs, 1e-9)
    # the closed form's margins are the forward pass's, bit for bit (PGD keeps its best iterate by them)
    assert torch.equal(pairs[0][0][3], ye * model(xe))


def _train_linear(X, Y, dist, attack="none", tau=0.0, start=None, steps=600):
    model = bl.LinearModel(X.shape[1])
    if start is not None:
        model.load_state_dict(start.state_dict())
    train(model, dist, TrainConfig(steps=steps, batch=64, lr=1.0, attack=attack, tau=tau, log_every=10**9),
          torch.Generator().manual_seed(0), data=(X, Y), progress=False)
    return model


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_closed_form_attack_is_optimal_and_pgd_matches_it(data, norm):
    dist, X, Y, xe, ye = data
    model = _train_linear(X, Y, dist)
    eps = 0.1 if norm == "l2" else 0.01
    x_adv, m_exact = bl.linear_worst_case(model, xe, ye, eps, norm)
    # the closed-form point is inside the ball and attains the closed-form margin
    dist_ = (x_adv - xe).norm(dim=1) if norm == "l2" else (x_adv - xe).abs().amax(1)
    assert dist_.max() <= eps * (1 + 1e-5)
    assert torch.allclose(ye * model(x_adv).detach(), m_exact, atol=1e-5)
    # no attack does better: PGD's margins are never below the exact worst case
    from fp_helpers.attacks import pgd

    xp = pgd(model, xe, ye, eps, norm, steps=20, restarts=2, generator=torch.Generator().manual_seed(0))
    assert (ye * model(xp).detach() >= m_exact - 1e-4).all()
    exact = bl.linear_exact_robust_accuracy(model, xe, ye, eps, norm)
    pgd_acc = robust_accuracy(model, xe, ye, eps, AttackSpec("pgd", norm, 20, 2), torch.Generator().manual_seed(0))
    assert exact <= pgd_acc <= exact + 0.01
    assert 0.05 < exact < 0.95  # a radius where the check means something


def test_adversarial_training_helps_a_linear_model_only_below_its_margin_bound(data):
    dist, X, Y, xe, ye = data
    clean = _train_linear(X, Y, dist)
    adv = _train_linear(X, Y, dist, attack="fgm", tau=0.05, start=clean)
    def rob(m, r):
        return bl.linear_exact_robust_accuracy(m, xe, ye, r)

    assert rob(adv, 0.05) > rob(clean, 0.05) + 0.02  # below the smallest margin (1/sqrt(d) = 0.1): a gain
    assert rob(adv, 0.15) < rob(clean, 0.15) + 0.01  # beyond it: none
    # far beyond the typical margin sqrt(k/d) no linear model survives: each point's exact margin is at
    # most ||x|| and typically |<w*, z>|/sqrt(d) ~ sqrt(k/d)
    for m in (clean, adv):
        assert rob(m, 3 * math.sqrt(dist.k / dist.d)) < 0.05


def test_kernel_ridge_fits_and_generalises(data):
    dist, X, Y, xe, ye = data
    scale = (X * X).sum(1).mean().item()
    for p in (1, 3):
        model = bl.fit_kernel_ridge(bl.PolyKernel(p, scale), X, Y, ridge=1e-3)
        from fp_helpers.attacks import accuracy

        assert accuracy(model, X, Y) >= (1.0 if p == 3 else 0.98)  # degree 3 interpolates 800 points
        assert accuracy(model, xe, ye) > 0.8
        # FGM through the kernel expansion increases the loss (autograd input gradients are right)
        loss = lambda x: torch.nn.functional.softplus(-ye * model(x)).mean().item()
        assert loss(fgm(model, xe, ye, 0.1)) > loss(xe)


@pytest.mark.parametrize("kernel", ["poly_1", "poly_2", "ntk"])
def test_primal_form_is_the_same_function_and_gradient_as_the_sum_over_centres(data, kernel):
    """Kernel models whose kernel writes them out in the input space (KernelModel.forward) compute the same
    function as the sum over centres, with the same input gradients (float64 on both sides: equal to
    rounding), on a fitted model with adversarial points among its centres; and the primal form follows
    new coefficients (load_state_dict)."""
    k, X, Y, xe, ye = _kernel_of(data, kernel)
    assert k.primal(X, Y) is not None
    model = bl.fit_kernel_adversarial(k, X, Y, 0.2, rounds=1, attack_steps=3, generator=torch.Generator().manual_seed(0))
    assert model.centres.shape[0] == 2 * X.shape[0]
    x = xe.clone().requires_grad_(True)
    primal = model(x)
    (g_primal,) = torch.autograd.grad(primal.sum(), x)
    dual = model.dual(x)
    (g_dual,) = torch.autograd.grad(dual.sum(), x)
    assert (primal - dual).abs().max() < 1e-8 * dual.abs().max()
    assert (g_primal - g_dual).abs().max() < 1e-8 * g_dual.abs().max()
    state = {k_: v.clone() for k_, v in model.state_dict().items()}
    state["alpha"] = -state["alpha"]
    model.load_state_dict(state)
    assert torch.allclose(model(xe), -dual.detach(), rtol=1e-8, atol=1e-10)


def test_kernel_ridge_does_not_depend_on_the_thread_count():
    """The Cholesky solve runs in one thread (LAPACK's blocked factorisation depends on the thread count: the
    raw solve below differs at this size), so a kernel model is bit-identical in 1 or 2 threads."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 50, generator=g, dtype=torch.float64)  # float64 alphas: no rounding hides a difference
    y = torch.randn(3000, generator=g, dtype=torch.float64).sign()
    k = bl.PolyKernel(2, 50.0)
    alphas, raw = [], []
    for t in (1, 2):
        with threads(t):
            alphas.append(bl.fit_kernel_ridge(k, x, y, 1e-3).alpha)
            K = k(x, x)
            K.diagonal().add_(1e-3 * K.diagonal().mean())
            raw.append(torch.linalg.cholesky(K))
            assert torch.get_num_threads() == t  # restored
    if torch.equal(raw[0], raw[1]):
        pytest.skip("this machine's LAPACK factorises this matrix identically in 1 and 2 threads")
    assert torch.equal(alphas[0], alphas[1])


def test_degree_3_kernels_keep_the_sum_over_centres():
    assert bl.PolyKernel(3, 1.0).primal(torch.randn(5, 4), torch.randn(5)) is None


def test_nested_curve_is_monotone_and_never_above_the_independent_one(data):
    dist, X, Y, xe, ye = data
    model = bl.fit_kernel_ridge(bl.PolyKernel(3, 5.0), X, Y)
    radii = [0.0, 0.1, 0.2, 0.3]
    spec = AttackSpec("pgd", "l2", 10, 1)
    nested = robust_curve_nested(model, xe[:200], ye[:200], radii, spec, torch.Generator().manual_seed(0))
    indep = robust_curve(model, xe[:200], ye[:200], radii, spec, torch.Generator().manual_seed(0))
    assert all(a >= b for a, b in zip(nested, nested[1:]))
    assert all(n <= i + 1e-9 for n, i in zip(nested, indep))
    assert nested[0] == indep[0]


def test_sparse_polynomial_is_more_robust_than_the_best_linear_classifier(data):
    dist, X, Y, xe, ye = data
    best = bl.LinearModel(dist.d)
    with torch.no_grad():
        best.w.copy_(dist.u)
    cubic = bl.SparsePolynomial(dist, 3)
    spec = AttackSpec("pgd", "l2", 20, 1)
    r = 0.15
    assert robust_accuracy(cubic, xe, ye, r, spec) > bl.linear_exact_robust_accuracy(best, xe, ye, r) + 0.1


@pytest.mark.parametrize("make, msg", [
    (lambda: bl.PolyKernel(0), "degree must be an int >= 1"),
    (lambda: bl.check_degree(2.5), "degree must be an int >= 1"),
    (lambda: bl.check_kind("rbf"), "unknown model 'rbf'"),
    (lambda: lower_bounds_config("quick", ["degrees=0,2"]), "degree must be an int >= 1"),
    (lambda: lower_bounds_config("quick", ["models=linear,svm"]), "unknown model 'svm'"),
    (lambda: lower_bounds_config("quick", ["bogus=1"]), "unknown config key 'bogus'"),
    (lambda: lower_bounds_config("quick", ["lb_radii=0.2,0.1"]), "lb_radii must be increasing"),
    (lambda: bl.fit_kernel_ridge(bl.PolyKernel(2), torch.randn(4, 3), torch.ones(4), ridge=0), "ridge must be"),
])
def test_bad_input_gets_a_clear_error(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_sparse_polynomial_rejects_even_degree(data):
    with pytest.raises(ValueError, match="odd degree"):
        bl.SparsePolynomial(data[0], 2)


def test_run_lower_bounds_writes_the_promised_json(tmp_path):
    out = tmp_path / "lb.json"
    tiny = ["clean_steps=300", "adv_steps=100", "eval_n=150", "lb_eval_n=150", "curve_n=60", "n_train=200",
            "linear_steps=100", "lin_steps=100", "lin_adv_steps=50", "degrees=1,3", "adv_attack_steps=3", "pgd_steps=5"]
    args = ["run", "lower-bounds", "--profile", "quick", "--seed", "1", "--out", str(out)]
    for t in tiny:
        args += ["--set", t]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["config"]["seed"] == 1 and r["config"]["degrees"] == [1, 3] and r["seconds"] > 0
    names = ["linear", "linear_adv", "poly_1", "poly_1_adv", "poly_3", "poly_3_adv", "ntk", "ntk_adv",
             "ntk_linearised", "ntk_linearised_adv", "two_layer_adv"]
    for name in names:
        assert 0 <= r[name]["clean_acc"] <= 1 and 0 <= r[name]["robust_acc"] <= r[name]["clean_acc"] + 1e-9, name
        assert len(r[name]["curve"]) == len(r["radii"])
    assert abs(r["linear"]["robust_acc"] - r["linear"]["exact_robust_acc"]) <= 0.02
    assert sorted(r["adv_radius_sweep"]) == ["ntk_adv", "poly_1_adv", "poly_3_adv"]  # every kernel, at 2 and 4 tau
    assert all([x["radius_mult"] for x in v] == [2.0, 4.0] for v in r["adv_radius_sweep"].values())


def test_cli_lower_bounds_rejects_bad_input(tmp_path, capsys):
    assert main(["run", "lower-bounds", "--profile", "quick", "--set", "degrees=0", "--out", str(tmp_path / "x")]) == 2
    assert "degree must be an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ the chapter's summary numbers (lower_bounds)
from types import SimpleNamespace

from fp_helpers import exercises
from fp_helpers import lower_bounds as lbm


def test_constant_predictor_keeps_the_majority_share_at_every_radius(data):
    assert lbm.constant_robust_accuracy(torch.tensor([1.0, 1.0, 1.0, -1.0])) == 0.75
    assert lbm.constant_robust_accuracy(torch.tensor([-1, -1, 1, -1, -1])) == 0.8
    assert lbm.constant_robust_accuracy(torch.tensor([1.0, -1.0] * 50)) == 0.5
    # it is what PGD leaves to a constant model (w = 0, a bias towards the majority), at any radius
    dist, X, Y, xe, ye = data
    const = bl.LinearModel(dist.d)
    with torch.no_grad():
        const.b.fill_(1.0 if (ye == 1).float().mean() >= 0.5 else -1.0)
    for eps in (0.0, 0.3, 3.0):
        acc = robust_accuracy(const, xe, ye, eps, AttackSpec("pgd", "l2", 5, 2), generator=torch.Generator().manual_seed(0))
        assert acc == pytest.approx(lbm.constant_robust_accuracy(ye))
    for bad in (torch.tensor([1.0, 0.0]), torch.tensor([]), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="y must"):
            lbm.constant_robust_accuracy(bad)


class _PlantedPoly(bl.PolyKernel):
    """A polynomial kernel that is off by ``err`` in float32 only (a planted rounding error)."""

    def __init__(self, degree, scale, err):
        super().__init__(degree, scale)
        self.err = err

    def __call__(self, a, b):
        K = super().__call__(a, b)
        return K + self.err if K.dtype == torch.float32 else K


def test_dual_float64_check_finds_a_planted_float32_error(data):
    dist, X, Y, xe, ye = data
    model = bl.fit_kernel_ridge(bl.PolyKernel(3, (X * X).sum(1).mean().item()), X[:300], Y[:300])
    clean = lbm.dual_float64_check(model, xe, block=128)
    assert clean["n"] == xe.shape[0] and clean["median_abs_f"] > 0.1
    assert clean["forward_err"] < 1e-3 * clean["median_abs_f"] and clean["forward_flips"] == 0
    assert clean["dual32_err"] == clean["forward_err"]  # degree 3: the model is the float32 sum itself
    # every float32 output moves by err * sum(alpha): half the median |f|
    err = 0.5 * clean["median_abs_f"] / model.alpha.double().sum().item()
    shift = err * model.alpha.double().sum().item()
    planted = bl.KernelModel(_PlantedPoly(3, model.kernel.scale, err), model.centres, model.alpha)
    c = lbm.dual_float64_check(planted, xe)
    assert c["forward_err"] == pytest.approx(abs(shift), rel=1e-3)
    f64 = model.kernel(xe.double(), model.centres.double()) @ model.alpha.double()
    flips = int(((f64 + shift > 0) != (f64 > 0)).sum())
    assert c["forward_flips"] == c["dual32_flips"] == flips and flips > 0.1 * xe.shape[0]
    # a primal form (degree 1) is what the model computes; its float32 sum is checked on the side
    ridge1 = bl.fit_kernel_ridge(bl.PolyKernel(1, model.kernel.scale), X[:300], Y[:300])
    affine = bl.KernelModel(_PlantedPoly(1, model.kernel.scale, err), ridge1.centres, ridge1.alpha)
    c1 = lbm.dual_float64_check(affine, xe)
    shift1 = abs(err * ridge1.alpha.double().sum().item())
    assert c1["forward_err"] < 1e-4 * c1["median_abs_f"] and c1["forward_flips"] == 0
    assert c1["dual32_err"] == pytest.approx(shift1, rel=0.1)  # the plant, plus the float32 sum's own rounding
    with pytest.raises(TypeError, match="KernelModel"):
        lbm.dual_float64_check(bl.LinearModel(dist.d), xe)


def test_dual_float64_check_evaluates_the_ntk_in_float64(data):
    dist, X, Y, xe, ye = data
    net = TwoLayerNet(dist.d, NetConfig(m=40, beta=0.1, init_std=0.3), generator=torch.Generator().manual_seed(3))
    k = bl.NTKKernel(net)
    k.scale = k.mean_diag(X)
    c = lbm.dual_float64_check(bl.fit_kernel_ridge(k, X[:300], Y[:300]), xe)
    assert k.W0.dtype == torch.float32  # the model's kernel is untouched
    assert c["forward_err"] < 1e-3 * c["median_abs_f"] and c["forward_flips"] == 0


def _fake_result(data, robust: dict, clean: float = 0.95):
    dist, X, Y, xe, ye = data
    res = {"tau": 0.3, "norm": "l2", "attack": "PGD-20 x3 restarts, l2, eps=0.3", "radii": [0.0, 0.15, 0.3, 0.45],
           "config": {"lb_eval_n": 100, "curve_n": 50, "d": 100, "k": 5, "noise": 0.0},
           "_setup": SimpleNamespace(x_eval=xe, y_eval=ye), "_models": {}}
    for name, r in robust.items():
        res[name] = {"clean_acc": 1.0 if name.startswith(("two_layer", "sparse")) else clean, "robust_acc": r,
                     "curve": [1.0, min(1.0, r + 0.2), r, max(0.0, r - 0.2)]}
        if name == "linear_best":
            res[name]["exact_curve"] = [1.0, 0.7, r - 0.01, 0.0]
    return res


def test_summary_numbers_take_the_smallest_gap_over_the_trained_baselines_only(data):
    res = _fake_result(data, {"two_layer": 0.4, "two_layer_adv": 0.9, "linear": 0.3, "linear_adv": 0.45,
                              "linear_best": 0.6, "poly_1": 0.28, "poly_1_adv": 0.33, "ntk": 0.35, "ntk_adv": 0.3,
                              "sparse_poly_3": 0.8})
    res["linear_adv"]["clean_acc"] = 0.6
    s = lbm.summary_numbers(res)
    # the network, the hand-built best linear model and the sparse polynomial are not baselines
    assert s["min_gap_pts"] == pytest.approx(45.0) and s["min_gap_model"] == "linear, adversarial"
    assert s["max_baseline_robust"] == 0.45 and s["low_clean"] == "linear, adversarial"
    assert s["kernel_adv_gain_pts"] == pytest.approx(5.0)  # poly_1 0.28 -> 0.33; ntk 0.35 -> 0.30
    assert s["const_robust"] == lbm.constant_robust_accuracy(data[4][:100])
    assert s["f64_models"] == 0 and s["f64_flips"] == 0
    # the curves around tau = 0.3 (grid 0, 0.15, 0.3, 0.45): the network's, and the best baseline's (not linear_best)
    assert (s["prev_radius"], s["next_radius"]) == (0.15, 0.45)
    assert (s["net_curve_prev"], s["net_curve_tau"], s["net_curve_next"]) == pytest.approx((1.0, 0.9, 0.7))
    assert (s["base_curve_prev"], s["base_curve_tau"], s["base_curve_next"]) == pytest.approx((0.65, 0.45, 0.25))
    assert s["best_exact_tau_curve"] == pytest.approx(0.59)
    # tau = 3 / sqrt(100) is the margin atom |S| = 3; without noise the law steps from P(|S| >= 3) to P(|S| = 5)
    assert s["tau_atom"] == 3 and s["edge_rel_pct"] == 10
    assert (s["law_below"], s["law_above"]) == pytest.approx((12 / 32, 2 / 32))
    assert s["attack"] == "PGD-20 x3 restarts, l2, eps=0.3"
    del res["two_layer_adv"]
    with pytest.raises(ValueError, match="two_layer_adv"):
        lbm.summary_numbers(res)


def test_orders_numbers_include_every_order_of_the_linear_stage(data):
    res = _fake_result(data, {"two_layer_adv": 0.9, "linear": 0.3, "linear_adv": 0.45, "poly_2": 0.28})

    def order(clean_r, adv_r, adv_clean, shrink):
        return {"linear": {"clean_acc": 0.98, "robust_acc": clean_r, "w_norm": 2.0},
                "linear_adv": {"clean_acc": adv_clean, "robust_acc": adv_r, "w_norm": 2.0 * shrink}}

    orders = [order(0.3, 0.45, 0.7, 0.01), order(0.31, 0.52, 0.55, 0.02), order(0.29, 0.40, 0.6, 0.015)]
    o = lbm.orders_numbers(res, orders)
    assert o["min_gap_all_pts"] == pytest.approx(38.0) and o["max_baseline_robust_all"] == 0.52
    assert o["min_gap_all_model"] == "linear, adversarial, data order 1"
    assert lbm.summary_numbers(res)["min_gap_pts"] == pytest.approx(45.0)  # the run's own order only
    assert (o["linadv_robust_lo"], o["linadv_robust_hi"], o["lin_robust_hi"]) == (0.40, 0.52, 0.31)
    assert (o["linadv_clean_lo"], o["linadv_clean_hi"]) == (0.55, 0.7) and o["orders"] == 3
    assert o["linadv_shrink_lo"] == pytest.approx(0.01) and o["linadv_shrink_hi"] == pytest.approx(0.02)
    # a baseline of the run above every order is the one named
    res["poly_2"]["robust_acc"] = 0.6
    assert lbm.orders_numbers(res, orders)["min_gap_all_model"] == "poly kernel, degree 2"
    with pytest.raises(ValueError, match="orders"):
        lbm.orders_numbers(res, [])



def test_the_radius_sweep_is_tabled_glued_and_counted_among_the_baselines(data):
    res = _fake_result(data, {"two_layer_adv": 0.9, "linear": 0.3, "linear_adv": 0.45, "poly_2": 0.28,
                              "poly_2_adv": 0.30, "ntk": 0.2, "ntk_adv": 0.25})
    sw = lambda a, b: [{"radius_mult": 2.0, "train_radius": 0.6, "clean_acc": 0.9, "robust_acc": a},
                       {"radius_mult": 4.0, "train_radius": 1.2, "clean_acc": 0.7, "robust_acc": b}]
    with pytest.raises(ValueError, match="no adv_radius_sweep"):
        lbm.radius_sweep_rows(res)
    res["adv_radius_sweep"] = {"poly_2_adv": sw(0.33, 0.29), "ntk_adv": sw(0.2, 0.5)}
    header, rows = lbm.radius_sweep_rows(res)
    assert header == ["model", "trained at tau: clean / PGD", "trained at 2 tau: clean / PGD",
                      "trained at 4 tau: clean / PGD"]
    assert rows[0] == ["poly kernel, degree 2, adversarial", "0.950 / 0.300", "0.900 / 0.330", "0.700 / 0.290"]
    g = lbm.radius_sweep_glue(res)
    assert g["lb_sw_mults"] == "2 and 4" and g["lb_sw_n"] == 4 and g["lb_sw_clean_min"] == 0.7
    assert g["lb_sw_max_change_pts"] == pytest.approx(25.0)  # the NTK: 0.25 -> 0.5 at 4 tau
    assert g["lb_sw_best"] == 0.5 and g["lb_sw_best_model"] == "NTK kernel, adversarial, trained at 4 tau"
    orders = [{"linear": {"clean_acc": 0.98, "robust_acc": 0.3, "w_norm": 2.0},
               "linear_adv": {"clean_acc": 0.7, "robust_acc": 0.45, "w_norm": 0.1}}]
    o = lbm.orders_numbers(res, orders)  # the sweep's NTK at 4 tau is the best baseline now
    assert o["max_baseline_robust_all"] == 0.5 and o["min_gap_all_pts"] == pytest.approx(40.0)
    assert o["min_gap_all_model"] == "NTK kernel, adversarial, trained at 4 tau"
    res["adv_radius_sweep"]["ntk_adv"] = sw(0.2, 0.3)[:1]
    with pytest.raises(ValueError, match="other radii"):
        lbm.radius_sweep_rows(res)

def test_attack_strength_check_reaches_the_exact_worst_case_of_a_linear_model(data):
    dist, X, Y, xe, ye = data
    res = _fake_result(data, {"linear_best": 0.0})
    res["_models"]["linear_best"] = exercises.best_linear(dist)
    x, y = xe[:100], ye[:100]
    out = lbm.attack_strength_check(res, ["linear_best"], steps=10, restarts=2)
    assert out["spec"] == "PGD-10 x2 restarts, l2, eps=0.3" and out["linear_best"]["run"] == 0.0
    assert out["linear_best"]["strong"] == pytest.approx(
        bl.linear_exact_robust_accuracy(res["_models"]["linear_best"], x, y, 0.3))
    # the dense direction is the best linear classifier's worst case too: the same exact accuracy, no gradient
    dense = lbm.attack_strength_check(res, ["linear_best"], steps=10, restarts=2, u=dist.u)["linear_best"]["dense"]
    assert dense == pytest.approx(bl.linear_exact_robust_accuracy(res["_models"]["linear_best"], x, y, 0.3))
    with pytest.raises(ValueError, match="no model 'ntk'"):
        lbm.attack_strength_check(res, ["ntk"])
    with pytest.raises(ValueError, match="restarts"):
        lbm.attack_strength_check(res, ["linear_best"], restarts=0)


def test_margin_edge_finds_the_atom_and_the_step_of_the_law():
    d, k = 400, 7
    e = exercises.margin_edge(d, k, 0.0, 3 / 20, rel=0.1)  # 3 / sqrt(d): the margin of |S| = 3
    pmf = exercises.abs_sign_sum_pmf(k)
    assert e["atom"] == 3
    assert e["below"] == pytest.approx(pmf[3] + pmf[5] + pmf[7]) and e["above"] == pytest.approx(pmf[5] + pmf[7])
    noisy = exercises.margin_edge(d, k, 0.1, 0.15, rel=0.1)
    assert noisy["below"] > noisy["at"] > noisy["above"]
    assert noisy["at"] == pytest.approx(exercises.linear_robust_law(d, k, 0.1, 0.15))
    off = exercises.margin_edge(d, k, 0.1, 0.2, rel=0.1)  # between 3/20 and 5/20
    assert off["atom"] is None and off["below"] - off["above"] < 0.02
    with pytest.raises(ValueError, match="rel"):
        exercises.margin_edge(d, k, 0.1, 0.15, rel=1.5)


def test_eval_points_are_the_first_points_of_the_setup(data):
    res = _fake_result(data, {"two_layer_adv": 0.9})
    x, y = lbm.eval_points(res)
    assert torch.equal(x, data[3][:100]) and torch.equal(y, data[4][:100])
    assert lbm.eval_points(res, "curve_n")[0].shape[0] == 50
    with pytest.raises(ValueError, match="key must be"):
        lbm.eval_points(res, "eval_n")
    del res["_setup"]
    with pytest.raises(ValueError, match="keep_models=True"):
        lbm.eval_points(res)


def test_training_attack_check_attacks_the_runs_own_training_points(data):
    from dataclasses import replace

    from fp_helpers.experiments import synthetic_config

    dist = data[0]
    syn = replace(synthetic_config("quick"), d=100, k=5, tau=0.3)
    lb = replace(lbm.lower_bounds_config("quick")[1], n_train=400, adv_attack_steps=5)
    res = _fake_result(data, {"linear_best": 0.0})
    res["_setup"] = SimpleNamespace(dist=dist, device="cpu", x_eval=data[3], y_eval=data[4])
    best = exercises.best_linear(dist)
    res["_models"]["linear_best"] = best
    out = lbm.training_attack_check(res, syn, lb, ["linear_best"])["linear_best"]
    X, Y = lbm.training_set(res["_setup"], syn, lb)  # the run's set: its own seed, n_train points
    assert X.shape == (400, 100)
    assert out["train_acc"] == pytest.approx(bl.linear_exact_robust_accuracy(best, X, Y, 0.0))
    # PGD is exact for a linear model: its accuracy under the training attack is the exact robust accuracy at tau
    assert out["train_pgd_acc"] == pytest.approx(bl.linear_exact_robust_accuracy(best, X, Y, 0.3))
    with pytest.raises(ValueError, match="no model 'ntk'"):
        lbm.training_attack_check(res, syn, lb, ["ntk"])
    # the chapter's glue: the kernels (degree 2 and above, the NTK) beside the affine one; here a linear model that
    # keeps every point (the zero-margin-free "kernel") and the best linear classifier as the affine kernel
    res.update({n: {"clean_acc": 1.0, "robust_acc": 0.3} for n in ("poly_1", "poly_2", "poly_3", "ntk", "poly_2_adv")})
    wide = lambda x: 100.0 * (x @ dist.u)  # noqa: E731  (same signs; PGD at tau flips what best flips)
    res["_models"].update({"poly_1": best, "poly_2": best, "poly_3": wide, "ntk": best})
    g = lbm.training_attack_glue(res, syn, lb)
    assert g["lb_tr_degrees"] == "2 to 3" and g["lb_tr_deg1_pgd"] == out["train_pgd_acc"]
    assert g["lb_tr_pgd_min"] == out["train_pgd_acc"] and g["lb_tr_acc_min"] == out["train_acc"]
    assert g["lb_tr_all_of"] == ("all 3" if out["train_pgd_acc"] == 1.0 else "none of the 3")
    # the larger training radii: PGD is exact for the linear stand-ins, so the shares are the exact robust accuracies
    sw = lbm.sweep_training_attack_glue(res, syn, replace(lb, adv_radius_mults=(2.0, 4.0)))
    exact = lambda r: bl.linear_exact_robust_accuracy(best, X, Y, r)  # noqa: E731
    assert sw["lb_sw_tr_deg1_max"] == pytest.approx(exact(0.6)) and sw["lb_sw_tr_tau_min"] == pytest.approx(exact(0.3))
    assert sw["lb_sw_tr_max"] == pytest.approx(exact(0.6)) and exact(1.2) <= exact(0.6) <= exact(0.3)
    with pytest.raises(ValueError, match="adv_radius_mults is empty"):
        lbm.sweep_training_attack_glue(res, syn, replace(lb, adv_radius_mults=()))
