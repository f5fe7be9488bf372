"""The closed forms behind the book's propositions and exercises agree with sampling and with PGD."""

import math

import pytest
import torch

from fp_helpers import attacks, exercises
from fp_helpers.baselines import linear_exact_robust_accuracy
from fp_helpers.networks import purified_oracle
from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig


def test_abs_sign_sum_pmf():
    pmf = exercises.abs_sign_sum_pmf(7)
    assert list(pmf) == [1, 3, 5, 7]
    assert sum(pmf.values()) == pytest.approx(1.0)
    assert pmf[1] == pytest.approx(2 * math.comb(7, 3) / 2**7)
    assert exercises.abs_sign_sum_pmf(4)[0] == pytest.approx(math.comb(4, 2) / 16)


def test_linear_law_matches_sampling():
    dist = SparseCoding(SparseCodingConfig(d=400, k=7, noise=0.5), seed=0)
    x, y = dist.sample(20_000, torch.Generator().manual_seed(0))
    m = dist.linear_margin(x, y)
    for r in (0.0, 0.05, 0.15):
        assert (m > r).float().mean().item() == pytest.approx(exercises.linear_robust_law(400, 7, 0.5, r), abs=0.015)
    # noise-free: an exact binomial tail
    assert exercises.linear_robust_law(400, 7, 0.0, 0.1) == pytest.approx(1 - exercises.abs_sign_sum_pmf(7)[1])


def test_best_linear_worst_case_is_the_dense_direction():
    dist = SparseCoding(SparseCodingConfig(d=100, k=5), seed=1)
    x, y = dist.sample(500, torch.Generator().manual_seed(1))
    lin = exercises.best_linear(dist)
    exact = linear_exact_robust_accuracy(lin, x, y, 0.2)
    dense = attacks.robust_accuracy(lin, x, y, 0.2, attacks.AttackSpec("dense"), u=dist.u)
    assert exact == pytest.approx(dense) and dense == pytest.approx((dist.linear_margin(x, y) > 0.2).float().mean().item())


def test_oracle_radius_against_pgd_noise_free():
    dist = SparseCoding(SparseCodingConfig(d=100, k=5, noise=0.0), seed=0)
    x, y = dist.sample(300, torch.Generator().manual_seed(0))
    r = exercises.oracle_radius(5, beta=0.1, scale=10.0)
    assert r == pytest.approx((0.9 - (2 / 3) * 0.5 / 10) / math.sqrt(5))
    spec = attacks.AttackSpec("pgd", "l2", 20, 1)
    below, above = attacks.robust_curve(purified_oracle(dist, 10.0, 0.1), x, y, [0.95 * r, 1.05 * r], spec)
    assert below == 1.0  # the proposition: robust below r* at every noise-free point
    assert above < 1 - 0.5 * exercises.abs_sign_sum_pmf(5)[1]  # most |S| = 1 points fall above it
    # the proposition's worst case: every active atom moved against the label, delta = -tau y sum_{j in A} M_j / sqrt k,
    # keeps every |S| = 1 point just below r* and flips every one just above it (moving atom j along z_j instead
    # would cancel: sum_A z_j = S)
    x0, y0, z0 = dist.sample(300, torch.Generator().manual_seed(1), return_code=True)
    one = z0.sum(1).abs() == 1
    assert one.sum() > 50
    direction = -y0[:, None] * ((z0 != 0).float() @ dist.M.T) / math.sqrt(5)
    assert torch.allclose(direction.norm(dim=1), torch.ones(300), atol=1e-5)
    net = purified_oracle(dist, 10.0, 0.1)
    with torch.no_grad():
        assert (y0 * net(x0 + 0.99 * r * direction) > 0)[one].all()
        assert (y0 * net(x0 + 1.01 * r * direction) <= 0)[one].all()


def test_chebyshev_bound_and_random_attack():
    assert exercises.chebyshev_bound(400, 7, 0.1, 0.0) == 1.0
    assert exercises.chebyshev_bound(400, 7, 0.1, 0.15) == pytest.approx(7.01 / (400 * 0.0225))
    x = torch.zeros(10, 50)
    xa = exercises.random_direction_attack(x, 0.3, torch.Generator().manual_seed(0))
    assert torch.allclose(xa.norm(dim=1), torch.full((10,), 0.3))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="k=9 must be at most d=5"):
        exercises.linear_robust_law(5, 9, 0.1, 0.1)
    with pytest.raises(ValueError, match="radius"):
        exercises.linear_robust_law(100, 5, 0.1, -1.0)
    with pytest.raises(ValueError, match="vector"):
        exercises.linear_model(torch.zeros(2, 3))


def test_quick_trainings_answer_the_noise_exercise():
    """The clean-training chapter's noise exercise, at the quick scale it runs at: ten times more noise makes the
    clean network's neurons purer and it more robust, and FGM training from the clean weights is far more robust
    than either."""
    _, s, low = exercises.train_clean_quick({"noise": 0.1})
    _, _, high = exercises.train_clean_quick({"noise": 1.0})
    _, s_adv, adv = exercises.train_adversarial_quick({"noise": 0.1})
    assert s.cfg.d == 100 and s_adv.cfg.noise == 0.1  # the quick scale, whatever the profile
    assert high["top1_energy_median"] > 2 * low["top1_energy_median"]
    assert high["mixture_norm_median"] < low["mixture_norm_median"] - 0.3
    assert high["robust_acc"] > low["robust_acc"]
    assert adv["clean_acc"] > 0.95 and adv["robust_acc"] > high["robust_acc"] + 0.2
    assert adv["top1_energy_median"] > high["top1_energy_median"]  # and purer neurons
    assert adv["mixture_norm_median"] < high["mixture_norm_median"]
