"""The lower-bound experiment: every low-complexity model class against the adversarially trained network.

``python -m fp_helpers run lower-bounds --profile quick|full [--seed N] [--set key=value ...] --out FILE.json``

One run draws the sparse-coding data of the synthetic profile, trains the two-layer network (clean, then
FGM from the clean weights, exactly as in the adversarial-training chapter), and trains every baseline of
:mod:`fp_helpers.baselines` cleanly and adversarially on one fixed training set. All models are then
attacked with the same PGD on the same held-out points. Baselines are adversarially trained with PGD
(stronger than the two-layer network's FGM), so they get the better training of the two.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import dataclass, fields

import torch

from . import baselines as bl
from . import parallel
from .attacks import AttackSpec, accuracy, robust_accuracy, robust_curve_nested
from .exercises import margin_edge
from .experiments import PROFILE_PRESETS, SyntheticConfig, initial_weights, setup, train_adversarial, train_clean
from .networks import TwoLayerNet
from .checkpoints import open_run
from .provenance import config_dict, stamp
from .runs import apply_overrides, get_device, get_profile
from .training import TrainConfig, train


@dataclass(frozen=True)
class LowerBoundConfig:
    n_train: int = 3000  # one fixed training set for every baseline
    degrees: tuple = (1, 2, 3, 4)
    ridge: float = 1e-3  # kernel ridge, relative to the mean of the Gram diagonal
    adv_rounds: int = 2  # kernel adversarial training: PGD on the training set + exact refit, this many times
    adv_attack_steps: int = 7  # PGD steps of the baselines' adversarial training
    adv_radius_mults: tuple = (2.0, 4.0)  # each kernel is also trained adversarially at these multiples of tau
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
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                   for x in self.adv_radius_mults):
            raise ValueError(f"adv_radius_mults must be finite numbers > 0 (may be empty), got {self.adv_radius_mults!r}")
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
                   seed: int, curve: bool = True) -> dict:
    """Clean accuracy, PGD robust accuracy at ``tau`` and (``curve``) the nested robust curve; exact numbers for
    linear. The curve is attacked after ``tau``, so leaving it out changes no other number."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = {"clean_acc": accuracy(model, x, y), "robust_acc": robust_accuracy(model, x, y, tau, spec, generator=g)}
    if curve:
        out["curve"] = robust_curve_nested(model, xc, yc, radii, curve_spec, generator=g)
    if isinstance(model, bl.LinearModel):
        out["exact_robust_acc"] = bl.linear_exact_robust_accuracy(model, x, y, tau, spec.norm)
        if curve:
            out["exact_curve"] = [bl.linear_exact_robust_accuracy(model, xc, yc, float(r), spec.norm) for r in radii]
    return out


def _state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class _Context:
    """What every stage reads: the setup (distribution, held-out points), the training set, the attacks.
    Built from the configs alone, so a worker process builds the same one (:func:`_context`)."""

    syn: SyntheticConfig
    lb: LowerBoundConfig
    s: object  # experiments.Setup
    X: torch.Tensor
    Y: torch.Tensor
    spec: AttackSpec
    curve_spec: AttackSpec

    def evaluate(self, model, curve: bool = True) -> dict:
        syn, lb, s = self.syn, self.lb, self.s
        return evaluate_model(model, s.x_eval[: lb.lb_eval_n], s.y_eval[: lb.lb_eval_n], s.x_eval[: lb.curve_n],
                              s.y_eval[: lb.curve_n], syn.tau, self.spec, [float(r) for r in lb.lb_radii],
                              self.curve_spec, syn.seed + 50_000, curve=curve)


def training_set(s, syn: SyntheticConfig, lb: LowerBoundConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The one fixed training set every baseline of a run sees: ``lb.n_train`` points of the run's distribution
    (``s``: its setup) from their own seed."""
    return s.dist.sample(lb.n_train, torch.Generator(device=s.device).manual_seed(syn.seed + 30_000))


def _context(syn: SyntheticConfig, lb: LowerBoundConfig, device=None) -> _Context:
    s = setup(syn, device)
    X, Y = training_set(s, syn, lb)
    return _Context(syn, lb, s, X, Y, syn.eval_attack(),
                    AttackSpec("pgd", syn.norm, syn.pgd_steps, lb.curve_restarts))


def _stages(lb: LowerBoundConfig) -> list[str]:
    """The baseline stages of a run, in the order of the result (each one a checkpointed unit)."""
    out = ["linear"] if "linear" in lb.models else []
    out += [f"poly_{p}" for p in lb.degrees] if "poly" in lb.models else []
    out += [k for k in ("ntk", "ntk_linearised") if k in lb.models]
    return out + ([f"sparse_poly_{lb.sparse_poly_degree}"] if "sparse_poly" in lb.models else [])


def stage_seed(syn: SyntheticConfig, unit: str) -> int:
    """The seed of a baseline stage's generator: its own, so a model's numbers do not depend on which other
    models the run trains, nor on the order or the process they are trained in."""
    return syn.seed + 40_000 + zlib.crc32(unit.encode()) % 10_000


def _kernel(c: _Context, unit: str, init_net: TwoLayerNet):
    if unit == "ntk":
        k = bl.NTKKernel(init_net)
        k.scale = k.mean_diag(c.X)
        return k
    return bl.PolyKernel(int(unit.split("_")[1]), (c.X * c.X).sum(1).mean().item())


def _make(c: _Context, unit: str, init_net: TwoLayerNet, name: str, state: dict | None = None):
    """An empty model of ``name`` in ``unit`` (a kernel model needs its fitted ``state``)."""
    dev, syn = c.s.device, c.syn
    if unit == "linear":
        return bl.LinearModel(syn.d, device=dev)
    if unit == "ntk_linearised":
        return bl.LinearisedNet(init_net, x_ref=c.X)
    if unit.startswith("sparse_poly_"):
        return bl.SparsePolynomial(c.s.dist, c.lb.sparse_poly_degree).to(dev)
    return bl.KernelModel(_kernel(c, unit, init_net), state["centres"].to(dev), state["alpha"].to(dev))


def _fit_stage(c: _Context, unit: str, init_net: TwoLayerNet | None, seed: int | None = None) -> dict:
    """Train the models of one baseline stage from its own seed (``seed`` overrides :func:`stage_seed`), and
    attack them: ``{"metrics", "states"}``."""
    syn, lb, X, Y, dev = c.syn, c.lb, c.X, c.Y, c.s.device
    seed = stage_seed(syn, unit) if seed is None else seed
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    fitted: dict = {}  # name -> (model, training seconds)

    def sgd(model, steps, lr, attack="none", start=None):
        if start is not None:
            model.load_state_dict(start.state_dict())
        t = time.perf_counter()
        cfg = TrainConfig(steps=steps, batch=lb.lb_batch, lr=lr, attack=attack, tau=syn.tau, norm=syn.norm,
                          pgd_steps=lb.adv_attack_steps, log_every=10**9)
        train(model, c.s.dist, cfg, gen, data=(X, Y), progress=False, desc=f"{type(model).__name__} {attack}")
        return model, time.perf_counter() - t

    if unit == "linear":
        fitted["linear"] = sgd(_make(c, unit, init_net, "linear"), lb.linear_steps, lb.linear_lr)
        # FGM is the exact worst case of a linear model
        fitted["linear_adv"] = sgd(_make(c, unit, init_net, "linear_adv"), lb.linear_steps, lb.linear_lr, "fgm",
                                   start=fitted["linear"][0])
        best = _make(c, unit, init_net, "linear_best")
        with torch.no_grad():
            best.w.copy_(c.s.dist.u)
        fitted["linear_best"] = (best, 0.0)
    elif unit == "ntk_linearised":
        ln = sgd(_make(c, unit, init_net, unit), lb.lin_steps, lb.lin_lr)
        fitted[unit] = ln
        fitted[unit + "_adv"] = sgd(_make(c, unit, init_net, unit), lb.lin_adv_steps, lb.lin_lr, "pgd", start=ln[0])
    elif unit.startswith("sparse_poly_"):
        fitted[unit] = (_make(c, unit, init_net, unit), 0.0)
    else:  # a kernel: ridge, then adversarial training with exact refits
        kernel = _kernel(c, unit, init_net)
        t = time.perf_counter()
        fitted[unit] = (bl.fit_kernel_ridge(kernel, X, Y, lb.ridge), time.perf_counter() - t)
        t = time.perf_counter()
        m = bl.fit_kernel_adversarial(kernel, X, Y, syn.tau, syn.norm, lb.ridge, lb.adv_rounds, lb.adv_attack_steps,
                                      gen)
        fitted[unit + "_adv"] = (m, time.perf_counter() - t)
    metrics = {}
    for name, (model, seconds) in fitted.items():
        metrics[name] = c.evaluate(model)
        metrics[name]["train_seconds"] = round(seconds, 2)
    out = {"metrics": metrics, "states": {name: _state(model) for name, (model, _) in fitted.items()}}
    if lb.adv_radius_mults and (unit.startswith("poly_") or unit == "ntk"):  # the same training, larger radii
        sweep = []
        for mult in lb.adv_radius_mults:
            t = time.perf_counter()
            m = bl.fit_kernel_adversarial(kernel, X, Y, mult * syn.tau, syn.norm, lb.ridge, lb.adv_rounds,
                                          lb.adv_attack_steps, gen)
            sweep.append({"radius_mult": float(mult), "train_radius": mult * syn.tau, **c.evaluate(m, curve=False),
                          "train_seconds": round(time.perf_counter() - t, 2)})
        out["sweep"] = {unit + "_adv": sweep}
    return out


def _two_layer_stage(c: _Context, progress=None) -> dict:
    """The two-layer network: clean training, then FGM training from the clean weights, both attacked like the
    baselines. ``{"metrics", "states", "W0", "gen"}`` (``gen``: the training generator's state after it)."""
    s = c.s
    t = time.perf_counter()
    clean, W0, _ = train_clean(s, progress)
    adv, _ = train_adversarial(s, clean, W0, progress=progress)
    t_two = time.perf_counter() - t
    out = {"metrics": {}, "states": {}, "W0": W0.cpu(), "gen": s.gen.get_state()}
    for name, net in (("two_layer", clean), ("two_layer_adv", adv)):
        out["metrics"][name] = {**c.evaluate(net), "train_seconds": round(t_two, 2)}
        out["states"][name] = _state(net)
    return out


def _stage_unit(syn: SyntheticConfig, lb: LowerBoundConfig, unit: str, W0: torch.Tensor | None,
                seed: int | None, device, progress=False) -> dict:
    """One stage of the run from the configs alone (so a worker process of :mod:`fp_helpers.parallel` can run
    it; the context is rebuilt, the same as the caller's): the two-layer network (``unit="two_layer"``) or a
    baseline (:func:`_fit_stage`)."""
    c = _context(syn, lb, device)
    if unit == "two_layer":
        return _two_layer_stage(c, progress)
    init_net = None if W0 is None else TwoLayerNet(syn.d, syn.net_config(), weight=W0.to(c.s.device))
    return _fit_stage(c, unit, init_net, seed)


def linear_stage_orders(syn: SyntheticConfig, lb: LowerBoundConfig, orders: int = 5, device=None,
                        workers: int | None = None, run: dict | None = None) -> list[dict]:
    """The ``linear`` stage (logistic regression, then FGM training from it) rerun with ``orders`` seeds, i.e.
    as many orders of the same training set and random starts (the first is the run's own,
    :func:`stage_seed`): per order the metrics of ``linear`` and ``linear_adv`` as in the run, plus the norm of
    each weight vector (``w_norm``). How much of the adversarial linear model is the path SGD took.
    ``run``: a result of :func:`run_lower_bounds` with these configs and ``keep_models=True``; the first order
    is then taken from it instead of trained again (the same numbers, ``tests/test_parallel.py``)."""
    if not isinstance(orders, int) or isinstance(orders, bool) or orders < 1:
        raise ValueError(f"orders must be a positive int, got {orders!r}")
    syn, lb = syn.validate(), lb.validate()
    seeds = [stage_seed(syn, "linear") + i for i in range(orders)]
    units: dict = {}
    if run is not None:
        if not isinstance(run, dict) or run.get("config") != config_dict((syn, lb)):
            raise ValueError("run must be a result of run_lower_bounds with the same syn and lb configs")
        if not all(name in run.get("_models", {}) for name in ("linear", "linear_adv")):
            raise ValueError("run has no linear models: run it with keep_models=True and 'linear' among lb.models")
        units[0] = {"metrics": {n: run[n] for n in ("linear", "linear_adv")},
                    "states": {n: _state(run["_models"][n]) for n in ("linear", "linear_adv")}}
    todo = [i for i in range(orders) if i not in units]
    dev = get_device(device)
    n = parallel.n_workers(len(todo), dev, syn.clean_steps, workers)
    tasks = [(syn, lb, "linear", None, seeds[i], dev if n == 1 else "cpu") for i in todo]
    units.update({todo[i]: u for i, u in parallel.run_unordered(_stage_unit, tasks, n)})
    out = []
    for i in range(orders):
        u = units[i]
        row = {"seed": seeds[i]}
        for name in ("linear", "linear_adv"):
            row[name] = {**u["metrics"][name], "w_norm": u["states"][name]["w"].norm().item()}
        out.append(row)
    return out


def run_lower_bounds(syn: SyntheticConfig, lb: LowerBoundConfig, device=None, progress=None,
                     profile: str | None = None, keep_models: bool = False, checkpoint_dir=None,
                     workers: int | None = None) -> dict:
    """Train and attack every model; returns the JSON-ready dict (and ``"_models"`` when ``keep_models``).

    Every stage trains from its own seed: the two-layer network (clean, then FGM) from the run's, each baseline
    stage (the linear models, each kernel, the linearised network, the sparse polynomial) from
    :func:`stage_seed`; the NTK models need only the network's initialisation, which is drawn before it
    trains. So on a CPU all stages run side by side in worker processes (:mod:`fp_helpers.parallel`;
    ``workers`` or ``$FP_WORKERS`` overrides the automatic choice, ``1``: all in this process) with the same
    numbers. The network is trained only when ``"two_layer"`` is among ``lb.models``. Each stage is checkpointed when it completes
    (:mod:`fp_helpers.checkpoints`; ``checkpoint_dir`` as there, ``False``: none): an interrupted run resumes
    after its completed stages with the same numbers.
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
    c = _context(syn, lb, device)
    s, dev = c.s, c.s.device
    ck = open_run("lower-bounds", (syn, lb), checkpoint_dir, dev)
    result: dict = stamp({}, "lower-bounds", (syn, lb), profile, dev)
    result.update({"tau": syn.tau, "norm": syn.norm, "attack": c.spec.describe(syn.tau),
                   "curve_attack": c.curve_spec.describe(float("nan")).replace("eps=nan", "each radius"),
                   "radii": [float(r) for r in lb.lb_radii], "n_train": lb.n_train})
    models: dict = {}

    # The two-layer network's initialisation defines the NTK: known before it trains, so the network trains
    # side by side with the baselines (first: it is the longest stage).
    W0 = initial_weights(s)
    init_net = TwoLayerNet(syn.d, syn.net_config(), weight=W0)
    units_order = (["two_layer"] if "two_layer" in lb.models else []) + _stages(lb)
    units = {unit: ck.load(unit) for unit in units_order}
    todo = [unit for unit in units_order if units[unit] is None]
    n = parallel.n_workers(len(todo), dev, syn.clean_steps, workers)
    where = (dev, progress) if n == 1 else ("cpu", False)  # in workers: on the CPU, without progress bars
    tasks = [(syn, lb, unit, W0.cpu(), None, *where) for unit in todo]
    for i, unit in parallel.run_unordered(_stage_unit, tasks, n):
        units[todo[i]] = unit
        ck.save(todo[i], unit)
    if "two_layer" in units:
        if not torch.equal(units["two_layer"]["W0"], W0.cpu()):
            raise RuntimeError("the two-layer network did not start from the initialisation that defines the NTK")
        s.gen.set_state(units["two_layer"]["gen"])  # the setup returned is the one the network trained with
    for unit in units_order:
        result.update(units[unit]["metrics"])
        if units[unit].get("sweep"):
            result.setdefault("adv_radius_sweep", {}).update(units[unit]["sweep"])
        for name, st in units[unit]["states"].items():
            if unit == "two_layer":
                m = TwoLayerNet(syn.d, syn.net_config(), weight=st["W"].to(dev))
                m.beta = syn.beta
            else:
                m = _make(c, unit, init_net, name, st)
                m.load_state_dict({k: v.to(dev) for k, v in st.items()})
            models[name] = m

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


# ------------------------------------------------------------------------------- the chapter's summary numbers
# Read a result of run_lower_bounds; none of them is called by the run (they do not change its fingerprint).

def eval_points(result: dict, key: str = "lb_eval_n") -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out points of a ``keep_models=True`` result behind its numbers at ``tau`` (``key="lb_eval_n"``)
    or behind its curves (``key="curve_n"``): the first ``config[key]`` of the setup's evaluation points."""
    if "_setup" not in result:
        raise ValueError("result has no held-out points: run run_lower_bounds with keep_models=True")
    if key not in ("lb_eval_n", "curve_n"):
        raise ValueError(f"key must be 'lb_eval_n' or 'curve_n', got {key!r}")
    n = result["config"][key]
    return result["_setup"].x_eval[:n], result["_setup"].y_eval[:n]


def constant_robust_accuracy(y: torch.Tensor) -> float:
    """Robust accuracy, at every radius, of the best constant predictor on labels ``y`` (+-1): it predicts the
    majority class everywhere, and no perturbation changes a constant prediction. The share of the majority
    class; 0.5 on balanced labels. Every model class that contains the constants (a linear model with a
    bias, a kernel model with a constant term) has an exact robust optimum at least this high."""
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.numel() == 0:
        raise ValueError(f"y must be a non-empty vector of labels, got shape {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"y must hold labels +1 and -1, got the values {sorted(set(y.tolist()))[:5]}")
    pos = int((y == 1).sum())
    return max(pos, y.numel() - pos) / y.numel()


def _float64_kernel(kernel):
    """A copy of ``kernel`` that computes in float64 (the NTK keeps its weights in its own dtype)."""
    k = copy.copy(kernel)
    if hasattr(k, "W0"):
        k.W0 = k.W0.double()
        if torch.is_tensor(k.b0):
            k.b0 = k.b0.double()
    return k


@torch.no_grad()
def dual_float64_check(model, x: torch.Tensor, block: int = 1024) -> dict:
    """How far a :class:`~fp_helpers.baselines.KernelModel`'s outputs are from the exact value of the same model.

    The reference is the sum over its stored centres and coefficients, ``sum_i alpha_i K(c_i, x)``, computed
    in float64. ``{"forward_err": max |f - f64| of what the model computes (its primal form where it has one,
    else the float32 sum: what every number of the run uses), "forward_flips": points where its sign differs
    from f64's, "dual32_err", "dual32_flips": the same for the float32 sum over centres, "median_abs_f":
    median |f64|, "n": number of points}``."""
    if not isinstance(model, bl.KernelModel):
        raise TypeError(f"model must be a KernelModel, got {type(model).__name__}")
    k64, C, a = _float64_kernel(model.kernel), model.centres.double(), model.alpha.double()
    f, f32, f64 = [], [], []
    for i in range(0, x.shape[0], block):
        xb = x[i:i + block]
        f.append(model(xb).double())
        f32.append(model.dual(xb).double())
        f64.append(k64(xb.double(), C) @ a)
    f, f32, f64 = torch.cat(f), torch.cat(f32), torch.cat(f64)
    return {"forward_err": (f - f64).abs().max().item(), "forward_flips": int(((f > 0) != (f64 > 0)).sum()),
            "dual32_err": (f32 - f64).abs().max().item(), "dual32_flips": int(((f32 > 0) != (f64 > 0)).sum()),
            "median_abs_f": f64.abs().median().item(), "n": int(x.shape[0])}


def attack_strength_check(result: dict, names, steps: int = 100, restarts: int = 10, seed: int = 0,
                          u: torch.Tensor | None = None) -> dict:
    """Attack the models ``names`` of a ``keep_models=True`` result again at ``tau``, on the same held-out
    points, with a stronger PGD (``steps`` steps, ``restarts`` restarts, the same norm):
    ``{name: {"run": the result's PGD accuracy, "strong": the stronger attack's}}`` and ``"spec"``, the
    stronger attack's description; with ``u`` (the dense direction) also ``"dense"``, the accuracy under the
    dense-direction attack, which needs no gradient of the model. A stronger attack that finds no lower
    accuracy says the run's attack was enough for these models."""
    for name, v in (("steps", steps), ("restarts", restarts)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    missing = [n for n in names if n not in result.get("_models", {})]
    if missing:
        raise ValueError(f"no model {', '.join(map(repr, missing))} in the result; allowed: "
                         f"{', '.join(result.get('_models', {}))} (run with keep_models=True)")
    x, y = eval_points(result)
    spec = AttackSpec("pgd", result["norm"], steps, restarts)
    out: dict = {"spec": spec.describe(result["tau"])}
    for name in names:
        g = torch.Generator(device=x.device).manual_seed(seed)
        out[name] = {"run": result[name]["robust_acc"],
                     "strong": robust_accuracy(result["_models"][name], x, y, result["tau"], spec, generator=g)}
        if u is not None:
            out[name]["dense"] = robust_accuracy(result["_models"][name], x, y, result["tau"],
                                                 AttackSpec("dense", result["norm"]), u=u.to(x.device))
    return out


def baseline_names(result: dict) -> list[str]:
    """The linear, polynomial and NTK models of a result trained on data (not the network, not the
    hand-built ``linear_best`` and sparse polynomial)."""
    return [n for n in model_names(result) if not n.startswith(("two_layer", "sparse_poly", "linear_best"))]


def summary_numbers(result: dict, edge_rel: float = 0.1) -> dict:
    """The numbers the chapter states about a result of :func:`run_lower_bounds` (the FGM-trained network
    ``two_layer_adv`` among its models), each under the name the chapter glues it as (without ``lb_``):

    - the network's clean and PGD accuracy at ``tau`` (``ref_*``); over the baselines (:func:`baseline_names`)
      the smallest gap to it in points and its model, the best PGD accuracy, those with clean accuracy below
      0.9; the linear and kernel adversarial-training numbers; the attack at ``tau`` (``attack``);
    - where ``tau`` is on the radius grid of the curves: the network's and the baselines' best curve value
      there and at the grid radii either side (``net_curve_*``, ``base_curve_*``, ``prev_radius``,
      ``next_radius``), and the best linear model's exact robust accuracy on the curve points
      (``best_exact_tau_curve``); the margin atom ``tau`` sits on and the exact law a relative ``edge_rel``
      either side (``tau_atom``, ``law_below``, ``law_above``, ``edge_rel_pct``; :func:`exercises.margin_edge`);
    - with ``keep_models=True``: the constant predictor's robust accuracy on the held-out points
      (:func:`constant_robust_accuracy`), and the float32 checks of the kernel models
      (:func:`dual_float64_check`): ``dual_*`` for the float32 sum of the adversarially refitted affine kernel
      (its primal form is what the run uses), ``f64_*`` the largest error and flips over the kernels of degree
      3 and more, which the run evaluates as the float32 sum over up to ``f64_centres`` centres."""
    if "two_layer_adv" not in result:
        raise ValueError("result has no FGM-trained network (two_layer_adv): 'two_layer' must be among lb.models")
    ref = result["two_layer_adv"]["robust_acc"]
    names = baseline_names(result)
    if not names:
        raise ValueError("result has no linear, polynomial or NTK model")
    gaps = {n: ref - result[n]["robust_acc"] for n in names}
    low = [model_label(n) for n in names if result[n]["clean_acc"] < 0.9]
    kernels = [n[:-4] for n in names if n.endswith("_adv") and (n.startswith("poly") or n == "ntk_adv")]
    nan = float("nan")
    out = {"ref_robust": ref, "ref_clean": result["two_layer_adv"]["clean_acc"], "attack": result["attack"],
           "min_gap_pts": 100 * min(gaps.values()), "min_gap_model": model_label(min(gaps, key=gaps.get)),
           "max_baseline_robust": max(result[n]["robust_acc"] for n in names),
           "low_clean": "; ".join(low) if low else "none",
           "linadv_clean": result["linear_adv"]["clean_acc"] if "linear_adv" in result else nan,
           "linadv_robust": result["linear_adv"]["robust_acc"] if "linear_adv" in result else nan,
           "kernel_adv_gain_pts": 100 * max((abs(result[n + "_adv"]["robust_acc"] - result[n]["robust_acc"])
                                             for n in kernels), default=nan),
           "poly1_adv_robust": result["poly_1_adv"]["robust_acc"] if "poly_1_adv" in result else nan}
    radii, tau = result["radii"], result["tau"]
    hits = [i for i, r in enumerate(radii) if math.isclose(r, tau, rel_tol=1e-9)]
    if hits and 0 < hits[0] < len(radii) - 1:
        i = hits[0]
        out.update(prev_radius=radii[i - 1], next_radius=radii[i + 1])
        for key, j in (("prev", i - 1), ("tau", i), ("next", i + 1)):
            out[f"net_curve_{key}"] = result["two_layer_adv"]["curve"][j]
            out[f"base_curve_{key}"] = max(result[n]["curve"][j] for n in names)
        if "linear_best" in result:
            out["best_exact_tau_curve"] = result["linear_best"]["exact_curve"][i]
    cfg = result.get("config", {})
    if all(key in cfg for key in ("d", "k", "noise")):
        edge = margin_edge(cfg["d"], cfg["k"], cfg["noise"], tau, edge_rel)
        out.update(tau_atom=edge["atom"] if edge["atom"] is not None else "none", law_below=edge["below"],
                   law_above=edge["above"], edge_rel_pct=round(100 * edge_rel))
    if "_setup" in result:
        x, y = eval_points(result)
        out["const_robust"] = constant_robust_accuracy(y)
        models = result.get("_models", {})
        if "poly_1_adv" in models:
            c = dual_float64_check(models["poly_1_adv"], x)
            out.update(dual_err=c["dual32_err"], dual_f_med=c["median_abs_f"], dual_flips=c["dual32_flips"])
        high = [n for n in models if n.startswith("poly_") and int(n.split("_")[1]) > 2]
        checks = [dual_float64_check(models[n], x) for n in high]
        out["f64_models"] = len(high)
        out["f64_centres"] = f"{max((models[n].centres.shape[0] for n in high), default=0):,}"
        out["f64_err"] = max((c["forward_err"] for c in checks), default=nan)
        out["f64_rel_err"] = max((c["forward_err"] / c["median_abs_f"] for c in checks), default=nan)
        out["f64_flips"] = max((c["forward_flips"] for c in checks), default=0)
    return out


def orders_numbers(result: dict, orders: list[dict]) -> dict:
    """The chapter's numbers about :func:`linear_stage_orders` (``orders``, of the same configs as ``result``):
    the range over the orders of the FGM-trained linear model's clean and PGD accuracy (``linadv_*_lo/hi``), of
    the clean one's PGD accuracy (``lin_robust_hi``), of the norm ratio ``||w_adv|| / ||w_clean||``
    (``linadv_shrink_lo/hi``); and over every baseline of the result *and* every order's linear models, the
    smallest gap to the FGM-trained network in points (``min_gap_all_pts``, its model ``min_gap_all_model``)
    and the best PGD accuracy (``max_baseline_robust_all``); the kernels adversarially trained at larger radii
    (``adv_radius_sweep`` of the result) count among the baselines there."""
    if not orders:
        raise ValueError("orders must be a non-empty list of linear_stage_orders rows")
    if "two_layer_adv" not in result:
        raise ValueError("result has no FGM-trained network (two_layer_adv): 'two_layer' must be among lb.models")
    adv = [o["linear_adv"] for o in orders]
    shrink = [o["linear_adv"]["w_norm"] / o["linear"]["w_norm"] for o in orders]
    robust = {n: result[n]["robust_acc"] for n in baseline_names(result)}
    for i, o in enumerate(orders):
        for n in ("linear", "linear_adv"):
            robust[f"{n}@{i}"] = o[n]["robust_acc"]
    for name, rows in result.get("adv_radius_sweep", {}).items():  # the kernels trained at larger radii
        for r in rows:
            robust[f"{name}#{r['radius_mult']:g}"] = r["robust_acc"]
    best = max(robust, key=robust.get)
    name, _, order = best.partition("@")
    name, _, mult = name.partition("#")
    return {"orders": len(orders),
            "linadv_clean_lo": min(a["clean_acc"] for a in adv), "linadv_clean_hi": max(a["clean_acc"] for a in adv),
            "linadv_robust_lo": min(a["robust_acc"] for a in adv),
            "linadv_robust_hi": max(a["robust_acc"] for a in adv),
            "lin_robust_hi": max(o["linear"]["robust_acc"] for o in orders),
            "linadv_shrink_lo": min(shrink), "linadv_shrink_hi": max(shrink),
            "min_gap_all_pts": 100 * (result["two_layer_adv"]["robust_acc"] - robust[best]),
            "min_gap_all_model": model_label(name) + (f", data order {order}" if order else "")
                                 + (f", trained at {mult} tau" if mult else ""),
            "max_baseline_robust_all": robust[best]}


def radius_sweep_rows(result: dict) -> tuple[list[str], list[list]]:
    """The kernels' adversarial training at larger training radii (``adv_radius_sweep`` of a result of
    :func:`run_lower_bounds`), as a table: per adversarially trained kernel, clean and PGD accuracy at ``tau``
    when trained at ``tau`` (the run's model) and at each multiple of it."""
    sweep = result.get("adv_radius_sweep") or {}
    if not sweep:
        raise ValueError("the result has no adv_radius_sweep (run it with lb.adv_radius_mults non-empty)")
    mults = [r["radius_mult"] for r in next(iter(sweep.values()))]
    header = ["model", "trained at tau: clean / PGD"] + [f"trained at {m:g} tau: clean / PGD" for m in mults]
    rows = []
    for name, sw in sweep.items():
        if [r["radius_mult"] for r in sw] != mults:
            raise ValueError(f"{name} was trained at other radii than the first kernel of the sweep")
        rows.append([model_label(name)] + [f"{a['clean_acc']:.3f} / {a['robust_acc']:.3f}" for a in [result[name]] + sw])
    return header, rows


def radius_sweep_glue(result: dict) -> dict:
    """What the lower-bound chapter states about the sweep (``lb_sw_*``): the multiples of ``tau`` (``mults``, as
    text), the largest change of a kernel's PGD accuracy at ``tau`` from the run's model trained at ``tau``, in
    points (``max_change_pts``), the best PGD accuracy of the sweep and its model (``best``, ``best_model``), the
    smallest clean accuracy in it (``clean_min``) and the network's PGD accuracy at ``tau`` (``net``)."""
    sweep = result.get("adv_radius_sweep") or {}
    if not sweep:
        raise ValueError("the result has no adv_radius_sweep (run it with lb.adv_radius_mults non-empty)")
    flat = [(name, r) for name, sw in sweep.items() for r in sw]
    best_name, best = max(flat, key=lambda nr: nr[1]["robust_acc"])
    mults = sorted({r["radius_mult"] for _, r in flat})
    return {"lb_sw_mults": " and ".join(f"{m:g}" for m in mults) if len(mults) < 3
            else ", ".join(f"{m:g}" for m in mults[:-1]) + f" and {mults[-1]:g}",
            "lb_sw_max_change_pts": 100 * max(abs(r["robust_acc"] - result[n]["robust_acc"]) for n, r in flat),
            "lb_sw_best": best["robust_acc"],
            "lb_sw_best_model": f"{model_label(best_name)}, trained at {best['radius_mult']:g} tau",
            "lb_sw_clean_min": min(r["clean_acc"] for _, r in flat),
            "lb_sw_n": len(flat), "lb_sw_net": result["two_layer_adv"]["robust_acc"] if "two_layer_adv" in result
            else float("nan")}

def training_attack_check(result: dict, syn: SyntheticConfig, lb: LowerBoundConfig, names,
                          radius: float | None = None) -> dict:
    """How much the baselines' adversarial training can change them: for each model of ``names`` (clean fits of a
    ``keep_models=True`` result), its accuracy on its own training points (:func:`training_set`) and under the
    training attack of the adversarial refits (PGD with ``lb.adv_attack_steps`` steps from each point, at ``radius``,
    default ``tau``): ``{name: {"train_acc", "train_pgd_acc"}}``. A model that keeps most training points under that
    attack gets mostly unchanged points to refit on."""
    missing = [n for n in names if n not in result.get("_models", {})]
    if missing or "_setup" not in result:
        raise ValueError(f"no model {', '.join(map(repr, missing)) or '(no setup)'} in the result; allowed: "
                         f"{', '.join(result.get('_models', {}))} (run with keep_models=True)")
    X, Y = training_set(result["_setup"], syn, lb)
    spec = AttackSpec("pgd", syn.norm, lb.adv_attack_steps, 1)
    return {name: {"train_acc": accuracy(result["_models"][name], X, Y),
                   "train_pgd_acc": robust_accuracy(result["_models"][name], X, Y, syn.tau if radius is None else radius,
                                                    spec)} for name in names}


def _clean_kernels(result: dict) -> tuple[list[int], list[str]]:
    """The degrees (2 and above) of a result's clean polynomial kernel fits, and those fits' names with the NTK's."""
    names = model_names(result)
    degs = sorted(int(n.split("_")[1]) for n in names if n.startswith("poly_") and not n.endswith("_adv") and n != "poly_1")
    return degs, [f"poly_{p}" for p in degs] + (["ntk"] if "ntk" in names else [])


def sweep_training_attack_glue(result: dict, syn: SyntheticConfig, lb: LowerBoundConfig) -> dict:
    """Whether the larger training radii of the sweep (``lb.adv_radius_mults``) give the training attack room: at
    each multiple of ``tau``, the largest share of their own training points that the clean kernel fits of degree
    2 and above and of the NTK keep under it (``lb_sw_tr_max``, over kernels and multiples) and the affine
    kernel's (``lb_sw_tr_deg1_max``), beside the smallest share kept at ``tau`` itself (``lb_sw_tr_tau_min``)."""
    if not lb.adv_radius_mults:
        raise ValueError("lb.adv_radius_mults is empty: the run has no larger training radii")
    _, kernels = _clean_kernels(result)
    at = {m: training_attack_check(result, syn, lb, kernels + ["poly_1"], radius=m * syn.tau)
          for m in lb.adv_radius_mults}
    tau = training_attack_check(result, syn, lb, kernels)
    return {"lb_sw_tr_max": max(at[m][n]["train_pgd_acc"] for m in at for n in kernels),
            "lb_sw_tr_deg1_max": max(at[m]["poly_1"]["train_pgd_acc"] for m in at),
            "lb_sw_tr_tau_min": min(tau[n]["train_pgd_acc"] for n in kernels)}


def training_attack_glue(result: dict, syn: SyntheticConfig, lb: LowerBoundConfig) -> dict:
    """What the lower-bound chapter states from :func:`training_attack_check` (``lb_tr_*``), for the clean kernel fits
    of degree 2 and above and of the NTK (the ``kernels``), beside the affine kernel (degree 1): the kernels' smallest
    training accuracy and accuracy under the training attack (``acc_min``, ``pgd_min``), how many keep every training
    point (``all_of``), their degrees as text (``degrees``), and the affine kernel's two accuracies (``deg1_*``)."""
    from .experiments import count_words

    degs, kernels = _clean_kernels(result)
    tr = training_attack_check(result, syn, lb, kernels + ["poly_1"])
    return {"lb_tr_acc_min": min(tr[n]["train_acc"] for n in kernels),
            "lb_tr_pgd_min": min(tr[n]["train_pgd_acc"] for n in kernels),
            "lb_tr_all_of": count_words(sum(tr[n]["train_pgd_acc"] == 1.0 for n in kernels), len(kernels)),
            "lb_tr_degrees": f"{degs[0]} to {degs[-1]}" if len(degs) > 1 else str(degs[0]),
            "lb_tr_deg1_acc": tr["poly_1"]["train_acc"], "lb_tr_deg1_pgd": tr["poly_1"]["train_pgd_acc"]}
