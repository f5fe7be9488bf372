import pytest
import torch
import torch.nn.functional as F

from fp_helpers.networks import LowRankTwoLayerNet, NetConfig, TwoLayerNet, odd_activation


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_closed_form_gradients_match_autograd(beta):
    g = torch.Generator().manual_seed(0)
    d, n = 20, 64
    net = TwoLayerNet(d, NetConfig(m=15, beta=beta, init_std=0.3), generator=g)
    x = torch.randn(n, d, generator=g)
    y = torch.sign(torch.randn(n, generator=g))
    loss, gw, gx, _ = net.grads(x, y, need_input=True)
    xr = x.clone().requires_grad_(True)
    ref = F.softplus(-y * net(xr)).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(gw, net.W.grad, atol=1e-6)
    assert torch.allclose(gx / n, xr.grad, atol=1e-6)  # grads() returns per-example gradients


def test_activation_is_odd_flat_in_dead_zone_and_linear_beyond():
    t = torch.linspace(-3, 3, 601)
    s = odd_activation(t, 0.5, rho=0.5, q=3)
    assert torch.allclose(s, -odd_activation(-t, 0.5, rho=0.5, q=3))
    assert (s[t.abs() <= 0.5] == 0).all()
    big = t > 1.5  # |t| - b > rho: slope one
    assert torch.allclose(s[big][1:] - s[big][:-1], t[big][1:] - t[big][:-1], atol=1e-5)


def test_low_rank_net_starts_at_clean_weights_and_keeps_rank():
    g = torch.Generator().manual_seed(0)
    base = TwoLayerNet(30, NetConfig(m=12), generator=g)
    lr_net = LowRankTwoLayerNet(base, rank=2, generator=g)
    assert torch.equal(lr_net.weight, base.weight)  # A = 0 at the start
    x = torch.randn(50, 30, generator=g)
    y = torch.sign(torch.randn(50, generator=g))
    for _ in range(5):
        _, gw, _, _ = lr_net.grads(x, y)
        lr_net.sgd_step(gw, 5.0)
    upd = lr_net.weight - base.weight
    assert upd.abs().max() > 0
    assert torch.linalg.matrix_rank(upd).item() <= 2


def test_low_rank_sgd_step_matches_autograd_chain_rule():
    g = torch.Generator().manual_seed(1)
    base = TwoLayerNet(10, NetConfig(m=6, init_std=0.5), generator=g)
    net = LowRankTwoLayerNet(base, rank=3, generator=g)
    with torch.no_grad():
        net.A.copy_(torch.randn(6, 3, generator=g))
    x = torch.randn(20, 10, generator=g)
    y = torch.sign(torch.randn(20, generator=g))
    F.softplus(-y * net(x)).mean().backward()
    ga, gb = net.A.grad.clone(), net.B.grad.clone()
    a0, b0 = net.A.detach().clone(), net.B.detach().clone()
    _, gw, _, _ = net.grads(x, y)
    net.sgd_step(gw, 0.1)
    assert torch.allclose(net.A.detach(), a0 - 0.1 * ga, atol=1e-6)
    assert torch.allclose(net.B.detach(), b0 - 0.1 * gb, atol=1e-6)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(m=0), "m"), (dict(rho=0.0), "rho"), (dict(beta=-1.0), "beta"), (dict(init_std=0.0), "init_std"),
])
def test_bad_network_config_is_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TwoLayerNet(5, NetConfig(**kwargs))


def test_wrong_input_shape_is_rejected():
    net = TwoLayerNet(5, NetConfig(m=3))
    with pytest.raises(ValueError, match="expected"):
        net(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="rank"):
        LowRankTwoLayerNet(net, rank=0)
