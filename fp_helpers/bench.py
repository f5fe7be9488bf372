"""Speed benchmarks. ``python -m fp_helpers bench synthetic|ntk|cifar|all``.

- ``synthetic``: our training step (block sampling of fresh data with gathered atoms, closed-form gradients,
  no autograd graph) against a naive reference (per-step dense sampling ``z @ M^T``, an ``nn.Module``
  forward, ``loss.backward()``, ``torch.optim.SGD``), in one process and on the same sizes.
- ``ntk``: the closed-form NTK Gram matrix against ``torch.func``, and at the lower-bound chapter's scale.
- ``cifar``: FGSM-RS adversarial training of PreAct ResNet-18 on CIFAR-shaped random tensors, the straightforward
  fp32 loop against the step the book trains with (:func:`bench_cifar`).
- ``all``: the three, written to ``results/bench/<device>.json`` (:func:`bench_all`).

Also :func:`notebook_times_table`: the recorded notebook execution times, for the README and the appendix.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .networks import NetConfig, TwoLayerNet, smoothed_relu
from .runs import cpu_capability, get_device
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


# --------------------------------------------------------------------------------------------------
# CIFAR-10 adversarial training (FGSM-RS) on PreAct ResNet-18

CIFAR_EPOCH = 50_000  # training images in one CIFAR-10 epoch
CIFAR_LR = 0.05  # constant learning rate of both loops (random labels: a safe value, the speed does not depend on it)


class _FlopCounter(TorchDispatchMode):
    """FLOPs of the matmuls and convolutions actually dispatched (forward and backward), counted with
    PyTorch's own per-operator formulas (``torch.utils.flop_counter.flop_registry``: 2 per multiply-add).

    ``FlopCounterMode`` itself cannot be used here: its module tracker refuses ``torch.autograd.grad``,
    which the attack's input gradient uses."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            def shape(t):
                return t.shape if isinstance(t, torch.Tensor) else t

            self.total += formula(*tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out))
        return out


def naive_fgsm_rs_step_fn(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, lr: float,
                          momentum: float, weight_decay: float, generator: torch.Generator | None = None):
    """The straightforward fp32 loop, as published by Wong, Rice & Kolter (2020): NCHW, no autocast,
    ``torch.optim.SGD(foreach=False)``, FGSM with random start written out, and the attack's
    ``loss.backward()`` that also computes (and then discards) the weight gradients.

    Kept independent of :func:`fp_helpers.cifar_train.train_step` on purpose: it is the reference that
    ``tests/test_bench.py`` checks our step against (same loss, same weights after a step)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    def step():
        delta = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        delta = torch.clamp(delta, -x, 1 - x).requires_grad_(True)  # x + delta stays a valid image
        F.cross_entropy(model(x + delta), y).backward()
        delta = torch.clamp(delta.detach() + alpha * delta.grad.sign(), -eps, eps)
        delta = torch.clamp(delta, -x, 1 - x)
        loss = F.cross_entropy(model(x + delta), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def ours_fgsm_rs_step_fn(model, x: torch.Tensor, y: torch.Tensor, cfg, amp: bool, generator=None):
    """Our step: exactly what :func:`fp_helpers.cifar_train.train_cifar` runs per batch
    (:func:`~fp_helpers.cifar_train.train_step`, :func:`~fp_helpers.cifar_train.make_optimizer`); ``model``
    should already be channels-last when ``cfg.channels_last`` (``train_cifar`` does that once)."""
    from .cifar_train import make_optimizer, train_step

    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, x.device)

    def step():
        return train_step(model, opt, x, y, cfg, generator, amp=amp)[0]

    return step


def _check_count(name: str, v, low: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return v


def _bench_device(device) -> torch.device:
    """The device to benchmark on, or a ValueError naming what is allowed."""
    try:
        dev = get_device(device)
    except RuntimeError as e:  # torch.device's own error for an unknown string
        raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} for the benchmarks; allowed: cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use cpu")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn, flops: float, device: torch.device, reps: int, min_seconds: float) -> float:
    """TFLOP/s of ``fn`` (``flops`` each call): the best of ``reps`` timings of back-to-back calls."""
    fn()
    _sync(device)
    best = 0.0
    for _ in range(reps):
        k, t0 = 0, time.perf_counter()
        while True:
            fn()
            k += 1
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        best = max(best, flops * k / dt / 1e12)
    return best


def matmul_peak(device, dtype: torch.dtype = torch.bfloat16, n: int | None = None, reps: int = 3,
                min_seconds: float = 0.2) -> float:
    """Measured matmul throughput (TFLOP/s) of ``device`` in ``dtype``: the best of ``reps`` timings of
    back-to-back ``n x n`` products (``n`` = 8192 on CUDA, 2048 on CPU), ``2 n^3`` FLOPs each, at PyTorch's
    default settings (so fp32 on CUDA is true fp32 unless TF32 matmuls were switched on)."""
    device = _bench_device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    return _best_rate(lambda: a @ b, 2 * n**3, device, reps, min_seconds)


def conv_peak(device, dtype: torch.dtype = torch.bfloat16, batch: int | None = None, reps: int = 3,
              min_seconds: float = 0.2) -> float:
    """Measured throughput (TFLOP/s) of one large 3x3 convolution forward in ``dtype``, channels-last: 256 to
    256 channels on 8x8 maps (PreAct ResNet-18's third stage; every stage has about the same FLOPs), ``batch``
    images (512 on CUDA, 128 on CPU), counted as ``2 * batch * 64 * 256 * 256 * 9`` FLOPs.

    A reference beside :func:`matmul_peak`: on a CPU, oneDNN's convolutions can outrun ``torch.matmul``
    (e.g. MKL's fp32 GEMM without AVX-512 on AMD, or a Winograd algorithm doing fewer multiplications
    than counted), so a whole training step can exceed 100% of the matmul peak there."""
    device = _bench_device(device)
    batch = batch or (512 if device.type == "cuda" else 128)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 256, 8, 8, generator=g, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, generator=g, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    return _best_rate(lambda: F.conv2d(x, w, padding=1), 2 * batch * 64 * 256 * 256 * 9, device, reps, min_seconds)


def cifar_flops(width: int = 64) -> dict:
    """FLOPs per image of PreAct ResNet-18 (``width``) on a 32x32 image, counted (on CPU, batch 2) by
    :class:`_FlopCounter` over one forward pass and over one whole step of each loop."""
    from .cifar_models import make_model
    from .cifar_train import CifarTrainConfig

    cfg = CifarTrainConfig(attack="fgsm_rs", channels_last=False).validate()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2,), generator=g)
    out = {}
    with torch.random.fork_rng(devices=[]):
        model = make_model("preact_resnet18", seed=0, width=width).train()
        with _FlopCounter() as c:
            model(x)
        out["forward"] = c.total / 2
        for name, fn in (("ours_step", ours_fgsm_rs_step_fn(model, x, y, cfg, amp=False, generator=g)),
                         ("naive_step", naive_fgsm_rs_step_fn(model, x, y, cfg.eps, cfg.alpha, 0.0, 0.0, 0.0, g))):
            with _FlopCounter() as c:
                fn()
            out[name] = c.total / 2
    return out


def _time_steps(step, batches: int, warmup: int, device: torch.device) -> tuple[float, float, float, torch.Tensor]:
    """(warm-up seconds, seconds of ``batches`` timed steps, the process's CPU seconds in them, last loss)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        loss = step()
    _sync(device)
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, loss


def bench_cifar(batch: int | None = None, batches: int | None = None, warmup: int | None = None, device=None,
                compile: bool = False, width: int = 64, seed: int = 0, cpu_bf16: bool = True,
                verbose: bool = True) -> dict:
    """CIFAR-10 adversarial training speed: FGSM with random start (l-inf, eps 8/255, step 10/255; Wong,
    Rice & Kolter 2020) on PreAct ResNet-18 with SGD (momentum 0.9, weight decay 5e-4), on one batch of
    random CIFAR-shaped images and labels (no data needed; data loading and augmentation are not timed),
    in the same process:

    - ``naive``: :func:`naive_fgsm_rs_step_fn`, the straightforward fp32 PyTorch loop (NCHW, no autocast,
      ``SGD(foreach=False)``, PyTorch's default settings);
    - ``ours_bf16`` / ``ours_fp32``: :func:`fp_helpers.cifar_train.train_step`, the step the book's CIFAR
      training runs (channels-last, the attack's backward computing the input gradient only,
      :func:`~fp_helpers.cifar_train.make_optimizer`: fused SGD on CUDA), under bf16 autocast or in fp32;
      with ``compile=True`` the model goes through ``torch.compile`` first (compilation happens in the
      warm-up). On CUDA only ``ours_bf16`` runs; on CPU both (``cpu_bf16=False``: fp32 only), because bf16
      is faster only on CPUs with bf16 instructions (AVX512-BF16, AMX), and ``ours`` names the faster one.

    Each variant builds the same model from ``seed``, runs ``warmup`` untimed steps, then ``batches`` timed
    steps of ``batch`` images (defaults: CUDA 512 x 97, one epoch-equivalent, after 5 warm-up steps; CPU
    128 x 2 after 1, or 3 with ``compile``: an epoch takes an hour or more there). Reported per variant:
    images/s, seconds per epoch (50,000 images, extrapolated), and achieved TFLOP/s as a fraction
    (``peak_fraction``) of the device's measured matmul peak (:func:`matmul_peak`): on CUDA the bf16 peak for
    every variant (the naive loop's fp32 convolutions run in TF32 there, cuDNN's default), on CPU the peak of
    the precision the variant ran in; ``conv_peak_fraction``: the same against one large 3x3 convolution
    (:func:`conv_peak`); on CPU also ``cpu_utilisation``, the process's CPU time over wall time x threads:
    well under 1 means other processes shared the cores and the timing is unreliable.

    FLOP accounting (:func:`cifar_flops`, counted, not estimated): only convolutions and the linear layer,
    2 FLOPs per multiply-add; forward ``F`` ~ 1.11 GFLOP per image at width 64. One FGSM-RS step is two
    forwards and two backwards; a backward costs ``2F`` when it computes input and weight gradients, ``F``
    when it computes the input gradient only. Our step needs ``F + F`` (attack: forward, input gradient)
    ``+ F + 2F`` (update) = ``5F``, the least an exact FGSM-RS step can do; the naive loop executes
    ``6F`` (its attack's backward also computes weight gradients). TFLOP/s is reported with the
    useful ``5F`` per image for every variant (so the TFLOP/s ratio is the images/s ratio), and
    ``executed_tflops`` with each loop's own count. Elementwise work (batch norm, ReLU, the attack's
    arithmetic) is not counted but takes time: the fraction of peak says how far the whole step is from
    the convolutions' arithmetic limit.
    """
    from .cifar_models import make_model
    from .cifar_train import CifarTrainConfig, to_memory_format

    device = _bench_device(device)
    cuda = device.type == "cuda"
    batch = _check_count("batch", 512 if cuda and batch is None else 128 if batch is None else batch, 1)
    batches = _check_count("batches", (CIFAR_EPOCH // 512 if cuda else 2) if batches is None else batches, 1)
    warmup = _check_count("warmup", (5 if cuda else 3 if compile else 1) if warmup is None else warmup, 0)
    width = _check_count("width", width, 1)
    seed = _check_count("seed", seed, 0)
    for name, v in (("compile", compile), ("cpu_bf16", cpu_bf16)):
        if not isinstance(v, bool):
            raise ValueError(f"{name} must be True or False, got {v!r}")
    cfg = CifarTrainConfig(batch_size=batch, lr=CIFAR_LR, attack="fgsm_rs", amp=True, channels_last=True,
                           seed=seed).validate()
    peaks = {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32)}
    conv_peaks = {"bf16": conv_peak(device, torch.bfloat16), "fp32": conv_peak(device, torch.float32)}
    flops = cifar_flops(width)
    flops["useful_step"] = flops["ours_step"]
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    out = {"model": "PreActResNet18", "width": width, "batch": batch, "batches": batches, "warmup": warmup,
           "images_timed": batch * batches, "attack": cfg.describe(), "lr": CIFAR_LR, "momentum": cfg.momentum,
           "weight_decay": cfg.weight_decay, "compile": compile, "device": str(device),
           "threads": torch.get_num_threads(), "peak_tflops": peaks, "conv_peak_tflops": conv_peaks,
           "flops_per_image": flops,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "variants": {}}
    plans = [("naive", "fp32")] + [("ours", p) for p in (("bf16",) if cuda else ("fp32", "bf16") if cpu_bf16
                                                         else ("fp32",))]
    for kind, precision in plans:
        name = "naive" if kind == "naive" else f"ours_{precision}"
        model = make_model("preact_resnet18", seed=seed, width=width).to(device).train()
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        if kind == "naive":
            step = naive_fgsm_rs_step_fn(model, x, y, cfg.eps, cfg.alpha, cfg.lr, cfg.momentum, cfg.weight_decay, gen)
            executed = flops["naive_step"]
            tf32 = " (cuDNN convolutions in TF32)" if cuda and torch.backends.cudnn.allow_tf32 else ""
            desc = f"fp32{tf32}, NCHW, SGD(foreach=False)"
        else:
            model, run_cfg = to_memory_format(model, cfg, device)
            safe = run_cfg.channels_last
            run_model = torch.compile(model) if compile else model
            step = ours_fgsm_rs_step_fn(run_model, x, y, run_cfg, amp=precision == "bf16", generator=gen)
            executed = flops["ours_step"]
            desc = (f"{'bf16 autocast' if precision == 'bf16' else 'fp32'}, {'channels-last' if safe else 'NCHW'}, "
                    f"SGD({'fused' if cuda else 'default'}){', torch.compile' if compile else ''}")
        t_warm, t, cpu_t, loss = _time_steps(step, batches, warmup, device)
        ips = batch * batches / t
        useful = flops["useful_step"] * ips / 1e12
        ref = "bf16" if cuda else precision
        out["variants"][name] = {
            "precision": precision, "description": desc, "images_per_s": ips, "seconds_per_epoch": CIFAR_EPOCH / ips,
            "timed_seconds": t, "warmup_seconds": t_warm, "tflops": useful, "executed_tflops": executed * ips / 1e12,
            "peak_reference": ref, "peak_fraction": useful / peaks[ref], "conv_peak_fraction": useful / conv_peaks[ref],
            "cpu_utilisation": cpu_t / (t * torch.get_num_threads()) if not cuda else None,
            "last_loss": float(loss.float().item())}
        del model, step
        if cuda:
            torch.cuda.empty_cache()
    v = out["variants"]
    ours = max((k for k in v if k.startswith("ours")), key=lambda k: v[k]["images_per_s"])
    out["ours"] = ours
    out["speedup"] = v[ours]["images_per_s"] / v["naive"]["images_per_s"]
    if verbose:
        print(f"CIFAR-10 {cfg.describe()} on PreAct ResNet-18 (width {width}), batch {batch}, {batches} timed "
              f"batches after {warmup} warm-up, {_device_label(device)}")
        print(f"  measured peaks (TFLOP/s): matmul bf16 {peaks['bf16']:.3g}, fp32 {peaks['fp32']:.3g}; 3x3 conv "
              f"bf16 {conv_peaks['bf16']:.3g}, fp32 {conv_peaks['fp32']:.3g}; "
              f"forward {flops['forward'] / 1e9:.2f} GFLOP/image, step {flops['useful_step'] / 1e9:.2f} "
              f"(ours) / {flops['naive_step'] / 1e9:.2f} (naive) GFLOP/image")
        for k, r in v.items():
            u = r["cpu_utilisation"]
            busy = "" if u is None else f" | CPU {100 * u:.0f}% busy" + (
                " (other processes share the cores: timing unreliable)" if u < 0.85 else "")
            print(f"  {k:10s} {r['images_per_s']:9.1f} images/s | epoch {r['seconds_per_epoch']:8.1f} s | "
                  f"{r['tflops']:.3g} TFLOP/s = {100 * r['peak_fraction']:.1f}% of the {r['peak_reference']} matmul peak, "
                  f"{100 * r['conv_peak_fraction']:.1f}% of the conv's | {r['description']}{busy}")
        print(f"  ours ({ours}) / naive: {out['speedup']:.2f}x images/s")
    return out


# --------------------------------------------------------------------------------------------------
# everything, into results/bench/<device>.json


def _device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU (AMD EPYC, AVX2, 2 threads)`` (the CPU's model name from
    /proc/cpuinfo, and the instruction set PyTorch's kernels use: the same model name can come with another,
    and bf16 on a CPU is fast only with AVX-512 BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = cpu_capability()
    n = torch.get_num_threads()
    return f"CPU ({name}{f', {isa}' if isa else ''}, {n} thread{'s' if n != 1 else ''})"


def device_slug(device=None) -> str:
    """File name stem for ``device``'s benchmark results, e.g. ``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc-avx2-2-threads``."""
    label = _device_label(_bench_device(device)).lower()
    return re.sub(r"[^a-z0-9]+", "-", label).strip("-")


def default_bench_path(device=None) -> Path:
    """``results/bench/<device_slug>.json`` (relative to the working directory)."""
    return Path("results") / "bench" / f"{device_slug(device)}.json"


def bench_environment(device) -> dict:
    """Where and with what the figures were made (``dirty``: whether fp_helpers/ had uncommitted changes)."""
    from . import __version__
    from .runs import git_commit

    device = _bench_device(device)
    try:
        from .provenance import git_state

        dirty = git_state()[1]
    except ImportError:
        dirty = None
    return {"device": str(device), "device_name": _device_label(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
            "python": platform.python_version(), "fp_helpers": __version__, "commit": git_commit(), "dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}


def bench_all(out: str | Path | None = None, device=None, synthetic: dict | None = None, ntk: dict | None = None,
              cifar: dict | None = None, verbose: bool = True) -> dict:
    """:func:`bench_synthetic`, :func:`bench_ntk` and :func:`bench_cifar` in one process on ``device``, with
    keyword arguments ``synthetic``, ``ntk``, ``cifar`` for each; the figures and :func:`bench_environment`
    are written atomically to ``out`` (default :func:`default_bench_path`) and returned."""
    from .__main__ import write_json_atomic

    device = _bench_device(device)
    for name, kw in (("synthetic", synthetic), ("ntk", ntk), ("cifar", cifar)):
        if kw is not None and not isinstance(kw, dict):
            raise ValueError(f"{name} must be a dict of keyword arguments or None, got {kw!r}")
    out = Path(out) if out is not None else default_bench_path(device)
    t0 = time.perf_counter()
    result = {"environment": bench_environment(device),
              "synthetic": bench_synthetic(device=device, verbose=verbose, **(synthetic or {})),
              "ntk": bench_ntk(device=device, verbose=verbose, **(ntk or {})),
              "cifar": bench_cifar(device=device, verbose=verbose, **(cifar or {}))}
    result["seconds"] = time.perf_counter() - t0
    from .provenance import stamp

    bench_env = result["environment"]  # richer than the generic one stamp() writes: keep it
    stamp(result, "bench", {"synthetic": synthetic or {}, "ntk": ntk or {}, "cifar": cifar or {}},
          device=device, command="python -m fp_helpers bench all")
    result["environment"] = bench_env
    write_json_atomic(out, result)
    if verbose:
        print(f"wrote {out} ({result['seconds']:.0f} s)")
    return result


BENCH_HEADER = ["device", "synthetic step, ours / naive (clean, FGM)", "NTK Gram n=256, torch.func / closed form",
                "CIFAR FGSM-RS naive fp32 (images/s)", "ours (images/s)", "ours / naive",
                "ours TFLOP/s (% of matmul peak)", "ours, s per epoch"]


def bench_markdown(folder: str | Path = "results/bench") -> str:
    """The README's benchmark table: a row per ``bench all`` file in ``folder`` (CPUs first), and a GPU row
    saying it is not measured when no file comes from a GPU."""
    import json

    rows = []
    for f in sorted(Path(folder).glob("*.json")):
        r = json.loads(f.read_text())
        if not all(k in r for k in ("synthetic", "ntk", "cifar", "environment")):
            continue
        env, syn, ntk, cf = r["environment"], r["synthetic"], r["ntk"], r["cifar"]
        ours = cf["variants"][cf["ours"]]
        gpu = env["device"].startswith("cuda")
        label = (f"{env['device_name']} (`results/bench/{f.name}`, {env['date'][:10]}; CIFAR at batch {cf['batch']}, "
                 f"{cf['batches']} timed batches{', torch.compile' if cf.get('compile') else ''})")
        rows.append((gpu, "| " + " | ".join([
            label,
            f"{syn['clean']['speedup']:.1f}x, {syn['fgm']['speedup']:.1f}x (floor: {syn['clean']['speedup_bound']:.1f}x, "
            f"{syn['fgm']['speedup_bound']:.1f}x)",
            f"{ntk['ratio']:.0f}x; n={ntk['n_gram']:,} Gram in {ntk['gram_s']:.1f} s",
            f"{cf['variants']['naive']['images_per_s']:.1f}",
            f"{ours['images_per_s']:.1f} ({ours['description']})",
            f"{cf['speedup']:.2f}x",
            f"{ours['tflops']:.3g} ({100 * ours['peak_fraction']:.0f}% of {ours['peak_reference']} matmul peak)",
            f"{ours['seconds_per_epoch']:.0f}"]) + " |"))
    if not any(g for g, _ in rows):
        rows.append((True, "| 1 GPU (`results/bench/<gpu>.json`) | not yet measured: no GPU was lent to the tasks "
                           "that built this (`bash scripts/gpu_kit.sh all` on one) |" + " |" * (len(BENCH_HEADER) - 2)))
    head = ["| " + " | ".join(BENCH_HEADER) + " |", "|" + "---|" * len(BENCH_HEADER)]
    return "\n".join(head + [line for _, line in sorted(rows, key=lambda t: t[0])])


# --------------------------------------------------------------------------------------------------
# notebook execution times (results/execution_times.json)

CHAPTERS = ("theory", "sparse_coding", "clean_training", "adversarial_training", "lower_bounds", "cifar10")
PROFILE_ORDER = ("quick", "full")


def device_kind(device_name: str) -> str:
    """``"cpu"`` for a recorded device name such as ``CPU (x86_64, 2 threads)``, else ``"gpu"``."""
    return "cpu" if str(device_name).startswith("CPU") else "gpu"


def notebook_times_table(path: str | Path = "results/execution_times.json") -> list[dict]:
    """One row per recorded notebook execution in ``path`` (written by ``scripts/execute_notebooks.py``):
    ``chapter`` (notebook stem), ``notebook``, ``profile``, ``device`` (as recorded, e.g.
    ``CPU (x86_64, 2 threads)``), ``gpu`` (whether it ran on a GPU), ``threads`` (CPU threads, or None),
    ``seconds`` (wall time), ``cpu_seconds`` (CPU time of the kernel and its worker processes; None where it
    was not recorded), ``date`` and ``commit``; in book order (:data:`CHAPTERS`), then profile, then device."""
    import json

    log = json.loads(Path(path).read_text())
    if not isinstance(log, dict):
        raise ValueError(f"{path} is not an execution-times file (a JSON object keyed by notebook@profile)")
    rows = []
    for key, e in log.items():
        if not isinstance(e, dict) or "seconds" not in e:
            raise ValueError(f"{path}: entry {key!r} has no 'seconds'")
        nb = e.get("notebook") or key.split("@")[0]
        device = str(e.get("device", ""))
        m = re.search(r"(\d+) threads?\)", device)
        rows.append({"chapter": Path(nb).stem, "notebook": nb, "profile": e.get("profile") or (key.split("@") + [""])[1],
                     "device": device, "gpu": device_kind(device) == "gpu", "threads": int(m.group(1)) if m else None,
                     "seconds": float(e["seconds"]),
                     "cpu_seconds": None if e.get("cpu_seconds") is None else float(e["cpu_seconds"]),
                     "date": e.get("date"), "commit": e.get("commit")})

    def order(r):
        ch = CHAPTERS.index(r["chapter"]) if r["chapter"] in CHAPTERS else len(CHAPTERS)
        pr = PROFILE_ORDER.index(r["profile"]) if r["profile"] in PROFILE_ORDER else len(PROFILE_ORDER)
        return ch, r["chapter"], pr, r["gpu"], r["device"]

    return sorted(rows, key=order)


def notebook_times_log(path: str | Path = "results/execution_times.json", this_page: str | None = None,
                       training_runs: dict[str, str | Path] | None = None):
    """The appendix's table of :func:`notebook_times_table` (a Markdown object): one line per recorded
    execution, with its profile, device, wall time, CPU time (kernel and worker processes; ``-`` where not
    recorded), commit, date and a note. ``this_page``: the chapter (notebook
    stem) showing the table; the log is written after a page runs, so its rows are the *previous* execution and
    are noted so. ``training_runs``: chapter -> a saved run's JSON (e.g. ``results/cifar/full.json``) that the
    chapter's ``full`` execution loads instead of training; its own training time (``"seconds"``) is added as a
    row right after that chapter's rows, labelled as a training run, not a notebook execution."""
    import json

    from .book import markdown_table, portable_paths

    rows = notebook_times_table(path)
    extra = {}
    for chapter, run in (training_runs or {}).items():
        run = Path(run)
        if not run.exists():
            continue
        r = json.loads(run.read_text())
        prov, env = r.get("provenance") or {}, r.get("environment") or {}
        extra[chapter] = [f"{chapter} (training run)", prov.get("profile") or env.get("profile") or "-",
                          re.sub(r"\b1 threads\)", "1 thread)", env.get("device_name") or r.get("device", "-")),
                          format_seconds(float(r["seconds"])), "-",
                          prov.get("commit") or "-", str(prov.get("date", "-"))[:10],
                          f"training of the saved run {portable_paths(str(run.resolve()))} that the `full` row loads; "
                          f"not part of the notebook's time"]
    table = []
    for i, r in enumerate(rows):
        note = "previous execution (this page's log is written after it runs)" if r["chapter"] == this_page else ""
        cpu = "-" if r["cpu_seconds"] is None else format_seconds(r["cpu_seconds"])
        table.append([r["chapter"], r["profile"], r["device"], format_seconds(r["seconds"]), cpu, r["commit"] or "-",
                      r["date"], note])
        last = i + 1 == len(rows) or rows[i + 1]["chapter"] != r["chapter"]
        if last and r["chapter"] in extra:
            table.append(extra.pop(r["chapter"]))
    table += list(extra.values())
    return markdown_table(["notebook", "profile", "device", "wall time", "CPU time", "commit", "date", "note"], table)


def appendix_times_log(root: str | Path):
    """The execution-statistics appendix's table, from the repository at ``root``: :func:`notebook_times_log` of
    ``results/execution_times.json``, with that page's own rows marked as its previous execution and the
    CIFAR-10 run that the ``cifar10`` chapter loads at ``full`` (``results/cifar/full.json``) added with its own
    training time. The appendix and the test that keeps it current both call this."""
    root = Path(root)
    return notebook_times_log(root / "results" / "execution_times.json", this_page="execution_statistics",
                              training_runs={"cifar10": root / "results" / "cifar" / "full.json"})


def format_seconds(s: float) -> str:
    """``8.9 s``, ``2.3 min``, ``1.2 h``."""
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def notebook_times_markdown(path: str | Path = "results/execution_times.json", all_columns: bool = False) -> str:
    """The README's table of :func:`notebook_times_table`: a row per chapter, a column per profile on CPU and
    on GPU that has a measurement (``all_columns``: also quick and full on CPU and full on GPU without one);
    each cell the wall time, on a CPU with the CPU time of the kernel and its workers where recorded, and the
    date (and the thread count when it was not 2, the GPU's name), or ``not measured``."""
    rows = notebook_times_table(path)
    wanted = {("quick", False), ("full", False), ("full", True)} if all_columns else set()
    cols = [(p, gpu) for p in PROFILE_ORDER for gpu in (False, True)
            if (p, gpu) in wanted or any(r["profile"] == p and r["gpu"] == gpu for r in rows)]
    chapters = list(dict.fromkeys(r["chapter"] for r in rows))
    head = "| chapter | " + " | ".join(f"{p}, {'GPU' if gpu else 'CPU'}" for p, gpu in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for ch in chapters:
        cells = []
        for p, gpu in cols:
            hits = [r for r in rows if r["chapter"] == ch and r["profile"] == p and r["gpu"] == gpu]
            cells.append("; ".join(
                format_seconds(r["seconds"]) + (f" on {r['device']}" if gpu else
                                                f", {r['threads']} thread{'s' if r['threads'] != 1 else ''}"
                                                if r["threads"] not in (2, None) else "")
                + (f", CPU {format_seconds(r['cpu_seconds'])}" if r["cpu_seconds"] is not None and not gpu else "")
                + f" ({r['date']})" for r in hits) or "not measured")
        lines.append(f"| `{ch}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
