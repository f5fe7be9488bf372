"""The CIFAR-10 experiment behind the chapter "Purification on CIFAR-10" and ``run cifar``.

``python -m fp_helpers run cifar --profile quick|full [--data PATH] [--set key=value ...] --out FILE.json``;
on a run saved with ``--save-dir DIR``, ``run cifar-autoattack --models DIR`` (AutoAttack on its models, for the
chapter's attack check) and ``run cifar-frozen-bn --models DIR`` (the follow-up of the frozen-batch-norm control).

From one random initialisation: (a) clean training; (b) adversarial training from scratch (same
initialisation); (c) adversarial training *started from the clean model* (``attack``, by default FGSM with
random start, in ``norm`` at radius ``eps``); (c') the same with PGD training (``pgd_ft_steps`` steps of
``eps/4``, for ``pgd_ft_epochs`` epochs: a PGD-7 epoch costs four FGSM-RS epochs, so fewer of them);
(c'') the same as (c) in the other norm (l2 when ``norm`` is l-inf) at its radius ``other_eps``; (d) the
same as (c) but every conv / linear weight restricted to ``W_clean + A B`` of rank r, batch norm trained
(``lowrank_train_bn``), with two controls: batch norm alone trained as in (d), without the factors
(``bn_only_control``), and the largest rank with batch norm frozen, at the learning rates ``frozen_bn_lrs``.
Last, two controls for the direction of (c)'s weight change (``direction_controls``): (c) again with the seed
``seed + 1`` (other batches, augmentations and random starts) and (c)'s schedule from the clean weights
without attack. Radii default to the norm's standard one (l-inf 8/255, l2 0.5).

All are evaluated with the same PGD (``eval_pgd_steps`` steps, ``eval_restarts`` starts) on the same test
images, in the norm they were trained for ((c'') and, as its baseline, (a) in the other norm); the weights
are compared layer by layer (cosines, the principle's ratio, relative change; for every run started from
the clean model, its cosine with the clean weights) and the first-layer filters and adversarial
perturbations are analysed in frequency.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cifar, cifar_models as cm, purification as pur
from .cifar_train import CifarTrainConfig, evaluate_cifar, train_cifar
from .checkpoints import open_run
from .provenance import (StaleResultWarning, load_torch_checked, recompute_hint, save_torch_atomic, stale_reasons, stamp,
                         write_json_atomic)
from .runs import apply_overrides, check_norm, get_device, get_profile, seed_everything


STANDARD_RADII = {"linf": 8 / 255, "l2": 0.5}  # the usual CIFAR-10 radii of each norm (images in [0, 1])
OTHER_NORM = {"linf": "l2", "l2": "linf"}


@dataclass(frozen=True)
class CifarConfig:
    model: str = "auto"  # "auto": PreAct ResNet-18 on a GPU, the small ResNet on a CPU
    width: int = 16  # small ResNet width (PreAct ResNet-18 keeps its standard 64)
    n_train: int = 0  # 0: every training image found (all 50,000 on Colab; the 8,380-image subset here)
    n_test: int = 0
    holdout: int = 250  # training images held out for the catastrophic-overfitting check (all checked each epoch)
    eval_n: int = 10_000  # test images attacked for the reported numbers (the first ones; 10,000: every one)
    clean_epochs: int = 15
    adv_epochs: int = 15  # (b) adversarial training from scratch
    ft_epochs: int = 5  # (c) adversarial training from the clean model (and (c''), (d))
    pgd_ft_epochs: int = 2  # (c') PGD adversarial training from the clean model (0: not run)
    pgd_ft_steps: int = 7  # (c') PGD steps (step eps/4: 2/255 at 8/255, Madry et al.)
    other_norm_epochs: int = 5  # (c'') FGSM-RS training from the clean model in the other norm (0: not run)
    ranks: tuple = (1, 4, 8)  # (d) low-rank adversarial training from the clean model
    frozen_bn_lrs: tuple = (0.01,)  # control of (d): rank max(ranks) with batch norm frozen, at these lrs
    batch_size: int = 128
    lr: float = 0.2
    ft_lr: float = 0.05
    lowrank_lr: float = 0.05
    lowrank_train_bn: bool = True  # BatchNorm scale/shift/statistics trained in (d)
    bn_only_control: bool = True  # control of (d): batch norm alone trained (no low-rank factors), as in (d)
    direction_controls: bool = True  # controls for the direction of (c)'s weight change: (c) again with the seed
    # seed + 1 (other batches, augmentations and random starts), and (c)'s schedule from the clean weights without attack
    attack: str = "fgsm_rs"  # training attack of (b), (c), (c''), (d)
    norm: str = "linf"
    eps: float | None = None  # None: the norm's standard radius (linf 8/255, l2 0.5)
    other_eps: float | None = None  # radius of (c'') in the other norm; None: its standard radius
    eval_pgd_steps: int = 50
    eval_restarts: int = 2
    seed: int = 0

    @property
    def radius(self) -> float:
        """The attack radius of (b)-(d) and of the evaluation: ``eps``, else the norm's standard radius."""
        return float(self.eps) if self.eps is not None else STANDARD_RADII[check_norm(self.norm)]

    @property
    def other_norm(self) -> str:
        """The norm of (c''): l2 when ``norm`` is linf, and the other way round."""
        return OTHER_NORM[check_norm(self.norm)]

    @property
    def other_radius(self) -> float:
        return float(self.other_eps) if self.other_eps is not None else STANDARD_RADII[self.other_norm]

    @property
    def frozen_bn_rank(self) -> int:
        return max(self.ranks)

    def validate(self) -> "CifarConfig":
        allowed = ("auto",) + tuple(cm.MODELS)
        if self.model not in allowed:
            raise ValueError(f"unknown model {self.model!r}; allowed: {', '.join(allowed)}")
        for name in ("n_train", "n_test", "holdout", "seed", "pgd_ft_epochs", "other_norm_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("width", "eval_n", "clean_epochs", "adv_epochs", "ft_epochs", "batch_size",
                     "eval_pgd_steps", "eval_restarts", "pgd_ft_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.ranks, tuple) or not self.ranks:
            raise ValueError(f"ranks must be a non-empty tuple of positive ints, got {self.ranks!r}")
        for r in self.ranks:
            if not isinstance(r, int) or isinstance(r, bool) or r < 1:
                raise ValueError(f"ranks must be positive ints, got {self.ranks!r}")
        if not isinstance(self.frozen_bn_lrs, tuple):
            raise ValueError(f"frozen_bn_lrs must be a tuple of learning rates (empty: no control), "
                             f"got {self.frozen_bn_lrs!r}")
        for v in self.frozen_bn_lrs:
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"frozen_bn_lrs must be finite numbers > 0, got {self.frozen_bn_lrs!r}")
        for name in ("lr", "ft_lr", "lowrank_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("lowrank_train_bn", "bn_only_control", "direction_controls"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_norm(self.norm)
        for name, norm in (("eps", self.norm), ("other_eps", self.other_norm)):
            v = getattr(self, name)
            if v is None:
                continue
            limit = 1.0 if norm == "linf" else math.sqrt(3 * 32 * 32)  # the diameter of [0, 1] images
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= limit):
                raise ValueError(f"{name}={v!r} is out of range for the {norm} ball on images in [0, 1]: "
                                 f"allowed 0 < {name} <= {limit:g}, or none for the standard radius "
                                 f"({STANDARD_RADII[norm]:g})")
        for kind in ("clean", "adv", "ft", "pgd_ft", "other_ft", "lowrank", "ft_clean"):
            self.train_config(kind)  # attack / norm / radius checks
        return self

    def model_name(self, device) -> str:
        if self.model != "auto":
            return self.model
        return "preact_resnet18" if torch.device(device).type == "cuda" else "small_resnet"

    def model_kw(self, device) -> dict:
        return {"width": self.width} if self.model_name(device) == "small_resnet" else {}

    def train_config(self, kind: str, lr: float | None = None, seed: int | None = None) -> CifarTrainConfig:
        """``kind``: "clean" (a), "adv" (b, from scratch), "ft" (c, from clean), "pgd_ft" (c', PGD from clean),
        "other_ft" (c'', from clean in the other norm), "lowrank" (d) or "ft_clean" ((c)'s schedule without
        attack, a control). ``lr`` overrides the learning rate, ``seed`` the training seed (batches,
        augmentations, random starts; default ``self.seed``)."""
        epochs = {"clean": self.clean_epochs, "adv": self.adv_epochs, "ft": self.ft_epochs,
                  "pgd_ft": max(self.pgd_ft_epochs, 1), "other_ft": max(self.other_norm_epochs, 1),
                  "lowrank": self.ft_epochs, "ft_clean": self.ft_epochs}[kind]
        if lr is None:
            lr = {"clean": self.lr, "adv": self.lr, "ft": self.ft_lr, "pgd_ft": self.ft_lr, "other_ft": self.ft_lr,
                  "lowrank": self.lowrank_lr, "ft_clean": self.ft_lr}[kind]
        attack = {"clean": "none", "ft_clean": "none", "pgd_ft": "pgd"}.get(kind, self.attack)
        norm, eps = (self.other_norm, self.other_radius) if kind == "other_ft" else (self.norm, self.radius)
        extra = {"train_pgd_steps": self.pgd_ft_steps} if attack == "pgd" else {}
        return CifarTrainConfig(epochs=epochs, batch_size=self.batch_size, lr=lr, attack=attack, norm=norm, eps=eps,
                                eval_pgd_steps=10, co_check_n=self.holdout, seed=self.seed if seed is None else seed,
                                **extra).validate()


CIFAR_PRESETS: dict[str, dict] = {
    "full": {},
    "quick": dict(width=8, n_train=1000, n_test=200, holdout=100, eval_n=100, clean_epochs=3, adv_epochs=2,
                  ft_epochs=1, pgd_ft_epochs=1, pgd_ft_steps=3, other_norm_epochs=1, ranks=(1, 4),
                  frozen_bn_lrs=(0.01,), lr=0.1, eval_pgd_steps=20, eval_restarts=1),
}


def cifar_config(profile: str | None = None, overrides=None, seed: int | None = None) -> CifarConfig:
    cfg = CifarConfig(**CIFAR_PRESETS[get_profile(profile)])
    cfg = apply_overrides(cfg, overrides)
    if seed is not None:
        cfg = apply_overrides(cfg, {"seed": int(seed)})
    return cfg.validate()


def _flat_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return (a @ b / (a.norm() * b.norm()).clamp_min(1e-30)).item()


def layer_table(init, clean, scratch, ft) -> list[dict]:
    """Per conv / linear layer: cosines between the weight vectors of the models, the principle's median
    ratio ``||beta w'|| / ||v||`` over filters (clean = beta * from-clean + v) and the relative change."""
    rows = []
    mats = [dict(cm.named_weight_matrices(m)) for m in (init, clean, scratch, ft)]
    for name in mats[0]:
        w0, wc, ws, wf = (m[name] for m in mats)
        dec = pur.decompose(wc, wf)
        rows.append({"layer": name, "shape": list(wc.shape),
                     "cos_clean_init": _flat_cos(wc, w0), "cos_scratch_init": _flat_cos(ws, w0),
                     "cos_ft_init": _flat_cos(wf, w0), "cos_clean_ft": _flat_cos(wc, wf),
                     "cos_clean_scratch": _flat_cos(wc, ws),
                     "principle_ratio_median": dec.ratio.median().item(), "principle_holds": dec.holds_fraction,
                     "rel_change_ft": ((wf - wc).norm() / wc.norm()).item()})
    return rows


def weight_change(clean, model) -> dict:
    """How far ``model`` (trained from ``clean``) moved: per-layer cosine with the clean weights
    (``cos_clean_layers``), its median over layers (``cos_clean_median``) and the median relative change
    ``||W - W_clean|| / ||W_clean||`` (``rel_change_median``)."""
    wc = dict(cm.named_weight_matrices(clean))
    cos, rel = {}, []
    for name, w in cm.named_weight_matrices(model):
        cos[name] = _flat_cos(wc[name], w)
        rel.append(((w - wc[name]).norm() / wc[name].norm()).item())
    return {"cos_clean_layers": cos, "cos_clean_median": float(torch.tensor(list(cos.values())).median()),
            "rel_change_median": float(torch.tensor(rel).median())}


def frozen_bn_key(rank: int, lr: float) -> str:
    """The experiment key of the frozen-batch-norm control at ``rank`` and learning rate ``lr``."""
    return f"frozen_bn_r{rank}_lr{lr:g}".replace(".", "p")


def layer_medians(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k not in ("layer", "shape")]
    return {k: float(torch.tensor([r[k] for r in rows]).median()) for k in keys}


@torch.no_grad()
def first_layer_analysis(models: dict) -> dict:
    """Non-DC energy share of each first-layer 3x3 filter (median), for each model and for the residual
    ``v = w_clean - beta w_ft`` (what adversarial training from the clean model removed)."""
    out = {name: pur.spectral_energy_share(cm.first_layer_weight(m), 1e-6).median().item()
           for name, m in models.items()}
    wc = cm.first_layer_weight(models["clean"])
    wf = cm.first_layer_weight(models["adv_from_clean"])
    dec = pur.decompose(wc.flatten(1), wf.flatten(1))
    out["residual_v"] = pur.spectral_energy_share(dec.residual.view_as(wc), 1e-6).median().item()
    return out


def perturbations(model, x, y, cfg: CifarConfig, steps: int = 20) -> torch.Tensor:
    from .attacks import pgd

    model.eval()
    g = torch.Generator(device=x.device).manual_seed(cfg.seed + 7)
    xa = pgd(model, x, y, cfg.radius, cfg.norm, steps=steps, restarts=1, generator=g, clip=(0.0, 1.0))
    return (xa - x).detach()


def _data_fingerprint(*tensors: torch.Tensor) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy())  # the buffer itself: no copy of the images
    return h.hexdigest()[:16]


def config_data(cfg: CifarConfig, data: "cifar.CifarData") -> "cifar.CifarData":
    """The images ``cfg`` uses: ``data``, or its subset when the config sets ``n_train`` / ``n_test``."""
    if cfg.n_train or cfg.n_test:
        return cifar.subset(data, cfg.n_train or None, cfg.n_test or None, seed=cfg.seed)
    return data


def eval_split(cfg: CifarConfig, data: "cifar.CifarData") -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (as stored) and labels every number of :func:`run_cifar` is measured on: the first
    ``min(eval_n, test images)`` of :func:`config_data`'s test set."""
    n = min(cfg.eval_n, data.n_test)
    return data.x_test[:n], data.y_test[:n]


def run_cifar(cfg: CifarConfig, data_dir=None, device=None, progress=None, profile: str | None = None,
              keep_models: bool = False, checkpoint_dir=None) -> dict:
    """The experiment (a)-(d) of the module docstring; returns the JSON-ready dict (plus ``"_models"``,
    ``"_perturbations"`` and ``"_x"`` when ``keep_models``).

    Every training run is checkpointed after each epoch and every evaluation when it completes
    (:mod:`fp_helpers.checkpoints`, keyed by the config, the data, the model and the code; ``checkpoint_dir``
    as there, ``False``: none): an interrupted run resumes where it stopped and, on a CPU, ends with
    bit-identical weights and numbers.
    """
    if not isinstance(cfg, CifarConfig):
        raise TypeError(f"cfg must be a CifarConfig (see cifar_config), got {type(cfg).__name__}")
    cfg = cfg.validate()
    t0 = time.perf_counter()
    dev = get_device(device)
    seed_everything(cfg.seed, dev)
    data = config_data(cfg, cifar.load_cifar10(data_dir, progress=progress))
    n_tr = data.n_train
    if cfg.holdout >= n_tr:
        raise ValueError(f"holdout={cfg.holdout} must be smaller than the {n_tr} training images")
    x_tr, y_tr = data.x_train[: n_tr - cfg.holdout], data.y_train[: n_tr - cfg.holdout]
    x_val, y_val = data.x_train[n_tr - cfg.holdout:], data.y_train[n_tr - cfg.holdout:]
    x_te, y_te = eval_split(cfg, data)
    name, kw = cfg.model_name(dev), cfg.model_kw(dev)
    ck = open_run("cifar", cfg, checkpoint_dir, dev, model=name,
                  data=_data_fingerprint(x_tr, y_tr, x_val, y_val, x_te, y_te))
    x_tr, y_tr, x_val, y_val, x_te, y_te = (t.to(dev) for t in (x_tr, y_tr, x_val, y_val, x_te, y_te))

    def train(model, kind, unit, lr=None, seed=None):
        t = time.perf_counter()
        hist = train_cifar(model, x_tr, y_tr, cfg.train_config(kind, lr, seed), x_val=x_val, y_val=y_val,
                           augment=cifar.augment, progress=progress, device=dev, checkpoint=ck.path(f"train_{unit}"))
        hist["wall_seconds"] = round(time.perf_counter() - t, 1)
        return hist

    def evaluate(model, unit, other=False):
        saved = ck.load(f"eval_{unit}")
        if saved is not None:
            return saved
        g = torch.Generator(device=dev).manual_seed(cfg.seed + 99)
        norm, eps = (cfg.other_norm, cfg.other_radius) if other else (cfg.norm, cfg.radius)
        out = evaluate_cifar(model, x_te, y_te, eps, norm, cfg.eval_pgd_steps, cfg.eval_restarts, generator=g)
        ck.save(f"eval_{unit}", out)
        return out

    init = cm.make_model(name, seed=cfg.seed, **kw).to(dev)
    init.eval()
    models, hists, res = {"init": init}, {}, {}
    clean = copy.deepcopy(init)
    hists["clean"] = train(clean, "clean", "clean")
    scratch = copy.deepcopy(init)
    hists["adv_scratch"] = train(scratch, "adv", "adv_scratch")
    ft = copy.deepcopy(clean)
    hists["adv_from_clean"] = train(ft, "ft", "adv_from_clean")
    models.update(clean=clean, adv_scratch=scratch, adv_from_clean=ft)
    if cfg.pgd_ft_epochs:  # (c') PGD adversarial training from the clean model
        models["adv_from_clean_pgd"] = copy.deepcopy(clean)
        hists["adv_from_clean_pgd"] = train(models["adv_from_clean_pgd"], "pgd_ft", "adv_from_clean_pgd")
    if cfg.other_norm_epochs:  # (c'') adversarial training from the clean model in the other norm
        models["adv_from_clean_other"] = copy.deepcopy(clean)
        hists["adv_from_clean_other"] = train(models["adv_from_clean_other"], "other_ft", "adv_from_clean_other")
    for key in models:
        res[key] = evaluate(models[key], key, other=key == "adv_from_clean_other")
        if key in hists:
            res[key]["history"] = hists[key]
    if cfg.other_norm_epochs:  # the clean model attacked in the other norm: the baseline of (c'')
        res["clean_other"] = {**evaluate(clean, "clean_other", other=True), "model": "clean"}
    low, controls = {}, {}
    for r in cfg.ranks:
        lr_model = cm.apply_low_rank(copy.deepcopy(clean), r, generator=torch.Generator().manual_seed(cfg.seed),
                                     train_bn=cfg.lowrank_train_bn)
        h = train(lr_model, "lowrank", f"lowrank_{r}")
        low[r] = lr_model
        res[f"lowrank_{r}"] = {**evaluate(lr_model, f"lowrank_{r}"), "rank": r, "history": h,
                              "trainable_params": sum(p.numel() for p in lr_model.parameters() if p.requires_grad),
                              "low_rank_params": sum(p.numel() for p in cm.low_rank_parameters(lr_model)),
                              "full_params": sum(p.numel() for p in clean.parameters())}
    if cfg.bn_only_control:  # control: batch norm alone, trained as in (d) (what the factors are not needed for)
        bn_only = cm.batchnorm_only(copy.deepcopy(clean))
        h = train(bn_only, "lowrank", "bn_only")
        controls["bn_only"] = bn_only  # saved after the low-rank models (model_keys' order)
        res["bn_only"] = {**evaluate(bn_only, "bn_only"), "rank": 0, "history": h,
                          "trainable_params": sum(p.numel() for p in bn_only.parameters() if p.requires_grad)}
    for lr in cfg.frozen_bn_lrs:  # control: the largest rank with batch norm frozen (statistics of clean inputs)
        r, key = cfg.frozen_bn_rank, frozen_bn_key(cfg.frozen_bn_rank, lr)
        m = cm.apply_low_rank(copy.deepcopy(clean), r, generator=torch.Generator().manual_seed(cfg.seed),
                              train_bn=False)
        h = train(m, "lowrank", key, lr=lr)
        res[key] = {**evaluate(m, key), "rank": r, "lr": lr, "train_bn": False, "history": h}
        res[key].update(weight_change(clean, m))
    for key in ("adv_from_clean", "adv_from_clean_pgd", "adv_from_clean_other"):
        if key in models:
            res[key].update(weight_change(clean, models[key]))
    for r, m in low.items():
        res[f"lowrank_{r}"].update(weight_change(clean, m))
    rows = layer_table(init, clean, scratch, ft)
    pert = {k: perturbations(models[k], x_te[:16], y_te[:16], cfg) for k in ("clean", "adv_from_clean")}
    if cfg.direction_controls:  # last, so every run above is computed exactly as without them
        for key, kind, seed in DIRECTION_CONTROLS:
            controls[key] = copy.deepcopy(clean)
            h = train(controls[key], kind, key, seed=cfg.seed + seed)
            res[key] = {**evaluate(controls[key], key), "history": h, **weight_change(clean, controls[key])}
    result = {
        "device": str(dev), "model": name, "data": data.describe(), "n_train": int(x_tr.shape[0]), "n_holdout": cfg.holdout,
        "n_test": int(y_te.shape[0]), "is_subset": data.is_subset,
        "attack": f"PGD-{cfg.eval_pgd_steps} x{cfg.eval_restarts}, {cfg.norm}, eps={cfg.radius:.5f}",
        "attack_other": (f"PGD-{cfg.eval_pgd_steps} x{cfg.eval_restarts}, {cfg.other_norm}, eps={cfg.other_radius:.5f}"
                         if cfg.other_norm_epochs else None),
        "experiments": res, "layers": rows, "layer_medians": layer_medians(rows),
        "first_layer_nondc_share": first_layer_analysis({k: models[k] for k in
                                                         ("init", "clean", "adv_scratch", "adv_from_clean")}),
        "perturbation_highfreq_share": {k: pur.spectral_energy_share(v, 0.25).median().item()
                                        for k, v in pert.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    given = data_dir if data_dir is not None else os.environ.get("FP_DATA_DIR") or None
    stamp(result, "cifar", cfg, profile, dev, extra_args=("--data", str(given)) if given is not None else ())
    ck.done()
    if keep_models:
        result["_models"] = {**models, **{f"lowrank_{r}": m for r, m in low.items()}, **controls}
        result["_perturbations"] = pert
        result["_x"] = x_te[:16]
    return result


# ------------------------------------------------------------------------------------------------ the chapter's table

LABELS = {"clean": "(a) clean", "clean_other": "(a) clean, attacked in other norm", "adv_scratch": "(b) adversarial, from scratch",
          "adv_from_clean": "(c) adversarial, from clean", "adv_from_clean_pgd": "(c') PGD adversarial, from clean",
          "adv_from_clean_other": "(c'') adversarial, from clean, other norm", "init": "initialisation (sanity check)",
          "adv_from_clean_seed1": "(c) again, seed + 1 (control)", "ft_clean": "control: (c)'s schedule without attack"}


def attack_label(ev: dict) -> str:
    """``PGD-50 x2 restarts, linf, eps=8/255`` for an evaluation dict of :func:`evaluate_cifar`."""
    from .cifar_train import format_radius

    return f"{ev['attack'].rsplit('eps=', 1)[0]}eps={format_radius(ev['eps'], ev['norm'])}"


def experiment_label(key: str, ev: dict) -> str:
    if key.startswith("lowrank_"):
        return f"(d) low rank r={ev['rank']}, from clean"
    if key.startswith("frozen_bn_"):
        return f"control: (d) r={ev['rank']} with batch norm frozen, lr={ev['lr']:g}"
    if key == "bn_only":
        return "control: (d) batch norm only, no low-rank factors"
    label = LABELS[key]
    return label.replace("other norm", ev["norm"]) if key in ("clean_other", "adv_from_clean_other") else label


def accuracy_rows(result: dict, controls: bool = False) -> list[dict]:
    """The chapter's accuracy table: one dict per experiment in the order (a), (b), (c), (c'), (c''), (d r=...),
    then the initialisation (or, with ``controls=True``, only the frozen-batch-norm controls), each with
    ``key, label, training`` (training attack and epochs), ``clean_acc, robust_acc, attack`` (the evaluation),
    ``cos_clean`` (median over layers of the cosine with the clean weights, for runs started from them) and
    ``seconds`` (training wall time)."""
    ex = result["experiments"]
    order = ["clean", "clean_other", "adv_scratch", "adv_from_clean", "adv_from_clean_pgd", "adv_from_clean_other"]
    order += sorted((k for k in ex if k.startswith("lowrank_")), key=lambda k: ex[k]["rank"]) + ["bn_only"]
    order += [k for k, _, _ in DIRECTION_CONTROLS] + ["init"]
    if controls:
        order = [k for k in ex if k.startswith("frozen_bn_")]
    rows = []
    for key in (k for k in order if k in ex):
        ev, h = ex[key], ex[key].get("history") or {}
        training = "none" if key == "init" else ("= (a)" if key == "clean_other" else
                                                 f"{h['attack']}; {len(h['epoch'])} epochs, lr {h['config']['lr']:g}")
        rows.append({"key": key, "label": experiment_label(key, ev), "training": training,
                     "clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"], "attack": attack_label(ev),
                     "cos_clean": ev.get("cos_clean_median"), "seconds": h.get("wall_seconds")})
    return rows


def compare_accuracies(a: float, b: float, n: int) -> str:
    """``"higher than"``, ``"lower than"`` or ``"about the same as"``: accuracy ``a`` against ``b`` (both on ``n``
    images), "about the same" when they differ by at most two standard errors of the difference."""
    se = ((a * (1 - a) + b * (1 - b)) / n) ** 0.5
    return "about the same as" if abs(a - b) <= 2 * se else ("higher than" if a > b else "lower than")


COLLAPSE_ACC = 0.15  # clean accuracy at most this (chance is 0.1 on CIFAR-10): the run collapsed


def frozen_bn_control(result: dict, historical: dict | None = None) -> dict:
    """The frozen-batch-norm control of (d) for the chapter: its table rows (this run's controls, then the
    low-rank runs of an earlier frozen-batch-norm result ``historical``, if given), the control with the best
    clean accuracy (``best``), the trainable-batch-norm run of the same rank (``trained``), whether the control
    collapsed (clean accuracy <= :data:`COLLAPSE_ACC`), and two sentences saying what that means
    (``verdict``, ``summary``)."""
    ex = result["experiments"]
    rows = accuracy_rows(result, controls=True)
    old_lr = None
    if historical is not None:
        old_lr = historical["config"]["lowrank_lr"]
        rows += [{"label": f"earlier run: (d) r={v['rank']} with batch norm frozen, lr={old_lr:g}",
                  "clean_acc": v["clean_acc"], "robust_acc": v["robust_acc"], "attack": attack_label(v)}
                 for k, v in historical["experiments"].items() if k.startswith("lowrank_")]
    best = max((v for k, v in ex.items() if k.startswith("frozen_bn_")), key=lambda v: v["clean_acc"])
    trained = ex[f"lowrank_{best['rank']}"]
    collapsed = best["clean_acc"] <= COLLAPSE_ACC
    lr = f"{best['lr']:g}"
    if collapsed:
        verdict = ("It collapses too. That is consistent with the hypothesis above, but it stays a hypothesis: "
                   "a few learning rates do not rule out other optimisation settings.")
        summary = (f"with batch norm frozen, low-rank training collapsed to a constant prediction at learning rate {lr}"
                   + (f" and, in the earlier run, {old_lr:g}" if old_lr is not None else "")
                   + ", which is consistent with (not a proof of) the hypothesis that frozen clean-input "
                     "statistics are the obstacle")
    else:
        cmp = compare_accuracies(trained["robust_acc"], best["robust_acc"], best["n"])
        verdict = (f"It does not collapse, so the earlier collapse was at least partly a matter of learning rate, and "
                   f"trainable batch norm is a choice rather than a necessity. With it, the same rank at learning "
                   f"rate {result['config']['lowrank_lr']:g} reaches PGD accuracy {trained['robust_acc']:.3f}, {cmp} "
                   f"the frozen run (at another learning rate, so not a clean comparison of the two modes).")
        summary = (f"with batch norm frozen it did not collapse at learning rate {lr}, so trainable batch norm is a "
                   f"choice here, not a necessity")
    return {"rows": rows, "best": best, "trained": trained, "collapsed": collapsed, "verdict": verdict,
            "summary": summary}


# ------------------------------------------------------------------------------------------------ persistence

MODEL_KEYS = ("init", "clean", "adv_scratch", "adv_from_clean")
# the controls of the direction of (c)'s change: (key, training kind, seed offset), trained from the clean model
DIRECTION_CONTROLS = (("adv_from_clean_seed1", "ft", 1), ("ft_clean", "ft_clean", 0))


def model_keys(cfg: CifarConfig) -> list[str]:
    """The models a run of ``cfg`` saves: (a)-(c), (c') and (c'') when run, (d) for every rank, the
    batch-norm-only control and the direction controls when run."""
    keys = list(MODEL_KEYS)
    keys += ["adv_from_clean_pgd"] * bool(cfg.pgd_ft_epochs) + ["adv_from_clean_other"] * bool(cfg.other_norm_epochs)
    keys += [f"lowrank_{r}" for r in cfg.ranks] + ["bn_only"] * cfg.bn_only_control
    return keys + [k for k, _, _ in DIRECTION_CONTROLS] * cfg.direction_controls


def save_run(result: dict, folder) -> None:
    """Write one ``<key>.pt`` state dict per model, ``perturbations.pt`` and last ``result.json`` (numbers,
    config, provenance, and under ``files`` the sha256 of every ``.pt``, checked by :func:`load_run`).
    Every write is atomic (temporary file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, model in result["_models"].items():
        files[f"{key}.pt"] = save_torch_atomic(folder / f"{key}.pt",
                                               {k: v.detach().cpu() for k, v in model.state_dict().items()})
    # clone: a slice saved as is would carry its whole storage (all the test images)
    tensors = {k: v.cpu().clone() for k, v in result["_perturbations"].items()}
    files["perturbations.pt"] = save_torch_atomic(folder / "perturbations.pt",
                                                  tensors | {"x": result["_x"].cpu().clone()})
    result["files"] = files
    write_json_atomic(folder / "result.json", {k: v for k, v in result.items() if not k.startswith("_")})


def load_run(folder, cfg: CifarConfig, device=None, data_counts: tuple[int, int] | None = None) -> dict | None:
    """The saved run in ``folder`` with its models, or ``None`` when there is none. A run saved with another
    config, another model (``model="auto"`` resolves by device) or, given ``data_counts = (train, test)`` of
    the data found now, other data sizes is refused (``ValueError``), so a stale result is never shown as
    current. A missing, truncated or altered model file is refused too (its sha256 is checked against
    ``files`` in ``result.json``). A run made by code that has changed since is loaded with a
    :class:`~fp_helpers.provenance.StaleResultWarning` that gives the command recomputing it."""
    import json

    folder = Path(folder)
    if not (folder / "result.json").exists():
        return None
    try:
        result = json.loads((folder / "result.json").read_text())
    except ValueError as e:
        raise ValueError(f"{folder / 'result.json'} is truncated or corrupted ({e}); recompute the run") from None
    reasons = stale_reasons(result, cfg.validate())
    if reasons["config"]:
        raise ValueError(f"the run saved in {folder} used another config: {'; '.join(reasons['config'])}; "
                         f"recompute it (delete the folder or pass another one)")
    dev = get_device(device)
    if result["model"] != cfg.model_name(dev):
        raise ValueError(f"the run saved in {folder} trained {result['model']}, but on {dev} this config trains "
                         f"{cfg.model_name(dev)}")
    if data_counts is not None and data_counts != (result["n_train"] + result["n_holdout"], result["n_test"]):
        raise ValueError(f"the run saved in {folder} used {result['n_train'] + result['n_holdout']} train / "
                         f"{result['n_test']} test images, the data found now gives {data_counts[0]} / {data_counts[1]}")
    files = result.get("files") or {}
    name, kw = result["model"], ({"width": cfg.width} if result["model"] == "small_resnet" else {})
    models = {}
    for key in model_keys(cfg):
        m = cm.make_model(name, seed=cfg.seed, **kw)
        if key.startswith("lowrank_"):
            cm.apply_low_rank(m, int(key.split("_")[1]), generator=torch.Generator().manual_seed(cfg.seed),
                              train_bn=cfg.lowrank_train_bn)
        try:
            state = load_torch_checked(folder / f"{key}.pt", files.get(f"{key}.pt"), "model file")
            m.load_state_dict(state)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"the run saved in {folder} is incomplete or corrupted: {e}") from e
        fmt = torch.channels_last if cm.channels_last_safe(m, dev) else torch.contiguous_format
        models[key] = m.to(dev, memory_format=fmt).eval()  # as trained: same kernels, same numbers
    try:
        pert = load_torch_checked(folder / "perturbations.pt", files.get("perturbations.pt"), "perturbation file")
    except ValueError as e:
        raise ValueError(f"the run saved in {folder} is incomplete or corrupted: {e}") from e
    if reasons["code"]:
        warnings.warn(StaleResultWarning(f"the run saved in {folder} may be stale: {'; '.join(reasons['code'])}. "
                                         f"Loading it anyway; {recompute_hint(result)} (or pass "
                                         f"recompute_stale=True to load_or_run)"), stacklevel=2)
    result["stale"] = reasons["code"]
    result["_models"], result["_x"] = models, pert.pop("x").to(dev)
    result["_perturbations"] = {k: v.to(dev) for k, v in pert.items()}
    result["loaded_from"] = str(folder)
    return result


def load_or_run(cfg: CifarConfig, folder=None, save: bool = False, recompute_stale: bool = False, **run_kw) -> dict:
    """Load the run saved in ``folder`` for this exact config, else run it (and save it when ``save``).

    A saved run made by code that has changed since is loaded with a ``StaleResultWarning`` (its ``"stale"``
    entry lists why); with ``recompute_stale=True`` it is recomputed instead."""
    if folder is not None:
        try:
            counts = None
            if (Path(folder) / "result.json").exists():  # check the data it would be compared with
                try:
                    d = cifar.load_cifar10(run_kw.get("data_dir"))
                except FileNotFoundError:  # no data here: the saved run can be shown, not recomputed
                    d = None
                    warnings.warn(f"CIFAR-10 was not found (set FP_DATA_DIR or pass data_dir); showing the run saved "
                                  f"in {folder} without checking its image counts against the data", stacklevel=2)
                if d is not None:
                    d = config_data(cfg, d)
                    counts = (d.n_train, len(eval_split(cfg, d)[1]))
            loaded = load_run(folder, cfg, run_kw.get("device"), data_counts=counts)
        except ValueError as e:
            warnings.warn(f"{e} -- recomputing now", stacklevel=2)
            loaded = None
        if loaded is not None and loaded["stale"] and recompute_stale:
            warnings.warn(f"the run saved in {folder} is stale ({'; '.join(loaded['stale'])}) -- recomputing now",
                          stacklevel=2)
            loaded = None
        if loaded is not None:
            return loaded
    result = run_cifar(cfg, keep_models=True, **run_kw)
    if save and folder is not None:
        save_run(result, folder)
    return result


# ------------------------------------------------------------------------------------------------ the chapter's analyses
# Functions for the chapter that work on a finished (usually loaded) run; none is called by run_cifar, so changing
# them does not change the fingerprint of the saved run.


def describe_run(result: dict, cfg: CifarConfig) -> str:
    """One line for the chapter's set-up output: model, device, image counts, training and evaluation attacks and,
    for a loaded run, where it was loaded from and when it was made."""
    from .book import portable_paths

    text = (f"{result['model']} on {result['device']} | {result['n_train']} training images, {result['n_holdout']} "
            f"held out, {result['n_test']} test images | training attack of (b), (c), (d): "
            f"{cfg.train_config('ft').describe()} | evaluation: {result['attack']}; (c''): {result['attack_other']}")
    if "loaded_from" in result:
        text += f" | loaded from {result['loaded_from']} (made {result['provenance']['date']})"
    return portable_paths(text)


def evaluation_images(cfg: CifarConfig, data_dir=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (float in [0, 1]) and labels that :func:`run_cifar` evaluates on for ``cfg``: the first
    ``min(eval_n, test images)`` test images of the data (after the config's subset). Raises the loader's
    ``FileNotFoundError`` (naming where to put the data) when CIFAR-10 is not found."""
    from .cifar_train import _as_float

    cfg = cfg.validate()
    x, y = eval_split(cfg, config_data(cfg, cifar.load_cifar10(data_dir)))
    dev = get_device(device)
    return _as_float(x.to(dev)), y.to(dev)


LOSSES = ("ce", "margin")


def _ascent_direction(model, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the loss to increase (cross-entropy, or minus the margin ``logit_y - max_{j != y} logit_j``
    of Carlini and Wagner) and the margins at ``x``."""
    from .attacks import _margins_from_scores, gradient_and_margins

    if loss == "ce":
        return gradient_and_margins(model, x, y)
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        m = _margins_from_scores(model(xr), y)
        (g,) = torch.autograd.grad(-m.sum(), xr)
    return g, m.detach()


def fixed_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", steps: int = 20,
              step_size: float | None = None, loss: str = "ce", random_start: bool = False,
              generator: torch.Generator | None = None, stop_when_broken: bool = False,
              clip: tuple[float, float] | None = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD with a fixed budget: ``steps`` steps of ``step_size`` (default ``2.5 eps / steps``) along the
    steepest-ascent direction of ``loss`` (``"ce"`` or ``"margin"``), each followed by the projection onto the
    ``norm`` ball of radius ``eps`` and onto ``clip``; from ``x`` or, with ``random_start``, a uniform point of
    the ball. Unlike :func:`fp_helpers.attacks.pgd` every step is taken, also after a point is misclassified,
    and the last iterate is returned (a perturbation of the attack's full size, not the first one that
    succeeds). Returns ``(x_adv, broken)``: the last iterates and, per point, whether any iterate (the start
    and the last included) was misclassified. ``stop_when_broken``: a point stops being attacked once broken
    (cheaper, for accuracies only; its ``x_adv`` is then the breaking iterate)."""
    from .attacks import _check_eps, _clip, _project, _random_start, _unit

    eps, norm = _check_eps(eps), check_norm(norm)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    delta = _random_start(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    x_adv = _clip(x + delta, clip).detach()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    idx = torch.arange(x.shape[0], device=x.device)
    for step in range(steps + 1):
        if idx.numel() == 0:
            break
        xs = x_adv[idx]
        if step < steps:
            g, m = _ascent_direction(model, xs, y[idx], loss)
        else:
            from .attacks import margins
            m = margins(model, xs, y[idx])
        broken[idx] |= m <= 0
        if step == steps:
            break
        if stop_when_broken:
            keep = m > 0
            idx, xs, g = idx[keep], xs[keep], g[keep]
        d = _project(xs - x[idx] + alpha * _unit(g, norm), eps, norm)
        x_adv[idx] = _clip(x[idx] + d, clip).detach()
    return x_adv, broken


def full_budget_perturbations(model, x: torch.Tensor, y: torch.Tensor, cfg: CifarConfig, steps: int = 20,
                              loss: str = "ce") -> torch.Tensor:
    """The perturbations ``x_adv - x`` of :func:`fixed_pgd` at the run's norm and radius: every one of ``steps``
    steps taken (no early stop), from the image itself, clipped to images in [0, 1]. In l-inf their size is the
    radius wherever clipping allows (sign steps of ``2.5 eps / steps`` saturate the box)."""
    model.eval()
    xa, _ = fixed_pgd(model, x, y, cfg.radius, cfg.norm, steps=steps, loss=loss)
    return (xa - x).detach()


def perturbation_analysis(models: dict, x: torch.Tensor, y: torch.Tensor, cfg: CifarConfig, steps: int = 20) -> dict:
    """Full-budget perturbations (:func:`full_budget_perturbations`) of each model in ``models``, on the images of
    ``x`` that every one of them classifies correctly (an image already misclassified has no perturbation to
    show). Returns ``x``, ``y`` and ``delta`` (per model) of those images, ``n_used`` of ``n_total`` images,
    per model the median l-inf size (``linf``), the median share of spectral energy above half the Nyquist
    frequency (``highfreq``) and the share of images the perturbation misclassifies (``success``)."""
    from .attacks import margins

    ok = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for m in models.values():
        m.eval()
        ok &= margins(m, x, y) > 0
    xs, ys = x[ok], y[ok]
    out = {"x": xs, "y": ys, "n_used": int(ok.sum()), "n_total": int(x.shape[0]), "steps": steps, "delta": {},
           "linf": {}, "highfreq": {}, "success": {}}
    if out["n_used"] == 0:
        raise ValueError(f"none of the {x.shape[0]} images is classified correctly by every model; give more images")
    for name, m in models.items():
        d = full_budget_perturbations(m, xs, ys, cfg, steps=steps)
        out["delta"][name] = d
        out["linf"][name] = d.flatten(1).abs().amax(1).median().item()
        out["highfreq"][name] = pur.spectral_energy_share(d, 0.25).median().item()
        out["success"][name] = (margins(m, xs + d, ys) <= 0).float().mean().item()
    return out


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error ``sqrt(acc (1 - acc) / n)`` of an accuracy measured on ``n`` images."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (images), got {n!r}")
    return math.sqrt(acc * (1 - acc) / n)


def run_pgd_outcomes(model, x: torch.Tensor, y: torch.Tensor, cfg: CifarConfig, norm: str | None = None,
                     eps: float | None = None) -> torch.Tensor:
    """Per image of ``x, y`` (float in [0, 1]): whether ``model`` still classifies it correctly under the run's PGD
    (``cfg.eval_pgd_steps`` steps, ``cfg.eval_restarts`` starts, the random ones from a generator seeded
    ``cfg.seed + 99``), all images in one batch: the attack check's "run's PGD" (:func:`attack_strength`), which the
    frozen-batch-norm follow-up repeats so that its models and the check's compare image by image. ``norm`` /
    ``eps`` default to the run's."""
    from .attacks import margins, pgd

    norm = cfg.norm if norm is None else check_norm(norm)
    eps = cfg.radius if eps is None else float(eps)
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(cfg.seed + 99)
    return margins(model, pgd(model, x, y, eps, norm, cfg.eval_pgd_steps, restarts=cfg.eval_restarts, generator=g,
                              clip=(0.0, 1.0)), y) > 0


def attack_strength(models: dict, x: torch.Tensor, y: torch.Tensor, cfg: CifarConfig, strong_steps: int = 100,
                    strong_restarts: int = 3, norm: str | None = None, eps: float | None = None,
                    autoattack: dict | None = None) -> dict:
    """How strong the run's evaluation attack is, on the images ``x``, in ``norm`` at radius ``eps`` (default: the
    run's, ``cfg.norm`` and ``cfg.radius``; pass ``cfg.other_norm, cfg.other_radius`` for (c'')): per model of
    ``models`` (label -> model),
    clean accuracy and accuracy under FGSM (one step of size eps), the run's PGD (``eval_pgd_steps`` steps,
    ``eval_restarts`` starts, cross-entropy, :func:`fp_helpers.attacks.pgd`), a stronger PGD with the margin
    (Carlini-Wagner) loss (``strong_steps`` steps, ``strong_restarts`` starts: the image, then random points;
    :func:`fixed_pgd`), optionally AutoAttack (``autoattack``, below), and the worst case over all of them per
    image. The attacks run on the same images, so they are compared image by image: per model, ``strong_only``
    (images the stronger PGD breaks and the run's PGD does not), ``run_only`` (the other way) and ``extra`` (images
    the worst case breaks that the run's PGD left correct). ``ordered`` is True when, for every model, FGSM >= run's
    PGD and the stronger attacks are not above the run's PGD (per model: its row's ``ordered``); ``max_gap`` is the
    largest drop from the run's PGD to the worst case, ``max_extra`` the largest ``extra``.

    The box check: :func:`fp_helpers.attacks.pgd` clips each iterate to the images ``[0, 1]`` but keeps the
    unclipped perturbation for the next step, so part of an l2 budget can sit outside the box. Per model,
    ``box_only`` counts the images that the run's PGD from the image alone (one start) leaves correct and the
    same PGD with every iterate projected onto the box (:func:`fixed_pgd`, cross-entropy, same steps and step
    size, stopping at the first misclassified iterate) breaks; ``unboxed_only`` the other way round. The two
    differ in nothing else, so ``box_only = 0`` on every model says the box handling weakened no attack here.
    Each row also keeps, per image, whether the run's PGD and the worst case left it correct (``_run``, ``_worst``,
    boolean tensors on the CPU), for paired comparisons (:func:`worst_case_comparisons`).

    ``autoattack`` (model name -> boolean tensor, per image: still correct under AutoAttack, see :func:`autoattack`)
    adds AutoAttack to the attacks: its accuracy (``autoattack``; None without it), the images it alone breaks
    (``aa_only``: every other attack left them correct), those it leaves correct and one of ours breaks
    (``ours_only``), and its outcome in the worst case."""
    from .attacks import fgm, margins, pgd

    n = int(x.shape[0])
    norm = cfg.norm if norm is None else check_norm(norm)
    eps = cfg.radius if eps is None else float(eps)
    rows, ordered, gaps = [], True, []
    for label, m in models.items():
        m.eval()
        correct = margins(m, x, y) > 0
        fg = margins(m, fgm(m, x, y, eps, norm, clip=(0.0, 1.0)), y) > 0
        run = run_pgd_outcomes(m, x, y, cfg, norm, eps)
        strong = correct.clone()
        g = torch.Generator(device=x.device).manual_seed(cfg.seed + 123)
        for r in range(strong_restarts):
            idx = strong.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _, broken = fixed_pgd(m, x[idx], y[idx], eps, norm, strong_steps, loss="margin", random_start=r > 0,
                                  generator=g, stop_when_broken=True)
            strong[idx[broken]] = False
        aa = None if autoattack is None else autoattack[label].to(correct.device)
        ours = correct & fg & run & strong  # the worst case of our three attacks
        worst = ours if aa is None else ours & aa
        first = margins(m, pgd(m, x, y, eps, norm, cfg.eval_pgd_steps, restarts=1, clip=(0.0, 1.0)), y) > 0
        _, box_broken = fixed_pgd(m, x, y, eps, norm, cfg.eval_pgd_steps, loss="ce", stop_when_broken=True)
        boxed = correct & ~box_broken
        acc = {k: v.float().mean().item() for k, v in
               (("clean", correct), ("fgsm", fg), ("pgd_run", run), ("strong", strong), ("worst", worst))}
        acc["autoattack"] = aa.float().mean().item() if aa is not None else None
        aa_only = int((ours & ~aa).sum()) if aa is not None else None
        ours_only = int((aa & ~ours).sum()) if aa is not None else None
        se = standard_error(acc["pgd_run"], n)
        row_ordered = (acc["fgsm"] >= acc["pgd_run"] and acc["strong"] <= acc["pgd_run"]
                       and (aa is None or acc["autoattack"] <= acc["pgd_run"]))
        ordered &= row_ordered
        gaps.append(acc["pgd_run"] - acc["worst"])
        rows.append({"model": label, "norm": norm, "eps": eps, **acc, "se_pgd_run": se, "ordered": bool(row_ordered),
                     "strong_only": int((run & ~strong).sum()), "run_only": int((strong & ~run).sum()),
                     "extra": int((run & ~worst).sum()), "aa_only": aa_only, "ours_only": ours_only,
                     "box_only": int((first & ~boxed).sum()),
                     "unboxed_only": int((boxed & ~first).sum()), "_run": run.cpu(), "_worst": worst.cpu()})
    extra = max(r["extra"] for r in rows)
    n_attacks = "three" if autoattack is None else "four"
    verdict = (f"the run's PGD found every image that any of the {n_attacks} attacks broke: on these images it is as "
               "strong as the stronger attacks (no attack gives a certified bound)" if extra == 0 else
               f"the stronger attacks broke up to {extra} of {n} images that the run's PGD left correct (paired, on the "
               f"same images): the run's PGD accuracies overstate robustness, by up to {max(gaps):.3f} here")
    return {"n": n, "norm": norm, "eps": eps, "rows": rows, "ordered": bool(ordered), "max_gap": max(gaps),
            "max_extra": extra, "verdict": verdict, "max_box_only": max(r["box_only"] for r in rows),
            "fgsm": f"FGSM, {norm}, one step of eps",
            "pgd_run": f"PGD-{cfg.eval_pgd_steps} x{cfg.eval_restarts}, cross-entropy (the run's evaluation)",
            "strong": f"PGD-{strong_steps} x{strong_restarts}, margin (CW) loss", "n_attacks": n_attacks,
            "autoattack": None if autoattack is None else "AutoAttack"}



def compare_paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two models' per-image outcomes on the *same* images (``a``, ``b``: True where each is correct) compared
    at two standard errors of the paired difference (McNemar's setting): with ``only_a`` images correct for ``a``
    alone and ``only_b`` for ``b`` alone, the difference of accuracies is ``(only_a - only_b) / n`` with standard
    error ``sqrt(only_a + only_b - (only_a - only_b)^2 / n) / n``. Images both get right or both get wrong do not
    count, which is why this is sharper than :func:`compare_accuracies` (two independent samples). Returns
    ``verdict`` ("higher than" / "lower than" / "about the same as", ``a`` against ``b``), ``only_a``, ``only_b``,
    ``diff`` and ``se``."""
    a, b = a.bool().flatten(), b.bool().flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"a and b must be per-image outcomes on the same images, got {a.numel()} and {b.numel()}")
    n, only_a, only_b = a.numel(), int((a & ~b).sum()), int((~a & b).sum())
    diff = (only_a - only_b) / n
    se = math.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    verdict = "about the same as" if abs(diff) <= 2 * se else ("higher than" if diff > 0 else "lower than")
    return {"verdict": verdict, "only_a": only_a, "only_b": only_b, "diff": diff, "se": se}


def worst_case_comparisons(check: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """The chapter's comparisons of two models, with the run's PGD and with the worst case of
    :func:`attack_strength`'s attacks (``check``, its output; models named by their labels there). The models
    were attacked on the same images, so each comparison is paired (:func:`compare_paired`): per pair ``(a, b)``,
    both accuracies of each, the verdict of ``a`` against ``b`` under each (``cmp_run``, ``cmp_worst``), the images
    only ``a`` / only ``b`` keeps under each (``only_a_run``, ``only_b_run``, ``only_a_worst``, ``only_b_worst``)
    and ``same`` (whether the two verdicts agree)."""
    rows = {r["model"]: r for r in check["rows"]}
    missing = sorted({m for pair in pairs for m in pair} - set(rows))
    if missing:
        raise ValueError(f"the check has no model {', '.join(missing)}; it has {', '.join(rows)}")
    out = []
    for a, b in pairs:
        ra, rb = rows[a], rows[b]
        run, worst = compare_paired(ra["_run"], rb["_run"]), compare_paired(ra["_worst"], rb["_worst"])
        out.append({"a": a, "b": b, "pgd_a": ra["pgd_run"], "pgd_b": rb["pgd_run"], "worst_a": ra["worst"],
                    "worst_b": rb["worst"], "cmp_run": run["verdict"], "cmp_worst": worst["verdict"],
                    "only_a_run": run["only_a"], "only_b_run": run["only_b"], "only_a_worst": worst["only_a"],
                    "only_b_worst": worst["only_b"], "same": run["verdict"] == worst["verdict"]})
    return out

ATTACK_CHECK_KEYS = ("clean", "adv_scratch", "adv_from_clean", "adv_from_clean_pgd", "<best low rank>", "bn_only")


ATTACK_CHECK_N = 2000  # the attack check's cap on images: all of the CPU subset's test images, a fifth of the full set


def attack_check_keys(result: dict) -> tuple[list[str], list[str], str]:
    """The models of the chapter's attack check in ``result`` (a loaded run: those with a model; else a saved run's
    numbers): the experiment keys checked in the run's norm (:data:`ATTACK_CHECK_KEYS`, the best low-rank run by the
    run's PGD in place of ``<best low rank>``; those the run has), those checked in the other norm ((a) and (c'')),
    and the best low-rank run's key."""
    best_lr = f"lowrank_{lowrank_summary(result)['best']['rank']}"
    have = result["_models"] if "_models" in result else result["experiments"]
    keys = [best_lr if k == "<best low rank>" else k for k in ATTACK_CHECK_KEYS]
    return [k for k in keys if k in have], [k for k in ("clean", "adv_from_clean_other") if k in have], best_lr


def attack_check(result: dict, cfg: CifarConfig, labels: dict, x: torch.Tensor, y: torch.Tensor,
                 n_check: int = ATTACK_CHECK_N, strong_steps: int = 100, strong_restarts: int = 2,
                 autoattack: dict | None = None) -> dict:
    """The chapter's attack check of a (loaded) run: :func:`attack_strength` on the first ``n_check`` of the images
    ``x, y``, in the run's norm and in the other norm for the models of :func:`attack_check_keys`. ``labels``:
    experiment key -> the label the chapter shows. ``autoattack``: an AutoAttack result of the same run and images
    (:func:`autoattack_check`, :func:`load_or_run_autoattack`), whose per-image outcomes join each model's worst
    case. Returns ``{"main", "other"}`` (the two checks), ``keys`` (the main check's experiment keys, in its rows'
    order), ``best_lr``, ``n_test`` and ``autoattack`` (its version, or None)."""
    if not isinstance(n_check, int) or n_check < 1:
        raise ValueError(f"n_check must be a positive int, got {n_check!r}")
    keys, other_keys, best_lr = attack_check_keys(result)
    xs, ys = x[:n_check], y[:n_check]
    aa = {"main": None, "other": None}
    if autoattack is not None:
        if autoattack["n"] != len(ys) or autoattack["images"] != _data_fingerprint(xs.cpu(), ys.cpu()):
            raise ValueError(f"the AutoAttack result is of other images ({autoattack['n']} images, fingerprint "
                             f"{autoattack['images']}) than the {len(ys)} checked here; recompute it")
        aa = {part: {labels[k]: _robust_mask(v["robust"]).to(xs.device) for k, v in autoattack[part]["models"].items()}
              for part in aa}
    main = attack_strength({labels[k]: result["_models"][k] for k in keys}, xs, ys, cfg, strong_steps, strong_restarts,
                           autoattack=aa["main"])
    other = attack_strength({labels[k]: result["_models"][k] for k in other_keys}, xs, ys, cfg, strong_steps,
                            strong_restarts, norm=cfg.other_norm, eps=cfg.other_radius, autoattack=aa["other"])
    return {"main": main, "other": other, "keys": keys, "best_lr": best_lr, "n_test": int(result["n_test"]),
            "autoattack": autoattack["version"] if autoattack is not None else None}


# ----------------------------------------------------------------------------------------------------- AutoAttack
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}
# per profile: None = AutoAttack's standard version (APGD-CE, APGD-T with 9 target classes, FAB-T with 9, Square with
# 5,000 queries); a tuple = those attacks only (pyautoattack's "custom" version, whose APGD-CE makes 5 restarts). The
# quick profile, a test of the pipeline, leaves out FAB-T and Square: at quick on a CPU they took 11 s and 13.5 s on
# (c) for its 8 surviving images, against 0.8 s and 5.4 s for APGD-CE and APGD-T.
AUTOATTACK_ATTACKS = {"full": None, "quick": ("apgd-ce", "apgd-t")}


AUTOATTACK_DESCRIPTIONS = {  # how the chapter describes each version it may run (keys: autoattack_version)
    "standard version": "its standard version: APGD with the cross-entropy (100 iterations, one start), its targeted "
                        "version with the DLR loss (9 target classes), the targeted FAB attack (9 target classes) and "
                        "the gradient-free Square attack (5,000 queries), each on the images the ones before left "
                        "correct",
    "custom version: APGD-CE, APGD-T": "at this profile, to save time, only two of the four attacks of its standard "
                                       "version: APGD with the cross-entropy (100 iterations, 5 starts) and its "
                                       "targeted version with the DLR loss (9 target classes); the targeted FAB "
                                       "attack and the gradient-free Square attack are left out",
}


def autoattack_version(attacks: tuple | None) -> str:
    """How the chapter names the AutoAttack run with ``attacks`` (None: the standard version)."""
    return "standard version" if attacks is None else "custom version: " + ", ".join(a.upper() for a in attacks)


def _robust_mask(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def autoattack(models: dict, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, seed: int = 0,
               attacks: tuple | None = None, batch_size: int = 500) -> dict:
    """AutoAttack (Croce and Hein, 2020) on the images ``x, y`` (in [0, 1]) at radius ``eps`` in ``norm``, per model
    of ``models`` (name -> model): ``{"acc", "robust", "seconds"}``, ``robust`` a string with one character per image,
    "1" where the model still classifies the attacked image correctly (images it misclassifies unattacked count as
    broken). The attacks are the reference code of Croce and Hein as packaged on PyPI (``pyautoattack``); with
    ``attacks=None`` its standard version runs APGD with the cross-entropy, targeted APGD with the DLR loss and
    targeted FAB (9 target classes each) and the Square attack (5,000 queries), each on the images the ones before
    left correct; a tuple of its attack names (``"apgd-ce"``, ``"apgd-t"``, ``"fab-t"``, ``"square"``, ...) runs
    only those, in its "custom" version.
    Every adversarial image is checked to lie in the ball and in [0, 1] (``RuntimeError`` otherwise)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # a requirement of the book; named here for an environment that lacks it
        raise ImportError("AutoAttack needs the package pyautoattack (pip install pyautoattack==0.2.0)") from e
    from .attacks import margins

    norm = check_norm(norm)
    out = {}
    for name, m in models.items():
        m.eval()
        t = time.perf_counter()
        kw = {"version": "standard"} if attacks is None else {"version": "custom", "attacks": list(attacks)}
        aa = AutoAttack(m, eps=float(eps), norm=AUTOATTACK_NORMS[norm], seed=seed, device=x.device, **kw)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        if (size > eps * (1 + 1e-4) + 1e-6).any() or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError(f"AutoAttack returned images outside the {norm} ball of radius {eps:g} or outside "
                               f"[0, 1] for {name!r} (largest size {size.max().item():.6g})")
        robust = (margins(m, x_adv, y) > 0).cpu()
        out[name] = {"acc": robust.float().mean().item(), "robust": "".join("1" if b else "0" for b in robust.tolist()),
                     "seconds": round(time.perf_counter() - t, 1)}
    return out


def autoattack_check(result: dict, cfg: CifarConfig, x: torch.Tensor, y: torch.Tensor,
                     n_check: int = ATTACK_CHECK_N, attacks: tuple | None = None) -> dict:
    """:func:`autoattack` on the models of the chapter's attack check (:func:`attack_check_keys`), on the first
    ``n_check`` images of ``x, y``: in the run's norm (``main``) and, for (a) and (c''), in the other norm (``other``),
    at the run's radii, with ``attacks`` (None: the standard version). JSON-ready: ``n``, ``images`` (a fingerprint of
    the images, checked by :func:`attack_check`), ``version`` (:func:`autoattack_version`), ``pyautoattack`` (the
    package's version), ``main`` / ``other``: ``{"norm", "eps", "models": {key: {"acc", "robust", "seconds"}}}``."""
    from importlib.metadata import version as _version

    if not isinstance(n_check, int) or n_check < 1:
        raise ValueError(f"n_check must be a positive int, got {n_check!r}")
    keys, other_keys, _ = attack_check_keys(result)
    xs, ys = x[:n_check], y[:n_check]
    parts = {"main": (keys, cfg.norm, cfg.radius), "other": (other_keys, cfg.other_norm, cfg.other_radius)}
    out = {"n": int(len(ys)), "images": _data_fingerprint(xs.cpu(), ys.cpu()), "version": autoattack_version(attacks),
           "pyautoattack": _version("pyautoattack")}
    for part, (ks, norm, eps) in parts.items():
        out[part] = {"norm": norm, "eps": eps, "models": autoattack({k: result["_models"][k] for k in ks}, xs, ys, norm,
                                                                    eps, seed=cfg.seed, attacks=attacks)}
    return out


def run_cifar_autoattack(cfg: CifarConfig, models_dir=None, data_dir=None, device=None, progress=None,
                         profile: str | None = None, n_check: int = ATTACK_CHECK_N) -> dict:
    """``python -m fp_helpers run cifar-autoattack``: :func:`autoattack_check` of the run of ``cfg`` saved in
    ``models_dir`` (``run cifar --save-dir``; trained now when there is none; the command line requires it), on its
    evaluation images, with the profile's attacks (:data:`AUTOATTACK_ATTACKS`); stamped with the config, the run it
    attacked (``run``: when, by which code) and provenance. The chapter loads it
    with :func:`load_or_run_autoattack` (AutoAttack takes minutes per model on a CPU)."""
    cfg = cfg.validate()
    t0 = time.perf_counter()
    dev = get_device(device)
    res = load_or_run(cfg, models_dir, data_dir=data_dir, device=dev, progress=progress, profile=profile)
    x, y = evaluation_images(cfg, data_dir, dev)
    out = autoattack_check(res, cfg, x, y, n_check, AUTOATTACK_ATTACKS[get_profile(profile)])
    prov = res["provenance"]
    out["run"] = {"date": prov["date"], "code": prov["code"]["hash"], "stale": res.get("stale", [])}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    given = data_dir if data_dir is not None else os.environ.get("FP_DATA_DIR") or None
    extra = (("--data", str(given)) if given is not None else ()) + (
        ("--models", str(models_dir)) if models_dir is not None else ())
    stamp(out, "cifar-autoattack", cfg, profile, dev, extra_args=extra)
    return out


def _saved_for_run(path, result: dict, cfg: CifarConfig, what: str, check=None) -> dict | None:
    """The result saved in ``path`` by a command run on a saved run (``run cifar-autoattack``, ``run cifar-frozen-bn``)
    when it was made with ``cfg`` from this very run (``result``: the same provenance date and code fingerprint, so a
    run redone with the same config is not matched with its predecessor's models) and ``check(saved)`` (a reason
    to refuse it, or None) passes, with ``loaded_from``; else None, with a warning saying why ``what`` is recomputed.
    A saved result made by changed code is used with a :class:`~fp_helpers.provenance.StaleResultWarning` (see
    :func:`fp_helpers.provenance.load_result`)."""
    from .provenance import load_result, read_result

    if path is None or not Path(path).exists():
        return None
    _, saved = read_result(path)
    if stale_reasons(saved, cfg)["config"]:
        why = "was made with another config"
    elif (saved["run"]["date"], saved["run"]["code"]) != (result["provenance"]["date"],
                                                         result["provenance"]["code"]["hash"]):
        why = (f"started from the models of another run (made {saved['run']['date']}, this one "
               f"{result['provenance']['date']})")
    else:
        why = check(saved) if check is not None else None
    if why is not None:
        warnings.warn(f"{path} {why} -- recomputing {what} now", stacklevel=3)
        return None
    from .book import portable_paths

    out = load_result(path, expected_config=cfg)  # warns when the code behind it has changed
    out["loaded_from"] = portable_paths(str(Path(path).resolve()))
    return out


def load_or_run_autoattack(result: dict, cfg: CifarConfig, x: torch.Tensor, y: torch.Tensor, path=None,
                           n_check: int = ATTACK_CHECK_N, profile: str | None = None) -> dict:
    """The AutoAttack result saved in ``path`` (``run cifar-autoattack --out``) when it attacked this very run with
    this config (:func:`_saved_for_run`), these images and the profile's attacks (:data:`AUTOATTACK_ATTACKS`), else
    :func:`autoattack_check` now (with a warning saying why)."""
    attacks = AUTOATTACK_ATTACKS[get_profile(profile)]
    xs, ys = x[:n_check], y[:n_check]

    def check(saved):
        if saved["n"] != len(ys) or saved["images"] != _data_fingerprint(xs.cpu(), ys.cpu()):
            return "attacked other images"
        if saved["version"] != autoattack_version(attacks):
            return f"ran AutoAttack's {saved['version']}, this profile its {autoattack_version(attacks)}"
        return None

    saved = _saved_for_run(path, result, cfg, "AutoAttack", check)
    return saved if saved is not None else autoattack_check(result, cfg, x, y, n_check, attacks)


def describe_autoattack(aa: dict) -> str:
    """One line for the chapter: which AutoAttack ran, on how many images, and whether it was loaded (from where,
    made when, on what, in how long) or run now."""
    per_model = sum(v["seconds"] for part in ("main", "other") for v in aa[part]["models"].values())
    text = (f"AutoAttack ({aa['version']}; pyautoattack {aa['pyautoattack']}) on {aa['n']:,} images, "
            f"{sum(len(aa[p]['models']) for p in ('main', 'other'))} model-norm pairs: ")
    if "loaded_from" in aa:
        env = aa.get("environment") or {}
        return text + (f"loaded from {aa['loaded_from']} (made {aa['provenance']['date']} on "
                       f"{env.get('device_name', aa['provenance'].get('device_name', '?'))}, "
                       f"{per_model:.0f} s of attacks)")
    return text + f"run now ({per_model:.0f} s)"


ATTACK_CHECK_HEADER = ["model", "norm, radius", "clean", "FGSM", "run's PGD", "stronger PGD", "AutoAttack",
                       "worst case of all attacks", "images only the stronger PGD breaks / only the run's",
                       "images the worst case adds", "images only AutoAttack breaks",
                       "box check: only projected breaks / only ours"]


def attack_check_rows(check: dict) -> list[list]:
    """The table of :func:`attack_check` (:data:`ATTACK_CHECK_HEADER`): one row per model and norm."""
    from .cifar_train import format_radius

    def aa(v):
        return "not run" if v is None else v

    return [[r["model"], f"{r['norm']} {format_radius(r['eps'], r['norm'])}", r["clean"], r["fgsm"], r["pgd_run"],
             r["strong"], aa(r["autoattack"]), r["worst"], f"{r['strong_only']} / {r['run_only']}", r["extra"],
             aa(r["aa_only"]), f"{r['box_only']} / {r['unboxed_only']}"]
            for r in check["main"]["rows"] + check["other"]["rows"]]


def attack_check_glue(check: dict) -> dict:
    """What the CIFAR-10 chapter states about :func:`attack_check` (``cf_as_*``; ``cf_as2_*`` for the other norm):
    the image count (``n``, ``n_text``), the attacks' verdicts and orderings (per model where they fail:
    ``order_text``), the largest drop to the worst case and its model (``gap*``), the box check, and for (a) and
    (c) (``a``, ``c``; in the other norm (a) and (c'')) every accuracy and paired count of their rows."""
    main, other = check["main"], check["other"]
    rows = main["rows"] + other["rows"]
    by_key = dict(zip(check["keys"], main["rows"]))
    n = main["n"]
    out = {"cf_as_n": f"{n:,}", "cf_as_n_text": f"all {n:,}" if n == check["n_test"] else
           f"the first {n:,} of the {check['n_test']:,}", "cf_as_strong": main["strong"],
           "cf_as_verdict": main["verdict"], "cf_as2_verdict": other["verdict"], "cf_as_n_models": len(rows),
           "cf_as_ordered": "holds" if main["ordered"] else "does not hold",
           "cf_as2_ordered": "holds" if other["ordered"] else "does not hold"}
    unordered = [r for r in rows if not r["ordered"]]
    out["cf_as_order_text"] = ("holds for every model in both norms" if not unordered else "holds for every model but "
                               + "; ".join(f"{r['model']} in {r['norm']} (FGSM {r['fgsm']:.3f}, run's PGD "
                                           f"{r['pgd_run']:.3f}, stronger PGD {r['strong']:.3f}"
                                           + (f", AutoAttack {r['autoattack']:.3f}" if r["autoattack"] is not None
                                              else "") + ")" for r in unordered))
    gap_row = max(main["rows"], key=lambda r: r["pgd_run"] - r["worst"])
    out.update({"cf_as_gap_model": gap_row["model"], "cf_as_gap_pgd": gap_row["pgd_run"],
                "cf_as_gap_worst": gap_row["worst"], "cf_as_gap": main["max_gap"], "cf_as2_gap": other["max_gap"],
                "cf_as_se": by_key["adv_from_clean"]["se_pgd_run"], "cf_as_extra": main["max_extra"],
                "cf_as2_extra": other["max_extra"]})
    ca, cc, (ca2, cc2) = by_key["clean"], by_key["adv_from_clean"], other["rows"]
    for k in ("strong_only", "run_only", "extra", "clean", "fgsm", "pgd_run", "strong", "worst", "autoattack",
              "aa_only"):
        out.update({f"cf_as_a_{k}": ca[k], f"cf_as_c_{k}": cc[k], f"cf_as2_a_{k}": ca2[k], f"cf_as2_c_{k}": cc2[k]})
    aa_run = check["autoattack"] is not None
    out["cf_as_n_attacks"] = main["n_attacks"]
    out["cf_as_attacks"] = ("FGSM, the run's PGD, the stronger PGD and AutoAttack" if aa_run else
                            "FGSM, the run's PGD and the stronger PGD")
    if aa_run:
        aa_row = max(rows, key=lambda r: r["aa_only"])
        out.update({"cf_as_aa_version": check["autoattack"], "cf_as_aa_max_only": aa_row["aa_only"],
                    "cf_as_aa_max_only_model": f"{aa_row['model']} ({aa_row['norm']})",
                    "cf_as_aa_total_only": sum(r["aa_only"] for r in rows),
                    "cf_as_aa_below_strong": sum(r["autoattack"] < r["strong"] for r in rows),
                    "cf_as_aa_equal_strong": sum(r["autoattack"] == r["strong"] for r in rows),
                    "cf_as_aa_alone": sum(r["ours_only"] == 0 for r in rows),
                    "cf_as_aa_description": AUTOATTACK_DESCRIPTIONS.get(check["autoattack"],
                                                                        f"its {check['autoattack']}")})
        ours_row = max(rows, key=lambda r: r["ours_only"])
        out["cf_as_aa_text"] = (
            ("AutoAttack breaks no image that our three attacks all left correct, on any model" if aa_row["aa_only"] == 0
             else f"AutoAttack breaks up to {aa_row['aa_only']} images that our three attacks all left correct "
                  f"({aa_row['model']}, {aa_row['norm']}), {sum(r['aa_only'] for r in rows)} over the {len(rows)} "
                  "models and norms")
            + (f"; ours break none that it leaves correct, so on these images AutoAttack's outcome equals the worst "
               f"case of all four attacks, image by image, on all {len(rows)} model-norm pairs"
               if ours_row["ours_only"] == 0 else
               f"; ours break up to {ours_row['ours_only']} that it leaves correct ({ours_row['model']}, "
               f"{ours_row['norm']}), and AutoAttack's outcome equals the worst case of all four attacks, image by "
               f"image, on {out['cf_as_aa_alone']} of the {len(rows)} model-norm pairs"))
    else:
        out.update({"cf_as_aa_version": "not run", "cf_as_aa_text": "AutoAttack was not run",
                    "cf_as_aa_description": "not run", **{f"cf_as_aa_{k}": "not run" for k in
                                                          ("below_strong", "equal_strong", "alone", "max_only",
                                                           "max_only_model", "total_only")}})
    box, unbox = (sum(r[k] for r in rows) for k in ("box_only", "unboxed_only"))
    out.update({"cf_as_box": box, "cf_as_unbox": unbox, "cf_as_box_verdict":
                "changes no image: on these models the clipping costs the attack nothing measurable"
                if box == 0 and unbox == 0 else f"changes {box + unbox} images (projecting breaks {box} more, {unbox} fewer)"})
    return out


COMPARISON_HEADER = ["model A", "model B", "run's PGD: A, B", "images only A / only B keeps", "A is ... B",
                     "worst case: A, B", "images only A / only B keeps ", "A is ... B (worst case)"]


def attack_check_comparisons(check: dict, labels: dict) -> tuple[list[dict], dict, list[list]]:
    """Four of the chapter's comparisons redone image by image (:func:`worst_case_comparisons` on the main check of
    :func:`attack_check`): (c') and (b) against (c), the best low-rank run against (c) and against batch norm alone
    (when the run has it). Returns the comparisons, their glue (``cf_as_cmp_*``: each verdict under the worst case,
    how many change, as text; the best low-rank run's and batch norm's PGD accuracy as a share of (c)'s under the
    worst case, ``cf_as_lr_share_worst``, ``cf_as_bn_share_worst``) and the table rows (:data:`COMPARISON_HEADER`)."""
    keys, best_lr = check["keys"], check["best_lr"]
    c = labels["adv_from_clean"]
    pairs = [(labels["adv_from_clean_pgd"], c), (labels["adv_scratch"], c), (labels[best_lr], c)]
    if "bn_only" in keys:
        pairs.append((labels[best_lr], labels["bn_only"]))
    cmps = worst_case_comparisons(check["main"], pairs)
    by = {(x["a"], x["b"]): x for x in cmps}
    glue = {f"cf_as_cmp_{name}_worst": by[(labels[key], c)]["cmp_worst"]
            for name, key in (("pgd", "adv_from_clean_pgd"), ("scratch", "adv_scratch"), ("lowrank", best_lr))}
    glue["cf_as_cmp_bn_worst"] = by[(labels[best_lr], labels["bn_only"])]["cmp_worst"] if "bn_only" in keys \
        else "not compared"
    glue.update({"cf_as_cmp_n": len(cmps), "cf_as_cmp_changed": sum(not x["same"] for x in cmps),
                 "cf_as_cmp_changed_text": "none changes its verdict" if all(x["same"] for x in cmps) else
                 "the verdict changes for " + "; ".join(f"{x['a']} against {x['b']} ({x['cmp_run']} -> "
                                                        f"{x['cmp_worst']})" for x in cmps if not x["same"])})
    w = {r["model"]: r["worst"] for r in check["main"]["rows"]}
    glue["cf_as_lr_share_worst"] = w[labels[best_lr]] / max(w[c], 1e-9)
    glue["cf_as_bn_share_worst"] = w[labels["bn_only"]] / max(w[c], 1e-9) if "bn_only" in keys else float("nan")
    rows = [[x["a"], x["b"], f"{x['pgd_a']:.3f}, {x['pgd_b']:.3f}", f"{x['only_a_run']} / {x['only_b_run']}",
             x["cmp_run"], f"{x['worst_a']:.3f}, {x['worst_b']:.3f}", f"{x['only_a_worst']} / {x['only_b_worst']}",
             x["cmp_worst"]] for x in cmps]
    return cmps, glue, rows

def cosine_bounds(result: dict) -> dict:
    """How much of the high cosine between (c) and the clean weights the relative change alone forces: if
    ``||W - W_clean|| <= r ||W_clean||`` then the angle's sine is at most ``r``, so ``cos >= sqrt(1 - r^2)``
    (for ``r < 1``). Per layer of (c): ``cos`` (observed), ``rel_change``, ``bound`` and ``excess = cos - bound``;
    ``bound_median`` (the bound at the median relative change), ``max_excess`` over layers, and per run started
    from the clean model (``runs``: key -> median cosine, median relative change and the bound from it), with
    the largest ``|cos - bound|`` (``runs_max_deviation``) and median relative change (``runs_max_rel_change``)
    over those runs, the frozen-batch-norm controls left out."""
    def bound(r):
        return math.sqrt(max(0.0, 1 - r * r))

    layers = [{"layer": r["layer"], "cos": r["cos_clean_ft"], "rel_change": r["rel_change_ft"],
               "bound": bound(r["rel_change_ft"]), "excess": r["cos_clean_ft"] - bound(r["rel_change_ft"])}
              for r in result["layers"]]
    runs_ = {k: {"cos": v["cos_clean_median"], "rel_change": v["rel_change_median"],
                 "bound": bound(v["rel_change_median"])}
             for k, v in result["experiments"].items() if "cos_clean_median" in v and "rel_change_median" in v}
    med = result["layer_medians"]["rel_change_ft"]
    return {"layers": layers, "bound_median": bound(med), "max_excess": max(r["excess"] for r in layers),
            "min_excess": min(r["excess"] for r in layers), "runs": runs_,
            "runs_max_deviation": max((abs(v["cos"] - v["bound"]) for k, v in runs_.items()
                                       if not k.startswith("frozen_bn_")), default=float("nan")),
            "runs_max_rel_change": max((v["rel_change"] for k, v in runs_.items() if not k.startswith("frozen_bn_")),
                                       default=float("nan"))}


# the runs whose weight change the chapter compares with (c)'s: (key, column label); a missing one is left out
DIRECTION_RUNS = (("adv_from_clean_seed1", "(c), seed + 1"), ("adv_from_clean_pgd", "(c') PGD"),
                  ("adv_from_clean_other", "(c'') l2"), ("ft_clean", "no attack"), ("adv_scratch", "towards (b)"))


@torch.no_grad()
def change_directions(models: dict, rank: int | None = None, seed: int = 0) -> dict:
    """Which directions adversarial training from the clean model, (c), changed, layer by layer.

    With ``W`` the clean weights and ``D = W_(c) - W`` (c)'s change, per conv / linear layer:
    ``shrink``, the cosine of ``D`` with ``-W`` (the part of the change that only rescales the weights, as
    weight decay does; its square is that part's share of ``||D||^2``); and the cosine of ``D`` with the change
    of every run of :data:`DIRECTION_RUNS` present in ``models`` (``W_run - W``; for (b), the direction from the
    clean weights towards the weights trained from scratch), both changes first projected orthogonally to ``W``,
    so that a shared rescaling does not count as a shared direction. ``random`` is ``1/sqrt(n)`` for a layer of
    ``n`` weights: the root-mean-square cosine of two independent random directions, the scale of "unrelated".
    ``top_r`` is the share of ``||D||^2`` in its best rank-``rank`` approximation (default: the largest low-rank
    run's rank, else 8) and ``top_r_random`` the same for a Gaussian matrix of the layer's shape (seeded by
    ``seed``): a change more concentrated than that has a few dominant directions.

    Returns ``rows`` (one dict per layer), ``columns`` (the runs compared, in order, with their labels),
    ``medians`` over layers, ``rank``, and, for the control without attack, ``above_control``: in how many
    layers (c)'s direction agrees more with the repeat at another seed than with the control."""
    needed = ("clean", "adv_from_clean")
    missing = [k for k in needed if k not in models]
    if missing:
        raise ValueError(f"change_directions needs the models {', '.join(needed)}; missing: {', '.join(missing)}")
    if rank is None:
        low = [int(k.split("_")[1]) for k in models if k.startswith("lowrank_")]
        rank = max(low) if low else 8
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    columns = [(k, label) for k, label in DIRECTION_RUNS if k in models]
    mats = {k: dict(cm.named_weight_matrices(models[k])) for k in ("clean", "adv_from_clean", *[k for k, _ in columns])}
    gen = torch.Generator().manual_seed(seed)

    def perp(d, w):
        return d - (d.flatten() @ w.flatten()) / (w.flatten() @ w.flatten()) * w

    rows = []
    for name, w in mats["clean"].items():
        w = w.double().cpu()
        d = mats["adv_from_clean"][name].double().cpu() - w
        d_perp = perp(d, w)
        row = {"layer": name, "shape": list(w.shape), "rel_change": (d.norm() / w.norm()).item(),
               "shrink": _flat_cos(d, -w), "random": 1 / math.sqrt(w.numel())}
        for key, _ in columns:
            row[key] = _flat_cos(d_perp, perp(mats[key][name].double().cpu() - w, w))
        row["top_r"] = pur.update_spectrum(w, w + d).share(rank)
        noise = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        row["top_r_random"] = pur.update_spectrum(torch.zeros_like(noise), noise).share(rank)
        rows.append(row)
    out = {"rows": rows, "columns": columns, "medians": layer_medians(rows), "rank": rank, "above_control": None}
    if "adv_from_clean_seed1" in models and "ft_clean" in models:
        out["above_control"] = sum(r["adv_from_clean_seed1"] > r["ft_clean"] for r in rows)
    return out


def direction_verdicts(dirs: dict) -> dict:
    """Sentences for the chapter from a :func:`change_directions` result (medians over layers):
    ``reproducible`` (does (c)'s direction agree more with its repeat at another seed than with the training
    without attack, and in how many layers; whether the control's agreement is within three times the random
    scale), ``scratch`` (how far it heads towards (b), measured against the
    repeat's agreement) and ``lowrank`` (its top-rank energy share against a Gaussian matrix's, per layer)."""
    med, rows = dirs["medians"], dirs["rows"]
    n_layers, out = len(rows), {"reproducible": "", "scratch": "", "lowrank": ""}

    def where(k):
        return "in every layer" if k == n_layers else f"in {k} of the {n_layers} layers"

    k = dirs["above_control"]
    if k is not None:
        s1, ctrl = med["adv_from_clean_seed1"], med["ft_clean"]
        if s1 > ctrl and 2 * k > n_layers:
            shared = ("does not take (its agreement with (c) is at the scale of unrelated directions)"
                      if abs(ctrl) <= 3 * med["random"] else "shares only in part")
            out["reproducible"] = (f"(c)'s direction agrees more with its repeat at another seed than with the training "
                                   f"without attack {where(k)}: adversarial training from the clean weights changes them in "
                                   f"a direction that other batches reproduce and that further training without the "
                                   f"attack {shared}.")
        else:
            out["reproducible"] = (f"(c)'s direction agrees more with its repeat at another seed than with the training "
                                   f"without attack only {where(k)}: at this scale its direction cannot be told from what "
                                   f"further training without the attack does.")
    if "adv_scratch" in med:
        t = med["adv_scratch"]
        ref = med.get("adv_from_clean_seed1")
        if ref is not None and t < ref / 4:
            out["scratch"] = ("Towards (b) it heads hardly at all (less than a quarter of its agreement with its own "
                              "repeat): from the clean weights, adversarial training finds robustness in another "
                              "direction than the robust weights found from scratch.")
        elif ref is not None:
            out["scratch"] = ("It heads partly towards (b): some of the direction is the one towards the robust weights "
                              "found from scratch.")
    above = sum(r["top_r"] > r["top_r_random"] for r in rows)
    r = dirs["rank"]
    if above == n_layers:
        out["lowrank"] = (f"in every layer (c)'s change is more concentrated in its top {r} directions than a random "
                          f"matrix, though the rank-{r} approximation still leaves out {1 - med['top_r']:.0%} of it "
                          f"(median).")
    elif above:
        out["lowrank"] = (f"(c)'s change is more concentrated in its top {r} directions than a random matrix {where(above)} "
                          f"only; the rank-{r} approximation leaves out {1 - med['top_r']:.0%} of it (median).")
    else:
        out["lowrank"] = (f"in no layer is (c)'s change more concentrated in its top {r} directions than a random "
                          f"matrix: it is not low-rank.")
    return out


def lowrank_summary(result: dict) -> dict:
    """The low-rank section's numbers: table ``rows`` (rank, parameters in A and B, trainable parameters, clean and
    PGD accuracy, median cosine with the clean weights; the full run (c) last), the ``best`` and ``worst`` rank by
    PGD accuracy (ties: the smaller rank is the better one), ``best_ranks`` (every rank tied with the best, as
    text), ``cmp`` (best vs worst) and ``cmp_full`` (best vs (c)) at two standard errors, and ``share`` (best PGD
    accuracy over that of (c))."""
    ex, n = result["experiments"], result["n_test"]
    low = sorted((v for k, v in ex.items() if k.startswith("lowrank_")), key=lambda v: v["rank"])
    if not low:
        raise ValueError("the result has no low-rank run (lowrank_<r> experiments)")
    full = ex["adv_from_clean"]
    rows = [[v["rank"], v["low_rank_params"], v["trainable_params"], v["clean_acc"], v["robust_acc"],
             v["cos_clean_median"]] for v in low]
    rows.append(["full (c)", low[0]["full_params"], low[0]["full_params"], full["clean_acc"], full["robust_acc"],
                 full["cos_clean_median"]])
    ranked = sorted(low, key=lambda v: (v["robust_acc"], -v["rank"]))
    best, worst = ranked[-1], ranked[0]
    out = {"rows": rows, "best": best, "worst": worst,
           "best_ranks": " and ".join(str(v["rank"]) for v in low if v["robust_acc"] == best["robust_acc"]),
           "cmp": compare_accuracies(best["robust_acc"], worst["robust_acc"], n),
           "cmp_full": compare_accuracies(best["robust_acc"], full["robust_acc"], n),
           "share": best["robust_acc"] / max(full["robust_acc"], 1e-9), "bn_only": None}
    bn = ex.get("bn_only")
    if bn is not None:  # the control: batch norm alone, trained as (d)
        rows.insert(len(low), ["0 (batch norm only)", 0, bn["trainable_params"], bn["clean_acc"], bn["robust_acc"],
                               bn.get("cos_clean_median", 1.0)])
        cmp_bn = compare_accuracies(best["robust_acc"], bn["robust_acc"], n)
        verdict = {
            "about the same as": "so the low-rank factors add no robustness that this run can measure beyond what "
                                 "adapting batch norm gives; it does not support the low-rank claim",
            "higher than": "so the low-rank factors do add robustness beyond what adapting batch norm gives",
            "lower than": "so adapting batch norm alone does better, and the factors' gain is not measurable here",
        }[cmp_bn]
        out.update(bn_only=bn, cmp_bn=cmp_bn, bn_verdict=verdict,
                   bn_share=bn["robust_acc"] / max(full["robust_acc"], 1e-9))
    return out


def historical_frozen_bn(path) -> dict | None:
    """The earlier frozen-batch-norm run kept in ``path`` (a historical record, read with its provenance), or
    ``None`` when the file is missing: the ``result``, its learning rate ``lr``, the best clean and PGD accuracy
    of its low-rank runs (``max_clean``, ``max_robust``) and a one-line ``note`` of when and by what it was made."""
    from .book import portable_paths
    from .provenance import load_result

    path = Path(path)
    if not path.exists():
        return None
    old = load_result(path, historical=True)
    runs_ = [v for k, v in old["experiments"].items() if k.startswith("lowrank_")]
    return {"result": old, "lr": old["config"]["lowrank_lr"], "max_clean": max(v["clean_acc"] for v in runs_),
            "max_robust": max(v["robust_acc"] for v in runs_),
            "note": (f"earlier frozen-batch-norm run: made {old['provenance']['date']} by fp_helpers commit "
                     f"{old['provenance']['commit']} | {portable_paths(old['data'])}")}


# ------------------------------------------------------------------------------------------------ frozen batch norm, again

# The follow-up of the frozen-batch-norm control of (d), on a saved run (``run cifar-frozen-bn --models DIR``): the
# control's training without the attack at the run's learning rates (does training through frozen batch norm work at
# all?), with the attack at these smaller learning rates (is the collapse a matter of step size?), and with the attack
# at the control's learning rates and at (d)'s but with the batch-norm statistics of each batch (train mode), scale and
# shift still frozen (are the frozen statistics what makes it collapse? does (d) need its trained scale and shift?).
FROZEN_BN_FOLLOWUP_LRS = (0.001, 0.003)
BN_MODES = {"frozen": "batch norm frozen", "batch_stats": "batch statistics, scale and shift frozen"}


def frozen_bn_followup_runs(cfg: CifarConfig, lrs: tuple = FROZEN_BN_FOLLOWUP_LRS) -> list[tuple[str, float, str, str]]:
    """``(key, learning rate, training attack, batch-norm mode)`` of every run of the follow-up, in the order they
    are trained: the control without the attack (``"none"``) at each of ``cfg.frozen_bn_lrs``, then with the run's
    attack at each of ``lrs`` and, again, at the control's own learning rates (the control repeated by this code, the
    baseline of the runs below), all with batch norm frozen (``"frozen"``), then with the attack at each of
    ``cfg.frozen_bn_lrs`` and at (d)'s ``cfg.lowrank_lr`` with the statistics of each batch (``"batch_stats"``: batch
    norm in train mode, its scale and shift frozen). Keys as :func:`frozen_bn_key`, with ``_noattack`` /
    ``_batchstats`` appended."""
    r, a = cfg.frozen_bn_rank, cfg.attack
    adv_lrs = tuple(dict.fromkeys(tuple(lrs) + cfg.frozen_bn_lrs))
    stats_lrs = tuple(dict.fromkeys(cfg.frozen_bn_lrs + (cfg.lowrank_lr,)))
    return ([(frozen_bn_key(r, lr) + "_noattack", lr, "none", "frozen") for lr in cfg.frozen_bn_lrs]
            + [(frozen_bn_key(r, lr), lr, a, "frozen") for lr in adv_lrs]
            + [(frozen_bn_key(r, lr) + "_batchstats", lr, a, "batch_stats") for lr in stats_lrs])


def frozen_bn_followup(result: dict, cfg: CifarConfig, data_dir=None, device=None, progress=None,
                       lrs: tuple = FROZEN_BN_FOLLOWUP_LRS, keep_models: bool = False) -> dict:
    """Train and evaluate :func:`frozen_bn_followup_runs` from the clean model of ``result`` (a run of ``cfg`` with
    its models): the same low-rank model, training schedule, data, held-out check and PGD evaluation as the run's own
    frozen control (a run here at the control's learning rate, attack and mode reproduces it: see the tests), only
    the learning rate, the attack or the batch-norm mode changed. Returns ``{"runs": {key: {clean_acc, robust_acc,
    attack (the evaluation's), ..., rank, lr, train_attack ("none" or the run's), bn ("frozen" or "batch_stats"),
    history, cos_clean_median, rel_change_median, pgd_run_images, ...}}, "n", "images"}`` (``images``: a fingerprint
    of the test images, as :func:`evaluation_images` gives them; ``pgd_run_images``: per image of the first
    :data:`ATTACK_CHECK_N`, "1" where the model is still correct under the run's PGD applied as the attack check
    applies it, its ``_run``), plus ``"_models"`` (key -> trained model) with ``keep_models``."""
    import dataclasses

    from .cifar_train import _as_float

    dev = get_device(device)
    data = config_data(cfg, cifar.load_cifar10(data_dir, progress=progress))
    n_tr = data.n_train
    x_tr, y_tr = data.x_train[: n_tr - cfg.holdout].to(dev), data.y_train[: n_tr - cfg.holdout].to(dev)
    x_val, y_val = data.x_train[n_tr - cfg.holdout:].to(dev), data.y_train[n_tr - cfg.holdout:].to(dev)
    x_te, y_te = (t.to(dev) for t in eval_split(cfg, data))
    clean = result["_models"]["clean"].to(dev)
    xs, ys = _as_float(x_te[:ATTACK_CHECK_N]), y_te[:ATTACK_CHECK_N]  # the attack check's images
    out, models = {}, {}
    for key, lr, attack, bn in frozen_bn_followup_runs(cfg, lrs):
        r = cfg.frozen_bn_rank
        m = cm.apply_low_rank(copy.deepcopy(clean), r, generator=torch.Generator().manual_seed(cfg.seed),
                              train_bn=bn == "batch_stats")
        if bn == "batch_stats":  # BatchNorm as in (d) (train mode: the statistics of each batch), scale and shift frozen
            for mod in m.modules():
                if type(mod) is torch.nn.BatchNorm2d:
                    mod.requires_grad_(False)
        tc = dataclasses.replace(cfg.train_config("lowrank", lr), attack=attack).validate()
        t = time.perf_counter()
        h = train_cifar(m, x_tr, y_tr, tc, x_val=x_val, y_val=y_val, augment=cifar.augment, progress=progress,
                        device=dev)
        h["wall_seconds"] = round(time.perf_counter() - t, 1)
        g = torch.Generator(device=dev).manual_seed(cfg.seed + 99)
        ev = evaluate_cifar(m, x_te, y_te, cfg.radius, cfg.norm, cfg.eval_pgd_steps, cfg.eval_restarts, generator=g)
        # per image, on the attack check's images and as it attacks them: the chapter compares with (d) image by image
        kept = run_pgd_outcomes(m, xs, ys, cfg)
        out[key] = {**ev, "rank": r, "lr": lr, "train_attack": attack, "bn": bn, "history": h,
                    "trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad),
                    "pgd_run_images": "".join("1" if b else "0" for b in kept.cpu().tolist()),
                    **weight_change(clean, m)}
        if keep_models:
            models[key] = m
    follow = {"runs": out, "n": int(y_te.shape[0]), "images": _data_fingerprint(_as_float(x_te).cpu(), y_te.cpu())}
    return follow | ({"_models": models} if keep_models else {})


def run_cifar_frozen_bn(cfg: CifarConfig, models_dir=None, data_dir=None, device=None, progress=None,
                        profile: str | None = None) -> dict:
    """``python -m fp_helpers run cifar-frozen-bn``: :func:`frozen_bn_followup` on the run of ``cfg`` saved in
    ``models_dir`` (``run cifar --save-dir``; trained now when there is none; the command line requires it), stamped
    with the config, the run it started from (``run``: when, by which code) and provenance. The chapter loads it with
    :func:`load_or_run_frozen_bn`."""
    cfg = cfg.validate()
    t0 = time.perf_counter()
    dev = get_device(device)
    res = load_or_run(cfg, models_dir, data_dir=data_dir, device=dev, progress=progress, profile=profile)
    out = frozen_bn_followup(res, cfg, data_dir, dev, progress)
    prov = res["provenance"]
    out["run"] = {"date": prov["date"], "code": prov["code"]["hash"], "stale": res.get("stale", [])}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    given = data_dir if data_dir is not None else os.environ.get("FP_DATA_DIR") or None
    extra = (("--data", str(given)) if given is not None else ()) + (
        ("--models", str(models_dir)) if models_dir is not None else ())
    stamp(out, "cifar-frozen-bn", cfg, profile, dev, extra_args=extra)
    return out


def load_or_run_frozen_bn(result: dict, cfg: CifarConfig, x: torch.Tensor, y: torch.Tensor, path=None,
                          data_dir=None, device=None) -> dict:
    """The follow-up saved in ``path`` (``run cifar-frozen-bn --out``) when it started from this very run with this
    config (:func:`_saved_for_run`), was evaluated on these test images ``x, y`` (:func:`evaluation_images`) and ran
    these runs (:func:`frozen_bn_followup_runs`), else :func:`frozen_bn_followup` now (with a warning saying why;
    minutes at the full profile on a CPU)."""
    want = [k for k, *_ in frozen_bn_followup_runs(cfg)]

    def check(saved):
        if saved["n"] != len(y) or saved["images"] != _data_fingerprint(x.cpu(), y.cpu()):
            return "was evaluated on other test images"
        if sorted(saved["runs"]) != sorted(want):
            return f"ran {', '.join(sorted(saved['runs']))}, this version {', '.join(sorted(want))}"
        return None

    saved = _saved_for_run(path, result, cfg, "the frozen-batch-norm follow-up", check)
    return saved if saved is not None else frozen_bn_followup(result, cfg, data_dir, device)


def _falling(v: dict) -> bool:
    """Whether a run is on its way to collapse: its held-out clean accuracy fell after every epoch while its
    held-out PGD accuracy never rose above where it started (a run that trades clean accuracy for robustness is
    not)."""
    h = v.get("history", {})
    acc, rob = h.get("val_clean_acc", []), h.get("val_pgd_acc", [])
    return len(acc) > 2 and all(b < a for a, b in zip(acc, acc[1:])) and bool(rob) and max(rob) <= rob[0]


def frozen_bn_followup_summary(result: dict, ctrl: dict, follow: dict, check: dict | None = None,
                               labels: dict | None = None) -> dict:
    """What the follow-up ``follow`` adds to :func:`frozen_bn_control` ``ctrl`` of the run ``result``: its table rows
    and two sentences (``verdict`` for the text, ``summary`` for the chapter's summary) saying (0) what the control
    repeated by the follow-up gives, (1) whether the training collapses without the attack, (2) whether a smaller
    learning rate lets it reach the PGD accuracy of (d) at the same rank (``ctrl["trained"]``), and (3) whether the
    statistics of each batch (scale and shift still frozen) avoid the collapse where frozen statistics collapse, at the
    same learning rate, and at (d)'s learning rate reach (d)'s PGD accuracy; and ``source`` (where the follow-up comes
    from: loaded, and made when and where, or run now). Causes are named only where there is a collapse to explain.
    A run has collapsed when its clean accuracy is at most :data:`COLLAPSE_ACC`; PGD accuracies are compared at two
    standard errors of unpaired accuracies (:func:`compare_accuracies`; one seed each) and, given the chapter's
    attack check ``check`` (:func:`attack_check`, its models named by ``labels``) holding (d) at the same rank, also
    image by image (:func:`compare_paired`: the follow-up's ``pgd_run_images`` against the check's ``_run`` of (d),
    the same attack on the same images); the paired verdict, the sharper one, then decides."""
    ex, trained = result["experiments"], ctrl["trained"]
    clean = ex["clean"]
    # frozen without the attack, frozen with it, then the statistics of each batch; by learning rate within each
    runs = dict(sorted(follow["runs"].items(), key=lambda kv: (kv[1]["bn"] != "frozen",
                                                               kv[1]["train_attack"] != "none", kv[1]["lr"])))
    d_lr = trained["history"]["config"]["lr"]
    rows = [{"label": f"(d) r={trained['rank']} with batch norm trained, lr={d_lr:g} (for comparison)",
             "clean_acc": trained["clean_acc"], "robust_acc": trained["robust_acc"], "attack": attack_label(trained)}]
    rows += [{"label": f"follow-up: r={v['rank']}, {BN_MODES[v['bn']]}, lr={v['lr']:g}, "
                       + ("no attack" if v["train_attack"] == "none" else "with the attack")
                       + (" (the control again)" if k in ex else ""),
              "clean_acc": v["clean_acc"], "robust_acc": v["robust_acc"], "attack": attack_label(v)}
             for k, v in runs.items()]
    frozen = {k: v for k, v in runs.items() if v["bn"] == "frozen"}
    plain = [v for v in frozen.values() if v["train_attack"] == "none"]
    again = {v["lr"]: v for k, v in frozen.items() if k in ex}  # the control repeated, by learning rate
    adv = [v for k, v in frozen.items() if v["train_attack"] != "none" and k not in ex]
    stats = [v for v in runs.values() if v["bn"] == "batch_stats"]
    collapsed = lambda v: v["clean_acc"] <= COLLAPSE_ACC  # noqa: E731
    vs_d = lambda v: compare_accuracies(v["robust_acc"], trained["robust_acc"], v["n"])  # noqa: E731
    each = lambda vs: ", ".join(f"{v['clean_acc']:.3f} / {v['robust_acc']:.3f} at {v['lr']:g}" + (  # noqa: E731
        " (collapsed)" if collapsed(v) else " (clean accuracy falling after every epoch, no robustness gained)"
        if _falling(v) else "")
        for v in vs)
    d_text = (f"(d) at rank {trained['rank']} with batch norm trained (learning rate {d_lr:g}): "
              f"{trained['clean_acc']:.3f} / {trained['robust_acc']:.3f}")
    parts, summary = [], []
    if again:
        parts.append("Repeated by the follow-up, the control gives clean / PGD accuracy " + ", ".join(
            f"{v['clean_acc']:.3f} / {v['robust_acc']:.3f} at {lr:g} (in the run: "
            f"{ex[frozen_bn_key(v['rank'], lr)]['clean_acc']:.3f} / {ex[frozen_bn_key(v['rank'], lr)]['robust_acc']:.3f})"
            for lr, v in again.items()) + ".")
    for v in plain:
        with_attack = again.get(v["lr"])
        moved = (f" (though it also moves little: median relative weight change {v['rel_change_median']:.3f}"
                 + (f", against {with_attack['rel_change_median']:.3f} with the attack" if with_attack else "")
                 + f"; without the attack the loss, and so its gradient, is small from the start: "
                   f"{v['history']['train_loss'][0]:.3f} in the first epoch"
                 + (f" against {with_attack['history']['train_loss'][0]:.3f}" if with_attack else "") + ")")
        if not collapsed(v):
            parts.append(f"Without the attack, the same training (batch norm frozen, rank {v['rank']}, learning rate "
                         f"{v['lr']:g}) does not collapse: clean accuracy {v['clean_acc']:.3f}, where the clean model "
                         f"it starts from has {clean['clean_acc']:.3f}{moved}."
                         + (" At this learning rate frozen batch norm alone does not make the training collapse; "
                            "with the adversarial objective it does." if with_attack and collapsed(with_attack) else ""))
            summary.append(f"without the attack it does not collapse (learning rate {v['lr']:g})")
        else:
            parts.append(f"Without the attack, the same training collapses too (clean accuracy {v['clean_acc']:.3f} at "
                         f"learning rate {v['lr']:g}): the collapse is a failure of training through frozen batch norm "
                         f"here, not evidence about adversarial inputs.")
            summary.append("it collapses even without the attack")
    if adv:
        text = f"With the attack at smaller learning rates, clean / PGD accuracy is {each(adv)}, against {d_text}. "
        good = [v for v in adv if not collapsed(v) and not _falling(v) and vs_d(v) != "lower than"]
        if good:
            b = max(good, key=lambda v: v["robust_acc"])
            text += (f"At {b['lr']:g} its PGD accuracy is {vs_d(b)} (d)'s: with a smaller step, training through frozen "
                     f"batch norm gains robustness, so the collapse is at least partly a matter of step size.")
            summary.append(f"a smaller learning rate ({b['lr']:g}) avoids it")
        else:
            lower = all(vs_d(v) == "lower than" for v in adv)
            text += (("Its PGD accuracy is lower than (d)'s at every one" if lower else
                      "None of them keeps its clean accuracy and reaches (d)'s PGD accuracy")
                     + ": a smaller step does not rescue training through frozen batch norm.")
            summary.append("smaller learning rates do not rescue it")
        parts.append(text)
    if stats:
        text = (f"With the attack and the statistics of each batch instead of the frozen ones (batch norm in training "
                f"mode, as in (d), its scale and shift still frozen; its running statistics, used at test time, are "
                f"then those of the adversarial training batches, as in (d)), clean / PGD accuracy is {each(stats)}.")
        pairs = [(v, again[v["lr"]]) for v in stats if v["lr"] in again and collapsed(again[v["lr"]])]
        if pairs:
            saved_ = [v for v, _ in pairs if not collapsed(v)]
            lrs_ = ", ".join(f"{v['lr']:g}" for v, _ in pairs)
            if saved_:
                text += (f" At {lrs_}, where the control with frozen statistics collapses, it does not (one seed): the "
                         f"statistics the layers normalise with are the only difference, which points to the frozen "
                         f"statistics as what makes the control collapse.")
                summary.append(f"with the statistics of each batch (scale and shift still frozen) it does not collapse "
                               f"at {lrs_}, which points to the frozen statistics")
            else:
                text += (f" At {lrs_} it collapses as well: the frozen statistics alone do not explain the collapse, "
                         f"and trained scale and shift matter.")
                summary.append("with the statistics of each batch it collapses as well, so the frozen statistics alone "
                               "do not explain it")
        at_d = [v for v in stats if v["lr"] == d_lr and not collapsed(v)]
        if at_d:
            v = at_d[0]
            cmp = vs_d(v)
            se2 = 2 * math.sqrt((v["robust_acc"] * (1 - v["robust_acc"])
                                 + trained["robust_acc"] * (1 - trained["robust_acc"])) / v["n"])
            text += (f" At (d)'s learning rate its PGD accuracy is {cmp} (d)'s: {v['robust_acc']:.3f} against "
                     f"{trained['robust_acc']:.3f}, a difference of {abs(v['robust_acc'] - trained['robust_acc']):.3f} "
                     f"where two standard errors of the unpaired difference are {se2:.3f}.")
            final, n_img, paired = cmp, v["n"], False
            rows_ = {r["model"]: r for r in check["main"]["rows"]} if check is not None else {}
            d_row = rows_.get((labels or {}).get(f"lowrank_{trained['rank']}"))
            if d_row is not None and len(v.get("pgd_run_images", "")) == d_row["_run"].numel():
                p = compare_paired(_robust_mask(v["pgd_run_images"]), d_row["_run"].cpu())
                final, n_img, paired = p["verdict"], d_row["_run"].numel(), True
                text += (f" Image by image, on the attack check's {n_img:,} images under the same attack, it keeps "
                         f"{p['only_a']} images that (d) loses and loses {p['only_b']} that (d) keeps: {p['verdict']} "
                         f"(d)'s at two standard errors of the paired difference ({2 * p['se']:.3f}).")
            text += (" So (d)'s robustness needs its trained scale and shift as well (one seed each)."
                     if final == "lower than" else
                     f" So on these {n_img:,} test images trained scale and shift give (d) no robustness that we can "
                     f"tell apart from none (one seed each).")
            summary.append(f"at (d)'s learning rate its PGD accuracy is {final} (d)'s"
                           + (" (image by image)" if paired else ""))
        parts.append(text)
    if "loaded_from" in follow:
        env = follow.get("environment") or {}
        source = (f"frozen-batch-norm follow-up: loaded from {follow['loaded_from']} (made "
                  f"{follow['provenance']['date']} on {env.get('device_name', '?')}, {follow['seconds']:.0f} s)")
    else:
        source = "frozen-batch-norm follow-up: run now"
    return {"rows": rows, "verdict": " ".join(parts), "summary": "; ".join(summary), "source": source}


RUNS_HEADER = ["run", "starts from", "training attack", "norm, radius", "epochs", "learning rate", "what it asks"]


def runs_overview(cfg: CifarConfig) -> list[list]:
    """The chapter's runs at a glance, one row of :data:`RUNS_HEADER` each, read from ``cfg`` (what
    :meth:`CifarConfig.train_config` gives each kind): (a), (b), (c), (c'), (c''), (d) at its ranks, and the controls
    the config runs."""
    def radius(norm, eps):
        return f"l-inf {eps * 255:.0f}/255" if norm == "linf" else f"{norm} {eps:g}"

    def row(label, start, kind, asks, seed=None, lrs=(None,)):
        ts = [cfg.train_config(kind, lr=lr, seed=seed) for lr in lrs]  # one run per learning rate of a control
        t = ts[0]
        attack = {"none": "none", "fgsm_rs": "FGSM, random start", "pgd": f"PGD-{cfg.pgd_ft_steps}"}.get(t.attack, t.attack)
        return [label, start, attack, radius(t.norm, t.eps) if t.attack != "none" else "-", t.epochs,
                ", ".join(f"{u.lr:g}" for u in ts), asks]

    rows = [row("(a) clean", "initialisation", "clean", "the clean model: accurate, not robust"),
            row("(b) adversarial, from scratch", "initialisation", "adv", "the usual adversarial training"),
            row("(c) adversarial, from clean", "(a)'s weights", "ft", "the paper's experiment: what does it change?")]
    if cfg.pgd_ft_epochs > 0:
        rows.append(row("(c') PGD, from clean", "(a)'s weights", "pgd_ft", "(c) with a stronger training attack"))
    if cfg.other_norm_epochs > 0:
        rows.append(row("(c'') adversarial, from clean, other norm", "(a)'s weights", "other_ft", "(c) in the other norm"))
    ranks = ", ".join(str(r) for r in cfg.ranks)
    rows.append(row(f"(d) low-rank, ranks {ranks}", "(a)'s weights", "lowrank",
                    "(c) through rank-r updates of every layer" + (" (batch norm trained too)" if cfg.lowrank_train_bn else "")))
    if cfg.bn_only_control:
        rows.append(row("control of (d): batch norm only", "(a)'s weights", "lowrank", "what (d) gains without any low-rank update"))
    if cfg.frozen_bn_lrs:
        rows.append(row(f"control of (d): rank {max(cfg.ranks)}, batch norm frozen", "(a)'s weights", "lowrank",
                        "(d) without the batch-norm confound", lrs=cfg.frozen_bn_lrs))
        follow = frozen_bn_followup_runs(cfg)
        lrs = lambda attack, bn: tuple(lr for _, lr, a, b in follow if (a == "none") == (attack == "none") and b == bn)  # noqa
        t = cfg.train_config("lowrank")
        rows.append(["follow-up of that control: without attack", "(a)'s weights", "none", "-", t.epochs,
                     ", ".join(f"{lr:g}" for lr in lrs("none", "frozen")),
                     "does it collapse without the attack? (run cifar-frozen-bn)"])
        rows.append(row("follow-up of that control: the control again, and smaller learning rates", "(a)'s weights",
                        "lowrank", "is its collapse a matter of step size? (run cifar-frozen-bn)",
                        lrs=lrs(cfg.attack, "frozen")))
        rows.append(row("follow-up of that control: statistics of each batch, scale and shift frozen", "(a)'s weights",
                        "lowrank", "do the frozen statistics make it collapse? does (d) need its trained scale "
                        "and shift? (run cifar-frozen-bn)", lrs=lrs(cfg.attack, "batch_stats")))
    if cfg.direction_controls:
        rows.append(row("control: (c) at seed + 1", "(a)'s weights", "ft", "does another run of (c) change the same directions?",
                        seed=cfg.seed + 1))
        rows.append(row("control: (c)'s schedule without attack", "(a)'s weights", "ft_clean",
                        "which of (c)'s change is the attack's?"))
    return rows
