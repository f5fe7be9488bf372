"""The CIFAR-10 experiment behind the chapter "Purification on CIFAR-10" and ``run cifar``.

``python -m fp_helpers run cifar --profile quick|full [--data PATH] [--set key=value ...] --out FILE.json``

From one random initialisation: (a) clean training; (b) adversarial training from scratch (same
initialisation); (c) adversarial training *started from the clean model*; (d) the same as (c) but
every conv / linear weight restricted to ``W_clean + A B`` of rank r. All are evaluated with the same
PGD on the same test images; the weights are compared layer by layer (cosines, the principle's ratio,
relative change) and the first-layer filters and adversarial perturbations are analysed in frequency.
"""

from __future__ import annotations

import copy
import pickle
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import cifar, cifar_models as cm, purification as pur
from .cifar_train import CifarTrainConfig, evaluate_cifar, train_cifar
from .runs import apply_overrides, environment, get_device, get_profile, seed_everything


@dataclass(frozen=True)
class CifarConfig:
    model: str = "auto"  # "auto": PreAct ResNet-18 on a GPU, the small ResNet on a CPU
    width: int = 16  # small ResNet width (PreAct ResNet-18 keeps its standard 64)
    n_train: int = 0  # 0: every training image found (all 50,000 on Colab; the 8,380-image subset here)
    n_test: int = 0
    holdout: int = 500  # training images held out for the catastrophic-overfitting check
    eval_n: int = 500  # test images attacked for the reported numbers
    clean_epochs: int = 15
    adv_epochs: int = 15  # (b) adversarial training from scratch
    ft_epochs: int = 5  # (c) adversarial training from the clean model (and (d))
    ranks: tuple = (1, 4, 8)  # (d) low-rank adversarial training from the clean model
    batch_size: int = 128
    lr: float = 0.2
    ft_lr: float = 0.05
    lowrank_lr: float = 0.05
    lowrank_train_bn: bool = True  # BatchNorm scale/shift/statistics trained in (d) (frozen: collapse to chance)
    attack: str = "fgsm_rs"  # training attack of (b), (c), (d)
    norm: str = "linf"
    eps: float = 8 / 255
    eval_pgd_steps: int = 50
    eval_restarts: int = 2
    seed: int = 0

    def validate(self) -> "CifarConfig":
        allowed = ("auto",) + tuple(cm.MODELS)
        if self.model not in allowed:
            raise ValueError(f"unknown model {self.model!r}; allowed: {', '.join(allowed)}")
        for name in ("n_train", "n_test", "holdout", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("width", "eval_n", "clean_epochs", "adv_epochs", "ft_epochs", "batch_size",
                     "eval_pgd_steps", "eval_restarts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for r in self.ranks:
            if not isinstance(r, int) or r < 1:
                raise ValueError(f"ranks must be positive ints, got {self.ranks!r}")
        for name in ("lr", "ft_lr", "lowrank_lr", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        self.train_config("adv")  # attack / norm checks
        return self

    def model_name(self, device) -> str:
        if self.model != "auto":
            return self.model
        return "preact_resnet18" if torch.device(device).type == "cuda" else "small_resnet"

    def model_kw(self, device) -> dict:
        return {"width": self.width} if self.model_name(device) == "small_resnet" else {}

    def train_config(self, kind: str) -> CifarTrainConfig:
        """``kind``: "clean", "adv" (from scratch), "ft" (from clean) or "lowrank"."""
        epochs = {"clean": self.clean_epochs, "adv": self.adv_epochs, "ft": self.ft_epochs,
                  "lowrank": self.ft_epochs}[kind]
        lr = {"clean": self.lr, "adv": self.lr, "ft": self.ft_lr, "lowrank": self.lowrank_lr}[kind]
        return CifarTrainConfig(epochs=epochs, batch_size=self.batch_size, lr=lr,
                                attack="none" if kind == "clean" else self.attack, norm=self.norm, eps=self.eps,
                                eval_pgd_steps=10, co_check_n=self.holdout, seed=self.seed).validate()


CIFAR_PRESETS: dict[str, dict] = {
    "full": {},
    "quick": dict(width=8, n_train=1000, n_test=200, holdout=100, eval_n=200, clean_epochs=3, adv_epochs=2,
                  ft_epochs=1, ranks=(1, 4), lr=0.1, eval_pgd_steps=10, eval_restarts=1),
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
    xa = pgd(model, x, y, cfg.eps, cfg.norm, steps=steps, restarts=1, generator=g, clip=(0.0, 1.0))
    return (xa - x).detach()


def run_cifar(cfg: CifarConfig, data_dir=None, device=None, progress=None, profile: str | None = None,
              keep_models: bool = False) -> dict:
    cfg = cfg.validate()
    t0 = time.perf_counter()
    dev = get_device(device)
    seed_everything(cfg.seed, dev)
    data = cifar.load_cifar10(data_dir, progress=progress)
    if cfg.n_train or cfg.n_test:
        data = cifar.subset(data, cfg.n_train or None, cfg.n_test or None, seed=cfg.seed)
    n_tr = data.n_train
    if cfg.holdout >= n_tr:
        raise ValueError(f"holdout={cfg.holdout} must be smaller than the {n_tr} training images")
    x_tr, y_tr = data.x_train[: n_tr - cfg.holdout].to(dev), data.y_train[: n_tr - cfg.holdout].to(dev)
    x_val, y_val = data.x_train[n_tr - cfg.holdout:].to(dev), data.y_train[n_tr - cfg.holdout:].to(dev)
    n_eval = min(cfg.eval_n, data.n_test)
    x_te, y_te = data.x_test[:n_eval].to(dev), data.y_test[:n_eval].to(dev)
    name, kw = cfg.model_name(dev), cfg.model_kw(dev)

    def train(model, kind, tag):
        t = time.perf_counter()
        hist = train_cifar(model, x_tr, y_tr, cfg.train_config(kind), x_val=x_val, y_val=y_val,
                           augment=cifar.augment, progress=progress, device=dev)
        hist["wall_seconds"] = round(time.perf_counter() - t, 1)
        return hist

    def evaluate(model):
        g = torch.Generator(device=dev).manual_seed(cfg.seed + 99)
        return evaluate_cifar(model, x_te, y_te, cfg.eps, cfg.norm, cfg.eval_pgd_steps, cfg.eval_restarts,
                              generator=g)

    init = cm.make_model(name, seed=cfg.seed, **kw).to(dev)
    init.eval()
    models, hists, res = {"init": init}, {}, {}
    clean = copy.deepcopy(init)
    hists["clean"] = train(clean, "clean", "clean")
    scratch = copy.deepcopy(init)
    hists["adv_scratch"] = train(scratch, "adv", "adversarial from scratch")
    ft = copy.deepcopy(clean)
    hists["adv_from_clean"] = train(ft, "ft", "adversarial from clean")
    models.update(clean=clean, adv_scratch=scratch, adv_from_clean=ft)
    for key in ("init", "clean", "adv_scratch", "adv_from_clean"):
        res[key] = evaluate(models[key])
        if key in hists:
            res[key]["history"] = hists[key]
    low = {}
    for r in cfg.ranks:
        lr_model = cm.apply_low_rank(copy.deepcopy(clean), r, generator=torch.Generator().manual_seed(cfg.seed),
                                     train_bn=cfg.lowrank_train_bn)
        h = train(lr_model, "lowrank", f"low rank {r}")
        low[r] = lr_model
        res[f"lowrank_{r}"] = {**evaluate(lr_model), "rank": r, "history": h,
                              "trainable_params": sum(p.numel() for p in lr_model.parameters() if p.requires_grad),
                              "low_rank_params": sum(p.numel() for p in cm.low_rank_parameters(lr_model)),
                              "full_params": sum(p.numel() for p in clean.parameters())}
    rows = layer_table(init, clean, scratch, ft)
    pert = {k: perturbations(models[k], x_te[:16], y_te[:16], cfg) for k in ("clean", "adv_from_clean")}
    result = {
        "config": asdict(cfg), "environment": environment(profile, device=dev), "device": str(dev),
        "model": name, "data": data.describe(), "n_train": int(x_tr.shape[0]), "n_holdout": cfg.holdout,
        "n_test": int(n_eval), "is_subset": data.is_subset,
        "attack": f"PGD-{cfg.eval_pgd_steps} x{cfg.eval_restarts}, {cfg.norm}, eps={cfg.eps:.5f}",
        "experiments": res, "layers": rows, "layer_medians": layer_medians(rows),
        "first_layer_nondc_share": first_layer_analysis({k: models[k] for k in
                                                         ("init", "clean", "adv_scratch", "adv_from_clean")}),
        "perturbation_highfreq_share": {k: pur.spectral_energy_share(v, 0.25).median().item()
                                        for k, v in pert.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if keep_models:
        result["_models"] = {**models, **{f"lowrank_{r}": m for r, m in low.items()}}
        result["_perturbations"] = pert
        result["_x"] = x_te[:16]
    return result


# ------------------------------------------------------------------------------------------------ persistence

MODEL_KEYS = ("init", "clean", "adv_scratch", "adv_from_clean")


def save_run(result: dict, folder) -> None:
    """Write ``result.json`` (numbers, config, environment) and one ``<key>.pt`` state dict per model
    (atomic writes: temporary file, then rename)."""
    import os
    import tempfile
    from pathlib import Path

    from .__main__ import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, model in result["_models"].items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, folder / f"{key}.pt")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".perturbations.", suffix=".tmp")
    os.close(fd)
    # clone: a slice saved as is would carry its whole storage (all the test images)
    tensors = {k: v.cpu().clone() for k, v in result["_perturbations"].items()}
    torch.save(tensors | {"x": result["_x"].cpu().clone()}, tmp)
    os.replace(tmp, folder / "perturbations.pt")
    write_json_atomic(folder / "result.json", {k: v for k, v in result.items() if not k.startswith("_")})


def load_run(folder, cfg: CifarConfig, device=None, data_counts: tuple[int, int] | None = None) -> dict | None:
    """The saved run in ``folder`` with its models, or ``None`` when there is none. A run saved with another
    config, another model (``model="auto"`` resolves by device) or, given ``data_counts = (train, test)`` of
    the data found now, other data sizes is refused (``ValueError``), so a stale result is never shown as
    current. A missing or unreadable model file is refused too."""
    import json
    from pathlib import Path

    folder = Path(folder)
    if not (folder / "result.json").exists():
        return None
    result = json.loads((folder / "result.json").read_text())
    saved, now = result["config"], json.loads(json.dumps(asdict(cfg.validate())))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"the run saved in {folder} used another config ({', '.join(diff)} differ); "
                         f"recompute it (delete the folder or pass another one)")
    dev = get_device(device)
    if result["model"] != cfg.model_name(dev):
        raise ValueError(f"the run saved in {folder} trained {result['model']}, but on {dev} this config trains "
                         f"{cfg.model_name(dev)}")
    if data_counts is not None and data_counts != (result["n_train"] + result["n_holdout"], result["n_test"]):
        raise ValueError(f"the run saved in {folder} used {result['n_train'] + result['n_holdout']} train / "
                         f"{result['n_test']} test images, the data found now gives {data_counts[0]} / {data_counts[1]}")
    name, kw = result["model"], ({"width": cfg.width} if result["model"] == "small_resnet" else {})
    models = {}
    for key in list(MODEL_KEYS) + [f"lowrank_{r}" for r in cfg.ranks]:
        m = cm.make_model(name, seed=cfg.seed, **kw)
        if key.startswith("lowrank_"):
            cm.apply_low_rank(m, int(key.split("_")[1]), generator=torch.Generator().manual_seed(cfg.seed),
                              train_bn=cfg.lowrank_train_bn)
        try:
            state = torch.load(folder / f"{key}.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise ValueError(f"the run saved in {folder} is incomplete or corrupted ({key}.pt: {e})") from e
        m.load_state_dict(state)
        models[key] = m.to(dev, memory_format=torch.channels_last).eval()  # as trained: same kernels, same numbers
    try:
        pert = torch.load(folder / "perturbations.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise ValueError(f"the run saved in {folder} is incomplete or corrupted (perturbations.pt: {e})") from e
    result["_models"], result["_x"] = models, pert.pop("x").to(dev)
    result["_perturbations"] = {k: v.to(dev) for k, v in pert.items()}
    result["loaded_from"] = str(folder)
    return result


def load_or_run(cfg: CifarConfig, folder=None, save: bool = False, **run_kw) -> dict:
    """Load the run saved in ``folder`` for this exact config, else run it (and save it when ``save``)."""
    if folder is not None:
        try:
            counts = None
            if (Path(folder) / "result.json").exists():  # check the data it would be compared with
                d = cifar.load_cifar10(run_kw.get("data_dir"))
                if cfg.n_train or cfg.n_test:
                    d = cifar.subset(d, cfg.n_train or None, cfg.n_test or None, seed=cfg.seed)
                counts = (d.n_train, min(cfg.eval_n, d.n_test))
            loaded = load_run(folder, cfg, run_kw.get("device"), data_counts=counts)
        except ValueError as e:
            import warnings

            warnings.warn(f"{e} -- recomputing now", stacklevel=2)
            loaded = None
        if loaded is not None:
            return loaded
    result = run_cifar(cfg, keep_models=True, **run_kw)
    if save and folder is not None:
        save_run(result, folder)
    return result
