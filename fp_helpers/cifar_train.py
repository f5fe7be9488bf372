"""Clean and adversarial training on CIFAR-10 (FGSM with random start, PGD), evaluation, checkpoints.

One path for every run: SGD with momentum, a learning rate set before every batch from a stateless
schedule, optional augmentation, an optional training attack, and after every epoch a check of clean
and PGD accuracy on a fixed held-out batch (the catastrophic-overfitting check of Wong et al. 2020).

Randomness: one ``torch.Generator`` on the training device, seeded from ``cfg.seed``, draws the
shuffling, the augmentation and the attacks' random starts; its state goes into every checkpoint,
so an interrupted and resumed CPU run ends with weights bit-identical to an uninterrupted one.
The held-out evaluation uses its own generator (seeded from ``cfg.seed`` and the epoch), so it
never shifts the training stream.

Catastrophic overfitting (CO): FGSM training can suddenly lose all PGD robustness while FGSM accuracy
soars. After every epoch the held-out PGD accuracy is compared with its best so far; a fall by more than
``co_drop`` (absolute) or below ``co_ratio`` times the best (once the best is at least 0.1) sets
``history["catastrophic_overfitting"] = True`` and ``history["co_epoch"]``. With ``co_action="restore"``
(the default, Wong et al.'s early stopping) training stops there and the model gets back the weights
of the epoch with the best held-out PGD accuracy; with ``co_action="flag"`` training goes on (to show
the collapse). Without ``x_val`` there is no held-out batch and no check.

Checkpoints (``checkpoint=PATH``): after every ``cfg.checkpoint_every`` epochs, at a requested stop and at
the end, a dict is written atomically (temporary file in the same folder, then ``os.replace``) with
``format``, ``config`` (the resolved config as a plain dict), ``epoch`` (epochs completed), ``finished``,
``model`` / ``optimizer`` state dicts, ``generator`` (training generator state), ``torch_rng`` /
``cuda_rng`` (global RNG states), ``history`` (plain containers), ``best_model`` (the best held-out
weights, or ``None``) and ``provenance`` (:func:`fp_helpers.provenance.record`: versions, device, date).
It is read back with ``torch.load(..., weights_only=True)``. A checkpoint that
cannot be read, or that was written with another config, is refused with an error (never silently
restarted): delete it, use another path, or pass ``resume=False``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .cifar_models import channels_last_safe
from .attacks import AttackSpec, _clip, _project, _random_start, _unit, input_gradient, margins, pgd
from .provenance import record, save_torch_atomic
from .runs import check_norm, get_device
from .training import _progress

TRAIN_ATTACKS = ("none", "fgsm_rs", "pgd")
SCHEDULES = ("onecycle", "cosine")
CO_ACTIONS = ("restore", "flag")
CHECKPOINT_FORMAT = "fp_helpers.cifar_train/1"
# settings that do not change the trained weights: a checkpoint may be resumed with other values
_RESUME_FREE = ("checkpoint_every",)
_CO_MIN_BEST = 0.1  # the relative CO rule applies once the best held-out PGD accuracy reaches this


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (unreadable, truncated, not ours, or another model)."""


def _finite(v, low: float, low_ok: bool) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v >= low if low_ok else v > low))


@dataclass(frozen=True)
class CifarTrainConfig:
    """Hyper-parameters of one CIFAR training run. ``None`` radii and steps get defaults in :meth:`validate`."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.2  # the schedule's maximum learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle": linear 0 -> lr at 40% of training -> 0; "cosine": lr -> 0
    attack: str = "none"  # "none" (clean), "fgsm_rs" (FGSM with random start) or "pgd"
    norm: str = "linf"
    eps: float | None = None  # default 8/255 (linf) or 0.5 (l2)
    alpha: float | None = None  # attack step: FGSM-RS 1.25 eps (Wong et al.); PGD eps/4 (2/255 at 8/255)
    train_pgd_steps: int = 10
    eval_pgd_steps: int = 20
    eval_restarts: int = 1
    co_check_n: int = 512  # size of the fixed held-out batch checked after every epoch (0: no check)
    co_drop: float = 0.2
    co_ratio: float = 0.5
    co_action: str = "restore"  # "restore": stop and restore the best held-out weights; "flag": go on
    amp: bool = True  # bf16 autocast for training and training attacks; CUDA only (ignored on CPU)
    channels_last: bool = True  # NHWC memory format: faster convolutions on CUDA and on CPU (oneDNN); not
    # taken on a CPU for models it would miscompute (cifar_models.channels_last_safe)
    seed: int = 0
    checkpoint_every: int = 1  # epochs between checkpoints

    def validate(self) -> "CifarTrainConfig":
        """Check every value (``ValueError`` naming the bad one) and return a copy with defaults filled in."""
        for name in ("epochs", "batch_size", "train_pgd_steps", "eval_pgd_steps", "eval_restarts",
                     "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("co_check_n", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not _finite(self.lr, 0, False):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_finite(self.momentum, 0, True) and self.momentum < 1):
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not _finite(self.weight_decay, 0, True):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed schedules are {', '.join(SCHEDULES)}")
        if self.attack not in TRAIN_ATTACKS:
            raise ValueError(f"unknown training attack {self.attack!r}; allowed: {', '.join(TRAIN_ATTACKS)}")
        check_norm(self.norm)
        if self.eps is not None and not _finite(self.eps, 0, True):
            raise ValueError(f"eps must be a finite number >= 0 (or None for the default), got {self.eps!r}")
        if self.alpha is not None and not _finite(self.alpha, 0, False):
            raise ValueError(f"alpha must be a finite number > 0 (or None for the default), got {self.alpha!r}")
        if not (_finite(self.co_drop, 0, False) and self.co_drop <= 1):
            raise ValueError(f"co_drop must lie in (0, 1], got {self.co_drop!r}")
        if not (_finite(self.co_ratio, 0, True) and self.co_ratio < 1):
            raise ValueError(f"co_ratio must lie in [0, 1), got {self.co_ratio!r}")
        if self.co_action not in CO_ACTIONS:
            raise ValueError(f"unknown co_action {self.co_action!r}; allowed: {', '.join(CO_ACTIONS)}")
        for name in ("amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        eps = float(self.eps) if self.eps is not None else (8 / 255 if self.norm == "linf" else 0.5)
        alpha = self.alpha
        if alpha is None and self.attack != "none":
            alpha = 1.25 * eps if self.attack == "fgsm_rs" else eps / 4
        if self.attack != "none" and eps == 0:
            raise ValueError(f"attack={self.attack!r} needs eps > 0; use attack='none' for clean training")
        return dataclasses.replace(self, eps=eps, alpha=None if alpha is None else float(alpha))

    def describe(self) -> str:
        """E.g. ``FGSM-RS, linf, eps=8/255, alpha=10/255``."""
        c = self.validate()
        if c.attack == "none":
            return "clean training"
        name = "FGSM-RS" if c.attack == "fgsm_rs" else f"PGD-{c.train_pgd_steps} (random start)"
        return f"{name}, {c.norm}, eps={format_radius(c.eps, c.norm)}, alpha={format_radius(c.alpha, c.norm)}"


def format_radius(r: float, norm: str) -> str:
    """``8/255`` for l-inf radii that are whole grey levels, else ``%g``."""
    k = r * 255
    if norm == "linf" and abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{r:g}"


# --------------------------------------------------------------------------------------------------
# attacks used for training (evaluation uses fp_helpers.attacks.pgd)


def random_start_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, alpha: float, steps: int,
                     generator: torch.Generator | None = None, clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """PGD from a uniform random point of the ``norm`` ball, returning the last iterate (Madry et al.).

    Every iterate is projected on the ball and clipped to ``clip``, so ``x + delta`` is a valid image.
    ``steps=1, alpha=1.25 eps`` is FGSM with random start (:func:`fgsm_rs`).
    """
    norm = check_norm(norm)
    delta = _clip(x + _random_start(x, eps, norm, generator), clip) - x
    for _ in range(steps):
        g = input_gradient(model, x + delta, y)
        delta = _clip(x + _project(delta + alpha * _unit(g, norm), eps, norm), clip) - x
    return (x + delta).detach()


def fgsm_rs(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", alpha: float | None = None,
            generator: torch.Generator | None = None, clip: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """FGSM with random start (Wong, Rice & Kolter 2020): one step of size ``alpha`` (default ``1.25 eps``)
    from a uniform random point of the ball, projected back on the ball and clipped to ``clip``."""
    return random_start_pgd(model, x, y, eps, norm, 1.25 * eps if alpha is None else alpha, 1, generator, clip)


def training_attack(model, x: torch.Tensor, y: torch.Tensor, cfg: CifarTrainConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The adversarial examples ``cfg`` trains on (``x`` itself for clean training)."""
    if cfg.attack == "none":
        return x
    steps = 1 if cfg.attack == "fgsm_rs" else cfg.train_pgd_steps
    return random_start_pgd(model, x, y, cfg.eps, cfg.norm, cfg.alpha, steps, generator)


def make_optimizer(params, cfg: CifarTrainConfig, device) -> torch.optim.SGD:
    """SGD with ``cfg``'s momentum and weight decay; on CUDA the fused kernel (one launch for all
    parameters). On CPU PyTorch's default update (the step is a negligible part of a CPU batch, and
    keeping it keeps CPU results bit-identical to earlier runs)."""
    fused = True if torch.device(device).type == "cuda" else None
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


def to_memory_format(model: torch.nn.Module, cfg: CifarTrainConfig,
                     device) -> tuple[torch.nn.Module, CifarTrainConfig]:
    """``model`` in channels-last memory when ``cfg.channels_last`` and the device computes it correctly
    (:func:`~fp_helpers.cifar_models.channels_last_safe`: not for tiny widths on a CPU, a oneDNN bug), and the
    config that says which format was used (``channels_last`` turned off where it was not safe)."""
    if cfg.channels_last and not channels_last_safe(model, device):
        cfg = dataclasses.replace(cfg, channels_last=False)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, cfg


def train_step(model, opt, xb: torch.Tensor, yb: torch.Tensor, cfg: CifarTrainConfig,
               generator: torch.Generator | None = None, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of :func:`train_cifar` (the same function :func:`fp_helpers.bench.bench_cifar` times):
    the batch in channels-last memory (``cfg.channels_last``), the training attack and the forward pass under
    bf16 autocast on the batch's device when ``amp``, cross-entropy, backward, ``opt.step()``. ``cfg`` must be
    validated. Returns the loss and the logits, detached."""
    if cfg.channels_last and channels_last_safe(model, xb.device):
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
        xb = training_attack(model, xb, yb, cfg, generator)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), out.detach()


# --------------------------------------------------------------------------------------------------
# evaluation


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1] (uint8 images are divided by 255)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def evaluate_cifar(model, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, norm: str = "linf",
                   steps: int = 20, restarts: int = 1, batch_size: int = 500,
                   generator: torch.Generator | None = None) -> dict:
    """Clean and PGD accuracy of ``model`` (in eval mode) on ``(x, y)``.

    The attack is :func:`fp_helpers.attacks.pgd` with images clipped to ``[0, 1]`` (step ``2.5 eps / steps``,
    best iterate kept; restarts after the first start at random points and use ``generator``).
    Returns ``{"clean_acc", "robust_acc", "n", "eps", "norm", "attack"}``.
    """
    norm = check_norm(norm)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    spec = AttackSpec("pgd", norm, steps, restarts)
    dev = _model_device(model)
    was_training = model.training
    model.eval()
    clean = robust = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = _as_float(x[i:i + batch_size].to(dev)), y[i:i + batch_size].to(dev)
            clean += (margins(model, xb, yb) > 0).sum().item()
            xa = pgd(model, xb, yb, eps, norm, steps, restarts=restarts, generator=generator, clip=(0.0, 1.0))
            robust += (margins(model, xa, yb) > 0).sum().item()
    finally:
        model.train(was_training)
    n = x.shape[0]
    return {"clean_acc": clean / n, "robust_acc": robust / n, "n": n, "eps": float(eps), "norm": norm,
            "attack": spec.describe(eps)}


def catastrophic_overfitting(pgd_accs: list[float], co_drop: float = 0.2, co_ratio: float = 0.5) -> bool:
    """Whether the last held-out PGD accuracy in ``pgd_accs`` shows catastrophic overfitting: it fell by
    more than ``co_drop`` below the best earlier one, or (once that best is >= 0.1) below ``co_ratio`` of it."""
    if len(pgd_accs) < 2:
        return False
    best, cur = max(pgd_accs[:-1]), pgd_accs[-1]
    return cur < best - co_drop or (best >= _CO_MIN_BEST and cur < co_ratio * best)


# --------------------------------------------------------------------------------------------------
# schedule and checkpoints


def learning_rate(cfg: CifarTrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of batch ``step`` (0-based) out of ``total_steps``, taken at the batch's midpoint.

    ``onecycle``: linear from 0 up to ``cfg.lr`` at 40% of training, then linear down to 0 (the cyclic
    schedule of Wong et al. 2020); ``cosine``: ``cfg.lr (1 + cos(pi t)) / 2``. Stateless, so resuming
    needs no scheduler state.
    """
    t = (step + 0.5) / total_steps
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    peak = 0.4
    return cfg.lr * (t / peak if t <= peak else (1 - t) / (1 - peak))


def _config_dict(cfg: CifarTrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    save_torch_atomic(path, state)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`train_cifar` (``weights_only=True``, tensors on CPU).

    Raises :class:`CheckpointError` when the file cannot be read or is not such a checkpoint.
    """
    advice = "delete it, choose another checkpoint path, or pass resume=False to train from scratch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, unsupported type...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); it is "
                              f"probably truncated or corrupted: {advice}") from e
    required = ("format", "config", "epoch", "finished", "model", "optimizer", "generator", "history")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or any(k not in state for k in required):
        raise CheckpointError(f"{str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint: {advice}")
    return state


def _check_same_config(path, saved: dict, cfg: CifarTrainConfig) -> None:
    now = _config_dict(cfg)
    diff = [f"{k}={saved.get(k)!r} (checkpoint) vs {now[k]!r} (now)" for k in now
            if k not in _RESUME_FREE and saved.get(k) != now[k]]
    if diff:
        raise ValueError(f"checkpoint {str(path)!r} was written with another config: {'; '.join(diff)}. "
                         "Resume with the same config, or pass resume=False / another checkpoint path")


# --------------------------------------------------------------------------------------------------
# training


def _new_history(cfg: CifarTrainConfig) -> dict:
    return {"epoch": [], "lr": [], "train_loss": [], "train_acc": [], "seconds": [], "val_clean_acc": [],
            "val_pgd_acc": [], "catastrophic_overfitting": False, "co_epoch": None, "restored_epoch": None,
            "best_epoch": None, "finished": False, "attack": cfg.describe(), "config": _config_dict(cfg)}


def train_cifar(model, x_train: torch.Tensor, y_train: torch.Tensor, cfg: CifarTrainConfig,
                x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                checkpoint: str | Path | None = None, resume: bool = True, progress: bool | None = None,
                device: str | torch.device | None = None, stop_after_epoch: int | None = None) -> dict:
    """Train ``model`` in place on images ``x_train`` (float in [0, 1] or uint8, ``(n, 3, H, W)``) and labels
    ``y_train``; return the history (a dict of plain lists and values, see :func:`_new_history`).

    Each epoch visits ``n // batch_size`` shuffled batches (the incomplete last batch is dropped; one batch
    of all ``n`` images when ``n < batch_size``). Per batch: ``augment(x, generator)`` if given, the training
    attack (in train mode, as Wong et al.), one SGD step on the cross-entropy. After each epoch: clean and
    PGD accuracy on the first ``cfg.co_check_n`` held-out images ``x_val`` and the catastrophic-overfitting
    check (see the module docstring). ``checkpoint``: where to save and, with ``resume=True``, resume from.
    ``stop_after_epoch=k`` stops after epoch ``k`` as if interrupted (the checkpoint is saved first).
    The model is left in eval mode. Only parameters with ``requires_grad`` are trained (so a model passed
    through :func:`fp_helpers.cifar_models.apply_low_rank` trains only its low-rank factors).
    """
    cfg = cfg.validate()
    if stop_after_epoch is not None and (not isinstance(stop_after_epoch, int) or stop_after_epoch < 1):
        raise ValueError(f"stop_after_epoch must be a positive int or None, got {stop_after_epoch!r}")
    if x_train.ndim != 4 or x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
        raise ValueError(f"x_train must be (n, C, H, W) with n = len(y_train) > 0; got {tuple(x_train.shape)} "
                         f"and {tuple(y_train.shape)}")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    dev = get_device(device)
    cuda = dev.type == "cuda"
    model.to(dev)
    model, cfg = to_memory_format(model, cfg, dev)

    x_train, y_train = x_train.to(dev), y_train.to(dev)
    check = x_val is not None and cfg.co_check_n > 0
    if check:
        xv, yv = x_val[:cfg.co_check_n].to(dev), y_val[:cfg.co_check_n].to(dev)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    opt = make_optimizer(params, cfg, dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    n = x_train.shape[0]
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    total = cfg.epochs * per_epoch
    hist, start, best_state = _new_history(cfg), 0, None

    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        _check_same_config(checkpoint, state["config"], cfg)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not fit this model ({e}); use the model it "
                                  "was written for, or pass resume=False") from e
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        hist, start, best_state = state["history"], state["epoch"], state.get("best_model")
        if state["finished"]:
            model.eval()
            return hist

    def save(epoch: int) -> None:
        if checkpoint is None:
            return
        save_checkpoint(checkpoint, {
            "format": CHECKPOINT_FORMAT, "config": _config_dict(cfg), "epoch": epoch, "finished": hist["finished"],
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(dev) if cuda else None,
            "history": hist, "best_model": best_state, "provenance": record("cifar", device=dev),
        })

    bar = _progress(total - start * per_epoch, f"{cfg.describe()}", progress)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        perm = torch.randperm(n, generator=gen, device=dev)
        for i in range(per_epoch):
            lr = learning_rate(cfg, epoch * per_epoch + i, total)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = _as_float(x_train[idx]), y_train[idx]
            if augment is not None:
                xb = augment(xb, gen)
            loss, out = train_step(model, opt, xb, yb, cfg, gen, amp=cuda and cfg.amp)
            loss_sum += loss.float() * yb.shape[0]
            correct += (out.argmax(1) == yb).sum()
            if bar is not None:
                bar.update(1)
        seen = per_epoch * bs
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower lr={cfg.lr}")
        hist["epoch"].append(epoch + 1)
        hist["lr"].append(lr)
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(correct.item() / seen)
        if check:
            eval_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 100003 + epoch + 1)
            ev = evaluate_cifar(model, xv, yv, cfg.eps, cfg.norm, cfg.eval_pgd_steps, cfg.eval_restarts,
                                batch_size=max(1, min(512, xv.shape[0])), generator=eval_gen)
            hist["val_clean_acc"].append(ev["clean_acc"])
            hist["val_pgd_acc"].append(ev["robust_acc"])
            accs = hist["val_pgd_acc"]
            if hist["best_epoch"] is None or accs[-1] > accs[hist["best_epoch"] - 1]:
                hist["best_epoch"] = epoch + 1
                if cfg.co_action == "restore" and cfg.attack != "none":
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        hist["seconds"].append(time.perf_counter() - t0)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.3f}",
                            **({"val_pgd": f"{hist['val_pgd_acc'][-1]:.3f}"} if check else {}))

        co = (check and cfg.attack != "none" and not hist["catastrophic_overfitting"]
              and catastrophic_overfitting(hist["val_pgd_acc"], cfg.co_drop, cfg.co_ratio))
        if co:
            hist["catastrophic_overfitting"], hist["co_epoch"] = True, epoch + 1
        done = epoch + 1 == cfg.epochs or (co and cfg.co_action == "restore")
        if co and cfg.co_action == "restore" and best_state is not None:
            model.load_state_dict(best_state)
            hist["restored_epoch"] = hist["best_epoch"]
        if done:
            hist["finished"] = True
            save(epoch + 1)
            break
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == stop_after_epoch:
            save(epoch + 1)
        if epoch + 1 == stop_after_epoch:
            break
    if bar is not None:
        bar.close()
    model.eval()
    return hist


def train_cifar_model(name: str, x_train, y_train, cfg: CifarTrainConfig, model_kw: dict | None = None,
                      **train_kw) -> tuple[torch.nn.Module, dict]:
    """Build the model ``name`` from ``cfg.seed`` (see :func:`fp_helpers.cifar_models.make_model`), train it
    with :func:`train_cifar` and return ``(model, history)``."""
    from .cifar_models import make_model

    model = make_model(name, seed=cfg.seed, **(model_kw or {}))
    return model, train_cifar(model, x_train, y_train, cfg, **train_kw)
