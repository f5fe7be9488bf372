"""Speed benchmarks. ``python -m fp_helpers bench synthetic``.

Compares, in one process and on the same sizes, our training step (block sampling of fresh data with
gathered atoms, closed-form gradients, no autograd graph) with a naive reference (per-step dense
sampling ``z @ M^T``, an ``nn.Module`` forward, ``loss.backward()``, ``torch.optim.SGD``).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .attacks import fgm
from .networks import NetConfig, TwoLayerNet, smoothed_relu
from .runs import get_device
from .sparse_coding import SparseCoding, SparseCodingConfig
from .training import TrainConfig, train


def naive_activation(t: torch.Tensor, rho: float, q: int) -> torch.Tensor:
    """The textbook piecewise form ``sign(t) h(|t|)``, differentiated by autograd."""
    return torch.sign(t) * smoothed_relu(t.abs(), rho, q)


def naive_step_fn(dist: SparseCoding, W: torch.Tensor, cfg: NetConfig, batch: int, lr: float, tau: float,
                  adversarial: bool, gen: torch.Generator):
    """The straightforward implementation described in the science brief, as a per-step closure."""
    W = W.clone().requires_grad_(True)
    opt = torch.optim.SGD([W], lr=lr)
    d, k = dist.d, dist.k

    def f(x):
        return naive_activation(x @ W.T, cfg.rho, cfg.q).sum(1)

    def step():
        idx = torch.rand(batch, d, generator=gen).argsort(1)[:, :k]
        signs = torch.randint(0, 2, (batch, k), generator=gen) * 2.0 - 1
        z = torch.zeros(batch, d).scatter_(1, idx, signs)
        x = z @ dist.M.T + torch.randn(batch, d, generator=gen) * (dist.config.noise / math.sqrt(d))
        y = torch.sign(z @ dist.w_star)
        if adversarial:
            xr = x.clone().requires_grad_(True)
            g, = torch.autograd.grad(F.softplus(-y * f(xr)).sum(), xr)
            x = (x + tau * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).detach()
        opt.zero_grad()
        F.softplus(-y * f(x)).mean().backward()
        opt.step()

    return step


def _time(fn, steps: int) -> float:
    fn(min(20, steps))  # warm-up
    t = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t


def bench_synthetic(d: int = 400, k: int = 7, m: int = 200, batch: int = 128, steps: int = 300,
                    device=None, verbose: bool = True) -> dict:
    device = get_device(device)
    dist = SparseCoding(SparseCodingConfig(d=d, k=k), seed=0, device=device)
    ncfg = NetConfig(m=m)
    out = {"d": d, "k": k, "m": m, "batch": batch, "steps": steps, "device": str(device),
           "threads": torch.get_num_threads()}
    for mode in ("clean", "fgm"):
        adversarial = mode == "fgm"
        gen = torch.Generator().manual_seed(0)
        W0 = torch.randn(m, d, generator=gen) * ncfg.init_std
        naive = naive_step_fn(dist, W0, ncfg, batch, 2.0, 0.15, adversarial, gen)
        t_naive = _time(lambda n: [naive() for _ in range(n)], steps)
        net = TwoLayerNet(d, ncfg, weight=W0.to(device))
        tcfg = TrainConfig(batch=batch, lr=2.0, attack="fgm" if adversarial else "none", tau=0.15,
                           log_every=10**9)
        t_ours = _time(lambda n: train(net, dist, _with_steps(tcfg, n), gen, progress=False), steps)
        t_floor = _time(lambda n: [_floor_step(net.W.detach(), batch, adversarial, gen) for _ in range(n)], steps)
        # arithmetic of the network only: forward + weight gradient (+ FGM's forward + input gradient)
        flops = 2 * batch * d * m * (2 + (2 if adversarial else 0))
        out[mode] = {
            "naive_steps_per_s": steps / t_naive,
            "ours_steps_per_s": steps / t_ours,
            "speedup": t_naive / t_ours,
            "ours_gflops": flops * steps / t_ours / 1e9,
            "floor_steps_per_s": steps / t_floor,
            "speedup_bound": t_naive / t_floor,
        }
        if verbose:
            r = out[mode]
            print(f"{mode:5s} step  naive {r['naive_steps_per_s']:8.1f} steps/s | ours {r['ours_steps_per_s']:8.1f} "
                  f"steps/s | speed-up {r['speedup']:5.1f}x | ours {r['ours_gflops']:.2f} GFLOP/s (network arithmetic)")
            print(f"{'':5s}       floor {r['floor_steps_per_s']:8.1f} steps/s (the batch's Gaussian noise + the step's "
                  f"matmuls, which every implementation pays) -> no implementation of this step beats "
                  f"{r['speedup_bound']:.1f}x")
    return out


def _floor_step(W: torch.Tensor, batch: int, adversarial: bool, gen: torch.Generator) -> torch.Tensor:
    """The work no implementation of an exact fp32 step avoids: the batch's noise and the matmuls."""
    x = torch.randn(batch, W.shape[1], generator=gen, device=W.device)
    G = x @ W.T  # forward
    if adversarial:
        x = x + G @ W  # FGM: input gradient, then the forward at the perturbed point
        G = x @ W.T
    return G.T @ x  # weight gradient


def _with_steps(cfg: TrainConfig, n: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, steps=n)


def bench_ntk(d: int = 400, m: int = 300, n_small: int = 256, n_gram: int = 10_000, k: int = 7, device=None,
              verbose: bool = True) -> dict:
    """Closed-form NTK Gram vs ``torch.func`` (Jacobian contraction) on the same small problem, and the
    closed form alone on ``n_gram`` points (the lower-bound chapter's scale)."""
    from .baselines import NTKKernel, ntk_torch_func

    device = get_device(device)
    dist = SparseCoding(SparseCodingConfig(d=d, k=k), seed=0, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    net = TwoLayerNet(d, NetConfig(m=m), generator=torch.Generator().manual_seed(0)).to(device)
    kernel = NTKKernel(net)
    x, _ = dist.sample(n_small, gen)

    def timed(fn, reps=3):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            out = fn()
        return (time.perf_counter() - t) / reps, out

    t_closed, K1 = timed(lambda: kernel.gram(x))
    t_func, K2 = timed(lambda: ntk_torch_func(net, x, x), reps=1)
    err = ((K1 - K2).abs().max() / K2.abs().max()).item()
    xg, _ = dist.sample(n_gram, gen)
    t0 = time.perf_counter()
    G = kernel.gram(xg)
    t_gram = time.perf_counter() - t0
    out = {"d": d, "m": m, "n_small": n_small, "closed_form_s": t_closed, "torch_func_s": t_func,
           "ratio": t_func / t_closed, "max_rel_diff": err, "n_gram": n_gram, "gram_s": t_gram,
           "gram_shape": list(G.shape), "device": str(device), "threads": torch.get_num_threads()}
    if verbose:
        print(f"NTK Gram, n={n_small}, d={d}, m={m}: closed form {1e3 * t_closed:.1f} ms | torch.func "
              f"{1e3 * t_func:.1f} ms | ratio {out['ratio']:.0f}x | max relative difference {err:.1e}")
        print(f"NTK Gram, n={n_gram}, d={d}, m={m} (closed form, row blocks): {t_gram:.2f} s")
    return out
