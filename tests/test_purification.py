import pytest
import torch

from fp_helpers import purification as pur


def test_pure_atoms_have_full_top1_energy_and_no_mixture():
    M = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(0)))[0]
    W = 3.0 * M.T[:5]  # neurons equal to atoms
    assert torch.allclose(pur.atom_spectrum(W, M).sum(1), torch.ones(5), atol=1e-5)
    assert torch.allclose(pur.top_energy(W, M, 1), torch.ones(5), atol=1e-5)
    assert pur.mixture_norm(W, M).max() < 1e-3
    # adding a dense mixture along u raises the mixture norm and aligns the residual with u
    u = M.sum(1) / M.sum(1).norm()
    W2 = W + 2.0 * u
    assert pur.mixture_norm(W2, M).min() > 0.4
    assert pur.mixture_alignment(W2, M, u).min() > 0.9


def test_decomposition_is_exact_and_orthogonal():
    g = torch.Generator().manual_seed(0)
    Wa = torch.randn(8, 20, generator=g)
    Wc = 2.0 * Wa + 0.3 * torch.randn(8, 20, generator=g)
    dec = pur.decompose(Wc, Wa)
    assert torch.allclose(dec.purified + dec.residual, Wc, atol=1e-5)
    assert ((dec.residual * Wa).sum(1).abs() < 1e-4).all()
    assert dec.holds_fraction == 1.0
    assert torch.allclose(dec.beta, torch.full((8,), 2.0), atol=0.3)
    # a clean neuron unrelated to the adversarial one violates the principle
    assert pur.decompose(torch.randn(50, 200, generator=g), torch.randn(50, 200, generator=g)).holds_fraction < 0.1


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape mismatch"):
        pur.decompose(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="2-d"):
        pur.atom_spectrum(torch.zeros(4), torch.eye(4))


def test_update_spectrum_finds_a_planted_low_rank_update():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(40, 60, generator=g)
    a, b = torch.randn(40, 1, generator=g), torch.randn(60, generator=g)
    spec = pur.update_spectrum(W, W + a * b)  # rank-1 update along b
    assert spec.share(1) > 0.999
    assert abs(torch.dot(spec.top_direction, b / b.norm()).item()) > 0.999
    # a dense random update spreads its energy: the top direction keeps a small share
    dense = pur.update_spectrum(W, W + torch.randn(40, 60, generator=g))
    assert dense.share(1) < 0.2 and dense.share(40) > 0.999
    assert torch.all(dense.energy_share[1:] >= dense.energy_share[:-1])


def test_update_directions_tell_a_dense_direction_update_from_others():
    g = torch.Generator().manual_seed(3)
    d, m = 50, 30
    u = torch.randn(d, generator=g)
    u_hat = u / u.norm()
    rest = torch.randn(m, d, generator=g)
    rest -= (rest @ u_hat)[:, None] * u_hat  # every row orthogonal to u
    along = torch.randn(m, 1, generator=g) * u_hat  # each neuron's component along u
    W = rest + along
    # subtracting each neuron's multiple of u: the update lies along u, and nothing of W's projection on u is left
    purified = pur.update_directions(W, rest, 3 * u)  # u's length does not matter
    assert purified["cos_top_u"] > 1 - 1e-9 and purified["u_share"] > 1 - 1e-9 and purified["u_kept"] < 1e-6
    halfway = pur.update_directions(W, W - 0.5 * along, u)
    assert abs(halfway["u_kept"] - 0.5) < 1e-6 and halfway["u_share"] > 1 - 1e-9
    # reversing every neuron's component along u: the sign tells it from amplifying it
    reversed_ = pur.update_directions(W, W - 3 * along, u)
    amplified = pur.update_directions(W, W + along, u)
    assert abs(reversed_["u_kept"] + 2) < 1e-5 and abs(amplified["u_kept"] - 2) < 1e-5
    assert abs(reversed_["u_kept_norm"] - 2) < 1e-5 and abs(amplified["u_kept_norm"] - 2) < 1e-5
    # an update orthogonal to u: none of its energy along u, the projection on u untouched
    ortho = pur.update_directions(W, W + 0.3 * rest, u)
    assert ortho["u_share"] < 1e-12 and ortho["cos_top_u"] < 1e-6 and abs(ortho["u_kept"] - 1) < 1e-6
    # a random update: about 1/d of its energy along u
    rand = pur.update_directions(W, W + torch.randn(m, d, generator=g), u)
    assert 0.1 / d < rand["u_share"] < 10 / d
    # rank one: the share along u is the squared cosine of its one direction
    b_vec = torch.randn(d, generator=g)
    r1 = pur.update_directions(W, W + torch.randn(m, 1, generator=g) * b_vec, u)
    assert abs(r1["u_share"] - r1["cos_top_u"] ** 2) < 1e-9
    assert pur.update_directions(W, W.clone(), u) == {"cos_top_u": 0.0, "u_share": 0.0, "u_kept": 1.0,
                                                      "u_kept_norm": 1.0}
    with pytest.raises(ValueError, match="u has shape"):
        pur.update_directions(W, W, torch.ones(d + 1))
    with pytest.raises(ValueError, match="shape mismatch"):
        pur.update_directions(W, W[:, :-1], u)


def test_truncated_update_is_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(2)
    W, W2 = torch.randn(20, 30, generator=g), torch.randn(20, 30, generator=g)
    assert torch.allclose(pur.truncated_update(W, W2, 20), W2, atol=1e-4)  # full rank: exact
    errs = [(pur.truncated_update(W, W2, r) - W2).norm().item() for r in (1, 2, 5, 10)]
    assert errs == sorted(errs, reverse=True)  # more rank, smaller error
    spec = pur.update_spectrum(W, W2)
    # Eckart-Young: the residual energy equals the discarded singular values' energy
    assert abs(errs[0] ** 2 / (W2 - W).norm().item() ** 2 - (1 - spec.share(1))) < 1e-4
    with pytest.raises(ValueError, match="rank"):
        pur.truncated_update(W, W2, 0)
