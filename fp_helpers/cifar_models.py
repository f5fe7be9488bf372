"""CIFAR-10 models: pre-activation ResNets and the low-rank adversarial fine-tuning wrapper.

Every model takes images in ``[0, 1]`` and normalises them in its first layer (:class:`Normalize`),
so attack radii are in pixel space (``8/255`` means eight grey levels); ``Normalize`` and the CIFAR-10
mean / std come from :mod:`fp_helpers.cifar`.

- :class:`PreActResNet18`: the pre-activation ResNet-18 of He et al. (2016) exactly as used by
  Wong, Rice & Kolter (2020, "Fast is better than free") and Rice et al. (2020); 11.2M parameters.
- :class:`SmallResNet`: the same blocks with three narrow stages, for CPU runs (~80k parameters at
  ``width=16``, ~175k at ``width=24``).

Low-rank adversarial fine-tuning (the paper's v4 claim that adversarial training only needs a low-rank
update of the clean weights): :func:`apply_low_rank` freezes every parameter of a (clean-trained) model
and gives every conv / linear weight ``W_clean`` (viewed as the ``(out, in * kh * kw)`` matrix) a trainable
update, so the weight in use is ``W = W_clean + A @ B`` with ``A`` of shape ``(out, r)`` and ``B`` of shape
``(r, in * kh * kw)``. ``A`` starts at zero, so the wrapped model starts *exactly* at the clean model.
By default BatchNorm layers are frozen too, statistics included (:class:`FrozenBatchNorm2d`), so the only
thing that changes is the rank-``r`` update of each weight; with ``train_bn=True`` (what the CIFAR-10
experiment uses) their per-channel scale and shift are trained and their statistics follow the training
inputs, as in the clean model's own training.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .cifar import CIFAR_MEAN, CIFAR_STD, Normalize

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "Normalize", "PreActResNet", "PreActResNet18", "SmallResNet", "make_model",
           "channels_last_safe", "count_parameters", "named_weight_matrices", "first_layer_weight", "LowRankDelta", "FrozenBatchNorm2d",
           "apply_low_rank", "batchnorm_only", "is_low_rank", "low_rank_parameters", "clean_weights", "effective_weights",
           "low_rank_updates"]


class PreActBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))``; a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _check_positive_ints(name: str, values) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return values


class PreActResNet(nn.Module):
    """Normalize -> 3x3 conv -> stages of :class:`PreActBlock` (stride 1, then 2) -> BN-ReLU -> pool -> linear."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        widths = _check_positive_ints("widths", widths)
        blocks = _check_positive_ints("blocks", blocks)
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must have the same length (one per stage)")
        _check_positive_ints("num_classes", (num_classes,))
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(PreActBlock(in_planes, w, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (after the final BN-ReLU and global average pooling)."""
        out = self.layers(self.conv1(self.normalize(x)))
        return F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected (n, 3, H, W) images in [0, 1]")
        return self.linear(self.features(x))


class PreActResNet18(PreActResNet):
    """Pre-activation ResNet-18 (He et al. 2016) as in Wong et al. (2020): stages of width
    ``width * (1, 2, 4, 8)`` with two blocks each."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        _check_positive_ints("width", (width,))
        super().__init__((width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2), num_classes)


class SmallResNet(PreActResNet):
    """A CPU-sized pre-activation ResNet: stages of width ``width * (1, 2, 4)``, ``blocks`` blocks each."""

    def __init__(self, width: int = 16, blocks=(1, 1, 1), num_classes: int = 10):
        _check_positive_ints("width", (width,))
        blocks = _check_positive_ints("blocks", blocks)
        super().__init__(tuple(width * 2 ** i for i in range(len(blocks))), blocks, num_classes)


MODELS = {"preact_resnet18": PreActResNet18, "small_resnet": SmallResNet}


# oneDNN's CPU 1x1-convolution kernel computes the weight gradient of a strided 1x1 convolution in NHWC
# (channels-last) memory wrongly when the layer has fewer input channels than its channel block (8 with
# AVX2, 16 with AVX-512): it writes past a workspace (uxlfoundation/oneDNN#6035). Seen here with torch
# 2.14.1 on an AVX2 AMD EPYC: a SmallResNet of width 4 to 7 crashes (segfault, "double free") or hangs in
# its first backward pass; elsewhere it gives wrong gradients silently.
ONEDNN_1X1_BLOCK = 16


def channels_last_safe(model: nn.Module, device) -> bool:
    """Whether ``model`` may be trained in channels-last memory on ``device``: always on CUDA; on a CPU
    only if no strided 1x1 convolution has fewer than ``ONEDNN_1X1_BLOCK`` input channels (the standard
    widths of the book's models all qualify; a SmallResNet narrower than 16 does not)."""
    if torch.device(device).type != "cpu":
        return True
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                   and m.in_channels < ONEDNN_1X1_BLOCK for m in model.modules())


def make_model(name: str, seed: int | None = None, **kw) -> PreActResNet:
    """Build a model by name (``preact_resnet18`` or ``small_resnet``); ``kw`` goes to its constructor.

    With ``seed`` the initial weights come from that seed without touching the global RNG.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed models are {', '.join(MODELS)}")
    if seed is None:
        return MODELS[name](**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](**kw)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------------
# weights as matrices


def _weight_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            yield name, m


def named_weight_matrices(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(layer name, weight as a (out, in * kh * kw) matrix)`` for every conv / linear layer, in order.

    The weights are the ones in use (``W_clean + A @ B`` for a low-rank model), detached. Names are module
    names (``conv1``, ``layers.0.0.conv1``, ..., ``linear``), the same for a model and its low-rank version.
    """
    for name, m in _weight_layers(model):
        w = m.weight.detach()
        yield name, w.reshape(w.shape[0], -1)


def first_layer_weight(model: nn.Module) -> torch.Tensor:
    """The first conv layer's weight ``(out, 3, kh, kw)``, detached (for plotting the filters)."""
    for _, m in _weight_layers(model):
        if isinstance(m, nn.Conv2d):
            return m.weight.detach()
    raise ValueError(f"model {type(model).__name__} has no conv layer")


# --------------------------------------------------------------------------------------------------
# low-rank adversarial fine-tuning


class LowRankDelta(nn.Module):
    """Parametrization ``W -> W + (A @ B).view_as(W)`` with ``A`` zero-initialised (``(out, r)``) and ``B``
    random (``(r, fan_in)``, entries ``N(0, 1/fan_in)``), as in LoRA."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        self.A = nn.Parameter(torch.zeros(out, rank, device=weight.device, dtype=weight.dtype))
        b = torch.randn(rank, fan_in, generator=generator) / math.sqrt(fan_in)
        self.B = nn.Parameter(b.to(device=weight.device, dtype=weight.dtype))

    def update(self) -> torch.Tensor:
        """``A @ B``: the ``(out, fan_in)`` update matrix (rank at most ``r``)."""
        return self.A @ self.B

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.update().view_as(weight)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never updates them,
    whatever ``model.train()`` says (used in low-rank mode)."""

    def train(self, mode: bool = True):
        return super().train(False)


def is_low_rank(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for _, m in _weight_layers(model))


def apply_low_rank(model: nn.Module, rank: int, generator: torch.Generator | None = None,
                   train_bn: bool = False) -> nn.Module:
    """Turn ``model`` (in place) into its low-rank fine-tuning version and return it.

    Every parameter is frozen (conv / linear weights and biases, BatchNorm affine parameters); every
    BatchNorm becomes a :class:`FrozenBatchNorm2d` (running statistics fixed, always in eval mode); every
    conv / linear weight gets a trainable rank-``rank`` update (:class:`LowRankDelta`). The wrapped model
    initially computes exactly what the clean model computes in eval mode.

    ``rank`` must be a positive int no larger than ``min(out, in * kh * kw)`` of *every* layer (the first
    conv of a CIFAR ResNet has ``in * kh * kw = 27``; the last linear layer has ``out = 10``): a larger
    rank would not be a low-rank update of that layer, so it is refused rather than silently clipped.
    ``generator`` draws the random ``B`` factors (default: a generator seeded with 0).
    ``train_bn=True`` keeps every BatchNorm trainable (per-channel scale and shift, running statistics
    updated in train mode): under 1% of the parameters. With BatchNorm frozen, low-rank adversarial training of
    our small CIFAR model collapsed to a constant prediction at learning rates 0.05 and 0.01; the CIFAR-10 chapter
    shows these runs and a follow-up (``run cifar-frozen-bn``: without the attack, at smaller learning rates, and
    with the statistics of each batch but scale and shift frozen) that asks why.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if is_low_rank(model):
        raise ValueError("model is already in low-rank mode; apply_low_rank to the clean model only once")
    layers = list(_weight_layers(model))
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no conv or linear layer to update")
    limits = {name: min(m.weight.shape[0], m.weight[0].numel()) for name, m in layers}
    max_rank = min(limits.values())
    if rank > max_rank:
        worst = min(limits, key=limits.get)
        raise ValueError(f"rank={rank} exceeds min(out, in*kh*kw) = {max_rank} of layer {worst!r}; "
                         f"allowed ranks are 1..{max_rank}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            if train_bn:
                for p in m.parameters():
                    p.requires_grad_(True)
            else:
                m.__class__ = FrozenBatchNorm2d
                m.eval()
    for _, m in layers:
        parametrize.register_parametrization(m, "weight", LowRankDelta(m.weight.detach(), rank, generator))
    return model


def batchnorm_only(model: nn.Module) -> nn.Module:
    """Turn ``model`` (in place) into the batch-norm-only control of low-rank fine-tuning and return it: every
    conv / linear weight and bias is frozen, and only the BatchNorm scales and shifts train (their running
    statistics update in train mode), exactly the batch-norm part of ``apply_low_rank(..., train_bn=True)``
    without the rank-r updates. What this control reaches under adversarial training is the share of low-rank
    fine-tuning's gain that the factors are not needed for."""
    if is_low_rank(model):
        raise ValueError("model is in low-rank mode; the batch-norm-only control starts from the clean model")
    bns = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    if not bns:
        raise ValueError(f"model {type(model).__name__} has no BatchNorm2d layer to train")
    for p in model.parameters():
        p.requires_grad_(False)
    for m in bns:
        for p in m.parameters():
            p.requires_grad_(True)
    return model


def _low_rank_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, LowRankDelta]]:
    if not is_low_rank(model):
        raise ValueError("model is not in low-rank mode (call apply_low_rank first)")
    for name, m in _weight_layers(model):
        yield name, m, m.parametrizations.weight[0]


def low_rank_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable factors ``A, B`` of every layer (the only trainable parameters in low-rank mode)."""
    return [p for _, _, d in _low_rank_layers(model) for p in (d.A, d.B)]


def clean_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> the frozen clean weight ``W_clean`` (original shape); for a model that is not in
    low-rank mode, its current weights."""
    out = {}
    for name, m in _weight_layers(model):
        w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
        out[name] = w.detach()
    return out


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> the weight in use, ``W = W_clean + A @ B`` in low-rank mode (original shape, detached)."""
    return {name: m.weight.detach() for name, m in _weight_layers(model)}


def low_rank_updates(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> the update matrix ``A @ B`` of shape ``(out, in * kh * kw)`` (rank at most ``r``)."""
    return {name: d.update().detach() for name, _, d in _low_rank_layers(model)}
