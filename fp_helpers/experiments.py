"""The synthetic experiment behind chapters 3-5 and ``python -m fp_helpers run synthetic``.

One config (``SyntheticConfig``) holds every knob; ``synthetic_config(profile)`` gives the preset of a
profile and ``--set key=value`` overrides any field. ``run_synthetic`` trains the clean network, then
adversarially trains a copy *started from the clean weights*, evaluates both with the same attacks on
the same held-out points, and returns the numbers and the weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace  # noqa: F401

import torch

from . import parallel
from . import purification as pur
from .attacks import AttackSpec, accuracy, robust_accuracy
from .networks import AdamLowRankTwoLayerNet, LowRankTwoLayerNet, NetConfig, TwoLayerNet
from .checkpoints import open_run
from .provenance import stamp
from .runs import apply_overrides, check_norm, get_device, get_profile, seed_everything
from .sparse_coding import SparseCoding, SparseCodingConfig
from .training import History, TrainConfig, train


@dataclass(frozen=True)
class SyntheticConfig:
    # data
    d: int = 400
    k: int = 7
    noise: float = 0.1
    # network
    m: int = 300
    q: int = 3
    rho: float = 0.5
    beta: float = 0.0
    init_std: float = 0.01
    # training
    batch: int = 128
    clean_steps: int = 20000
    clean_lr: float = 2.0
    beta_ramp: float = 0.33
    adv_steps: int = 4000
    adv_lr: float = 1.0
    adv_attack: str = "fgm"
    train_size: int = 0
    # threat model and evaluation
    tau: float = 0.15
    norm: str = "l2"
    eval_n: int = 2000
    pgd_steps: int = 20
    pgd_restarts: int = 3
    radii: tuple = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6)
    log_every: int = 500
    lowrank_ranks: tuple = (1, 2, 4)
    lowrank_lr: float = 0.03  # A A^T and B B^T scale the step: adv_lr diverges, 0.1-0.3 destroy clean accuracy
    seed: int = 0

    def validate(self) -> "SyntheticConfig":
        check_norm(self.norm)
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if not isinstance(self.eval_n, int) or self.eval_n < 1:
            raise ValueError(f"eval_n must be a positive int, got {self.eval_n!r}")
        if any((not math.isfinite(r)) or r < 0 for r in self.radii):
            raise ValueError(f"radii must be finite and >= 0, got {self.radii!r}")
        self.data_config()
        self.net_config()
        self.clean_train_config()
        self.adv_train_config()
        return self

    def data_config(self) -> SparseCodingConfig:
        return SparseCodingConfig(d=self.d, k=self.k, noise=self.noise).validate()

    def net_config(self) -> NetConfig:
        return NetConfig(m=self.m, q=self.q, rho=self.rho, beta=self.beta, init_std=self.init_std).validate()

    def clean_train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.clean_steps, batch=self.batch, lr=self.clean_lr, attack="none",
                           tau=self.tau, norm=self.norm, beta_ramp=self.beta_ramp if self.beta > 0 else 0.0,
                           train_size=self.train_size, log_every=self.log_every).validate()

    def adv_train_config(self, steps: int | None = None, lowrank: bool = False) -> TrainConfig:
        return TrainConfig(steps=self.adv_steps if steps is None else steps, batch=self.batch,
                           lr=self.lowrank_lr if lowrank else self.adv_lr,
                           attack=self.adv_attack, tau=self.tau, norm=self.norm, train_size=self.train_size,
                           log_every=self.log_every).validate()

    def eval_attack(self) -> AttackSpec:
        return AttackSpec("pgd", self.norm, self.pgd_steps, self.pgd_restarts)


# The full profile is the regime the website shows (see the chapter "Adversarial training and
# purification" for how it was chosen); quick is the same code path at CI scale.
PROFILE_PRESETS: dict[str, dict] = {
    "full": {},
    "quick": dict(d=100, k=5, m=100, clean_steps=2000, adv_steps=800, eval_n=500, pgd_steps=10,
                  pgd_restarts=2, log_every=250, tau=0.3, radii=(0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9)),
}


def synthetic_config(profile: str | None = None, overrides=None, seed: int | None = None) -> SyntheticConfig:
    """The config of a profile, with ``key=value`` overrides (unknown keys raise ``ValueError``)."""
    profile = get_profile(profile)
    cfg = SyntheticConfig(**PROFILE_PRESETS[profile])
    cfg = apply_overrides(cfg, overrides)
    if seed is not None:
        cfg = apply_overrides(cfg, {"seed": int(seed)})
    return cfg.validate()


@dataclass
class Setup:
    cfg: SyntheticConfig
    dist: SparseCoding
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    gen: torch.Generator
    device: torch.device


def setup(cfg: SyntheticConfig, device=None) -> Setup:
    """Distribution (dictionary fixed by the seed), a held-out evaluation set and the training generator."""
    device = get_device(device)
    gen = seed_everything(cfg.seed, device)
    dist = SparseCoding(cfg.data_config(), seed=cfg.seed, device=device)
    eval_gen = torch.Generator(device=device).manual_seed(cfg.seed + 10_000)
    x_eval, y_eval = dist.sample(cfg.eval_n, eval_gen)
    return Setup(cfg, dist, x_eval, y_eval, gen, device)


def evaluate(net, s: Setup, W0: torch.Tensor | None = None, tau: float | None = None,
             curves: bool = False) -> dict:
    """Clean accuracy, robust accuracy under PGD / FGM / the dense direction, and purification medians."""
    cfg = s.cfg
    tau = cfg.tau if tau is None else tau
    spec = cfg.eval_attack()
    g = torch.Generator(device=s.device).manual_seed(cfg.seed + 20_000)
    x, y = s.x_eval, s.y_eval
    out = {
        "clean_acc": accuracy(net, x, y),
        "robust_acc": robust_accuracy(net, x, y, tau, spec, generator=g),
        "fgm_acc": robust_accuracy(net, x, y, tau, AttackSpec("fgm", cfg.norm)),
        "dense_direction_acc": robust_accuracy(net, x, y, tau, AttackSpec("dense", cfg.norm), u=s.dist.u),
        "attack": spec.describe(tau),
    }
    out.update(pur.summary(net.weight.detach(), s.dist.M, s.dist.u, W0))
    if curves:
        out["radii"] = list(cfg.radii)
        out["robust_curve"] = [out["robust_acc"] if float(r) == tau else robust_accuracy(net, x, y, float(r), spec, generator=g)
                               for r in cfg.radii]  # the same attack at tau was just run: not twice
    return out


def progress_eval(s: Setup, W0: torch.Tensor, n: int = 500, pgd_steps: int = 10, W_clean: torch.Tensor | None = None):
    """A cheap ``eval_fn`` for training histories: accuracy, PGD robustness, purification medians, and, given
    the clean weights ``W_clean`` an adversarial run started from, the principle's decomposition so far."""
    x, y = s.x_eval[:n], s.y_eval[:n]
    spec = AttackSpec("pgd", s.cfg.norm, pgd_steps, 1)

    def fn(step, net):
        row = {"clean_acc": accuracy(net, x, y), "robust_acc": robust_accuracy(net, x, y, s.cfg.tau, spec)}
        row.update(pur.summary(net.weight.detach(), s.dist.M, s.dist.u, W0))
        if W_clean is not None and step > 0:
            dec = pur.decompose(W_clean, net.weight.detach())
            row["principle_holds"] = dec.holds_fraction
            row["principle_ratio_median"] = dec.ratio.median().item()
        return row

    return fn


def init_net(s: Setup) -> TwoLayerNet:
    """The randomly initialised network: the first draw from the setup's training generator."""
    return TwoLayerNet(s.cfg.d, s.cfg.net_config(), generator=s.gen, device=s.device)


def initial_weights(s: Setup) -> torch.Tensor:
    """The initial weights :func:`train_clean` will start from, without using up the generator's draws."""
    state = s.gen.get_state()
    try:
        return init_net(s).snapshot()
    finally:
        s.gen.set_state(state)


def train_clean(s: Setup, progress=None, snapshot_steps=()) -> tuple[TwoLayerNet, torch.Tensor, History]:
    """Randomly initialised clean training; returns the net, its initial weights and the history."""
    net = init_net(s)
    W0 = net.snapshot()
    hist = train(net, s.dist, s.cfg.clean_train_config(), s.gen, eval_fn=progress_eval(s, W0),
                 snapshot_steps=snapshot_steps, progress=progress, desc="clean training")
    return net, W0, hist


def train_adversarial(s: Setup, start: TwoLayerNet, W0: torch.Tensor, steps: int | None = None,
                      progress=None, snapshot_steps=(), rank: int | None = None) -> tuple[TwoLayerNet, History]:
    """Adversarial training of a copy of ``start`` (full weights, or rank-``rank`` updates of them)."""
    if rank is None:
        net = TwoLayerNet(s.cfg.d, start.config, weight=start.weight.detach())
    else:
        net = LowRankTwoLayerNet(start, rank, generator=s.gen)
    net.beta = start.beta
    tcfg = s.cfg.adv_train_config(steps, lowrank=rank is not None)
    hist = train(net, s.dist, tcfg, s.gen, eval_fn=progress_eval(s, W0, W_clean=start.weight.detach()),
                 snapshot_steps=snapshot_steps,
                 progress=progress, desc=f"{tcfg.attack} training" + (f" (rank {rank})" if rank else ""))
    return net, hist


@dataclass
class SyntheticRun:
    """Everything one synthetic experiment produced: numbers (``metrics``) and the networks (``adversarial``
    and ``adv_history`` are ``None`` for a run of clean training only, from :func:`seed_curves`)."""

    cfg: SyntheticConfig
    setup: Setup
    W0: torch.Tensor
    clean: TwoLayerNet
    adversarial: TwoLayerNet | None
    clean_history: History
    adv_history: History | None
    metrics: dict = field(default_factory=dict)


def _net_state(net) -> dict:
    return {"W": net.weight.detach().cpu().clone(), "beta": float(net.beta)}


def _net_from_state(cfg: SyntheticConfig, state: dict, device) -> TwoLayerNet:
    net = TwoLayerNet(cfg.d, cfg.net_config(), weight=state["W"].to(device))
    net.beta = state["beta"]
    return net


def _history_state(h: History) -> dict:
    return {"rows": h.rows, "snapshots": {k: v.cpu() for k, v in h.snapshots.items()}}


def _history_from_state(state: dict, device) -> History:
    return History(rows=state["rows"], snapshots={k: v.to(device) for k, v in state["snapshots"].items()})


def _rng_state(s: Setup) -> dict:
    return {"gen": s.gen.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: Setup, state: dict) -> None:
    s.gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])


def _check_config(cfg) -> SyntheticConfig:
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"cfg must be a SyntheticConfig (see synthetic_config), got {type(cfg).__name__}")
    return cfg.validate()


def run_synthetic(cfg: SyntheticConfig, device=None, progress=None, curves: bool = True,
                  profile: str | None = None, checkpoint_dir=None) -> SyntheticRun:
    """Clean training, then FGM adversarial training from the clean weights; evaluate both.

    Each training stage is checkpointed when it completes (:mod:`fp_helpers.checkpoints`; ``checkpoint_dir``
    as there, ``False``: none): an interrupted run resumes after its last completed stage and ends with the
    same weights and numbers as an uninterrupted one. The metrics carry ``config`` and ``provenance``.
    """
    cfg = _check_config(cfg)
    t0 = time.perf_counter()
    s = setup(cfg, device)
    ck = open_run("synthetic", cfg, checkpoint_dir, s.device)
    saved = ck.load("clean")
    if saved is None:
        clean, W0, h_clean = train_clean(s, progress)
        ck.save("clean", {"W0": W0.cpu(), "net": _net_state(clean), "history": _history_state(h_clean),
                          "rng": _rng_state(s)})
    else:
        W0, clean = saved["W0"].to(s.device), _net_from_state(cfg, saved["net"], s.device)
        h_clean = _history_from_state(saved["history"], s.device)
        _set_rng_state(s, saved["rng"])
    saved = ck.load("adversarial")
    if saved is None:
        adv, h_adv = train_adversarial(s, clean, W0, progress=progress)
        ck.save("adversarial", {"net": _net_state(adv), "history": _history_state(h_adv), "rng": _rng_state(s)})
    else:
        adv, h_adv = _net_from_state(cfg, saved["net"], s.device), _history_from_state(saved["history"], s.device)
        _set_rng_state(s, saved["rng"])
    dec = pur.decompose(clean.weight.detach(), adv.weight.detach())
    metrics = {
        "clean": evaluate(clean, s, W0, curves=curves),
        "adversarial": evaluate(adv, s, W0, curves=curves),
    }
    stamp(metrics, "synthetic", cfg, profile, s.device)
    for key in ("clean", "adversarial"):
        metrics[key]["principle_ratio_median"] = dec.ratio.median().item()
        metrics[key]["principle_holds_fraction"] = dec.holds_fraction
    metrics["principle"] = {
        "ratio_median": dec.ratio.median().item(),
        "holds_fraction": dec.holds_fraction,
        "cos_clean_adv_median": pur.abs_cos_rows(clean.weight.detach(), adv.weight.detach()).median().item(),
    }
    # the adversarial run's trajectory (accuracy, robustness, purification, principle over FGM steps)
    metrics["adversarial_history"] = [{k: v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}
                                      for row in h_adv.rows]
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    ck.done()
    return SyntheticRun(cfg, s, W0, clean, adv, h_clean, h_adv, metrics)


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a list of non-negative ints, got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. [0, 1, 2]")
    for sd in seeds:
        if not isinstance(sd, int) or isinstance(sd, bool) or sd < 0:
            raise ValueError(f"seeds must be non-negative ints, got {sd!r} in {seeds!r}")
    return seeds


def _seed_unit(c: SyntheticConfig, adversarial: bool, device, progress, checkpoint_dir, snapshot_steps=()) -> dict:
    """One seed of :func:`seed_curves`: its checkpoint payload (tensors on the CPU, so a worker process can
    return it). ``adversarial``: the whole :func:`run_synthetic`; else clean training (with ``snapshot_steps``)
    and its evaluation."""
    if adversarial:
        r = run_synthetic(c, device=device, progress=progress, checkpoint_dir=checkpoint_dir)
        return {"W0": r.W0.cpu(), "clean": _net_state(r.clean), "adversarial": _net_state(r.adversarial),
                "clean_history": _history_state(r.clean_history), "adv_history": _history_state(r.adv_history),
                "metrics": r.metrics, "rng": _rng_state(r.setup)}
    s = setup(c, device)
    net, W0, hist = train_clean(s, progress, snapshot_steps)
    metrics = {"clean": evaluate(net, s, W0, curves=True)}
    return {"W0": W0.cpu(), "clean": _net_state(net), "clean_history": _history_state(hist), "metrics": metrics,
            "rng": _rng_state(s)}


def _run_from_unit(c: SyntheticConfig, saved: dict, device) -> SyntheticRun:
    s = setup(c, device)
    _set_rng_state(s, saved["rng"])
    adv = "adversarial" in saved
    return SyntheticRun(c, s, saved["W0"].to(device), _net_from_state(c, saved["clean"], device),
                        _net_from_state(c, saved["adversarial"], device) if adv else None,
                        _history_from_state(saved["clean_history"], device),
                        _history_from_state(saved["adv_history"], device) if adv else None, saved["metrics"])


def seed_curves(cfg: SyntheticConfig, seeds, adversarial: bool = True, device=None, progress=None,
                checkpoint_dir=None, workers: int | None = None, snapshot_steps=()) -> dict:
    """Robust-accuracy curves over ``cfg.radii`` for several seeds: ``{"clean": (S, R), "adversarial": (S, R)}``
    plus each seed's headline metrics (``runs``) and its networks and training histories (``full_runs``,
    :class:`SyntheticRun`; without ``adversarial``, clean training only, keeping weight snapshots at
    ``snapshot_steps`` as :func:`train_clean` does).

    On a CPU the seeds run side by side in worker processes (:mod:`fp_helpers.parallel`; ``workers`` or
    ``$FP_WORKERS`` overrides the automatic choice, ``1``: all in this process); the numbers are the same
    either way. Each seed is a checkpointed unit (:mod:`fp_helpers.checkpoints`): an interrupted sweep skips
    the seeds it completed (and resumes the current one after its last training stage); the result is the
    same."""
    import numpy as np

    cfg, seeds = _check_config(cfg), _check_seeds(seeds)
    snapshot_steps = tuple(int(t) for t in snapshot_steps)
    if adversarial and snapshot_steps:
        raise ValueError("snapshot_steps is for a sweep of clean training (adversarial=False)")
    dev = get_device(device)
    ck = open_run("seed_curves", apply_overrides(cfg, {"seed": 0}), checkpoint_dir, dev, adversarial=bool(adversarial),
                  snapshot_steps=list(snapshot_steps))
    configs = {seed: apply_overrides(cfg, {"seed": int(seed)}) for seed in seeds}
    units = {seed: ck.load(f"seed{seed}") for seed in seeds}
    todo = [seed for seed in dict.fromkeys(seeds) if units[seed] is None]
    steps = cfg.clean_steps + (cfg.adv_steps if adversarial else 0)
    n = parallel.n_workers(len(todo), dev, steps, workers)
    # in workers: on the CPU and without progress bars (they would interleave)
    where = (dev, progress) if n == 1 else ("cpu", False)
    tasks = [(configs[seed], bool(adversarial), *where, checkpoint_dir, snapshot_steps) for seed in todo]
    for i, unit in parallel.run_unordered(_seed_unit, tasks, n):
        units[todo[i]] = unit
        ck.save(f"seed{todo[i]}", unit)
    curves: dict[str, list] = {"clean": [], "adversarial": []}
    runs, full_runs = [], []
    for seed in seeds:
        unit = units[seed]
        full_runs.append(_run_from_unit(configs[seed], unit, dev))
        if adversarial:
            curves["adversarial"].append(unit["metrics"]["adversarial"]["robust_curve"])
        runs.append(unit["metrics"])
        curves["clean"].append(runs[-1]["clean"]["robust_curve"])
    out = {k: np.array(v) for k, v in curves.items() if v}
    out["radii"] = np.array(cfg.radii)
    out["runs"] = runs  # each seed's metrics
    out["full_runs"] = full_runs  # each seed's SyntheticRun (networks, histories)
    ck.done()
    return out


def _radius_index(cfg: SyntheticConfig, r: float) -> int:
    """The index of the radius of ``cfg.radii`` nearest to ``r``."""
    return min(range(len(cfg.radii)), key=lambda i: abs(float(cfg.radii[i]) - r))


def sweep_landmarks(sweep: dict, cfg: SyntheticConfig) -> dict:
    """The numbers the adversarial chapter quotes from a :func:`seed_curves` sweep (means over seeds unless said):
    both networks' robust accuracy at ``tau`` (``seed_adv_mean``, ``seed_clean_mean``); at the largest radius, the
    best seed's clean network and the adversarial mean (``clean_at_r_max``, ``adv_at_r_max``); the radius of the
    grid where the adversarial curve is furthest above the clean one and both there (``sep_r``, ``sep_clean``,
    ``sep_adv``); the adversarial mean at the grid radius nearest ``2 tau`` (``r_2tau``, ``adv_2tau``)."""
    clean, adv, radii = sweep["clean"], sweep["adversarial"], [float(r) for r in sweep["radii"]]
    i_tau = _radius_index(cfg, cfg.tau)
    i_sep = int((adv.mean(0) - clean.mean(0)).argmax())
    i_2tau = _radius_index(cfg, 2 * cfg.tau)
    return {"seed_adv_mean": float(adv[:, i_tau].mean()), "seed_clean_mean": float(clean[:, i_tau].mean()),
            "r_max": radii[-1], "clean_at_r_max": float(clean[:, -1].max()), "adv_at_r_max": float(adv[:, -1].mean()),
            "sep_r": radii[i_sep], "sep_clean": float(clean[:, i_sep].mean()), "sep_adv": float(adv[:, i_sep].mean()),
            "r_2tau": radii[i_2tau], "adv_2tau": float(adv[:, i_2tau].mean())}


def clean_sweep_landmarks(sweep: dict, cfg: SyntheticConfig) -> dict:
    """The numbers the clean-training chapter quotes from a sweep of clean training (:func:`seed_curves` with
    ``adversarial=False``), with ``law``, the exact robust accuracy of the best linear classifier
    (:func:`fp_helpers.exercises.linear_robust_law`) at every radius of the grid: the mean PGD accuracy at ``tau``
    (``seed_robust_mean``), the worst seed's clean accuracy (``seed_clean_min``), the law at ``tau``
    (``linear_law_tau``), the largest gap between the seed mean and the law over the grid (``lin_gap_max``),
    ``tau / sqrt(k / d)`` (``tau_ratio``), and the first radius where the seed mean is at or under 1%
    (``low_radius``, ``low_value``; None when none is)."""
    from .exercises import linear_robust_law

    radii = [float(r) for r in sweep["radii"]]
    law = [linear_robust_law(cfg.d, cfg.k, cfg.noise, r) for r in radii]
    mean = sweep["clean"].mean(0).tolist()
    i_tau = _radius_index(cfg, cfg.tau)
    low = next((i for i, v in enumerate(mean) if v <= 0.01), None)
    return {"seed_robust_mean": float(sweep["clean"][:, i_tau].mean()),
            "seed_clean_min": min(r["clean"]["clean_acc"] for r in sweep["runs"]),
            "law": law, "linear_law_tau": law[i_tau], "lin_gap_max": max(abs(a - b) for a, b in zip(mean, law)),
            "tau_ratio": cfg.tau / (cfg.k / cfg.d) ** 0.5,
            "low_radius": None if low is None else radii[low], "low_value": None if low is None else mean[low]}


def attack_strength(run: SyntheticRun) -> list[list]:
    """Rows ``[attack, clean-net accuracy, adversarial-net accuracy]`` at ``tau`` for attacks of growing strength:
    FGM, the dense direction, PGD, PGD with restarts, and PGD with 5x the steps and 2x the restarts."""
    cfg, s = run.cfg, run.setup
    specs = [("FGM", AttackSpec("fgm", cfg.norm)), ("dense direction", AttackSpec("dense", cfg.norm)),
             (f"PGD-{cfg.pgd_steps}", AttackSpec("pgd", cfg.norm, cfg.pgd_steps, 1)),
             (f"PGD-{cfg.pgd_steps} x{cfg.pgd_restarts}", cfg.eval_attack()),
             (f"PGD-{5 * cfg.pgd_steps} x{2 * cfg.pgd_restarts}",
              AttackSpec("pgd", cfg.norm, 5 * cfg.pgd_steps, 2 * cfg.pgd_restarts))]
    rows = []
    for name, spec in specs:
        g = torch.Generator(device=s.device).manual_seed(0)
        rows.append([name] + [robust_accuracy(net, s.x_eval, s.y_eval, cfg.tau, spec, generator=g, u=s.dist.u)
                              for net in (run.clean, run.adversarial)])
    return rows


def _attack_check_attacks(cfg: SyntheticConfig) -> list[tuple[str, AttackSpec | str]]:
    """The attacks of :func:`run_attack_check`, in the order of its tables: name and spec (or the name of a
    gradient-free or transfer attack)."""
    return [("FGM", AttackSpec("fgm", cfg.norm)), ("dense direction", AttackSpec("dense", cfg.norm)),
            ("atoms, all active", "atoms"), ("atoms, agreeing with the label", "atoms_agreeing"),
            (f"PGD-{cfg.pgd_steps}", AttackSpec("pgd", cfg.norm, cfg.pgd_steps, 1)),
            (f"PGD-{cfg.pgd_steps} x{cfg.pgd_restarts}", cfg.eval_attack()),
            (f"PGD-{5 * cfg.pgd_steps} x{2 * cfg.pgd_restarts}",
             AttackSpec("pgd", cfg.norm, 5 * cfg.pgd_steps, 2 * cfg.pgd_restarts)),
            (f"transfer: PGD-{5 * cfg.pgd_steps} x{2 * cfg.pgd_restarts} of the other network", "transfer")]


def run_attack_check(cfg: SyntheticConfig, device=None, progress=None, profile: str | None = None,
                     checkpoint_dir=None) -> dict:
    """Is a synthetic run's robustness real, or is PGD fooled (e.g. by the dead zone of the regimes with
    ``beta > 0``, which passes no gradient)? The run of :func:`run_synthetic` (the same weights and numbers as
    ``run synthetic`` with this config), then, for the clean and the adversarial network at every radius of
    ``cfg.radii`` on the held-out points, the accuracy under each attack of :func:`_attack_check_attacks`:
    the chapter's attacks, two gradient-free ones (the dense direction; :func:`fp_helpers.attacks.atom_attack`,
    the active atoms moved against the label, all of them or only those that carry it), PGD with 5x the steps
    and 2x the restarts, and a transfer attack (that PGD's points, crafted on the other network: a masked
    gradient cannot hide a network from them), and under every attack at once (``every attack``: a point counts
    only if it survives each). Also, per point at ``tau``, which attack was the only one to break it."""
    from .attacks import atom_attack, attack, margins

    cfg = _check_config(cfg)
    if cfg.norm != "l2":
        raise ValueError(f"run_attack_check is for the l2 runs (its atom attack is l2); got norm={cfg.norm!r}")
    t0 = time.perf_counter()
    run = run_synthetic(cfg, device=device, progress=progress, curves=False, checkpoint_dir=checkpoint_dir)
    s = run.setup
    nets = {"clean": run.clean, "adversarial": run.adversarial}
    other = {"clean": "adversarial", "adversarial": "clean"}
    attacks = _attack_check_attacks(cfg)
    x, y = s.x_eval, s.y_eval
    curves = {key: {name: [] for name, _ in attacks + [("every attack", None)]} for key in nets}
    only = {key: {} for key in nets}
    for r in cfg.radii:
        r = float(r)
        adv_x: dict = {}
        for key, net in nets.items():  # the PGD points the transfer attack uses, crafted on each network
            for name, spec in attacks:
                if isinstance(spec, AttackSpec):
                    g = torch.Generator(device=s.device).manual_seed(0)
                    adv_x[key, name] = attack(net, x, y, r, spec, generator=g, u=s.dist.u)
                elif spec in ("atoms", "atoms_agreeing"):
                    adv_x[key, name] = atom_attack(x, y, r, s.dist.M, cfg.k, agreeing=spec == "atoms_agreeing")
        strong = attacks[-2][0]
        for key, net in nets.items():
            with torch.no_grad():
                ok = {name: margins(net, adv_x[other[key], strong] if spec == "transfer" else adv_x[key, name], y) > 0
                      for name, spec in attacks}
            every = torch.stack(list(ok.values())).all(0)
            n = int(y.shape[0])  # shares as robust_accuracy computes them (a count over n), to compare exactly
            for name in ok:
                curves[key][name].append(int(ok[name].sum()) / n)
            curves[key]["every attack"].append(int(every.sum()) / n)
            if abs(r - cfg.tau) < 1e-12:
                for name in ok:
                    rest = torch.stack([v for n, v in ok.items() if n != name]).all(0)
                    only[key][name] = int((rest & ~ok[name]).sum())
    out = {"run": {key: {"clean_acc": run.metrics[key]["clean_acc"], "robust_acc": run.metrics[key]["robust_acc"]}
                   for key in nets},
           "radii": [float(r) for r in cfg.radii], "attacks": [name for name, _ in attacks] + ["every attack"],
           "curves": curves, "only_at_tau": only, "n_points": int(x.shape[0])}
    stamp(out, "attack-check", cfg, profile, s.device)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


REGIME_HEADER = ["run", "beta", "init std", "steps clean+FGM", "FGM lr", "clean acc (clean / adv)",
                 "PGD acc at tau (clean / adv)", "|cos(w, w0)| (clean / adv)", "principle holds", "median ratio"]


def _load_regime_files(folder, files) -> list[dict]:
    """``files`` read with :func:`fp_helpers.provenance.load_result`; when some were made with another config or by
    code that has changed since, one :class:`~fp_helpers.provenance.StaleResultWarning` names them all and says
    how to recompute them (``run.sh`` of ``folder``), instead of one warning per file."""
    import warnings
    from pathlib import Path

    from .provenance import StaleResultWarning, load_result

    out, stale = [], []
    for f in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StaleResultWarning)
            out.append(load_result(f))
        stale += [str(w.message) for w in caught if issubclass(w.category, StaleResultWarning)]
    if stale:
        script = Path(folder) / "run.sh"
        how = f"bash {script}" if script.exists() else "the command in each file's provenance"
        warnings.warn(StaleResultWarning(
            f"{len(stale)} of {len(files)} results in {folder} may be stale; recompute them with {how}.\n"
            + "\n".join(stale)), stacklevel=3)
    return out


def regime_rows(regimes) -> list[list]:
    """One table row per regime (the regime comparison of chapter 4): ``regimes`` is a folder of ``run synthetic``
    JSON files (each read as :func:`_load_regime_files` does: stale ones warn once, together), or what
    :func:`regime_seeds` returned (then each regime's seed-0 run; no file is read again)."""
    from pathlib import Path

    if isinstance(regimes, dict):
        named = [(letter, runs[0]) for letter, runs in regimes.items()]
    else:
        files = sorted(Path(regimes).glob("*.json"))
        named = [(f.stem.split("_")[0], r) for f, r in zip(files, _load_regime_files(regimes, files))]
    rows = []
    for letter, r in named:
        c, a, p, conf = r["clean"], r["adversarial"], r["principle"], r["config"]
        rows.append([letter, f"{conf['beta']:g}", f"{conf['init_std']:g}",
                     f"{conf['clean_steps']}+{conf['adv_steps']}", f"{conf['adv_lr']:g}",
                     f"{c['clean_acc']:.3f} / {a['clean_acc']:.3f}",
                     f"{c['robust_acc']:.3f} / {a['robust_acc']:.3f}",
                     f"{c['cos_init_median']:.2f} / {a['cos_init_median']:.2f}",
                     f"{p['holds_fraction']:.2f}", f"{p['ratio_median']:.2f}"])
    return rows


def regime_scale(results: dict) -> str:
    """Where the regime results were made, from their provenance: e.g. ``"profile full on CPU (x86_64, ...)"``,
    one entry per distinct (profile, device) pair."""
    pairs = sorted({(r["provenance"]["profile"], r["provenance"].get("device_name") or r["provenance"]["device"])
                    for r in results.values()})
    return "; ".join(f"profile {p} on {dev}" for p, dev in pairs)


def first_step_reaching(history, key: str, level: float):
    """The first logged step of ``history`` (a list of dicts with ``"step"``) at which ``key`` reaches
    ``level``; None if it never does."""
    return next((r["step"] for r in history if r.get(key) is not None and r[key] >= level), None)


def regime_glue(results: dict) -> dict:
    """The numbers the regime section of the adversarial chapter quotes, from ``{letter: run synthetic result}``
    (every regime given; G, whose trajectory the chapter follows, is needed), named as the chapter glues them
    (``reg_<letter>_<what>``)."""
    out = {}
    for key in sorted(results):
        r = results[key]
        c, a, p, conf = r["clean"], r["adversarial"], r["principle"], r["config"]
        out.update({f"reg_{key}_holds": p["holds_fraction"], f"reg_{key}_ratio": p["ratio_median"],
                    f"reg_{key}_cos_clean": c["cos_init_median"], f"reg_{key}_cos_adv": a["cos_init_median"],
                    f"reg_{key}_robust": a["robust_acc"], f"reg_{key}_clean": a["clean_acc"],
                    f"reg_{key}_steps": conf["adv_steps"], f"reg_{key}_lr": conf["adv_lr"],
                    f"reg_{key}_beta": conf["beta"], f"reg_{key}_init": conf["init_std"],
                    f"reg_{key}_top1_clean": c["top1_energy_median"], f"reg_{key}_top1_adv": a["top1_energy_median"]})
    hist = results["G"]["adversarial_history"]
    out.update(reg_G_holds_first=hist[1]["principle_holds"], reg_G_first_step=hist[1]["step"],
               reg_G_robust_first=hist[1]["robust_acc"],
               reg_G_step_95=first_step_reaching(hist, "robust_acc", 0.95),
               reg_d=results["G"]["config"]["d"],
               # median |cos| of two independent random directions in R^d (~0.6745 / sqrt(d)): the "no correlation" level
               reg_cos_chance=0.6745 / results["G"]["config"]["d"] ** 0.5)
    return out


# what the seed table and glue report per regime: name -> where it is in a ``run synthetic`` result
REGIME_SEED_FIELDS = {
    "robust": ("adversarial", "robust_acc"), "clean": ("adversarial", "clean_acc"),
    "holds": ("principle", "holds_fraction"), "ratio": ("principle", "ratio_median"),
    "cos_clean": ("clean", "cos_init_median"), "cos_adv": ("adversarial", "cos_init_median"),
    "top1_clean": ("clean", "top1_energy_median"), "top1_adv": ("adversarial", "top1_energy_median"),
}
REGIME_SEED_HEADER = ["run", "seeds", "PGD acc at tau, adv", "clean acc, adv", "principle holds", "median ratio",
                      "|cos(w, w0)|, adv", "top-1 energy, adv"]


def regime_seeds(folder) -> dict[str, list[dict]]:
    """Every regime of ``folder`` (``results/regimes``, or ``results/lowrank`` for ``run lowrank``'s) with its
    replicates: ``{letter: [seed 0, seed 1, ...]}``,
    seed 0 being ``<regime>.json`` and the others ``seeds/<regime>_seed<k>.json`` (written by ``run.sh``), in seed
    order. A seed draws its own dictionary, held-out points, initialisation and samples; everything else in a
    replicate's config must be its regime's (``ValueError`` naming the difference otherwise). Every file is read
    once, as :func:`_load_regime_files` does: the stale ones, replicates included, warn once, together."""
    from pathlib import Path

    folder = Path(folder)
    bases = sorted(folder.glob("*.json"))
    replicates = {f: sorted((folder / "seeds").glob(f"{f.stem}_seed*.json")) for f in bases}
    files = bases + [g for f in bases for g in replicates[f]]
    loaded = dict(zip(files, _load_regime_files(folder, files)))
    out = {}
    for f in bases:
        base = loaded[f]
        runs = {int(base["config"]["seed"]): base}
        for g in replicates[f]:
            r = loaded[g]
            diff = sorted(k for k in set(base["config"]) | set(r["config"])
                          if k != "seed" and base["config"].get(k) != r["config"].get(k))
            if diff:
                raise ValueError(f"{g} is not a replicate of {f.name}: its config differs in {', '.join(diff)}")
            seed = int(r["config"]["seed"])
            if seed in runs:
                raise ValueError(f"{g} repeats seed {seed} of regime {f.stem}")
            runs[seed] = r
        out[f.stem.split("_")[0]] = [runs[k] for k in sorted(runs)]
    return out


def regime_seed_values(runs: list[dict]) -> dict[str, list[float]]:
    """Per :data:`REGIME_SEED_FIELDS` name, the values of one regime's runs (one per seed, in seed order)."""
    return {name: [float(r[part][key]) for r in runs] for name, (part, key) in REGIME_SEED_FIELDS.items()}


def regime_seed_rows(reg_seeds: dict[str, list[dict]]) -> list[list]:
    """One row per regime of :func:`regime_seeds` (:data:`REGIME_SEED_HEADER`): the seeds, then each number as
    ``mean [min, max]`` over them."""
    rows = []
    for letter, runs in reg_seeds.items():
        v = regime_seed_values(runs)
        cell = {name: f"{sum(x) / len(x):.2f} [{min(x):.2f}, {max(x):.2f}]" for name, x in v.items()}
        rows.append([letter, ", ".join(str(r["config"]["seed"]) for r in runs), cell["robust"], cell["clean"],
                     cell["holds"], cell["ratio"], cell["cos_adv"], cell["top1_adv"]])
    return rows


def regime_seed_glue(reg_seeds: dict[str, list[dict]], letters=None) -> dict:
    """The seed ranges the regime section quotes: ``reg_<letter>_<name>_min`` / ``_max`` / ``_mean`` for every
    regime in ``letters`` (default: all) and :data:`REGIME_SEED_FIELDS` name, and ``reg_seeds_n``, the smallest
    number of seeds of any regime; and, for ``holds`` and ``robust``, the largest spread (max - min over the
    seeds) of any regime, ``reg_<name>_spread_max``, and that regime, ``reg_<name>_spread_letter``."""
    out = {"reg_seeds_n": min(len(runs) for runs in reg_seeds.values())}
    values = {letter: regime_seed_values(runs) for letter, runs in reg_seeds.items()}
    for letter, v in values.items():
        if letters is not None and letter not in letters:
            continue
        for name, x in v.items():
            out.update({f"reg_{letter}_{name}_min": min(x), f"reg_{letter}_{name}_max": max(x),
                        f"reg_{letter}_{name}_mean": sum(x) / len(x)})
    for name in ("holds", "robust"):
        letter = max(values, key=lambda k: max(values[k][name]) - min(values[k][name]))
        out[f"reg_{name}_spread_max"] = max(values[letter][name]) - min(values[letter][name])
        out[f"reg_{name}_spread_letter"] = letter
    return out


LOWRANK_HEADER = ["rank r", "energy share of the full update", "truncated update: clean / PGD acc",
                  "rank-r training: clean / PGD acc"]


def lowrank_seed(cfg: SyntheticConfig, rank: int) -> int:
    """The seed of rank-``rank`` training's generator in :func:`lowrank_study`: its own, so a rank's numbers do
    not depend on which other ranks are trained, nor on the order or the process they are trained in."""
    return cfg.seed + 50_000 + int(rank)


def _lowrank_unit(cfg: SyntheticConfig, kind: str, rank: int, W0: torch.Tensor, W_clean: torch.Tensor,
                  W_adv: torch.Tensor, betas: tuple[float, float], device, progress=False,
                  s: Setup | None = None) -> dict:
    """One piece of :func:`lowrank_study` from tensors and the config alone (so a worker process of
    :mod:`fp_helpers.parallel` can run it; ``s``: the run's setup, to use in this process instead of
    rebuilding the same one): ``kind="trained"``, adversarial training of rank-``rank`` factors on the clean
    weights from :func:`lowrank_seed`, or ``"truncated"``, the rank-``rank`` cut of the full update; evaluated."""
    s = setup(cfg, device) if s is None else s
    W0, Wc = W0.to(s.device), W_clean.to(s.device)
    if kind == "trained":
        s = replace(s, gen=torch.Generator(device=s.device).manual_seed(lowrank_seed(cfg, rank)))
        start = _net_from_state(cfg, {"W": Wc, "beta": betas[0]}, s.device)
        net, _ = train_adversarial(s, start, W0, rank=rank, progress=progress)
        ev = evaluate(net, s, W0)
        return {"clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"],
                "mixture_norm_median": ev["mixture_norm_median"],
                **pur.update_directions(Wc, net.weight.detach(), s.dist.u)}
    net = _net_from_state(cfg, {"W": pur.truncated_update(Wc, W_adv.to(s.device), rank), "beta": betas[1]}, s.device)
    ev = evaluate(net, s, W0)
    return {"clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"],
            **pur.update_directions(Wc, net.weight.detach(), s.dist.u)}


def lowrank_study(run: SyntheticRun, trained_ranks=None, truncation_ranks=(1, 2, 4, 16, 64),
                  progress=None, workers: int | None = None) -> dict:
    """Can adversarial training be done through a rank-``r`` update of the clean weights?

    Two questions, on the same held-out points and attack as the rest of the run:
    - *trained*: adversarial training of ``W_clean + A B^T`` only (LoRA-style factors), for each
      ``trained_ranks`` (default ``cfg.lowrank_ranks``), each from its own generator (:func:`lowrank_seed`);
    - *truncated*: the update that full-rank adversarial training made, ``W_adv - W_clean``, cut to its best
      rank-``r`` approximation. If even this is not robust, the robust solution found is not low-rank.
    On a CPU the trainings and evaluations run side by side in worker processes (:mod:`fp_helpers.parallel`;
    ``workers`` or ``$FP_WORKERS`` overrides the automatic choice, ``1``: all in this process) with the same
    numbers. Returns ``{"spectrum": UpdateSpectrum, "cos_top_u": float, "rows": [...]}`` with one row per rank
    (``LOWRANK_HEADER``), plus the raw numbers in ``trained`` / ``truncated`` (each with where its update points,
    :func:`fp_helpers.purification.update_directions`) and ``directions``, the same for the full update.
    """
    cfg, s = run.cfg, run.setup
    trained_ranks = sorted(set(int(r) for r in (cfg.lowrank_ranks if trained_ranks is None else trained_ranks)))
    Wc, Wa = run.clean.weight.detach(), run.adversarial.weight.detach()
    spec = pur.update_spectrum(Wc, Wa)
    full = min(Wc.shape)
    cut_ranks = sorted(set(int(r) for r in tuple(truncation_ranks) + tuple(trained_ranks) if int(r) <= full))
    jobs = [("trained", r) for r in trained_ranks] + [("truncated", r) for r in cut_ranks]  # longest first
    # an FGM step costs about two clean steps (four matrix products instead of two)
    n = parallel.n_workers(len(jobs), s.device, 2 * cfg.adv_steps if trained_ranks else 0, workers)
    tensors = (run.W0, Wc, Wa) if n == 1 else (run.W0.cpu(), Wc.cpu(), Wa.cpu())
    where = (s.device, progress, s) if n == 1 else ("cpu", False, None)  # in workers: no progress bars
    betas = (float(run.clean.beta), float(run.adversarial.beta))
    tasks = [(cfg, kind, r, *tensors, betas, *where) for kind, r in jobs]
    out: dict = {"trained": {}, "truncated": {}}
    for i, res in parallel.run_unordered(_lowrank_unit, tasks, n):
        out[jobs[i][0]][jobs[i][1]] = res
    trained = {r: out["trained"][r] for r in trained_ranks}
    truncated = {r: {**out["truncated"][r], "energy_share": spec.share(r)} for r in cut_ranks}
    rows = []
    for r in sorted(set(trained) | set(truncated)):
        t, tr = truncated.get(r), trained.get(r)
        rows.append([r, f"{spec.share(r):.3f}",
                     f"{t['clean_acc']:.3f} / {t['robust_acc']:.3f}" if t else "-",
                     f"{tr['clean_acc']:.3f} / {tr['robust_acc']:.3f}" if tr else "-"])
    cos_top_u = abs(torch.dot(spec.top_direction, s.dist.u)).item()
    return {"spectrum": spec, "cos_top_u": cos_top_u, "rows": rows, "trained": trained, "truncated": truncated,
            "directions": pur.update_directions(Wc, Wa, s.dist.u)}


def lowrank_study_glue(study: dict, cfg: SyntheticConfig) -> dict:
    """The numbers the adversarial chapter quotes from :func:`lowrank_study` (``at_lr_*``, and ``at_lowrank_lr``, the
    rank-r training's learning rate): the full update's spectrum (top direction's ``|cos|`` with ``u``, the top share,
    relative size, share at the largest truncation) and where it points (share along ``u``, coefficient kept); the
    smallest and largest truncation's accuracies; the best trained rank by PGD accuracy with its accuracies; over the
    trained ranks (``at_lr_trained_ranks``), the smallest share along ``u``, the range of the coefficient kept, the
    largest norm ratio, and the range of clean and PGD accuracy (``at_lr_trained_{clean,robust}_{min,max}``)."""
    spec, tr, trained = study["spectrum"], study["truncated"], study["trained"]
    r1, r_big = min(tr), max(tr)
    out = {"at_lr_cos_top_u": study["cos_top_u"], "at_lr_share1": spec.share(1), "at_lr_rel": spec.relative_size,
           "at_lr_r1": r1, "at_lr_rbig": r_big, "at_lr_share_big": spec.share(r_big),
           "at_lr_trunc1_clean": tr[r1]["clean_acc"], "at_lr_trunc1_robust": tr[r1]["robust_acc"],
           "at_lr_truncbig_robust": tr[r_big]["robust_acc"], "at_lowrank_lr": cfg.lowrank_lr,
           "at_lr_full_ushare": study["directions"]["u_share"], "at_lr_full_kept": study["directions"]["u_kept"],
           "at_lr_trunc1_ushare": tr[r1]["u_share"]}
    if trained:
        best_r, best = max(trained.items(), key=lambda kv: kv[1]["robust_acc"])
        out.update({"at_lr_trained_r": best_r, "at_lr_trained_robust": best["robust_acc"],
                    "at_lr_trained_clean": best["clean_acc"],
                    "at_lr_trained_ushare_min": min(t["u_share"] for t in trained.values()),
                    "at_lr_trained_kept_min": min(t["u_kept"] for t in trained.values()),
                    "at_lr_trained_kept_max": max(t["u_kept"] for t in trained.values()),
                    "at_lr_trained_keptnorm_max": max(t["u_kept_norm"] for t in trained.values()),
                    "at_lr_trained_clean_min": min(t["clean_acc"] for t in trained.values()),
                    "at_lr_trained_clean_max": max(t["clean_acc"] for t in trained.values()),
                    "at_lr_trained_robust_min": min(t["robust_acc"] for t in trained.values()),
                    "at_lr_trained_robust_max": max(t["robust_acc"] for t in trained.values()),
                    "at_lr_trained_ranks": ", ".join(str(r) for r in sorted(trained))})
    return out


# ------------------------------------------------------------------------------------------- run lowrank

# Rank-r training with other optimisers and step sizes than the chapter's one (SGD at cfg.lowrank_lr):
# (optimiser, learning rate) pairs, each at every rank of LOWRANK_GRID_RANKS. SGD's step through W = W_base + A B^T
# is scaled by A A^T and B B^T, so its rates are a decade around the chapter's; Adam's step is about lr per
# coordinate of A and B, and its rates start at the top of the range LoRA uses on large models (1e-4 to 5e-4)
# and go above it.
LOWRANK_GRID = (("sgd", 0.01), ("sgd", 0.03), ("sgd", 0.1), ("adam", 1e-3), ("adam", 3e-3), ("adam", 1e-2))
LOWRANK_GRID_RANKS = (1, 4, 16)
LOWRANK_OPTIMISERS = {"sgd": LowRankTwoLayerNet, "adam": AdamLowRankTwoLayerNet}


def lowrank_train(s: Setup, start: TwoLayerNet, W0: torch.Tensor, rank: int, optimiser: str = "sgd",
                  lr: float | None = None, progress=False) -> tuple[TwoLayerNet, History]:
    """Adversarial training (the run's attack and schedule) of rank-``rank`` factors on ``start`` with
    ``optimiser`` ("sgd" or "adam") at learning rate ``lr`` (default ``cfg.lowrank_lr``), drawing from
    ``s.gen``. With SGD at ``cfg.lowrank_lr`` it is :func:`train_adversarial`'s rank-``rank`` training (same
    weights: ``tests/test_lowrank.py``). Every ``log_every`` steps the history records what
    :func:`train_adversarial`'s does (:func:`progress_eval`, with ``W0`` the initial weights) and the accuracy
    under FGM, the training attack, on the same points (``fgm_acc``: above ``clean_acc`` once the training leaks,
    :func:`leaks`) and how much of the start's projection on the dense direction is left (``u_kept``,
    :func:`fp_helpers.purification.update_directions`); these evaluations draw nothing from ``s.gen``, so the weights do not depend on them."""
    if optimiser not in LOWRANK_OPTIMISERS:
        raise ValueError(f"unknown optimiser {optimiser!r}; allowed: {', '.join(LOWRANK_OPTIMISERS)}")
    net = LOWRANK_OPTIMISERS[optimiser](start, rank, generator=s.gen)
    net.beta = start.beta
    tcfg = s.cfg.adv_train_config(lowrank=True)
    if lr is not None:
        tcfg = replace(tcfg, lr=float(lr)).validate()
    W_start = start.weight.detach()
    base = progress_eval(s, W0, n=LOWRANK_CURVE_N, W_clean=W_start)
    n = len(s.x_eval[:LOWRANK_CURVE_N])
    x, y, fgm_spec = s.x_eval[:n], s.y_eval[:n], AttackSpec("fgm", s.cfg.norm)

    def eval_fn(step, model):
        return {**base(step, model), "fgm_acc": robust_accuracy(model, x, y, s.cfg.tau, fgm_spec),
                "u_kept": pur.update_directions(W_start, model.weight.detach(), s.dist.u)["u_kept"]}

    hist = train(net, s.dist, tcfg, s.gen, eval_fn=eval_fn, progress=progress,
                 desc=f"{tcfg.attack} training (rank {rank}, {optimiser}, lr {tcfg.lr:g})")
    return net, hist


LOWRANK_CURVE_N = 500  # the held-out points progress_eval uses (its default n)
LOWRANK_CURVE_KEYS = ("step", "loss", "clean_acc", "fgm_acc", "robust_acc", "mixture_norm_median", "u_kept")


def _curve(hist: History) -> list[dict]:
    """The logged rows of a rank-r training, as JSON-safe numbers (the step-0 loss, not defined, as None)."""
    return [{k: (None if isinstance(r[k], float) and not math.isfinite(r[k]) else r[k]) for k in LOWRANK_CURVE_KEYS}
            for r in hist.rows]


def _lowrank_grid_unit(cfg: SyntheticConfig, rank: int, optimiser: str, lr: float, W0: torch.Tensor,
                       W_clean: torch.Tensor, beta: float, device) -> dict:
    """One (rank, optimiser, lr) of :func:`run_lowrank`, from tensors and the config alone (a worker can run it):
    trained from :func:`lowrank_seed` as in :func:`lowrank_study`, then evaluated as every network of the run.
    A training whose loss stops being finite is reported as diverged (with its step), not raised."""
    s = setup(cfg, device)
    s = replace(s, gen=torch.Generator(device=s.device).manual_seed(lowrank_seed(cfg, rank)))
    start = _net_from_state(cfg, {"W": W_clean.to(s.device), "beta": beta}, s.device)
    row = {"rank": int(rank), "optimiser": optimiser, "lr": float(lr)}
    try:
        net, hist = lowrank_train(s, start, W0.to(s.device), rank, optimiser, lr)
    except FloatingPointError as e:
        return {**row, "diverged": str(e)}
    ev = evaluate(net, s, W0.to(s.device))
    update = net.update.detach()
    return {**row, "diverged": None, "clean_acc": ev["clean_acc"], "robust_acc": ev["robust_acc"],
            "fgm_acc": ev["fgm_acc"], "final_loss": hist.rows[-1]["loss"],
            "update_rel_norm": (update.norm() / W_clean.norm()).item(),
            "mixture_norm_median": ev["mixture_norm_median"],
            **pur.update_directions(start.weight.detach(), net.weight.detach(), s.dist.u), "curve": _curve(hist)}


def run_lowrank(cfg: SyntheticConfig, device=None, progress=None, profile: str | None = None,
                checkpoint_dir=None, grid=LOWRANK_GRID, ranks=LOWRANK_GRID_RANKS,
                truncation_ranks=(1, 2, 4, 16, 64), workers: int | None = None) -> dict:
    """The low-rank question for one synthetic run (a regime of ``results/regimes``), asked more widely than
    the chapter's :func:`lowrank_study`: the run itself (:func:`run_synthetic`, the same weights and numbers as
    ``run synthetic`` with this config), the truncations of its full update, and rank-``r`` training at every
    ``ranks`` with every ``(optimiser, lr)`` of ``grid``. Returns plain numbers, stamped like every run
    (``config``, ``provenance``): ``run`` (clean and PGD accuracy of the clean and the adversarial network),
    ``principle_holds_fraction``, ``spectrum`` (energy shares, relative size, |cos(top, u)|), ``truncated`` and
    ``trained`` (lists of rows; a trained row also has FGM accuracy, the last step's training loss, the update's
    norm relative to the clean weights', the median mixture norm, where the update points
    (:func:`fp_helpers.purification.update_directions`: ``cos_top_u``, ``u_share``, ``u_kept``, ``u_kept_norm``;
    ``spectrum`` has
    them for the full update) and ``curve``, the training's logged rows: loss, clean, FGM and PGD-10 accuracy and
    the median mixture norm on the first ``LOWRANK_CURVE_N`` held-out points, and ``u_kept`` so far)."""
    cfg = _check_config(cfg)
    t0 = time.perf_counter()
    run = run_synthetic(cfg, device=device, progress=progress, curves=False, checkpoint_dir=checkpoint_dir)
    s = run.setup
    study = lowrank_study(run, trained_ranks=(), truncation_ranks=truncation_ranks, workers=workers)
    spec = study["spectrum"]
    grid = [(str(o), float(lr)) for o, lr in grid]
    jobs = [(int(r), o, lr) for r in ranks for o, lr in grid]
    n = parallel.n_workers(len(jobs), s.device, 2 * cfg.adv_steps, workers)
    W0, Wc = (run.W0, run.clean.weight.detach()) if n == 1 else (run.W0.cpu(), run.clean.weight.detach().cpu())
    dev = s.device if n == 1 else "cpu"
    tasks = [(cfg, r, o, lr, W0, Wc, float(run.clean.beta), dev) for r, o, lr in jobs]
    trained: list = [None] * len(jobs)
    for i, res in parallel.run_unordered(_lowrank_grid_unit, tasks, n):
        trained[i] = res
    m = run.metrics
    out = {
        "run": {key: {"clean_acc": m[key]["clean_acc"], "robust_acc": m[key]["robust_acc"]}
                for key in ("clean", "adversarial")},
        "principle_holds_fraction": m["principle"]["holds_fraction"],
        "spectrum": {"energy_share": {int(r): spec.share(int(r)) for r in (1, 2, 4, 16, 64) if r <= min(Wc.shape)},
                     "relative_size": spec.relative_size, "cos_top_u": study["cos_top_u"],
                     **{k: study["directions"][k] for k in ("u_share", "u_kept", "u_kept_norm")}},
        "truncated": [{"rank": int(r), **v} for r, v in sorted(study["truncated"].items())],
        "trained": trained,
        "chapter_lr": cfg.lowrank_lr,
    }
    stamp(out, "lowrank", cfg, profile, s.device)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _results_by_letter(folder, experiment: str, script: str) -> dict[str, dict]:
    """The ``run <experiment>`` results of ``folder`` as ``{regime letter: result}``, the letter being the file
    name's first part (``A_beta0_init01.json`` -> ``"A"``); stale ones warn together, as :func:`regime_seeds` does.
    No file raises ``FileNotFoundError`` naming ``script``, which makes them; a file of another experiment, or two files of one
    letter, raise ``ValueError``."""
    from pathlib import Path

    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no run {experiment} results (*.json) in {folder}; make them with {script}")
    out: dict[str, dict] = {}
    for f, r in zip(files, _load_regime_files(folder, files)):
        letter = f.stem.split("_")[0]
        if (r.get("provenance") or {}).get("experiment") != experiment:
            raise ValueError(f"{f} is not a run {experiment} result (provenance.experiment is "
                             f"{(r.get('provenance') or {}).get('experiment')!r})")
        if letter in out:
            raise ValueError(f"two results for regime {letter} in {folder}: rename one ({f.name})")
        out[letter] = r
    return out


def lowrank_grid_results(folder) -> dict[str, dict]:
    """The ``run lowrank`` results of ``folder`` (``results/lowrank``) as ``{regime letter: result}``
    (:func:`_results_by_letter`)."""
    return _results_by_letter(folder, "lowrank", "results/lowrank/run.sh")


def regime_label(letter: str) -> str:
    """How the book writes a regime of a results file: ``"A"``, or ``"A (long)"`` for ``"Along"`` (a variant of A)."""
    return letter if len(letter) == 1 else f"{letter[0]} ({letter[1:]})"


def grid_settings(res: dict) -> list[tuple[str, float]]:
    """The ``(optimiser, lr)`` pairs of a ``run lowrank`` result's rank-r trainings, in the order they were run."""
    seen = []
    for t in res["trained"]:
        if (t["optimiser"], t["lr"]) not in seen:
            seen.append((t["optimiser"], t["lr"]))
    return seen


def leaks(t: dict) -> bool:
    """A rank-r training whose accuracy under FGM, the training attack, is *above* its clean accuracy: the attack's
    step, which depends on the label, helps the network instead of hurting it (label leaking, the signature of
    single-step adversarial training defeating its own attack; see the adversarial chapter)."""
    return not t.get("diverged") and t["fgm_acc"] > t["clean_acc"]


def optimiser_name(o: str) -> str:
    """How the book writes an optimiser of :data:`LOWRANK_OPTIMISERS`: "SGD", "Adam"."""
    return "SGD" if o == "sgd" else o.capitalize()


def leak_onset(t: dict) -> int | None:
    """The first logged step of a rank-r training's ``curve`` at which its FGM accuracy exceeds its clean accuracy
    (on the curve's points, :data:`LOWRANK_CURVE_N` of them); None if it never does (or the training diverged)."""
    if t.get("diverged"):
        return None
    return next((r["step"] for r in t["curve"] if r["step"] > 0 and r["fgm_acc"] > r["clean_acc"]), None)


def ever_reversed(t: dict) -> bool:
    """Whether a rank-r training has the projection on ``u`` reversed (coefficient below zero) at its end or at any
    logged step of its ``curve``."""
    return t["u_kept"] < 0 or any(r["u_kept"] < 0 for r in t.get("curve", []))


def _pattern_cos(t: dict) -> float:
    """cos between a network's projection on ``u`` over the neurons, ``W u``, and the clean network's, ``W_clean u``
    (from :func:`fp_helpers.purification.update_directions`: the coefficient over the ratio of norms)."""
    return t["u_kept"] / t["u_kept_norm"] if t["u_kept_norm"] > 0 else 0.0


def _off_u(t: dict) -> float:
    """The norm of a rank-r training's update off the dense direction ``u``, relative to the clean weights' norm."""
    return t["update_rel_norm"] * max(0.0, 1.0 - t["u_share"]) ** 0.5


def _direction_groups(res: dict) -> dict[str, list[dict]]:
    """The groups of a ``run lowrank`` result's rank-r trainings (diverged ones left out) that the chapter describes:
    ``all``, ``held`` (not leaking), ``leak`` (:func:`leaks`), one per optimiser and one per rank (``r1``, ...)."""
    ok = [t for t in res["trained"] if not t.get("diverged")]
    return {"all": ok, "held": [t for t in ok if not leaks(t)], "leak": [t for t in ok if leaks(t)],
            **{o: [t for t in ok if t["optimiser"] == o] for o in dict.fromkeys(t["optimiser"] for t in ok)},
            **{f"r{r}": [t for t in ok if t["rank"] == r] for r in sorted({t["rank"] for t in ok})}}


LOWRANK_DIRECTION_HEADER = ["regime: updates", "trainings", "share of energy along u", "min |cos(top, u)|",
                            "W u: norm / clean's", "W u: coefficient on clean's", "W u: cosine with clean's",
                            "reversed at the end / at any logged step", "clean accuracy"]


def lowrank_direction_rows(results: dict[str, dict], groups=(("A", ("held", "leak")), ("G", ("sgd", "adam")),
                                                             ("Along", ("leak", "held")))) -> list[list]:
    """Where the updates point, as a table (:data:`LOWRANK_DIRECTION_HEADER`): per regime of ``results`` named in
    ``groups``, the full update (share along ``u``, ``|cos(top, u)|`` and coefficient; the rest is not recorded for
    it), then each named group of rank-r trainings (:func:`_direction_groups`; an empty group is left out) with the
    ranges of the quantities :func:`lowrank_direction_glue` glues. Ranges print as ``lo to hi``."""
    names = {"held": "rank-r, not leaking", "leak": "rank-r, leaking", "sgd": "rank-r, SGD", "adam": "rank-r, Adam",
             "all": "rank-r, all"}
    rows = []
    for L, wanted in groups:
        if L not in results:
            continue
        res, label = results[L], regime_label(L)
        sp = res["spectrum"]
        rows.append([f"{label}: full update", 1, f"{sp['u_share']:.3f}", f"{sp['cos_top_u']:.2f}", "-",
                     f"{sp['u_kept']:.2f}", "-", "-", f"{res['run']['adversarial']['clean_acc']:.3f}"])
        by = _direction_groups(res)
        for g in wanted:
            ts = by.get(g, [])
            if not ts:
                continue
            ever = sum(ever_reversed(t) for t in ts)
            rows.append([f"{label}: {names.get(g, g)}", len(ts),
                         _span(min(t["u_share"] for t in ts), max(t["u_share"] for t in ts), ".2f"),
                         f"{min(t['cos_top_u'] for t in ts):.2f}",
                         _span(min(t["u_kept_norm"] for t in ts), max(t["u_kept_norm"] for t in ts), ".2f"),
                         _span(min(t["u_kept"] for t in ts), max(t["u_kept"] for t in ts), ".2f"),
                         _span(min(map(_pattern_cos, ts)), max(map(_pattern_cos, ts)), ".2f"),
                         f"{sum(t['u_kept'] < 0 for t in ts)} / {ever}",
                         _span(min(t["clean_acc"] for t in ts), max(t["clean_acc"] for t in ts), ".3f")])
    return rows


def lowrank_direction_glue(results: dict[str, dict]) -> dict:
    """Where the updates of ``{letter: run lowrank result}`` point (:func:`fp_helpers.purification.update_directions`)
    and when the leaking trainings start to leak (``lrd_<letter>_<what>``): for the full update its share along
    ``u``, ``|cos(top, u)|`` and the projection on ``u`` it keeps (``full_*``); for the rank-r trainings (``all_*``),
    those that do not leak (``held_*``), those that do (``leak_*``; :func:`leaks`), those of each optimiser
    (``sgd_*``, ``adam_*``) and of each rank (``r1_*``, ...), their number, the range of their update's share along ``u``, the smallest
    ``|cos(top, u)|``, the range of the projection kept (``kept``, signed: negative = reversed; ``keptnorm``, the
    ratio of norms; ``pcos``, the cosine between ``W u`` and ``W_clean u`` over the neurons), how many reverse it
    at the end (and do not: ``not_reversed``; at any logged step of the curve: ``ever_reversed_of``), the update's norm off ``u`` relative to the clean weights' (``offu``) and the
    clean accuracy; for the
    leaking ones, the range of :func:`leak_onset` and how many have reversed the projection by the first logged step
    at which they leak (``rev_by_onset``; strictly before it: ``rev_before_onset``)."""
    out = {}
    for L, res in sorted(results.items()):
        sp = res["spectrum"]
        out.update({f"lrd_{L}_full_cos": sp["cos_top_u"], f"lrd_{L}_full_share": sp["u_share"],
                    f"lrd_{L}_full_kept": sp["u_kept"], f"lrd_{L}_steps": res["config"]["adv_steps"]})
        ok = [t for t in res["trained"] if not t.get("diverged")]
        for name, group in _direction_groups(res).items():
            out[f"lrd_{L}_{name}"] = len(group)
            if not group:
                continue
            rev = sum(t["u_kept"] < 0 for t in group)
            ever = sum(ever_reversed(t) for t in group)
            out.update({f"lrd_{L}_{name}_share_min": min(t["u_share"] for t in group),
                        f"lrd_{L}_{name}_share_max": max(t["u_share"] for t in group),
                        f"lrd_{L}_{name}_cos_min": min(t["cos_top_u"] for t in group),
                        f"lrd_{L}_{name}_kept_min": min(t["u_kept"] for t in group),
                        f"lrd_{L}_{name}_kept_max": max(t["u_kept"] for t in group),
                        f"lrd_{L}_{name}_keptnorm_min": min(t["u_kept_norm"] for t in group),
                        f"lrd_{L}_{name}_keptnorm_max": max(t["u_kept_norm"] for t in group),
                        f"lrd_{L}_{name}_reversed": rev, f"lrd_{L}_{name}_reversed_of": count_words(rev, len(group)),
                        f"lrd_{L}_{name}_not_reversed": len(group) - rev,
                        f"lrd_{L}_{name}_ever_reversed_of": count_words(ever, len(group)),
                        f"lrd_{L}_{name}_pcos_min": min(_pattern_cos(t) for t in group),
                        f"lrd_{L}_{name}_pcos_max": max(_pattern_cos(t) for t in group),
                        f"lrd_{L}_{name}_offu_min": min(_off_u(t) for t in group),
                        f"lrd_{L}_{name}_offu_max": max(_off_u(t) for t in group),
                        f"lrd_{L}_{name}_clean_min": min(t["clean_acc"] for t in group),
                        f"lrd_{L}_{name}_clean_max": max(t["clean_acc"] for t in group)})
        leaking = [t for t in ok if leaks(t)]
        onsets = [leak_onset(t) for t in leaking]
        known = [o for o in onsets if o is not None]
        if known:
            out.update({f"lrd_{L}_onset_min": min(known), f"lrd_{L}_onset_max": max(known)})
        if leaking:
            by = sum(o is not None and any(r["step"] <= o and r["u_kept"] < 0 for r in t["curve"])
                     for t, o in zip(leaking, onsets))
            before = sum(o is not None and any(r["step"] < o and r["u_kept"] < 0 for r in t["curve"])
                         for t, o in zip(leaking, onsets))
            out.update({f"lrd_{L}_rev_by_onset": by, f"lrd_{L}_rev_by_onset_of": count_words(by, len(leaking)),
                        f"lrd_{L}_rev_before_onset": before})
    return out


def lowrank_grid_rows(res: dict) -> tuple[list[str], list[list]]:
    """The table of one ``run lowrank`` result: one row per (optimiser, lr) of rank-r training, one column per
    rank, each cell ``clean / PGD (FGM)`` accuracy (``diverged``; a dagger where FGM accuracy exceeds clean
    accuracy, :func:`leaks`), then the truncated full update at every rank either has (clean / PGD). Returns
    ``(header, rows)``."""
    ranks = sorted({t["rank"] for t in res["trained"]} | {t["rank"] for t in res["truncated"]})
    cells = {(t["rank"], t["optimiser"], t["lr"]): t for t in res["trained"]}
    header = ["rank-r update", *(f"r = {r}: clean / PGD (FGM)" for r in ranks)]

    def cell(t):
        if t is None:
            return "-"
        if t.get("diverged"):
            return "diverged"
        fgm = f" ({t['fgm_acc']:.3f}{' †' if leaks(t) else ''})" if "fgm_acc" in t else ""
        return f"{t['clean_acc']:.3f} / {t['robust_acc']:.3f}{fgm}"

    rows = [[f"trained, {optimiser_name(o)} lr {lr:g}", *(cell(cells.get((r, o, lr))) for r in ranks)]
            for o, lr in grid_settings(res)]
    trunc = {t["rank"]: t for t in res["truncated"]}
    rows.append(["truncated full update", *(cell(trunc.get(r)) for r in ranks)])
    return header, rows


def continuation_glue(short: dict, long: dict, prefix: str = "lrd") -> dict:
    """What a longer ``run lowrank`` (``long``, e.g. A at 40,000 FGM steps) says about the trainings of a shorter one
    with the same seeds (``short``): ``<prefix>_continued``, a sentence saying whether the logged rows agree at every
    (training, step) both logged (the longer run then continues the shorter one); ``<prefix>_held_later_of`` /
    ``_min`` / ``_max``: how many of the trainings that did not leak in ``short`` (:func:`leaks`) leak in ``long``, and
    from which logged steps (:func:`leak_onset`)."""
    def rows(res):
        return {(t["optimiser"], t["lr"], t["rank"], r["step"]): r for t in res["trained"] for r in t.get("curve", [])}

    a, b = rows(short), rows(long)
    common = set(a) & set(b)
    same = bool(common) and all(a[k] == b[k] for k in common)
    out = {f"{prefix}_continued": f"the same logs at all {len(common)} shared (training, step) pairs" if same else
           f"logs that differ at {sum(a[k] != b[k] for k in common)} of {len(common)} shared (training, step) pairs"}
    held = {(t["optimiser"], t["lr"], t["rank"]) for t in short["trained"] if not t.get("diverged") and not leaks(t)}
    later = [leak_onset(t) for t in long["trained"] if (t["optimiser"], t["lr"], t["rank"]) in held]
    known = [o for o in later if o is not None]
    out[f"{prefix}_held_later_of"] = count_words(len(known), len(later))
    if known:
        out.update({f"{prefix}_held_later_min": min(known), f"{prefix}_held_later_max": max(known)})
    return out


def count_words(k: int, n: int) -> str:
    """``k`` of ``n`` in words, as the chapters write counts: "none of the 18", "all 18", "9 of the 18"."""
    return f"none of the {n}" if k == 0 else f"all {n}" if k == n else f"{k} of the {n}"


def lowrank_grid_glue(results: dict[str, dict], regimes: dict[str, dict] | None = None) -> dict:
    """The numbers the chapter quotes from ``{letter: run lowrank result}`` (``lrg_<letter>_<what>``; ``*_of``: a
    count as words, "none of the 18"): the best training by PGD accuracy, the references, how many trainings end
    below the clean network's PGD accuracy and how many leak (:func:`leaks`) with their accuracies, the update
    sizes; by rank (the smallest and largest trained), the PGD range over the settings, how many settings rise
    from one to the other (and at every rank), how many end above the truncated update of that rank; the
    truncations' share of the clean-to-full gap. With ``regimes`` (``{letter: run synthetic result}``, seed 0),
    also whether each run is the regime's (``lrg_<letter>_same_run``: same config and accuracies; the sentence
    ``lrg_same_runs``) and the regime's median mixture norms (clean, full-rank) beside the trainings'.
    ``lrg_grid_*``: the grid's ranks and learning rates, as text."""
    first = results[min(results)]
    settings = grid_settings(first)
    out = {"lrg_grid_ranks": ", ".join(str(r) for r in sorted({t["rank"] for t in first["trained"]})),
           "lrg_grid_sgd": ", ".join(f"{lr:g}" for o, lr in settings if o == "sgd"),
           "lrg_grid_adam": ", ".join(f"{lr:g}" for o, lr in settings if o == "adam")}
    for L, res in sorted(results.items()):
        n = len(res["trained"])
        ok = [t for t in res["trained"] if not t.get("diverged")]
        clean_pgd, full_pgd = res["run"]["clean"]["robust_acc"], res["run"]["adversarial"]["robust_acc"]
        trunc = {t["rank"]: t for t in res["truncated"]}
        big = max(trunc)
        out.update({
            f"lrg_{L}_cells": n, f"lrg_{L}_diverged": n - len(ok),
            f"lrg_{L}_clean_robust": clean_pgd, f"lrg_{L}_clean_clean": res["run"]["clean"]["clean_acc"],
            f"lrg_{L}_full_robust": full_pgd, f"lrg_{L}_full_clean": res["run"]["adversarial"]["clean_acc"],
            f"lrg_{L}_trunc_rank": big, f"lrg_{L}_trunc_robust": trunc[big]["robust_acc"],
            f"lrg_{L}_trunc_share": trunc[big]["energy_share"],
            f"lrg_{L}_trunc_gap": (trunc[big]["robust_acc"] - clean_pgd) / (full_pgd - clean_pgd),
            f"lrg_{L}_trunc_below_clean": sum(t["robust_acc"] < clean_pgd for t in trunc.values()),
            f"lrg_{L}_trunc_below_clean_of": count_words(sum(t["robust_acc"] < clean_pgd for t in trunc.values()), len(trunc)),
            f"lrg_{L}_truncs": len(trunc),
            f"lrg_{L}_steps": res["config"]["adv_steps"], f"lrg_{L}_holds": res["principle_holds_fraction"],
            f"lrg_{L}_rel": res["spectrum"]["relative_size"],
        })
        if min(trunc) == 1:
            out[f"lrg_{L}_share1"] = trunc[1]["energy_share"]
        if not ok:
            continue
        best = max(ok, key=lambda t: (t["robust_acc"], t["clean_acc"]))
        below = sum(t["robust_acc"] < clean_pgd for t in ok)
        leak = [t for t in ok if leaks(t)]
        out.update({
            f"lrg_{L}_best_robust": best["robust_acc"], f"lrg_{L}_best_clean": best["clean_acc"],
            f"lrg_{L}_best_rank": best["rank"], f"lrg_{L}_best_lr": best["lr"], f"lrg_{L}_best_opt": optimiser_name(best["optimiser"]),
            f"lrg_{L}_second_robust": sorted((t["robust_acc"] for t in ok), reverse=True)[min(1, len(ok) - 1)],
            f"lrg_{L}_below_clean": below, f"lrg_{L}_below_clean_of": count_words(below, len(ok)),
            f"lrg_{L}_leak": len(leak), f"lrg_{L}_leak_of": count_words(len(leak), len(ok)),
            f"lrg_{L}_clean_min": min(t["clean_acc"] for t in ok), f"lrg_{L}_clean_max": max(t["clean_acc"] for t in ok),
            f"lrg_{L}_upd_min": min(t["update_rel_norm"] for t in ok), f"lrg_{L}_upd_max": max(t["update_rel_norm"] for t in ok),
            f"lrg_{L}_mix_min": min(t["mixture_norm_median"] for t in ok),
            f"lrg_{L}_mix_max": max(t["mixture_norm_median"] for t in ok),
        })
        if leak:
            out.update({f"lrg_{L}_leak_fgm_min": min(t["fgm_acc"] for t in leak),
                        f"lrg_{L}_leak_pgd_max": max(t["robust_acc"] for t in leak),
                        f"lrg_{L}_leak_clean_min": min(t["clean_acc"] for t in leak),
                        f"lrg_{L}_leak_clean_max": max(t["clean_acc"] for t in leak)})
        # by rank, over the settings trained at both the smallest and the largest rank
        ranks = sorted({t["rank"] for t in ok})
        lo, hi = ranks[0], ranks[-1]
        by = {(t["optimiser"], t["lr"], t["rank"]): t for t in ok}
        both = [(o, lr) for o, lr in grid_settings(res) if (o, lr, lo) in by and (o, lr, hi) in by]
        if both and hi > lo:
            pgd = lambda o, lr, r: by[o, lr, r]["robust_acc"]  # noqa: E731
            rises = sum(pgd(o, lr, hi) > pgd(o, lr, lo) for o, lr in both)
            monotone = sum(all((o, lr, r) in by for r in ranks)
                           and all(pgd(o, lr, b) > pgd(o, lr, a) for a, b in zip(ranks, ranks[1:])) for o, lr in both)
            out.update({f"lrg_{L}_r_lo": lo, f"lrg_{L}_r_hi": hi, f"lrg_{L}_compared": len(both),
                        f"lrg_{L}_lo_min": min(pgd(o, lr, lo) for o, lr in both),
                        f"lrg_{L}_lo_max": max(pgd(o, lr, lo) for o, lr in both),
                        f"lrg_{L}_hi_min": min(pgd(o, lr, hi) for o, lr in both),
                        f"lrg_{L}_hi_max": max(pgd(o, lr, hi) for o, lr in both),
                        f"lrg_{L}_hi_clean_min": min(by[o, lr, hi]["clean_acc"] for o, lr in both),
                        f"lrg_{L}_hi_clean_max": max(by[o, lr, hi]["clean_acc"] for o, lr in both),
                        f"lrg_{L}_rises": rises, f"lrg_{L}_rises_of": count_words(rises, len(both)),
                        f"lrg_{L}_monotone": monotone, f"lrg_{L}_monotone_of": count_words(monotone, len(both))})
            for name, r in (("lo", lo), ("hi", hi)):
                if r in trunc:
                    above = sum(pgd(o, lr, r) > trunc[r]["robust_acc"] for o, lr in both)
                    out.update({f"lrg_{L}_trunc_at_{name}": trunc[r]["robust_acc"],
                                f"lrg_{L}_{name}_above_trunc": above,
                                f"lrg_{L}_{name}_above_trunc_of": count_words(above, len(both))})
        if regimes is not None and L in regimes:
            reg = regimes[L]
            out[f"lrg_{L}_same_run"] = res["config"] == reg["config"] and all(
                res["run"][k][m] == reg[k][m] for k in ("clean", "adversarial") for m in ("clean_acc", "robust_acc"))
            out[f"lrg_{L}_mix_clean"] = reg["clean"]["mixture_norm_median"]
            out[f"lrg_{L}_mix_full"] = reg["adversarial"]["mixture_norm_median"]
    if regimes is not None:
        same = [L for L in sorted(results) if out.get(f"lrg_{L}_same_run")]
        other = [L for L in sorted(results) if L in regimes and L not in same]  # no regime file: nothing to compare
        out["lrg_same_runs"] = (f"identical in every regime ({', '.join(same)})" if not other else
                                f"identical in {', '.join(same) or 'none'}; different in {', '.join(other)}")
    return out


LOWRANK_SEED_HEADER = ["seed", "clean network: PGD", "full update: PGD", "best rank-r training: clean / PGD",
                       "trainings below the clean network's PGD", "leaking (FGM above clean)",
                       "leaking, projection on u negative by the onset", "not leaking: norm of W u kept"]


def _lowrank_seed_units(runs: list[dict]) -> list[dict]:
    """Per replicate of one regime's ``run lowrank`` (``runs``, e.g. ``regime_seeds("results/lowrank")["A"]``), the
    glue of :func:`lowrank_grid_glue` and :func:`lowrank_direction_glue` with the letter ``X``, and its seed."""
    return [{"seed": int(res["config"]["seed"]), **lowrank_grid_glue({"X": res}), **lowrank_direction_glue({"X": res})}
            for res in runs]


def lowrank_seed_rows(runs: list[dict]) -> list[list]:
    """One row of :data:`LOWRANK_SEED_HEADER` per replicate of one regime's ``run lowrank`` (``runs``, in seed order):
    does the grid's answer (no rank-r training near the full update; about half leak, the leaking ones with the
    projection on ``u`` reversed by their onset; the others the rank-one guess) hold at every seed?"""
    rows = []
    for g in _lowrank_seed_units(runs):
        n, leak = g["lrg_X_cells"] - g["lrg_X_diverged"], g.get("lrg_X_leak", 0)
        best = f"{g['lrg_X_best_clean']:.3f} / {g['lrg_X_best_robust']:.3f}" if "lrg_X_best_robust" in g else "-"
        held = (f"{g['lrd_X_held_keptnorm_min']:.2f}-{g['lrd_X_held_keptnorm_max']:.2f}"
                if g.get("lrd_X_held") else "-")
        rows.append([g["seed"], f"{g['lrg_X_clean_robust']:.3f}", f"{g['lrg_X_full_robust']:.3f}", best,
                     f"{g.get('lrg_X_below_clean', 0)} of {n}", f"{leak} of {n}",
                     f"{g['lrd_X_rev_by_onset']} of {leak}" if leak else "-", held])
    return rows


def lowrank_seed_glue(runs: list[dict], letter: str) -> dict:
    """What the replicates of one regime's ``run lowrank`` (``runs``) say together (``lrs_<letter>_<what>``): the
    seeds (``seeds``, as text; ``n``), the range over seeds of the number of leaking trainings (``leak_min`` /
    ``_max``; ``leak_list``, per seed) and of the clean network's and the full update's PGD accuracy; the best
    rank-r training's PGD accuracy at any seed (``best_max``) and the smallest margin by which the full update
    beats it (``gap_min``); at how many seeds every training ends below the clean network (``below_all_of``); over
    every training of every seed, the smallest share of its update along ``u`` and ``|cos(top, u)|``
    (``share_min``, ``cos_min``), how many leak and how many of those had the projection on ``u`` negative by the
    first logged step at which they leak (``rev_by_onset_of``; strictly before: ``rev_before_onset``), how many
    (optimiser, rate, rank) settings leak at every seed and at any (``leak_every_seed``, ``leak_any_seed``; the first
    as text, ``leak_every_seed_list``), the range of
    the projection's coefficient and norm kept by the trainings that do not leak (``held_kept_*``,
    ``held_keptnorm_*``) and the largest coefficient of those that leak (``leak_kept_max``); how many trainings have
    the projection reversed at any logged step (``ever_reversed_of``) and end above the clean network's PGD accuracy
    (``above_clean_of``); by rank (the smallest and largest, ``r_lo``, ``r_hi``), the range of PGD accuracy over the
    settings and seeds (``lo_min``, ..., ``hi_max``) and at how many seeds every setting gains from the one to the
    other (``rises_every_seed``)."""
    units = _lowrank_seed_units(runs)
    L = f"lrs_{letter}"
    n_tr = sum(g["lrg_X_cells"] - g["lrg_X_diverged"] for g in units)
    leak = [g.get("lrg_X_leak", 0) for g in units]
    below_all = sum(g.get("lrg_X_below_clean", 0) == g["lrg_X_cells"] - g["lrg_X_diverged"] for g in units)
    out = {f"{L}_n": len(units), f"{L}_seeds": ", ".join(str(g["seed"]) for g in units),
           f"{L}_trainings": n_tr, f"{L}_diverged": sum(g["lrg_X_diverged"] for g in units),
           f"{L}_leak_min": min(leak), f"{L}_leak_max": max(leak), f"{L}_leak_list": ", ".join(map(str, leak)),
           f"{L}_leak_of": count_words(sum(leak), n_tr),
           f"{L}_below_all_of": count_words(below_all, len(units)),
           f"{L}_clean_robust_min": min(g["lrg_X_clean_robust"] for g in units),
           f"{L}_clean_robust_max": max(g["lrg_X_clean_robust"] for g in units),
           f"{L}_full_min": min(g["lrg_X_full_robust"] for g in units),
           f"{L}_full_max": max(g["lrg_X_full_robust"] for g in units)}
    leakers = [{(t["optimiser"], t["lr"], t["rank"]) for t in res["trained"] if leaks(t)} for res in runs]
    every = set.intersection(*leakers)
    by_setting: dict = {}
    for o, lr, r in sorted(every):
        by_setting.setdefault((o, lr), []).append(r)
    out.update({f"{L}_leak_every_seed": len(every), f"{L}_leak_any_seed": len(set.union(*leakers)),
                f"{L}_leak_every_seed_list": "; ".join(
                    f"{optimiser_name(o)} at {lr:g}, rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}"
                    for (o, lr), rs in sorted(by_setting.items(), key=lambda kv: (kv[0][0] != "sgd", kv[0][1])))})
    with_best = [g for g in units if "lrg_X_best_robust" in g]
    if with_best:
        out.update({f"{L}_best_max": max(g["lrg_X_best_robust"] for g in with_best),
                    f"{L}_gap_min": min(g["lrg_X_full_robust"] - g["lrg_X_best_robust"] for g in with_best),
                    f"{L}_share_min": min(g["lrd_X_all_share_min"] for g in with_best),
                    f"{L}_cos_min": min(g["lrd_X_all_cos_min"] for g in with_best)})
    leaking = [g for g in units if g.get("lrd_X_leak")]
    if leaking:
        by, before = sum(g["lrd_X_rev_by_onset"] for g in leaking), sum(g["lrd_X_rev_before_onset"] for g in leaking)
        out.update({f"{L}_rev_by_onset_of": count_words(by, sum(leak)), f"{L}_rev_by_onset": by,
                    f"{L}_rev_before_onset": before,
                    f"{L}_leak_kept_max": max(g["lrd_X_leak_kept_max"] for g in leaking),
                    f"{L}_onset_min": min(g["lrd_X_onset_min"] for g in leaking if "lrd_X_onset_min" in g),
                    f"{L}_onset_max": max(g["lrd_X_onset_max"] for g in leaking if "lrd_X_onset_max" in g)})
    ever = sum(ever_reversed(t) for res in runs for t in res["trained"] if not t.get("diverged"))
    below = sum(g.get("lrg_X_below_clean", 0) for g in units)
    out.update({f"{L}_ever_reversed_of": count_words(ever, n_tr), f"{L}_above_clean_of": count_words(n_tr - below, n_tr)})
    by_rank = [g for g in units if "lrg_X_r_lo" in g]
    if by_rank:
        out.update({f"{L}_r_lo": by_rank[0]["lrg_X_r_lo"], f"{L}_r_hi": by_rank[0]["lrg_X_r_hi"],
                    f"{L}_lo_min": min(g["lrg_X_lo_min"] for g in by_rank), f"{L}_lo_max": max(g["lrg_X_lo_max"] for g in by_rank),
                    f"{L}_hi_min": min(g["lrg_X_hi_min"] for g in by_rank), f"{L}_hi_max": max(g["lrg_X_hi_max"] for g in by_rank),
                    f"{L}_rises_every_seed": count_words(sum(g["lrg_X_rises"] == g["lrg_X_compared"] for g in by_rank),
                                                         len(units))})
    held = [g for g in units if g.get("lrd_X_held")]
    if held:
        out.update({f"{L}_held_kept_min": min(g["lrd_X_held_kept_min"] for g in held),
                    f"{L}_held_kept_max": max(g["lrd_X_held_kept_max"] for g in held),
                    f"{L}_held_keptnorm_min": min(g["lrd_X_held_keptnorm_min"] for g in held),
                    f"{L}_held_keptnorm_max": max(g["lrd_X_held_keptnorm_max"] for g in held)})
    return out



def _span(lo, hi, fmt: str = ".3f") -> str:
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}} to {hi:{fmt}}"


def lowrank_seed_findings(glues: dict[str, dict]) -> tuple[list[str], list[list]]:
    """The findings of :func:`lowrank_seed_glue` for several regimes side by side: ``glues`` maps a regime letter
    to its glue dict. Returns the header (``finding`` and one column per regime) and the rows; a finding a
    regime's grid cannot give (no leaking training, no rank comparison) is ``-``."""
    def get(g: dict, key: str, fmt=None, default="-"):
        v = g.get(key)
        return default if v is None else (v if fmt is None else f"{v:{fmt}}")

    def rng(g: dict, lo: str, hi: str, fmt: str = ".3f") -> str:
        return "-" if g.get(lo) is None else _span(g[lo], g[hi], fmt)

    letters = list(glues)
    if not letters:
        raise ValueError("no regime given")
    keys = {L: {k.split("_", 2)[2]: v for k, v in g.items()} for L, g in glues.items()}
    rows = [
        ("seeds", lambda g: get(g, "seeds")),
        ("rank-r trainings (settings x seeds)", lambda g: get(g, "trainings")),
        ("leaking trainings, per seed", lambda g: get(g, "leak_list")),
        ("settings that leak at every seed / at any seed",
         lambda g: f"{get(g, 'leak_every_seed')} / {get(g, 'leak_any_seed')}"),
        ("leaking trainings with the projection on u reversed by the leak's onset (strictly before)",
         lambda g: f"{g['rev_by_onset_of']} ({g['rev_before_onset']})" if "rev_by_onset_of" in g else "-"),
        ("trainings with the projection on u reversed at any logged step", lambda g: get(g, "ever_reversed_of")),
        ("trainings ending above the clean network's PGD accuracy", lambda g: get(g, "above_clean_of")),
        ("clean network's PGD accuracy", lambda g: rng(g, "clean_robust_min", "clean_robust_max")),
        ("PGD accuracy at the smallest rank", lambda g: rng(g, "lo_min", "lo_max") + (
            f" (r = {g['r_lo']})" if "r_lo" in g else "")),
        ("PGD accuracy at the largest rank", lambda g: rng(g, "hi_min", "hi_max") + (
            f" (r = {g['r_hi']})" if "r_hi" in g else "")),
        ("seeds at which every setting gains from the smallest rank to the largest",
         lambda g: get(g, "rises_every_seed")),
        ("best rank-r training's PGD accuracy", lambda g: get(g, "best_max", ".3f")),
        ("full update's PGD accuracy", lambda g: rng(g, "full_min", "full_max")),
        ("full update minus best rank-r training, at least", lambda g: get(g, "gap_min", ".2f")),
        ("share of each update's energy along u, at least", lambda g: get(g, "share_min", ".2f")),
    ]
    header = ["finding (over every seed)"] + [f"regime {L}" for L in letters]
    return header, [[name] + [str(f(keys[L])) for L in letters] for name, f in rows]

def attack_check_results(folder) -> dict[str, dict]:
    """The ``run attack-check`` results of ``folder`` (``results/attacks``) as ``{regime letter: result}``
    (:func:`_results_by_letter`)."""
    return _results_by_letter(folder, "attack-check", "results/attacks/run.sh")


def _tau_index(res: dict) -> int:
    tau = res["config"]["tau"]
    return min(range(len(res["radii"])), key=lambda i: abs(res["radii"][i] - tau))


def attack_check_rows(results: dict[str, dict]) -> tuple[list[str], list[list], list[str], list[list]]:
    """Two tables of ``{letter: run attack-check result}``: accuracy at ``tau`` under every attack (one row per
    attack, two columns per regime: clean and adversarial network), and under every attack at once at every
    radius (one row per radius). Returns ``(header, rows, radius_header, radius_rows)``."""
    letters = sorted(results)
    first = results[letters[0]]
    header = ["attack at tau"] + [f"{L}: {net}" for L in letters for net in ("clean net", "adversarial")]
    rows = [[name] + [f"{results[L]['curves'][key][name][_tau_index(results[L])]:.3f}"
                      for L in letters for key in ("clean", "adversarial")] for name in first["attacks"]]
    radius_header = ["radius"] + [f"{L}: {net}" for L in letters for net in ("clean net", "adversarial")]
    radius_rows = [[f"{r:g}"] + [f"{results[L]['curves'][key]['every attack'][i]:.3f}"
                                 for L in letters for key in ("clean", "adversarial")]
                   for i, r in enumerate(first["radii"])]
    return header, rows, radius_header, radius_rows


def attack_check_glue(results: dict[str, dict], regimes: dict[str, dict] | None = None) -> dict:
    """What the attack check says (``ac_<letter>_<what>``, per regime and network ``clean`` / ``adv``): accuracy at
    ``tau`` under every attack at once (``every``), under the book's PGD (``pgd``, the config's evaluation attack)
    and the difference (``gap``), the lowest of the gradient-free attacks (``free``: dense direction and the atom
    attacks) and the transfer attack (``transfer``); the most points at ``tau`` that one attack alone breaks
    (``only_max``); whether accuracy under every attack at once never rises with the radius (``monotone``, both
    networks; ``ac_monotone_words``, as a clause over the regimes) and how many (network, radius) pairs have a longer PGD with more restarts give a higher accuracy
    than a shorter one (``pgd_rises``); over the radii, the largest excess of the book's PGD over every attack at once
    (``maxgap``), its radius, both accuracies there and the strongest single attack there with its accuracy
    (``maxgap_r``, ``maxgap_pgd``, ``maxgap_every``, ``maxgap_attack``, ``maxgap_attack_acc``), and both at the
    largest radius (``rmax_pgd``, ``rmax_every``; ``ac_rmax``); with ``regimes`` (``{letter: run synthetic result}``), whether the networks
    are the regime's (``same_run``: the same config, and clean and PGD accuracy of both networks; ``ac_same_runs``, as
    a sentence)."""
    out = {}
    for L, res in sorted(results.items()):
        i, cfg = _tau_index(res), res["config"]
        pgd_name = f"PGD-{cfg['pgd_steps']} x{cfg['pgd_restarts']}"
        free = [n for n in res["attacks"] if n == "dense direction" or n.startswith("atoms")]
        pgds = [n for n in res["attacks"] if n.startswith("PGD-")]
        rises = 0
        for key, short in (("clean", "clean"), ("adversarial", "adv")):
            c = res["curves"][key]
            out.update({f"ac_{L}_{short}_every": c["every attack"][i], f"ac_{L}_{short}_pgd": c[pgd_name][i],
                        f"ac_{L}_{short}_gap": c[pgd_name][i] - c["every attack"][i],
                        f"ac_{L}_{short}_free": min(c[n][i] for n in free),
                        f"ac_{L}_{short}_transfer": next(c[n][i] for n in res["attacks"] if n.startswith("transfer")),
                        f"ac_{L}_{short}_only_max": max(res["only_at_tau"][key].values())})
            j = max(range(len(res["radii"])), key=lambda j: (c[pgd_name][j] - c["every attack"][j], -j))
            singles = [n for n in res["attacks"] if n != "every attack"]
            out.update({f"ac_{L}_{short}_maxgap": c[pgd_name][j] - c["every attack"][j],
                        f"ac_{L}_{short}_maxgap_r": res["radii"][j], f"ac_{L}_{short}_maxgap_pgd": c[pgd_name][j],
                        f"ac_{L}_{short}_maxgap_every": c["every attack"][j],
                        f"ac_{L}_{short}_maxgap_attack": min(singles, key=lambda n: c[n][j]),
                        f"ac_{L}_{short}_maxgap_attack_acc": min(c[n][j] for n in singles),
                        f"ac_{L}_{short}_rmax_pgd": c[pgd_name][-1], f"ac_{L}_{short}_rmax_every": c["every attack"][-1]})
            rises += sum(c[b][j] > c[a][j] + 1e-12 for a, b in zip(pgds, pgds[1:]) for j in range(len(res["radii"])))
        out[f"ac_{L}_monotone"] = all(b <= a + 1e-12 for key in ("clean", "adversarial")
                                      for a, b in zip(res["curves"][key]["every attack"], res["curves"][key]["every attack"][1:]))
        out[f"ac_{L}_pgd_rises"] = rises
        out[f"ac_{L}_n"] = res["n_points"]
        if regimes is not None and L in regimes:
            reg = regimes[L]
            out[f"ac_{L}_same_run"] = res["config"] == reg["config"] and all(
                res["run"][k][m] == reg[k][m] for k in ("clean", "adversarial") for m in ("clean_acc", "robust_acc"))
    out["ac_letters"] = ", ".join(sorted(results))
    out["ac_rmax"] = results[min(results)]["radii"][-1]
    rising = [L for L in sorted(results) if not out[f"ac_{L}_monotone"]]
    out["ac_monotone_words"] = (f"it never rises, for either network of {', '.join(sorted(results))}" if not rising else
                                f"it rises somewhere in {', '.join(rising)}")
    if regimes is not None:
        same = [L for L in sorted(results) if out.get(f"ac_{L}_same_run")]
        other = [L for L in sorted(results) if L in regimes and L not in same]
        out["ac_same_runs"] = (f"identical in every regime ({', '.join(same)})" if not other else
                               f"identical in {', '.join(same) or 'none'}; different in {', '.join(other)}")
    return out


def attack_check_seed_glue(runs: list[dict], letter: str) -> dict:
    """What the replicates of one regime's ``run attack-check`` (``runs``, e.g. ``regime_seeds("results/attacks")
    ["G"]``) say together about its adversarial network (``acs_<letter>_<what>``): the number of seeds (``n``), the
    range over seeds of the accuracy under the book's PGD and under every attack at once at ``tau`` (``tau_pgd_*``,
    ``tau_every_*``) and at the largest radius (``rmax_pgd_*``, ``rmax_every_*``), the largest excess of the PGD over
    every attack at ``tau`` (``tau_gap_max``) and, over the radii, the smallest and largest of each seed's largest
    excess (``maxgap_min``, ``maxgap_max``)."""
    units = [attack_check_glue({"X": res}) for res in runs]
    out = {f"acs_{letter}_n": len(units),
           f"acs_{letter}_tau_gap_max": max(g["ac_X_adv_gap"] for g in units),
           f"acs_{letter}_maxgap_min": min(g["ac_X_adv_maxgap"] for g in units),
           f"acs_{letter}_maxgap_max": max(g["ac_X_adv_maxgap"] for g in units)}
    for name, key in (("tau_pgd", "ac_X_adv_pgd"), ("tau_every", "ac_X_adv_every"), ("rmax_pgd", "ac_X_adv_rmax_pgd"),
                      ("rmax_every", "ac_X_adv_rmax_every")):
        out.update({f"acs_{letter}_{name}_min": min(g[key] for g in units),
                    f"acs_{letter}_{name}_max": max(g[key] for g in units)})
    return out


def lowrank_seed_same_runs(lowrank_runs: list[dict], regime_runs: list[dict]) -> str:
    """Whether each replicate of a regime's ``run lowrank`` repeats the ``run synthetic`` of the same seed
    (:func:`lowrank_grid_glue`'s ``same_run``: the same config and accuracies), as a phrase for the chapter."""
    by_seed = {int(r["config"]["seed"]): r for r in regime_runs}
    same = [bool(lowrank_grid_glue({"X": r}, regimes={"X": by_seed[int(r["config"]["seed"])]}).get("lrg_X_same_run"))
            if int(r["config"]["seed"]) in by_seed else False for r in lowrank_runs]
    return (f"identical at all {len(same)} seeds" if all(same) else
            f"identical at {sum(same)} of {len(same)} seeds")
