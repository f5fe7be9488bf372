import math

import pytest
import torch

from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig


def test_dictionary_is_orthonormal_and_u_is_unit():
    dist = SparseCoding(SparseCodingConfig(d=64, k=3), seed=1)
    assert torch.allclose(dist.M.T @ dist.M, torch.eye(64), atol=1e-5)
    assert dist.u.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_codes_have_exactly_k_atoms_and_labels_follow_w_star():
    dist = SparseCoding(SparseCodingConfig(d=50, k=5, noise=0.0), seed=0)
    g = torch.Generator().manual_seed(0)
    x, y, z = dist.sample(3000, g, return_code=True)
    assert ((z != 0).sum(1) == 5).all()
    assert torch.equal(y, torch.sign(z @ dist.w_star))
    assert torch.allclose(x, z @ dist.M.T, atol=1e-5)  # x = M z exactly without noise
    assert abs(y.mean().item()) < 0.06  # balanced labels


def test_supports_are_uniform_over_atoms():
    # every atom should be used about n k / d times; a biased sampler (e.g. never the last atom) fails
    d, k, n = 40, 4, 20000
    dist = SparseCoding(SparseCodingConfig(d=d, k=k), seed=0)
    idx, _ = dist.sample_code(n, torch.Generator().manual_seed(3))
    counts = torch.bincount(idx.flatten(), minlength=d).float()
    expected = n * k / d
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 90  # chi-square with 39 dof: p < 1e-5 above ~90
    # dense codes take the other sampler; still exactly k distinct atoms
    dense = SparseCoding(SparseCodingConfig(d=10, k=8), seed=0)
    idx2, _ = dense.sample_code(500, torch.Generator().manual_seed(0))
    assert all(len(set(r.tolist())) == 8 for r in idx2)


def test_linear_margin_is_sqrt_k_over_d_scale():
    d, k = 400, 7
    dist = SparseCoding(SparseCodingConfig(d=d, k=k, noise=0.0), seed=0)
    x, y, z = dist.sample(2000, torch.Generator().manual_seed(1), return_code=True)
    margin = dist.linear_margin(x, y)
    assert torch.allclose(margin, z.sum(1).abs() / math.sqrt(d), atol=1e-5)
    assert margin.min().item() == pytest.approx(1 / math.sqrt(d), rel=1e-4)


def test_same_seed_same_samples_and_different_seed_differs():
    dist = SparseCoding(SparseCodingConfig(d=30, k=3), seed=5)
    a = dist.sample(10, torch.Generator().manual_seed(9))[0]
    b = dist.sample(10, torch.Generator().manual_seed(9))[0]
    c = dist.sample(10, torch.Generator().manual_seed(10))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(dist.M, SparseCoding(SparseCodingConfig(d=30, k=3), seed=6).M)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(d=10, k=11), "k=11 must be at most d=10"),
    (dict(d=0, k=1), "d must be a positive int"),
    (dict(noise=-0.1), "noise"),
    (dict(noise=float("nan")), "noise"),
    (dict(z_min=2.0, z_max=1.0), "z_min"),
    (dict(dictionary="fourier"), "dictionary"),
])
def test_bad_config_is_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SparseCoding(SparseCodingConfig(**kwargs))


def test_bad_sample_size_is_rejected():
    with pytest.raises(ValueError, match="positive int"):
        SparseCoding(SparseCodingConfig(d=10, k=2)).sample(0, torch.Generator())
