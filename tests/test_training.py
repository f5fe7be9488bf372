import dataclasses
import json

import pytest
import torch

from fp_helpers import experiments
from fp_helpers.runs import apply_overrides, get_profile, threads


def test_clean_net_is_accurate_but_fragile_and_fgm_training_purifies(quick_run):
    m = quick_run.metrics
    c, a = m["clean"], m["adversarial"]
    assert c["clean_acc"] >= 0.97 and a["clean_acc"] >= 0.97
    assert c["robust_acc"] <= 0.5
    assert a["robust_acc"] >= c["robust_acc"] + 0.2
    assert a["mixture_norm_median"] < c["mixture_norm_median"] / 2  # the dense mixture is removed
    assert a["top1_energy_median"] > 3 * c["top1_energy_median"]  # energy concentrates on one atom
    # the dense direction is (nearly) the cheapest attack on the clean network, useless on the purified one
    assert c["dense_direction_acc"] <= 0.5 and a["dense_direction_acc"] >= 0.9


def test_history_records_training(quick_run):
    h = quick_run.clean_history
    steps = h.column("step")
    assert steps[0] == 0 and steps[-1] == quick_run.cfg.clean_steps
    assert h.column("clean_acc")[-1] > h.column("clean_acc")[0]


def test_same_seed_gives_bit_identical_metrics_and_another_seed_differs():
    cfg = experiments.synthetic_config("quick", ["clean_steps=300", "adv_steps=100", "eval_n=200", "d=60", "m=40"])
    a = experiments.run_synthetic(cfg, device="cpu", progress=False).metrics
    b = experiments.run_synthetic(cfg, device="cpu", progress=False).metrics
    c = experiments.run_synthetic(dataclasses.replace(cfg, seed=1), device="cpu", progress=False).metrics
    for key in ("clean", "adversarial", "principle"):
        assert a[key] == b[key]
    assert a["clean"] != c["clean"]


def test_fixed_training_set_mode_trains_on_the_first_draw_only():
    from fp_helpers.attacks import accuracy
    from fp_helpers.networks import NetConfig, TwoLayerNet
    from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig
    from fp_helpers.training import TrainConfig, train

    dist = SparseCoding(SparseCodingConfig(d=50, k=3), seed=0)
    cfg = TrainConfig(steps=300, batch=16, lr=2.0, train_size=40, log_every=300)
    nets = [TwoLayerNet(50, NetConfig(m=30), generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    g = torch.Generator().manual_seed(2)
    train(nets[0], dist, cfg, g, progress=False)
    g2 = torch.Generator().manual_seed(2)
    X, Y = dist.sample(40, g2)  # the set train_size=40 draws: training on it given as data is the same training
    train(nets[1], dist, dataclasses.replace(cfg, train_size=0), g2, progress=False, data=(X, Y))
    assert torch.equal(nets[0].weight, nets[1].weight)
    assert torch.equal(g.get_state(), g2.get_state())  # and nothing else was drawn in either
    assert accuracy(nets[0], X, Y) == 1.0  # 300 steps on 40 points: the set is fitted


@pytest.mark.parametrize("overrides, msg", [
    (["k=500"], "k=500 must be at most d=100"),
    (["tau=-1"], "tau must be a finite number >= 0"),
    (["norm=l1"], "unknown norm 'l1'"),
    (["bogus=3"], "unknown config key 'bogus'"),
    (["d=abc"], "d='abc': expected a int"),
    (["clean_lr=0"], "lr must be a finite number > 0"),
    (["adv_attack=cw"], "unknown training attack 'cw'"),
    (["m=0"], "m \\(number of neurons\\) must be a positive int"),
    (["eval_n=0"], "eval_n must be a positive int"),
    (["noequals"], "not of the form key=value"),
])
def test_bad_config_is_rejected(overrides, msg):
    with pytest.raises(ValueError, match=msg):
        experiments.synthetic_config("quick", overrides)


def test_unknown_profile_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown profile 'huge'; allowed profiles are quick, full"):
        get_profile("huge")
    monkeypatch.setenv("FP_PROFILE", "tiny")
    with pytest.raises(ValueError, match="'tiny'"):
        get_profile()


def test_threads_sets_and_restores_the_thread_count_also_on_error_and_nested():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
        with threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            with threads(bad):
                pass
    assert torch.get_num_threads() == before


def test_overrides_convert_types():
    cfg = apply_overrides(experiments.SyntheticConfig(), ["d=600", "tau=0.2", "radii=0.1,0.2", "beta=0"])
    assert cfg.d == 600 and cfg.tau == 0.2 and cfg.radii == (0.1, 0.2) and cfg.beta == 0.0


def test_attack_strength_table_never_gets_weaker_along_pgd_rows(quick_run):
    rows = experiments.attack_strength(quick_run)
    names = [r[0] for r in rows]
    assert names[:2] == ["FGM", "dense direction"]
    pgd_rows = rows[2:]
    for col in (1, 2):
        accs = [r[col] for r in pgd_rows]
        assert all(b <= a + 1e-9 for a, b in zip(accs, accs[1:])), accs
        assert accs[0] <= rows[0][col] + 1e-9  # PGD at least as strong as FGM


def test_regime_rows_read_every_result_file_with_exact_values(tmp_path):
    import json
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "results" / "regimes"
    rows = experiments.regime_rows(committed)
    assert len(rows) == len(list(committed.glob("*.json"))) >= 5
    assert {r[2] for r in rows} >= {"0.01", "0.003", "0.002"}  # no "0.00" rounding of small init scales
    assert len(rows[0]) == len(experiments.REGIME_HEADER)
    (tmp_path / "X_bad.json").write_text(json.dumps({"config": {}}))
    from fp_helpers.provenance import StaleResultWarning
    with pytest.raises(KeyError), pytest.warns(StaleResultWarning, match="no provenance record"):
        experiments.regime_rows(tmp_path)  # a file without provenance is stale (said), and without fields (raised)


@pytest.mark.parametrize("attack,steps", [("none", 70), ("fgm", 45)])
def test_prefetching_the_next_block_changes_no_number(attack, steps, monkeypatch):
    """Drawing the next block of samples in a background thread (training._Batches) gives bit-identical
    weights, histories and the same final generator state as drawing it in the loop, also when the
    evaluation between steps draws from that generator (it must wait for the block in flight)."""
    from fp_helpers import training
    from fp_helpers.networks import TwoLayerNet

    cfg = experiments.synthetic_config("quick", {"d": 60, "m": 40})
    tcfg = dataclasses.replace(cfg.clean_train_config() if attack == "none" else cfg.adv_train_config(),
                               steps=steps, block=8, log_every=20)
    orig = training._Batches.__init__
    out, used, seen = {}, {}, set()
    with threads(2):
        for prefetch in (False, True):
            def init(self, *a, _p=prefetch, **kw):
                orig(self, *a, **{**kw, "prefetch": _p})
                used[_p] = self.prefetch
            monkeypatch.setattr(training._Batches, "__init__", init)
            s = experiments.setup(cfg, "cpu")
            net = TwoLayerNet(cfg.d, cfg.net_config(), generator=s.gen)
            if prefetch:
                grads = net.grads
                monkeypatch.setattr(net, "grads", lambda *a, **kw: (seen.add(torch.get_num_threads()), grads(*a, **kw))[1])
            # an evaluation that draws from the training generator, as a user's eval_fn may
            hist = training.train(net, s.dist, tcfg, s.gen, progress=False,
                                  eval_fn=lambda step, n: {"draw": torch.rand(1, generator=s.gen).item(),
                                                           "threads": torch.get_num_threads()})
            out[prefetch] = (net.weight.detach().clone(), hist.rows, s.gen.get_state(), torch.get_num_threads())
    assert used == {False: False, True: True}
    assert torch.equal(out[False][0], out[True][0])
    rows = {p: json.dumps([{k: v for k, v in r.items() if k != "threads"} for r in out[p][1]]) for p in out}
    assert rows[False] == rows[True]  # the draws of the evaluations included
    assert torch.equal(out[False][2], out[True][2])  # no block drawn beyond what the steps used
    assert all(r["threads"] == 2 for r in out[True][1]) and out[True][3] == 2  # evaluations get every thread
    assert seen == {1}  # the steps between them one fewer


def test_prefetch_is_off_for_a_fixed_training_set_and_one_thread():
    from fp_helpers import training

    cfg = experiments.synthetic_config("quick", {"d": 60, "m": 40})
    s = experiments.setup(cfg, "cpu")
    with threads(2):
        fixed = dataclasses.replace(cfg.clean_train_config(), train_size=300)
        assert not training._Batches(s.dist, fixed, s.gen).prefetch
    with threads(1):
        assert not training._Batches(s.dist, cfg.clean_train_config(), s.gen).prefetch


def test_regime_glue_reads_the_committed_regimes_and_finds_the_first_step():
    """The regime section's numbers come from the committed result files, each from the right field; the step
    at which robustness first reaches a level is the first logged one at or above it (None if never)."""
    from pathlib import Path

    from fp_helpers import provenance

    folder = Path(__file__).resolve().parents[1] / "results" / "regimes"
    reg = {f.stem.split("_")[0]: provenance.load_result(f) for f in sorted(folder.glob("*.json"))}
    g = experiments.regime_glue(reg)
    G = reg["G"]
    assert g["reg_G_robust"] == G["adversarial"]["robust_acc"] and g["reg_C_lr"] == reg["C"]["config"]["adv_lr"]
    assert g["reg_F_holds"] == reg["F"]["principle"]["holds_fraction"]
    # every regime given is glued (the chapter compares the dead zones of B to G)
    assert all(f"reg_{k}_robust" in g and g[f"reg_{k}_beta"] == reg[k]["config"]["beta"] for k in reg)
    assert g["reg_E_robust"] == reg["E"]["adversarial"]["robust_acc"]
    hist = G["adversarial_history"]
    assert g["reg_G_robust_first"] == hist[1]["robust_acc"] and g["reg_G_first_step"] == hist[1]["step"]
    i = [r["step"] for r in hist].index(g["reg_G_step_95"])
    assert hist[i]["robust_acc"] >= 0.95 and all(r["robust_acc"] < 0.95 for r in hist[:i])
    assert 0.02 < g["reg_cos_chance"] < 0.05  # d = 400
    hist = [{"step": 0, "x": 0.1}, {"step": 5, "x": None}, {"step": 10, "x": 0.7}, {"step": 20, "x": 0.9}]
    assert experiments.first_step_reaching(hist, "x", 0.7) == 10
    assert experiments.first_step_reaching(hist, "x", 0.95) is None
    scale = experiments.regime_scale(reg)
    assert "profile full" in scale and scale.count(";") == 0  # all made at one scale, on one device


def test_regime_seeds_gathers_replicates_and_rejects_a_file_of_another_regime(tmp_path):
    """Each regime's replicates (results/regimes/seeds) are read with it, in seed order; a replicate whose config
    differs in anything but the seed, or that repeats a seed, is refused; rows and glue come from the right fields."""
    import json
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "results" / "regimes"
    reg = experiments.regime_seeds(committed)
    assert set(reg) == {f.stem.split("_")[0] for f in committed.glob("*.json")}
    for letter, runs in reg.items():
        seeds = [r["config"]["seed"] for r in runs]
        assert seeds[0] == 0 and seeds == sorted(set(seeds))
    rows = experiments.regime_seed_rows(reg)
    assert all(len(r) == len(experiments.REGIME_SEED_HEADER) for r in rows)
    assert experiments.regime_rows(reg) == experiments.regime_rows(committed)  # seed 0, without reading again
    g = experiments.regime_seed_glue(reg)
    a = reg["A"]
    assert g["reg_A_holds_min"] == min(r["principle"]["holds_fraction"] for r in a)
    assert g["reg_A_robust_max"] == max(r["adversarial"]["robust_acc"] for r in a)
    assert g["reg_seeds_n"] == min(len(v) for v in reg.values())
    spreads = {k: max(r["principle"]["holds_fraction"] for r in v) - min(r["principle"]["holds_fraction"] for r in v)
               for k, v in reg.items()}
    assert g["reg_holds_spread_max"] == max(spreads.values()) == spreads[g["reg_holds_spread_letter"]]
    # a folder of one regime and a made-up replicate: mean, min and max of the values given
    base = json.loads((committed / "A_beta0_init01.json").read_text())
    (tmp_path / "seeds").mkdir()
    shutil.copy(committed / "A_beta0_init01.json", tmp_path / "A_beta0_init01.json")
    rep = json.loads(json.dumps(base))
    rep["config"]["seed"] = 5
    rep["principle"]["holds_fraction"] = base["principle"]["holds_fraction"] + 0.5
    (tmp_path / "seeds" / "A_beta0_init01_seed5.json").write_text(json.dumps(rep))
    import warnings

    from fp_helpers.provenance import StaleResultWarning
    with pytest.warns(StaleResultWarning) as caught:  # its config is not what its recorded command gives: stale
        got = experiments.regime_seed_glue(experiments.regime_seeds(tmp_path))
    assert len(caught) == 1 and "1 of 2 results" in str(caught[0].message)  # once, naming the replicate
    assert "A_beta0_init01_seed5.json" in str(caught[0].message)
    h = base["principle"]["holds_fraction"]
    assert got["reg_A_holds_min"] == h and got["reg_A_holds_max"] == h + 0.5
    assert got["reg_A_holds_mean"] == pytest.approx(h + 0.25) and got["reg_seeds_n"] == 2
    assert got["reg_holds_spread_max"] == pytest.approx(0.5) and got["reg_holds_spread_letter"] == "A"
    rep["config"]["beta"] = 0.2
    (tmp_path / "seeds" / "A_beta0_init01_seed5.json").write_text(json.dumps(rep))
    with pytest.raises(ValueError, match="differs in beta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        experiments.regime_seeds(tmp_path)
    rep["config"]["beta"], rep["config"]["seed"] = base["config"]["beta"], 0
    (tmp_path / "seeds" / "A_beta0_init01_seed5.json").write_text(json.dumps(rep))
    with pytest.raises(ValueError, match="repeats seed 0"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        experiments.regime_seeds(tmp_path)


def test_regime_seed_figure_plots_each_seed_where_its_file_puts_it():
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fp_helpers import plots

    reg = experiments.regime_seeds(Path(__file__).resolve().parents[1] / "results" / "regimes")
    fig = plots.regime_seeds(reg)
    lines = {ln.get_label().split()[0]: ln for ln in fig.axes[0].lines if ln.get_label()[0].isalpha()}
    assert set(lines) == set(reg)
    for letter, runs in reg.items():
        pts = sorted(zip(lines[letter].get_xdata(), lines[letter].get_ydata()))
        want = sorted((r["principle"]["holds_fraction"], r["adversarial"]["robust_acc"]) for r in runs)
        assert [p for xy in pts for p in xy] == pytest.approx([p for xy in want for p in xy])
    plt.close(fig)


def test_sweep_landmarks_pick_the_radii_the_chapters_name():
    """The adversarial chapter's landmarks: the best-separating radius is where the adversarial mean is furthest
    above the clean mean, 2 tau is the nearest grid radius; the clean chapter's: the first radius at or under 1%
    (None if the curve never gets there), the largest gap to the linear law."""
    import numpy as np

    from fp_helpers import exercises

    cfg = experiments.synthetic_config("quick", {"radii": (0.0, 0.1, 0.15, 0.2, 0.3, 0.45), "tau": 0.15})
    clean = np.array([[1.0, 0.5, 0.3, 0.1, 0.005, 0.0], [1.0, 0.6, 0.4, 0.2, 0.015, 0.002]])
    adv = np.array([[1.0, 0.9, 0.85, 0.8, 0.3, 0.1], [1.0, 0.95, 0.9, 0.9, 0.2, 0.0]])
    sweep = {"clean": clean, "adversarial": adv, "radii": np.array(cfg.radii),
             "runs": [{"clean": {"clean_acc": 0.99}}, {"clean": {"clean_acc": 0.97}}]}
    a = experiments.sweep_landmarks(sweep, cfg)
    assert cfg.tau == 0.15 and a["seed_adv_mean"] == pytest.approx(0.875) and a["seed_clean_mean"] == pytest.approx(0.35)
    assert a["sep_r"] == 0.2 and a["sep_adv"] == pytest.approx(0.85) and a["sep_clean"] == pytest.approx(0.15)
    assert a["r_2tau"] == 0.3 and a["adv_2tau"] == pytest.approx(0.25)
    assert a["r_max"] == 0.45 and a["clean_at_r_max"] == 0.002 and a["adv_at_r_max"] == pytest.approx(0.05)
    c = experiments.clean_sweep_landmarks(sweep, cfg)
    assert c["low_radius"] == 0.3 and c["low_value"] == pytest.approx(0.01) and c["seed_clean_min"] == 0.97
    law = [exercises.linear_robust_law(cfg.d, cfg.k, cfg.noise, r) for r in cfg.radii]
    assert c["law"] == law and c["linear_law_tau"] == law[2]
    assert c["lin_gap_max"] == pytest.approx(max(abs(m - l) for m, l in zip(clean.mean(0), law)))
    sweep["clean"] = clean + 0.5  # never at or under 1%
    assert experiments.clean_sweep_landmarks(sweep, cfg)["low_radius"] is None
