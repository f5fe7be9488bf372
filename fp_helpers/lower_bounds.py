"""The lower-bound experiment: every low-complexity model class against the adversarially trained network.

``python -m fp_helpers run lower-bounds --profile quick|full [--seed N] [--set key=value ...] --out FILE.json``

One run draws the sparse-coding data of the synthetic profile, trains the two-layer network (clean, then
FGM from the clean weights, exactly as in the adversarial-training chapter), and trains every baseline of
:mod:`fp_helpers.baselines` cleanly and adversarially on one fixed training set. All models are then
attacked with the same PGD on the same held-out points. Baselines are adversarially trained with PGD
(stronger than the two-layer network's FGM), so they get the better training of the two.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch

from . import baselines as bl
from .attacks import AttackSpec, accuracy, robust_accuracy, robust_curve_nested
from .experiments import PROFILE_PRESETS, SyntheticConfig, setup, train_adversarial, train_clean
from .networks import TwoLayerNet
from .checkpoints import open_run
from .provenance import stamp
from .runs import apply_overrides, get_profile
from .training import TrainConfig, train


@dataclass(frozen=True)
class LowerBoundConfig:
    n_train: int = 3000  # one fixed training set for every baseline
    degrees: tuple = (1, 2, 3, 4)
    ridge: float = 1e-3  # kernel ridge, relative to the mean of the Gram diagonal
    adv_rounds: int = 2  # kernel adversarial training: PGD on the training set + exact refit, this many times
    adv_attack_steps: int = 7  # PGD steps of the baselines' adversarial training
    linear_steps: int = 3000
    linear_lr: float = 1.0
    lin_steps: int = 3000  # linearised network (NTK regime), SGD steps
    lin_adv_steps: int = 1500  # ... then PGD training from the clean solution
    lin_lr: float = 1.0
    lb_batch: int = 128
    lb_eval_n: int = 1000  # held-out points for the numbers at tau (PGD with restarts)
    curve_n: int = 500  # held-out points for the robust-accuracy curves
    curve_restarts: int = 1
    lb_radii: tuple = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)
    sparse_poly_degree: int = 3
    models: tuple = ("linear", "poly", "ntk", "ntk_linearised", "sparse_poly", "two_layer")

    def validate(self) -> "LowerBoundConfig":
        for p in self.degrees:
            bl.check_degree(p)
        bl.check_degree(self.sparse_poly_degree)
        for k in self.models:
            bl.check_kind(k)
        for name in ("n_train", "adv_rounds", "adv_attack_steps", "linear_steps", "lin_steps", "lin_adv_steps", "lb_batch",
                     "lb_eval_n", "curve_n", "curve_restarts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("ridge", "linear_lr", "lin_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not self.lb_radii or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                        for x in self.lb_radii):
            raise ValueError(f"lb_radii must be a non-empty list of finite numbers, got {self.lb_radii!r}")
        r = [float(x) for x in self.lb_radii]
        if any(b <= a for a, b in zip(r, r[1:])) or r[0] < 0:
            raise ValueError(f"lb_radii must be increasing and >= 0, got {self.lb_radii!r}")
        return self


LB_PRESETS: dict[str, dict] = {
    "full": {},
    "quick": dict(n_train=600, linear_steps=500, lin_steps=600, lin_adv_steps=300, adv_rounds=1, adv_attack_steps=5, lb_eval_n=300,
                  curve_n=200, lb_radii=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6)),
}


def lower_bounds_config(profile: str | None = None, overrides=None, seed: int | None = None):
    """``(SyntheticConfig, LowerBoundConfig)`` of a profile; each ``key=value`` goes to the config that has
    the key (unknown keys raise ``ValueError`` naming both lists)."""
    profile = get_profile(profile)
    syn = SyntheticConfig(**PROFILE_PRESETS[profile])
    lb = LowerBoundConfig(**LB_PRESETS[profile])
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        from .runs import _split

        items = [_split(o) for o in (overrides or [])]
    syn_keys = {f.name for f in fields(SyntheticConfig)}
    lb_keys = {f.name for f in fields(LowerBoundConfig)}
    for key, value in items:
        if key in lb_keys:
            lb = apply_overrides(lb, {key: value})
        elif key in syn_keys:
            syn = apply_overrides(syn, {key: value})
        else:
            raise ValueError(f"unknown config key {key!r}; allowed keys are: {', '.join(sorted(syn_keys | lb_keys))}")
    if seed is not None:
        syn = apply_overrides(syn, {"seed": int(seed)})
    return syn.validate(), lb.validate()


def evaluate_model(model, x, y, xc, yc, tau: float, spec: AttackSpec, radii, curve_spec: AttackSpec,
                   seed: int) -> dict:
    """Clean accuracy, PGD robust accuracy at ``tau`` and the nested robust curve; exact numbers for linear."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = {"clean_acc": accuracy(model, x, y),
           "robust_acc": robust_accuracy(model, x, y, tau, spec, generator=g),
           "curve": robust_curve_nested(model, xc, yc, radii, curve_spec, generator=g)}
    if isinstance(model, bl.LinearModel):
        out["exact_robust_acc"] = bl.linear_exact_robust_accuracy(model, x, y, tau, spec.norm)
        out["exact_curve"] = [bl.linear_exact_robust_accuracy(model, xc, yc, float(r), spec.norm) for r in radii]
    return out


def _state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run_lower_bounds(syn: SyntheticConfig, lb: LowerBoundConfig, device=None, progress=None,
                     profile: str | None = None, keep_models: bool = False, checkpoint_dir=None) -> dict:
    """Train and attack every model; returns the JSON-ready dict (and ``"_models"`` when ``keep_models``).

    Each stage (the two-layer network, the linear models, each kernel, the linearised network, the sparse
    polynomial) is checkpointed when it completes (:mod:`fp_helpers.checkpoints`; ``checkpoint_dir`` as
    there, ``False``: none): an interrupted run resumes after its last completed stage with the same numbers.
    """
    if not isinstance(syn, SyntheticConfig) or not isinstance(lb, LowerBoundConfig):
        raise TypeError(f"syn and lb must be a SyntheticConfig and a LowerBoundConfig (see lower_bounds_config), "
                        f"got {type(syn).__name__} and {type(lb).__name__}")
    syn, lb = syn.validate(), lb.validate()
    for name in ("lb_eval_n", "curve_n"):
        if getattr(lb, name) > syn.eval_n:
            raise ValueError(f"{name}={getattr(lb, name)} is more than the eval_n={syn.eval_n} held-out points drawn; "
                             f"allowed: {name} <= eval_n (raise eval_n or lower {name})")
    t0 = time.perf_counter()
    s = setup(syn, device)
    dev = s.device
    ck = open_run("lower-bounds", (syn, lb), checkpoint_dir, dev)
    dist, tau, norm = s.dist, syn.tau, syn.norm
    spec = syn.eval_attack()
    curve_spec = AttackSpec("pgd", norm, syn.pgd_steps, lb.curve_restarts)
    radii = [float(r) for r in lb.lb_radii]
    x, y = s.x_eval[: lb.lb_eval_n], s.y_eval[: lb.lb_eval_n]
    xc, yc = s.x_eval[: lb.curve_n], s.y_eval[: lb.curve_n]
    gen_data = torch.Generator(device=dev).manual_seed(syn.seed + 30_000)
    X, Y = dist.sample(lb.n_train, gen_data)
    gen = torch.Generator(device=dev).manual_seed(syn.seed + 40_000)

    result: dict = stamp({}, "lower-bounds", (syn, lb), profile, dev)
    result.update({"tau": tau, "norm": norm, "attack": spec.describe(tau),
                   "curve_attack": curve_spec.describe(float("nan")).replace("eps=nan", "each radius"),
                   "radii": radii, "n_train": lb.n_train})
    models: dict = {}

    def record(name: str, model, seconds: float):
        models[name] = model
        r = evaluate_model(model, x, y, xc, yc, tau, spec, radii, curve_spec, syn.seed + 50_000)
        r["train_seconds"] = round(seconds, 2)
        result[name] = r

    def rng() -> dict:
        return {"setup": s.gen.get_state(), "gen": gen.get_state(), "torch": torch.get_rng_state()}

    def set_rng(state: dict) -> None:
        s.gen.set_state(state["setup"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch"])

    def stage(unit: str, fit, rebuild, extra=None):
        """Run ``fit()`` (which calls ``record``) and checkpoint what it recorded, or restore it:
        ``rebuild(states)`` gives the models back from their state dicts."""
        saved = ck.load(unit)
        if saved is not None:
            result.update(saved["metrics"])
            models.update(rebuild(saved["states"]))
            set_rng(saved["rng"])
            return saved.get("extra")
        before = set(models)
        out = fit()
        names = [n for n in models if n not in before]
        ck.save(unit, {"metrics": {n: result[n] for n in names if n in result},
                       "states": {n: _state(models[n]) for n in names}, "rng": rng(),
                       "extra": out})
        return out

    # The two-layer network first: its initialisation defines the NTK.
    def fit_two_layer():
        t = time.perf_counter()
        clean, W0, _ = train_clean(s, progress)
        adv, _ = train_adversarial(s, clean, W0, progress=progress)
        t_two = time.perf_counter() - t
        if "two_layer" in lb.models:
            record("two_layer", clean, t_two)
            record("two_layer_adv", adv, t_two)
        return {"W0": W0.cpu()}

    def rebuild_two_layer(states):
        out = {}
        for name, st in states.items():
            net = TwoLayerNet(syn.d, syn.net_config(), weight=st["W"].to(dev))
            net.beta = syn.beta
            out[name] = net
        return out

    W0 = stage("two_layer", fit_two_layer, rebuild_two_layer)["W0"].to(dev)
    init_net = TwoLayerNet(syn.d, syn.net_config(), weight=W0)

    def sgd(model, steps, lr, attack="none", start=None):
        if start is not None:
            model.load_state_dict(start.state_dict())
        t = time.perf_counter()
        cfg = TrainConfig(steps=steps, batch=lb.lb_batch, lr=lr, attack=attack, tau=tau, norm=norm,
                          pgd_steps=lb.adv_attack_steps, log_every=10**9)
        train(model, dist, cfg, gen, data=(X, Y), progress=progress, desc=f"{type(model).__name__} {attack}")
        return time.perf_counter() - t

    def rebuild_with(make):
        def rebuild(states):
            out = {}
            for name, st in states.items():
                m = make(name, st)
                m.load_state_dict({k: v.to(dev) for k, v in st.items()})
                out[name] = m
            return out
        return rebuild

    if "linear" in lb.models:
        def fit_linear():
            lin = bl.LinearModel(syn.d, device=dev)
            record("linear", lin, sgd(lin, lb.linear_steps, lb.linear_lr))
            lin_adv = bl.LinearModel(syn.d, device=dev)  # FGM is the exact worst case of a linear model
            record("linear_adv", lin_adv, sgd(lin_adv, lb.linear_steps, lb.linear_lr, "fgm", start=lin))
            best = bl.LinearModel(syn.d, device=dev)
            with torch.no_grad():
                best.w.copy_(dist.u)
            record("linear_best", best, 0.0)

        stage("linear", fit_linear, rebuild_with(lambda name, st: bl.LinearModel(syn.d, device=dev)))

    def kernel_stage(kernel, name):
        def fit():
            t = time.perf_counter()
            record(name, bl.fit_kernel_ridge(kernel, X, Y, lb.ridge), time.perf_counter() - t)
            t = time.perf_counter()
            m = bl.fit_kernel_adversarial(kernel, X, Y, tau, norm, lb.ridge, lb.adv_rounds, lb.adv_attack_steps, gen)
            record(name + "_adv", m, time.perf_counter() - t)

        stage(name, fit, lambda states: {n: bl.KernelModel(kernel, st["centres"].to(dev), st["alpha"].to(dev))
                                         for n, st in states.items()})

    if "poly" in lb.models:
        scale = (X * X).sum(1).mean().item()
        for p in lb.degrees:
            kernel_stage(bl.PolyKernel(p, scale), f"poly_{p}")
    if "ntk" in lb.models:
        k = bl.NTKKernel(init_net)
        k.scale = k.mean_diag(X)
        kernel_stage(k, "ntk")
    if "ntk_linearised" in lb.models:
        def fit_linearised():
            ln = bl.LinearisedNet(init_net, x_ref=X)
            record("ntk_linearised", ln, sgd(ln, lb.lin_steps, lb.lin_lr))
            ln_adv = bl.LinearisedNet(init_net, x_ref=X)
            record("ntk_linearised_adv", ln_adv, sgd(ln_adv, lb.lin_adv_steps, lb.lin_lr, "pgd", start=ln))

        stage("ntk_linearised", fit_linearised,
              rebuild_with(lambda name, st: bl.LinearisedNet(init_net, x_ref=X)))
    if "sparse_poly" in lb.models:
        p = lb.sparse_poly_degree
        stage(f"sparse_poly_{p}", lambda: record(f"sparse_poly_{p}", bl.SparsePolynomial(dist, p).to(dev), 0.0),
              rebuild_with(lambda name, st: bl.SparsePolynomial(dist, p).to(dev)))

    result["seconds"] = round(time.perf_counter() - t0, 2)
    ck.done()
    if keep_models:
        result["_models"] = models
        result["_setup"] = s
    return result


MODEL_LABELS = {
    "two_layer": "two-layer net, clean", "two_layer_adv": "two-layer net, FGM-trained",
    "linear": "linear (logistic)", "linear_adv": "linear, adversarial", "linear_best": "best linear (w = u)",
    "ntk": "NTK kernel ridge", "ntk_adv": "NTK kernel, adversarial",
    "ntk_linearised": "linearised net", "ntk_linearised_adv": "linearised net, PGD-trained",
}


def model_label(name: str) -> str:
    if name in MODEL_LABELS:
        return MODEL_LABELS[name]
    if name.startswith("poly_"):
        p = name.split("_")[1]
        return f"poly kernel, degree {p}" + (", adversarial" if name.endswith("_adv") else "")
    if name.startswith("sparse_poly_"):
        return f"sparse degree-{name.split('_')[2]} polynomial (knows M)"
    return name


def model_names(result: dict) -> list[str]:
    return [k for k, v in result.items() if isinstance(v, dict) and "robust_acc" in v]


def table_rows(result: dict) -> list[list]:
    """``[model, clean acc, PGD acc at tau, gap to the FGM-trained net in points]`` for every model."""
    ref = result["two_layer_adv"]["robust_acc"] if "two_layer_adv" in result else float("nan")
    rows = []
    for name in model_names(result):
        r = result[name]
        rows.append([model_label(name), f"{r['clean_acc']:.3f}", f"{r['robust_acc']:.3f}",
                     "" if name == "two_layer_adv" else f"{100 * (ref - r['robust_acc']):+.1f}"])
    return rows
