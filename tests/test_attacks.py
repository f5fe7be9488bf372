import pytest
import torch
import torch.nn.functional as F

from fp_helpers.attacks import (AttackSpec, accuracy, dense_direction_attack, empirical_robust_radius, fgm,
                                margins, pgd, robust_accuracy, robust_curve)
from fp_helpers.networks import purified_oracle
from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig


@pytest.fixture(scope="module")
def data():
    dist = SparseCoding(SparseCodingConfig(d=400, k=7), seed=0)
    x, y = dist.sample(600, torch.Generator().manual_seed(0))
    return dist, x, y


def oracle(dist, c=10.0, beta=0.1):
    return purified_oracle(dist, scale=c, beta=beta)


def test_fgm_increases_the_loss(quick_run):
    net, s = quick_run.clean, quick_run.setup
    x, y = s.x_eval, s.y_eval
    for norm in ("l2", "linf"):
        eps = s.cfg.tau if norm == "l2" else s.cfg.tau / s.cfg.d ** 0.5
        before = F.softplus(-margins(net, x, y))
        after = F.softplus(-margins(net, fgm(net, x, y, eps, norm), y))
        assert (after >= before - 1e-6).float().mean() > 0.99
        assert after.mean() > before.mean() * 1.5


def test_pgd_is_at_least_as_strong_as_fgm_and_restarts_never_hurt(quick_run):
    for net in (quick_run.clean, quick_run.adversarial):
        s = quick_run.setup
        x, y, tau = s.x_eval, s.y_eval, s.cfg.tau
        g = torch.Generator().manual_seed(0)
        acc_fgm = robust_accuracy(net, x, y, tau, AttackSpec("fgm"))
        acc_pgd1 = robust_accuracy(net, x, y, tau, AttackSpec("pgd", steps=10, restarts=1), generator=g)
        acc_pgd3 = robust_accuracy(net, x, y, tau, AttackSpec("pgd", steps=10, restarts=3), generator=g)
        assert acc_pgd1 <= acc_fgm + 1e-9
        assert acc_pgd3 <= acc_pgd1 + 1e-9


def test_robust_accuracy_falls_as_radius_grows(quick_run):
    s = quick_run.setup
    curve = robust_curve(quick_run.clean, s.x_eval, s.y_eval, [0.0, 0.1, 0.2, 0.4, 0.8],
                         AttackSpec("pgd", steps=10), generator=torch.Generator().manual_seed(0))
    assert curve[0] == accuracy(quick_run.clean, s.x_eval, s.y_eval)
    assert all(b <= a + 1e-9 for a, b in zip(curve, curve[1:]))
    assert curve[-1] < curve[0] - 0.5


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attacks_stay_inside_the_ball_and_the_box(data, norm):
    dist, x, y = data
    net = oracle(dist)
    eps = 0.3 if norm == "l2" else 0.02
    for xa in (fgm(net, x, y, eps, norm), pgd(net, x, y, eps, norm, steps=5, restarts=2,
                                                generator=torch.Generator().manual_seed(0))):
        delta = (xa - x).flatten(1)
        size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
        assert (size <= eps * (1 + 1e-5)).all()
    xb = pgd(net, x.clamp(0, 1), y, eps, norm, steps=3, clip=(0.0, 1.0))
    assert xb.min() >= 0 and xb.max() <= 1


def test_purified_oracle_is_robust_where_the_linear_classifier_is_not(data):
    dist, x, y = data
    tau = 0.15
    spec = AttackSpec("pgd", "l2", steps=20, restarts=3)
    g = torch.Generator().manual_seed(1)
    net = oracle(dist)
    linear = lambda inp: inp @ dist.u  # the best linear classifier, sign(<M w*, x>)
    assert accuracy(net, x, y) == 1.0 and accuracy(linear, x, y) == 1.0
    assert robust_accuracy(net, x, y, tau, spec, generator=g) >= 0.99
    lin_pgd = robust_accuracy(linear, x, y, tau, spec, generator=g)
    lin_exact = (dist.linear_margin(x, y) > tau).sum().item() / len(y)  # closed-form worst case
    assert lin_pgd <= 0.4
    assert lin_pgd == pytest.approx(lin_exact, abs=0.01)
    # the dense direction is exactly the linear classifier's worst case
    assert robust_accuracy(linear, x, y, tau, AttackSpec("dense"), u=dist.u) == pytest.approx(lin_exact, abs=1e-9)
    # and beyond the oracle's own margin (~(1 - beta)/sqrt(k)) it fails too: robustness is not unconditional
    assert robust_accuracy(net, x, y, 0.6, spec, generator=g) < 0.6


def test_dense_direction_attack_moves_against_the_label(data):
    dist, x, y = data
    xa = dense_direction_attack(x, y, 0.2, dist.u)
    assert torch.allclose((xa - x).norm(dim=1), torch.full((len(x),), 0.2), atol=1e-5)
    assert torch.allclose(dist.linear_margin(xa, y), dist.linear_margin(x, y) - 0.2, atol=1e-5)


@pytest.mark.parametrize("call, msg", [
    (lambda n, x, y: fgm(n, x, y, -0.1), "radius tau must be a finite number >= 0"),
    (lambda n, x, y: fgm(n, x, y, float("nan")), "radius"),
    (lambda n, x, y: fgm(n, x, y, 0.1, norm="l3"), "unknown norm 'l3'"),
    (lambda n, x, y: pgd(n, x, y, 0.1, steps=0), "steps"),
    (lambda n, x, y: pgd(n, x, y, 0.1, restarts=0), "restarts"),
    (lambda n, x, y: robust_accuracy(n, x, y, 0.1, AttackSpec("cw")), "unknown attack"),
    (lambda n, x, y: robust_accuracy(n, x, y, 0.1, AttackSpec("dense")), "needs the dense direction"),
])
def test_bad_attack_input_is_rejected(data, call, msg):
    dist, x, y = data
    with pytest.raises(ValueError, match=msg):
        call(oracle(dist), x[:5], y[:5])


def test_multiclass_models_are_attacked_through_autograd():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(10, 3)
    x = torch.randn(200, 10, generator=g)
    y = lin(x).argmax(1)  # all correct at radius 0
    assert accuracy(lin, x, y) == 1.0
    assert robust_accuracy(lin, x, y, 2.0, AttackSpec("pgd", steps=10)) < robust_accuracy(lin, x, y, 0.1,
                                                                                          AttackSpec("pgd", steps=10))


def test_empirical_robust_radius_matches_the_linear_margin(data):
    dist, x, y = data
    linear = lambda inp: inp @ dist.u
    radii = [0.02 * i for i in range(1, 15)]
    r = empirical_robust_radius(linear, x, y, radii, AttackSpec("pgd", steps=10))
    exact = dist.linear_margin(x, y)
    # the grid radius found is the last grid point below the exact margin
    expected = torch.tensor([max([q for q in radii if q < m] or [0.0]) for m in exact.tolist()])
    assert (r - expected).abs().max() < 1e-6
    with pytest.raises(ValueError, match="strictly increasing"):
        empirical_robust_radius(linear, x, y, [0.2, 0.1])


# --- saturated losses: a point with a huge margin must still be attacked (regression: the clean network's
# robust curve used to plateau at ~12% for radii 0.3-0.6 because sigmoid(-margin) rounded to ~0)

def _huge_margin_net(dist, scale=400.0):
    from fp_helpers.networks import NetConfig, TwoLayerNet
    net = purified_oracle(dist, scale=10.0, beta=0.0)
    return TwoLayerNet(net.d, NetConfig(m=net.weight.shape[0], beta=0.0), weight=net.weight.detach() * scale)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attacks_move_points_whose_loss_gradient_underflows(data, norm):
    dist, x, y = data
    net = _huge_margin_net(dist)
    m = margins(net, x, y)
    assert (m > 150).float().mean() > 0.5  # sigmoid(-150) is 0 in fp32: the loss gradient vanishes there
    eps = 0.3 if norm == "l2" else 0.02
    step = fgm(net, x, y, eps, norm) - x
    size = step.norm(dim=1) if norm == "l2" else step.abs().amax(1)
    assert torch.allclose(size, torch.full_like(size, eps), rtol=1e-4)  # a full step for every point
    # and the step still goes uphill: the margin falls
    assert (margins(net, x + step, y) < m).float().mean() > 0.99


def test_pgd_breaks_a_huge_margin_network_at_a_large_radius(data):
    dist, x, y = data
    net = _huge_margin_net(dist)
    assert accuracy(net, x, y) > 0.95
    # the oracle's margin lives on the sparse features: a radius well above one feature's size breaks it
    assert robust_accuracy(net, x, y, 2.0, AttackSpec("pgd", "l2", 20, 1)) < 0.05


def test_multiclass_attack_moves_points_with_saturated_cross_entropy():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(10, 3)
    with torch.no_grad():
        lin.weight.mul_(1000.0)
    x = torch.randn(200, 10, generator=g)
    y = lin(x).argmax(1).detach()
    out = lin(x).detach()
    gap = out.gather(1, y[:, None]).squeeze(1) - out.scatter(1, y[:, None], float("-inf")).amax(1)
    assert (gap > 200).float().mean() > 0.5  # every other class's probability underflows there
    step = fgm(lin, x, y, 0.1, "l2") - x
    assert torch.allclose(step.norm(dim=1), torch.full((200,), 0.1), rtol=1e-4)
    assert (margins(lin, x + step, y) < margins(lin, x, y)).all()


def test_pgd_stops_on_broken_points_without_changing_the_result(quick_run):
    """The early stop (a misclassified point is not attacked further) only saves work: robust accuracy is
    that of the same attack run on every point separately, and more steps or restarts never help."""
    net, s = quick_run.clean, quick_run.setup
    x, y, tau = s.x_eval[:300], s.y_eval[:300], s.cfg.tau
    together = margins(net, pgd(net, x, y, tau, "l2", 10, restarts=2, generator=torch.Generator().manual_seed(1)), y) > 0
    assert 0 < together.float().mean() < 1
    one_by_one = torch.stack([margins(net, pgd(net, x[i:i + 1], y[i:i + 1], tau, "l2", 10), y[i:i + 1])[0] > 0
                              for i in range(0, 300, 10)])
    first_run_only = margins(net, pgd(net, x[::10], y[::10], tau, "l2", 10), y[::10]) > 0
    assert torch.equal(one_by_one, first_run_only)
    assert (together[::10] <= first_run_only).all()  # a second (random) start never makes it weaker


def test_atom_attack_is_the_propositions_worst_case_and_moves_only_the_active_atoms():
    import math

    from fp_helpers import exercises
    from fp_helpers.attacks import atom_attack

    dist = SparseCoding(SparseCodingConfig(d=100, k=5, noise=0.0), seed=0)
    x, y, z = dist.sample(300, torch.Generator().manual_seed(1), return_code=True)
    r = exercises.oracle_radius(5, beta=0.1, scale=10.0)
    # all active atoms against the label: the proposition's delta = -tau y sum_{j in S} M_j / sqrt k
    direction = -y[:, None] * ((z != 0).float() @ dist.M.T) / math.sqrt(5)
    assert torch.allclose(atom_attack(x, y, 0.2, dist.M, 5), x + 0.2 * direction, atol=1e-5)
    one = z.sum(1).abs() == 1
    net = purified_oracle(dist, 10.0, 0.1)
    with torch.no_grad():  # below r* every point survives it, above it every |S| = 1 point falls
        assert (y * net(atom_attack(x, y, 0.99 * r, dist.M, 5)) > 0).all()
        assert (y * net(atom_attack(x, y, 1.01 * r, dist.M, 5)) <= 0)[one].all()
    # agreeing: only the atoms whose sign is the label's, each moved by eps / sqrt(their number), norm eps
    xa = atom_attack(x, y, 0.2, dist.M, 5, agreeing=True)
    moved = (xa - x) @ dist.M
    agree = (z * y[:, None]) > 0
    assert torch.allclose((xa - x).norm(dim=1), torch.full((300,), 0.2), atol=1e-5)
    assert torch.allclose(moved[~agree], torch.zeros(()), atol=1e-6)
    assert torch.allclose(moved[agree] * y[:, None].expand_as(z)[agree],
                          (-0.2 / agree.sum(1, keepdim=True).float().sqrt()).expand_as(z)[agree], atol=1e-6)


def test_atom_attack_finds_the_active_atoms_through_the_noise_and_rejects_a_bad_k(data):
    from fp_helpers.attacks import atom_attack

    dist, _, _ = data
    x, y, z = dist.sample(200, torch.Generator().manual_seed(2), return_code=True)
    moved = (atom_attack(x, y, 0.3, dist.M, 7) - x) @ dist.M
    assert torch.equal(moved.abs() > 1e-4, z != 0)  # the noise (0.1 in all) never hides an atom of size 1
    with pytest.raises(ValueError, match="k must be an int"):
        atom_attack(x, y, 0.3, dist.M, 0)


def test_attack_check_is_the_runs_network_and_its_union_is_the_strongest(quick_run):
    from fp_helpers.experiments import run_attack_check, synthetic_config

    from dataclasses import replace

    cfg = synthetic_config("quick")
    cfg = replace(cfg, radii=(0.0, cfg.tau, 2 * cfg.tau))  # the radii do not change the training: the same networks
    res = run_attack_check(cfg, device="cpu", checkpoint_dir=False)
    for key in ("clean", "adversarial"):  # the same networks as run synthetic's
        assert res["run"][key]["robust_acc"] == quick_run.metrics[key]["robust_acc"]
        curves = res["curves"][key]
        i = res["radii"].index(cfg.tau)
        assert curves[f"PGD-{cfg.pgd_steps} x{cfg.pgd_restarts}"][i] == quick_run.metrics[key]["robust_acc"]
        for name in res["attacks"]:  # every attack at once is at most each, and nothing beats clean accuracy
            assert all(e <= a + 1e-12 for e, a in zip(curves["every attack"], curves[name]))
            assert curves[name][0] == pytest.approx(quick_run.metrics[key]["clean_acc"])
        assert all(b <= a + 1e-12 for a, b in zip(curves["every attack"], curves["every attack"][1:]))
    # the clean network is far weaker than the adversarial one under the gradient attacks and under all at once
    i = res["radii"].index(cfg.tau)
    assert res["curves"]["clean"]["every attack"][i] < res["curves"]["adversarial"]["every attack"][i] - 0.2
    assert set(res["only_at_tau"]["adversarial"]) == set(res["attacks"]) - {"every attack"}


def _fake_attack_check():
    names = ["FGM", "dense direction", "atoms, all active", "PGD-20", "PGD-20 x3", "PGD-100 x6",
             "transfer: PGD-100 x6 of the other network", "every attack"]
    clean = {"FGM": [1, .40, .10], "dense direction": [1, .39, .10], "atoms, all active": [1, 1, .9],
             "PGD-20": [1, .37, .05], "PGD-20 x3": [1, .36, .06], "PGD-100 x6": [1, .36, .05],
             "transfer: PGD-100 x6 of the other network": [1, .8, .5], "every attack": [1, .35, .05]}
    adv = {n: [1, .99, .5] for n in names}
    adv.update({"atoms, all active": [1, .98, .45], "every attack": [1, .97, .45]})
    return {"radii": [0.0, 0.15, 0.3], "attacks": names, "curves": {"clean": clean, "adversarial": adv},
            "only_at_tau": {"clean": {n: 0 for n in names[:-1]}, "adversarial": {**{n: 0 for n in names[:-1]}, "atoms, all active": 20}},
            "n_points": 2000, "config": {"tau": 0.15, "pgd_steps": 20, "pgd_restarts": 3, "seed": 0},
            "run": {"clean": {"clean_acc": 1.0, "robust_acc": 0.36}, "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99}}}


def test_attack_check_glue_and_tables_read_the_union_the_gap_and_the_sanity_checks():
    from fp_helpers import experiments

    res = _fake_attack_check()
    reg = {"config": dict(res["config"]), "clean": {"clean_acc": 1.0, "robust_acc": 0.36},
           "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99}}
    g = experiments.attack_check_glue({"G": res}, regimes={"G": reg})
    assert (g["ac_G_adv_every"], g["ac_G_adv_pgd"], g["ac_G_adv_free"]) == (0.97, 0.99, 0.98)
    assert g["ac_G_adv_gap"] == pytest.approx(0.02) and g["ac_G_adv_only_max"] == 20
    assert (g["ac_G_clean_pgd"], g["ac_G_clean_transfer"], g["ac_G_clean_free"]) == (0.36, 0.8, 0.39)
    # clean net: PGD-20 x3 (0.06) above PGD-20 (0.05) at 0.3 -> one rise; the union falls with the radius
    assert g["ac_G_pgd_rises"] == 1 and g["ac_G_monotone"] is True and g["ac_G_same_run"] is True
    # beyond tau the union is 0.05 below the book's PGD (0.5) on the adversarial net, at 0.3, by the atom attack
    assert g["ac_G_adv_maxgap"] == pytest.approx(0.05) and g["ac_G_adv_maxgap_r"] == 0.3
    assert (g["ac_G_adv_maxgap_attack"], g["ac_G_adv_maxgap_attack_acc"]) == ("atoms, all active", 0.45)
    assert (g["ac_G_adv_rmax_pgd"], g["ac_G_adv_rmax_every"], g["ac_rmax"]) == (0.5, 0.45, 0.3)
    res["curves"]["adversarial"]["every attack"] = [1, .97, .98]
    reg["adversarial"]["robust_acc"] = 0.98
    g = experiments.attack_check_glue({"G": res}, regimes={"G": reg})
    assert g["ac_G_monotone"] is False and g["ac_G_same_run"] is False
    assert g["ac_same_runs"] == "identical in none; different in G"
    assert g["ac_monotone_words"] == "it rises somewhere in G"
    header, rows, rheader, rrows = experiments.attack_check_rows({"G": res})
    assert header == ["attack at tau", "G: clean net", "G: adversarial"] and len(rows) == len(res["attacks"])
    assert rows[-1] == ["every attack", "0.350", "0.970"] and rrows[2] == ["0.3", "0.050", "0.980"]


def test_attack_check_results_rejects_other_experiments(tmp_path):
    from fp_helpers import experiments

    with pytest.raises(FileNotFoundError, match="results/attacks/run.sh"):
        experiments.attack_check_results(tmp_path)
    import shutil
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "results"
    shutil.copy(results / "attacks" / "A_beta0_init01.json", tmp_path / "A_one.json")
    assert set(experiments.attack_check_results(tmp_path)) == {"A"}
    shutil.copy(results / "lowrank" / "G_beta015_init0002_long.json", tmp_path / "G_x.json")
    with pytest.raises(ValueError, match="not a run attack-check result"):
        experiments.attack_check_results(tmp_path)


def test_attack_check_figure_draws_three_curves_per_network_and_seed():
    import matplotlib

    matplotlib.use("agg")
    from fp_helpers import plots

    a, b = _fake_attack_check(), _fake_attack_check()
    fig = plots.attack_check({"A": a, "G": a}, seeds={"G": [a, b]})
    left, right = fig.axes[0], fig.axes[1]
    assert len(left.get_lines()) == 6 + 1 and len(right.get_lines()) == 12 + 1  # + the tau line
    assert right.get_title() == "regime G (2 seeds)"
    solid = [ln for ln in left.get_lines() if ln.get_label() == "adversarial: every attack"][0]
    assert list(solid.get_ydata()) == a["curves"]["adversarial"]["every attack"]
    dotted = [ln for ln in left.get_lines() if ln.get_label() == "clean network: best gradient-free"][0]
    assert list(dotted.get_ydata()) == [1, .39, .10]  # the dense direction, then the atoms, whichever is lower


def test_attack_check_seed_glue_ranges_over_the_replicates():
    from fp_helpers import experiments

    a, b = _fake_attack_check(), _fake_attack_check()
    b["curves"]["adversarial"]["every attack"] = [1, .99, .30]  # seed 1: PGD exact at tau, 0.2 above the union at 0.3
    g = experiments.attack_check_seed_glue([a, b], "G")
    assert g["acs_G_n"] == 2 and g["acs_G_tau_gap_max"] == pytest.approx(0.02)
    assert (g["acs_G_tau_every_min"], g["acs_G_tau_every_max"]) == (0.97, 0.99)
    assert (g["acs_G_rmax_every_min"], g["acs_G_rmax_every_max"], g["acs_G_rmax_pgd_max"]) == (0.30, 0.45, 0.5)
    assert g["acs_G_maxgap_min"] == pytest.approx(0.05) and g["acs_G_maxgap_max"] == pytest.approx(0.2)
