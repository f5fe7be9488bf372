"""Rank-r adversarial training with other optimisers and step sizes (experiments.run_lowrank, `run lowrank`)."""

import json

import pytest
import torch

from fp_helpers import experiments
from fp_helpers.attacks import fgm
from fp_helpers.networks import AdamLowRankTwoLayerNet, LowRankTwoLayerNet, NetConfig, TwoLayerNet


def _tiny(**kw):
    return experiments.synthetic_config("quick", {"clean_steps": 300, "adv_steps": 100, "eval_n": 200, "d": 60,
                                                  "m": 40, "pgd_steps": 5, **kw})


def _base(d=20, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TwoLayerNet(d, NetConfig(m=m), generator=g, weight=torch.randn(m, d, generator=g))


def test_adam_factors_start_at_the_base_keep_the_rank_and_take_adam_steps():
    base = _base()
    g = torch.Generator().manual_seed(1)
    net = AdamLowRankTwoLayerNet(base, rank=2, generator=g)
    assert torch.equal(net.weight, base.weight)  # A = 0: the network starts at the clean weights
    grad_w = torch.randn(8, 20, generator=g)
    B0 = net.B.detach().clone()
    net.sgd_step(grad_w, lr=0.01)
    # Adam's first step moves every coordinate with a non-zero gradient by lr (times the gradient's sign)
    step_a = -net.A.detach()
    assert torch.allclose(step_a, 0.01 * torch.sign(grad_w @ B0), atol=1e-6)
    assert torch.equal(net.B.detach(), B0)  # B's gradient is grad_w^T A = 0 at the first step
    for _ in range(5):
        net.sgd_step(torch.randn(8, 20, generator=g), lr=0.01)
    assert torch.linalg.matrix_rank(net.update.detach()).item() <= 2
    assert net.A.grad is None and net.B.grad is None  # nothing left for a later autograd call to add to


def test_adam_factors_follow_torch_adam_on_the_chain_rule_gradients_over_many_steps():
    """Five steps of AdamLowRankTwoLayerNet equal five steps of torch.optim.Adam on leaf factors whose gradients
    come from autograd through W = W_base + A B^T (so the optimiser state is kept between steps; a step that
    forgot it, signSGD, would not match), with the learning rate changed between steps."""
    base = _base()
    net = AdamLowRankTwoLayerNet(base, rank=3, generator=torch.Generator().manual_seed(4))
    A = net.A.detach().clone().requires_grad_(True)
    B = net.B.detach().clone().requires_grad_(True)
    ref = torch.optim.Adam([A, B], lr=1e-3)
    g = torch.Generator().manual_seed(5)
    for step, lr in enumerate((1e-2, 1e-2, 3e-3, 3e-3, 1e-2)):
        grad_w = torch.randn(8, 20, generator=g) * (10.0 ** -step)  # shrinking gradients: Adam rescales them
        net.sgd_step(grad_w, lr)
        for group in ref.param_groups:
            group["lr"] = lr
        ref.zero_grad()
        (grad_w * (base.weight + A @ B.T)).sum().backward()  # d/dW of this loss is grad_w
        ref.step()
        assert torch.allclose(net.A, A, atol=1e-6) and torch.allclose(net.B, B, atol=1e-6), step


def test_adam_and_sgd_factors_differ_only_in_the_step():
    """The same gradient gives SGD's step (size proportional to the gradient) or Adam's (size lr): the two
    classes share the factors' initialisation and the chain rule."""
    base = _base()
    sgd = LowRankTwoLayerNet(base, rank=3, generator=torch.Generator().manual_seed(2))
    adam = AdamLowRankTwoLayerNet(base, rank=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sgd.B, adam.B)
    grad_w = 1e-3 * torch.randn(8, 20, generator=torch.Generator().manual_seed(3))
    sgd.sgd_step(grad_w, 0.1)
    adam.sgd_step(grad_w, 0.1)
    assert sgd.A.abs().max() < 1e-3 < adam.A.abs().min()  # a tiny gradient: a tiny SGD step, a full Adam step


def test_lowrank_train_with_sgd_is_the_chapters_rank_r_training():
    """SGD at cfg.lowrank_lr ends at train_adversarial's weights and logs what it logs, plus FGM accuracy."""
    cfg = _tiny()
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    s = run.setup

    def fresh():
        gen = torch.Generator().manual_seed(experiments.lowrank_seed(cfg, 2))
        return experiments.replace(s, gen=gen)

    ours, hist = experiments.lowrank_train(fresh(), run.clean, run.W0, 2)
    chapters, ref = experiments.train_adversarial(fresh(), run.clean, run.W0, rank=2, progress=False)
    assert torch.equal(ours.weight, chapters.weight)
    assert [{k: v for k, v in r.items() if k not in ("fgm_acc", "u_kept")} for r in hist.rows[1:]] == ref.rows[1:]
    assert all("fgm_acc" in r for r in hist.rows) and hist.rows[0]["u_kept"] == 1.0  # step 0: no update yet
    other, _ = experiments.lowrank_train(fresh(), run.clean, run.W0, 2, "sgd", lr=2 * cfg.lowrank_lr)
    assert not torch.equal(other.weight, chapters.weight)
    with pytest.raises(ValueError, match="unknown optimiser 'rmsprop'"):
        experiments.lowrank_train(fresh(), run.clean, run.W0, 2, "rmsprop")


def test_grid_cell_records_its_training_curve_and_where_its_update_points():
    """The curve's last row is the final network measured on the first LOWRANK_CURVE_N held-out points (clean and
    FGM accuracy as the attacks module computes them), and the directions are those of the final update."""
    from fp_helpers import purification as pur
    from fp_helpers.attacks import AttackSpec, accuracy, robust_accuracy

    cfg = _tiny(adv_steps=120, log_every=40)
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    Wc = run.clean.weight.detach()
    cell = experiments._lowrank_grid_unit(cfg, 2, "adam", 3e-3, run.W0, Wc, float(run.clean.beta), "cpu")
    json.dumps(cell, allow_nan=False)  # the step-0 loss (not defined) is None, not NaN
    curve = cell["curve"]
    assert [r["step"] for r in curve] == [0, 40, 80, 120] and curve[0]["loss"] is None
    assert curve[-1]["loss"] == cell["final_loss"]
    # the same training again, to measure its final network independently
    s = experiments.replace(run.setup, gen=torch.Generator().manual_seed(experiments.lowrank_seed(cfg, 2)))
    net, _ = experiments.lowrank_train(s, run.clean, run.W0, 2, "adam", 3e-3)
    x, y = s.x_eval[:experiments.LOWRANK_CURVE_N], s.y_eval[:experiments.LOWRANK_CURVE_N]
    assert curve[-1]["clean_acc"] == accuracy(net, x, y)
    assert curve[-1]["fgm_acc"] == robust_accuracy(net, x, y, cfg.tau, AttackSpec("fgm", cfg.norm))
    assert curve[0]["clean_acc"] == accuracy(run.clean, x, y)  # step 0: the clean network it starts from
    assert curve[-1]["u_kept"] == cell["u_kept"]
    assert {k: cell[k] for k in ("cos_top_u", "u_share", "u_kept", "u_kept_norm")} == pur.update_directions(
        Wc, net.weight.detach(), s.dist.u)
    assert 0 <= cell["u_share"] <= 1 and 0 <= cell["cos_top_u"] <= 1 + 1e-9


def test_adam_rank_r_training_lowers_the_adversarial_loss():
    cfg = _tiny(adv_steps=200)
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    s = run.setup
    x, y = s.x_eval, s.y_eval

    def adv_loss(net):
        xa = fgm(net, x, y, cfg.tau, cfg.norm)
        return net.grads(xa, y, need_weight=False)[0].item()

    s = experiments.replace(s, gen=torch.Generator().manual_seed(5))
    net, hist = experiments.lowrank_train(s, run.clean, run.W0, 4, "adam", lr=3e-3)
    assert adv_loss(net) < 0.9 * adv_loss(run.clean)
    assert torch.linalg.matrix_rank(net.update.detach()).item() <= 4


def test_run_lowrank_reports_every_cell_and_a_divergence_without_raising():
    cfg = _tiny()
    grid = (("sgd", cfg.lowrank_lr), ("sgd", 1e6), ("adam", 1e-3))
    out = experiments.run_lowrank(cfg, device="cpu", checkpoint_dir=False, grid=grid, ranks=(1, 2),
                                  truncation_ranks=(1, 4), workers=1)
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    # the run is run_synthetic's, the truncations lowrank_study's, the chapter's cell is lowrank_study's training
    assert out["run"]["adversarial"]["robust_acc"] == run.metrics["adversarial"]["robust_acc"]
    study = experiments.lowrank_study(run, trained_ranks=(2,), truncation_ranks=(1, 4), workers=1)
    assert [t["rank"] for t in out["truncated"]] == [1, 4]
    assert out["truncated"][1]["robust_acc"] == study["truncated"][4]["robust_acc"]
    cells = {(t["rank"], t["optimiser"], t["lr"]): t for t in out["trained"]}
    assert len(cells) == 6
    chapter_cell = cells[(2, "sgd", cfg.lowrank_lr)]
    assert chapter_cell["robust_acc"] == study["trained"][2]["robust_acc"]
    assert chapter_cell["clean_acc"] == study["trained"][2]["clean_acc"]
    for key, t in cells.items():
        if key[2] == 1e6:
            assert "diverged" in t["diverged"] and "clean_acc" not in t
        else:
            assert t["diverged"] is None
            assert t["robust_acc"] <= t["fgm_acc"] + 0.05  # sanity: PGD with restarts is about as strong as FGM or more
            assert 0 < t["update_rel_norm"] < float("inf")
            if t["rank"] == 1:  # one direction: its share of the update along u is its squared cosine with u
                assert abs(t["u_share"] - t["cos_top_u"] ** 2) < 1e-6
    # where the full update and the chapter's rank-r training point, as lowrank_study measures them
    keys = ("u_share", "u_kept", "u_kept_norm")
    assert {k: out["spectrum"][k] for k in keys} == {k: study["directions"][k] for k in keys}
    assert chapter_cell["u_share"] == study["trained"][2]["u_share"]
    assert out["provenance"]["experiment"] == "lowrank"
    json.dumps(out)  # plain numbers: the CLI writes it as it is


def _fake_grid_result():
    def cell(rank, opt, lr, clean, pgd, fgm):
        return {"rank": rank, "optimiser": opt, "lr": lr, "diverged": None, "clean_acc": clean,
                "robust_acc": pgd, "fgm_acc": fgm, "mixture_norm_median": 0.85 + 0.1 * (pgd > 0.3),
                "update_rel_norm": 1.0 + rank}

    trained = [cell(1, "sgd", 0.03, 0.87, 0.26, 0.27), cell(4, "sgd", 0.03, 0.88, 0.25, 0.26),
               cell(1, "adam", 0.01, 0.50, 0.12, 0.77), cell(4, "adam", 0.01, 0.60, 0.40, 0.45),
               {"rank": 1, "optimiser": "sgd", "lr": 9.0, "diverged": "training diverged at step 3"},
               cell(4, "sgd", 9.0, 0.90, 0.05, 0.80)]
    return {"trained": trained,
            "truncated": [{"rank": 1, "clean_acc": 0.85, "robust_acc": 0.28, "energy_share": 0.32},
                          {"rank": 64, "clean_acc": 0.88, "robust_acc": 0.57, "energy_share": 0.72}],
            "run": {"clean": {"clean_acc": 1.0, "robust_acc": 0.37}, "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99}},
            "spectrum": {"energy_share": {"1": 0.32, "64": 0.72}, "relative_size": 1.1}, "principle_holds_fraction": 0.08,
            "config": {"adv_steps": 4000}}


def test_lowrank_grid_table_has_a_row_per_setting_and_a_column_per_rank():
    header, rows = experiments.lowrank_grid_rows(_fake_grid_result())
    assert header[1:] == ["r = 1: clean / PGD (FGM)", "r = 4: clean / PGD (FGM)", "r = 64: clean / PGD (FGM)"]
    assert [r[0] for r in rows] == ["trained, SGD lr 0.03", "trained, Adam lr 0.01", "trained, SGD lr 9",
                                    "truncated full update"]
    assert rows[1][1:] == ["0.500 / 0.120 (0.770 †)", "0.600 / 0.400 (0.450)", "-"]  # † : FGM above clean
    assert rows[2][1:] == ["diverged", "0.900 / 0.050 (0.800)", "-"]
    assert rows[3][1:] == ["0.850 / 0.280", "-", "0.880 / 0.570"]


def test_lowrank_grid_glue_finds_the_best_cell_the_leaking_ones_and_the_same_run():
    res = _fake_grid_result()
    regime = {"config": dict(res["config"]), "clean": {"clean_acc": 1.0, "robust_acc": 0.37, "mixture_norm_median": 0.9},
              "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99, "mixture_norm_median": 0.2}}
    g = experiments.lowrank_grid_glue({"A": res}, regimes={"A": regime})
    assert (g["lrg_A_best_robust"], g["lrg_A_best_rank"], g["lrg_A_best_opt"], g["lrg_A_best_lr"]) == (0.40, 4, "Adam", 0.01)
    assert g["lrg_A_second_robust"] == 0.26
    assert g["lrg_A_cells"] == 6 and g["lrg_A_diverged"] == 1
    assert g["lrg_A_below_clean"] == 4 and g["lrg_A_below_clean_of"] == "4 of the 5"  # 0.26, 0.25, 0.12, 0.05 < 0.37
    # leaking: FGM accuracy above clean accuracy (0.77 > 0.50); not 0.80 < 0.90, not 0.45 < 0.60
    assert g["lrg_A_leak"] == 1 and g["lrg_A_leak_fgm_min"] == 0.77 and g["lrg_A_leak_clean_max"] == 0.50
    # by rank, over the settings with both ranks: SGD 0.03 (0.26 -> 0.25) and Adam 0.01 (0.12 -> 0.40)
    assert (g["lrg_A_r_lo"], g["lrg_A_r_hi"], g["lrg_A_compared"], g["lrg_A_rises"]) == (1, 4, 2, 1)
    assert g["lrg_A_rises_of"] == "1 of the 2" and g["lrg_A_monotone"] == 1
    assert (g["lrg_A_lo_min"], g["lrg_A_lo_max"], g["lrg_A_hi_min"], g["lrg_A_hi_max"]) == (0.12, 0.26, 0.25, 0.40)
    assert (g["lrg_A_hi_clean_min"], g["lrg_A_hi_clean_max"]) == (0.60, 0.88)
    assert g["lrg_A_trunc_at_lo"] == 0.28 and g["lrg_A_lo_above_trunc_of"] == "none of the 2"
    assert "lrg_A_trunc_at_hi" not in g  # no truncation at rank 4
    assert (g["lrg_A_trunc_rank"], g["lrg_A_trunc_robust"], g["lrg_A_trunc_share"]) == (64, 0.57, 0.72)
    assert g["lrg_A_trunc_gap"] == pytest.approx((0.57 - 0.37) / (0.99 - 0.37))
    assert g["lrg_A_trunc_below_clean_of"] == "1 of the 2" and g["lrg_A_share1"] == 0.32
    assert (g["lrg_A_mix_clean"], g["lrg_A_mix_full"], g["lrg_A_mix_min"], g["lrg_A_mix_max"]) == (0.9, 0.2, 0.85, 0.95)
    assert g["lrg_A_same_run"] is True and g["lrg_same_runs"] == "identical in every regime (A)"
    assert (g["lrg_grid_ranks"], g["lrg_grid_sgd"], g["lrg_grid_adam"]) == ("1, 4", "0.03, 9", "0.01")
    g = experiments.lowrank_grid_glue({"A": res, "Along": res}, regimes={"A": regime})  # Along: no regime file
    assert g["lrg_same_runs"] == "identical in every regime (A)" and "lrg_Along_same_run" not in g
    regime["config"]["adv_steps"] = 12000  # another config with the same accuracies is not the same run
    g = experiments.lowrank_grid_glue({"A": res}, regimes={"A": regime})
    assert g["lrg_A_same_run"] is False and g["lrg_same_runs"] == "identical in none; different in A"


def test_lowrank_grid_glue_survives_a_regime_whose_trainings_all_diverged():
    res = _fake_grid_result()
    res["trained"] = [{"rank": r, "optimiser": "sgd", "lr": 9.0, "diverged": "training diverged at step 3"} for r in (1, 4)]
    g = experiments.lowrank_grid_glue({"A": res})
    assert g["lrg_A_diverged"] == 2 and "lrg_A_best_robust" not in g and g["lrg_A_trunc_robust"] == 0.57


def test_lowrank_grid_figure_draws_every_regime_with_a_diverged_cell():
    import matplotlib

    matplotlib.use("Agg")
    from fp_helpers import plots

    fig = plots.lowrank_grid({"A": _fake_grid_result(), "G": _fake_grid_result()})
    assert len(fig.axes) == 4
    top = fig.axes[0]
    assert len(top.lines) == 3 + 1 + 2  # three settings (SGD 9 with its one finite cell), truncation, two references
    bottom = fig.axes[2]
    ringed = sum(int(ec[3] > 0) for coll in bottom.collections for ec in coll.get_edgecolors())
    assert ringed == 1  # the one training whose FGM accuracy exceeds its clean accuracy
    matplotlib.pyplot.close(fig)


def test_lowrank_grid_results_rejects_other_results_and_two_files_of_a_regime(tmp_path):
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "results" / "lowrank" / "A_beta0_init01.json"
    shutil.copy(src, tmp_path / "A_one.json")
    assert set(experiments.lowrank_grid_results(tmp_path)) == {"A"}
    shutil.copy(src, tmp_path / "A_two.json")
    with pytest.raises(ValueError, match="two results for regime A"):
        experiments.lowrank_grid_results(tmp_path)
    (tmp_path / "A_two.json").unlink()
    other = Path(__file__).resolve().parents[1] / "results" / "regimes" / "G_beta015_init0002_long.json"
    shutil.copy(other, tmp_path / "G_x.json")
    with pytest.raises(ValueError, match="not a run lowrank result"):
        experiments.lowrank_grid_results(tmp_path)


def test_lowrank_grid_results_needs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="results/lowrank/run.sh"):
        experiments.lowrank_grid_results(tmp_path)


def _fake_curved_result():
    """A result with curves and directions: one training that holds and removes u, one that reverses u and then
    leaks, one that leaks with u amplified, one diverged."""
    def cell(clean, fgm, kept, share, cos, curve):
        rows = [{"step": s, "loss": None if s == 0 else 1.0, "clean_acc": c, "fgm_acc": f, "robust_acc": 0.2,
                 "mixture_norm_median": 0.9, "u_kept": k} for s, c, f, k in curve]
        return {"diverged": None, "clean_acc": clean, "robust_acc": 0.2, "fgm_acc": fgm, "u_kept": kept,
                "u_kept_norm": abs(kept), "u_share": share, "cos_top_u": cos, "mixture_norm_median": 0.9, "update_rel_norm": 1.0, "curve": rows}

    held = cell(0.88, 0.27, 0.15, 0.999, 1.0, [(0, 1.0, 0.4, 1.0), (100, 0.9, 0.3, 0.5), (200, 0.88, 0.27, 0.15)])
    rev = cell(0.50, 0.75, -0.8, 0.99, 0.999, [(0, 1.0, 0.4, 1.0), (100, 0.8, 0.5, -0.2), (200, 0.5, 0.75, -0.8)])
    amp = cell(0.55, 0.80, 1.6, 0.80, 0.97, [(0, 1.0, 0.4, 1.0), (100, 0.7, 0.72, 1.2), (200, 0.55, 0.80, 1.6)])
    trained = [{"rank": 1, "optimiser": "sgd", "lr": 0.03, **held}, {"rank": 1, "optimiser": "adam", "lr": 0.01, **rev},
               {"rank": 4, "optimiser": "adam", "lr": 0.01, **amp},
               {"rank": 4, "optimiser": "sgd", "lr": 0.03, "diverged": "training diverged at step 3"}]
    return {"trained": trained, "config": {"adv_steps": 200},
            "spectrum": {"cos_top_u": 0.998, "u_share": 0.32, "u_kept": -0.1, "u_kept_norm": 0.11},
            "run": {"clean": {"clean_acc": 1.0, "robust_acc": 0.37}, "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99}}}



def test_lowrank_direction_rows_table_each_group_with_the_glues_ranges():
    res = _fake_curved_result()
    rows = experiments.lowrank_direction_rows({"A": res, "G": res}, groups=(("A", ("held", "leak")),
                                                                            ("G", ("adam", "nothing")), ("B", ("all",))))
    assert all(len(r) == len(experiments.LOWRANK_DIRECTION_HEADER) for r in rows)
    assert [r[0] for r in rows] == ["A: full update", "A: rank-r, not leaking", "A: rank-r, leaking", "G: full update",
                                    "G: rank-r, Adam"]  # no group "nothing", no regime B; the diverged one left out
    g = experiments.lowrank_direction_glue({"A": res})
    full, held, leak = rows[0], rows[1], rows[2]
    assert full[1:4] == [1, "0.320", "1.00"] and full[5] == "-0.10"
    assert held[1] == g["lrd_A_held"] == 1 and held[5] == "0.15" and held[7] == "0 / 0"
    assert leak[1] == g["lrd_A_leak"] == 2 and leak[2] == "0.80 to 0.99" and leak[5] == "-0.80 to 1.60"
    assert leak[7] == "1 / 1"  # the reversing one at its end; the amplifying one never
    assert leak[8] == f"{g['lrd_A_leak_clean_min']:.3f} to {g['lrd_A_leak_clean_max']:.3f}"

def test_leak_onset_and_direction_glue_tell_holding_from_leaking_trainings():
    res = _fake_curved_result()
    assert [experiments.leak_onset(t) for t in res["trained"]] == [None, 200, 100, None]
    g = experiments.lowrank_direction_glue({"A": res})
    assert (g["lrd_A_full_share"], g["lrd_A_full_kept"], g["lrd_A_full_cos"], g["lrd_A_steps"]) == (0.32, -0.1, 0.998, 200)
    assert g["lrd_A_held"] == 1 and g["lrd_A_held_kept_max"] == 0.15 and g["lrd_A_held_reversed_of"] == "none of the 1"
    assert g["lrd_A_leak"] == 2 and (g["lrd_A_leak_kept_min"], g["lrd_A_leak_kept_max"]) == (-0.8, 1.6)
    assert (g["lrd_A_leak_share_min"], g["lrd_A_leak_cos_min"]) == (0.80, 0.97)
    assert g["lrd_A_leak_reversed"] == 1 and g["lrd_A_leak_reversed_of"] == "1 of the 2"
    assert (g["lrd_A_onset_min"], g["lrd_A_onset_max"]) == (100, 200)
    assert g["lrd_A_all"] == 3 and (g["lrd_A_all_share_min"], g["lrd_A_all_share_max"]) == (0.80, 0.999)
    assert g["lrd_A_sgd"] == 1 and g["lrd_A_adam"] == 2 and g["lrd_A_adam_keptnorm_max"] == 1.6
    assert (g["lrd_A_adam_kept_min"], g["lrd_A_sgd_kept_max"]) == (-0.8, 0.15)
    assert g["lrd_A_rev_before_onset"] == 1  # the reversing training: negative at step 100, leaking at 200
    assert g["lrd_A_leak_pcos_min"] == -1.0 and g["lrd_A_leak_not_reversed"] == 1
    assert g["lrd_A_all_ever_reversed_of"] == "1 of the 3" and g["lrd_A_held_ever_reversed_of"] == "none of the 1"
    assert g["lrd_A_held_offu_max"] == pytest.approx(1.0 * (1 - 0.999) ** 0.5)
    assert (g["lrd_A_adam_clean_min"], g["lrd_A_adam_clean_max"]) == (0.50, 0.55)
    assert g["lrd_A_r1"] == 2 and g["lrd_A_r4"] == 1 and g["lrd_A_r4_share_max"] == 0.80  # the diverged one not counted
    # the reversing training had reversed u (step 100) by its leak (step 200); the amplifying one never did
    assert g["lrd_A_rev_by_onset"] == 1 and g["lrd_A_rev_by_onset_of"] == "1 of the 2"


def test_lowrank_curves_figure_draws_a_line_per_finished_training():
    import matplotlib

    matplotlib.use("Agg")
    from fp_helpers import plots

    fig = plots.lowrank_curves({"A": _fake_curved_result(), "Along": _fake_curved_result()})
    top, bottom = fig.axes[0], fig.axes[2]
    assert len(top.lines) == 3 + 1 and len(bottom.lines) == 3 + 2  # three trainings; zero line (+ full update)
    # top: FGM minus clean accuracy of each logged step from the start; the leaking training ends above zero
    assert list(top.lines[1].get_ydata()) == pytest.approx([0.4 - 1.0, 0.5 - 0.8, 0.75 - 0.5])
    assert list(bottom.lines[1].get_ydata()) == [1.0, -0.2, -0.8]
    assert "A (long)" in fig.axes[1].get_title()
    matplotlib.pyplot.close(fig)


def test_continuation_glue_checks_the_shared_logs_and_finds_later_leaks():
    short = _fake_curved_result()
    long = json.loads(json.dumps(short))
    held = long["trained"][0]  # did not leak in the short run: it leaks at step 300 of the long one
    held["curve"].append({**held["curve"][-1], "step": 300, "clean_acc": 0.5, "fgm_acc": 0.7})
    g = experiments.continuation_glue(short, long)
    assert g["lrd_continued"] == "the same logs at all 9 shared (training, step) pairs"
    assert (g["lrd_held_later_of"], g["lrd_held_later_min"], g["lrd_held_later_max"]) == ("all 1", 300, 300)
    long["trained"][1]["curve"][1]["fgm_acc"] = 0.1  # another training's log differs at step 100
    g = experiments.continuation_glue(short, long)
    assert g["lrd_continued"] == "logs that differ at 1 of 9 shared (training, step) pairs"
    held["curve"].pop()
    assert experiments.continuation_glue(short, long)["lrd_held_later_of"] == "none of the 1"


def test_lowrank_study_glue_quotes_the_best_rank_and_where_the_updates_point():
    cfg = _tiny(adv_steps=120)
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    study = experiments.lowrank_study(run, trained_ranks=(1, 2), truncation_ranks=(1, 4), workers=1)
    g = experiments.lowrank_study_glue(study, cfg)
    best = max((1, 2), key=lambda r: study["trained"][r]["robust_acc"])
    assert g["at_lr_trained_r"] == best and g["at_lr_trained_robust"] == study["trained"][best]["robust_acc"]
    assert (g["at_lr_r1"], g["at_lr_rbig"]) == (1, 4) and g["at_lr_truncbig_robust"] == study["truncated"][4]["robust_acc"]
    assert g["at_lr_trained_kept_min"] == min(study["trained"][r]["u_kept"] for r in (1, 2))
    assert g["at_lr_full_ushare"] == study["directions"]["u_share"] and g["at_lowrank_lr"] == cfg.lowrank_lr
    # the rank-1 truncation lies along one direction: its share along u is that direction's squared cosine with u
    assert abs(g["at_lr_trunc1_ushare"] - g["at_lr_cos_top_u"] ** 2) < 1e-5


def _fake_replicates():
    """Two seeds (0, 1) of :func:`_fake_curved_result`, the second with a better full update (0.95)."""
    a, b = _fake_curved_result(), _fake_curved_result()
    for res, seed in ((a, 0), (b, 1)):
        res["config"] = {"adv_steps": 200, "seed": seed}
        res["truncated"] = [{"rank": 1, "clean_acc": 0.85, "robust_acc": 0.28, "energy_share": 0.32}]
        res["principle_holds_fraction"], res["spectrum"]["relative_size"] = 0.1, 1.0
    b["run"]["adversarial"]["robust_acc"] = 0.95
    return a, b


def test_lowrank_seed_glue_and_rows_summarise_the_replicates_of_a_regime():
    a, b = _fake_replicates()
    b["trained"][1]["fgm_acc"] = 0.40  # seed 1: the reversing training no longer leaks (FGM below clean)
    b["trained"][0]["robust_acc"] = 0.50  # ... and one training ends above the clean network's PGD (0.37)
    g = experiments.lowrank_seed_glue([a, b], "A")
    assert (g["lrs_A_n"], g["lrs_A_seeds"], g["lrs_A_trainings"], g["lrs_A_diverged"]) == (2, "0, 1", 6, 2)
    assert (g["lrs_A_leak_min"], g["lrs_A_leak_max"], g["lrs_A_leak_list"]) == (1, 2, "2, 1")
    assert g["lrs_A_leak_of"] == "3 of the 6" and g["lrs_A_below_all_of"] == "1 of the 2"
    assert (g["lrs_A_leak_every_seed"], g["lrs_A_leak_any_seed"]) == (1, 2)  # the amplifying one leaks at both
    assert g["lrs_A_leak_every_seed_list"] == "Adam at 0.01, rank 4"
    # the reversing training (seed 0: -0.8 at the end; seed 1: negative from step 100) at both seeds, of 6
    assert g["lrs_A_ever_reversed_of"] == "2 of the 6" and g["lrs_A_above_clean_of"] == "1 of the 6"
    # by rank over the settings trained at ranks 1 and 4 (only Adam 0.01 has both, at 0.2 each; none rises)
    assert (g["lrs_A_r_lo"], g["lrs_A_r_hi"], g["lrs_A_lo_max"], g["lrs_A_hi_min"]) == (1, 4, 0.2, 0.2)
    assert g["lrs_A_rises_every_seed"] == "none of the 2"
    assert (g["lrs_A_full_min"], g["lrs_A_full_max"], g["lrs_A_best_max"]) == (0.95, 0.99, 0.50)
    assert g["lrs_A_gap_min"] == pytest.approx(0.95 - 0.50)
    # leaking: seed 0 the reversing (by its onset) and the amplifying one, seed 1 the amplifying one only
    assert g["lrs_A_rev_by_onset_of"] == "1 of the 3" and g["lrs_A_rev_before_onset"] == 1
    assert g["lrs_A_leak_kept_max"] == 1.6 and (g["lrs_A_onset_min"], g["lrs_A_onset_max"]) == (100, 200)
    # not leaking: seed 0's holding training (kept 0.15), seed 1's holding one and the reversed one (kept -0.8)
    assert (g["lrs_A_held_kept_min"], g["lrs_A_held_kept_max"]) == (-0.8, 0.15)
    assert (g["lrs_A_share_min"], g["lrs_A_cos_min"]) == (0.80, 0.97)
    rows = experiments.lowrank_seed_rows([a, b])
    assert len(rows[0]) == len(experiments.LOWRANK_SEED_HEADER)
    assert rows[0] == [0, "0.370", "0.990", "0.880 / 0.200", "3 of 3", "2 of 3", "1 of 2", "0.15-0.15"]
    assert rows[1][3:] == ["0.880 / 0.500", "2 of 3", "1 of 3", "0 of 1", "0.15-0.80"]



def test_lowrank_seed_findings_put_the_regimes_side_by_side():
    a, b = _fake_replicates()
    g = experiments.lowrank_seed_glue([a, b], "A")
    no_leak = {"lrs_G_seeds": "0", "lrs_G_trainings": 18, "lrs_G_leak_list": "0", "lrs_G_leak_every_seed": 0,
               "lrs_G_leak_any_seed": 0, "lrs_G_ever_reversed_of": "none of the 18"}
    header, rows = experiments.lowrank_seed_findings({"A": g, "G": no_leak})
    assert header == ["finding (over every seed)", "regime A", "regime G"]
    row = {r[0]: r[1:] for r in rows}
    assert all(len(r) == 3 for r in rows)
    assert row["leaking trainings, per seed"] == [g["lrs_A_leak_list"], "0"]
    assert row["settings that leak at every seed / at any seed"] == [
        f"{g['lrs_A_leak_every_seed']} / {g['lrs_A_leak_any_seed']}", "0 / 0"]
    onset = [v for k, v in row.items() if k.startswith("leaking trainings with")][0]
    assert onset == [f"{g['lrs_A_rev_by_onset_of']} ({g['lrs_A_rev_before_onset']})", "-"]  # G: nothing leaks
    assert row["full update's PGD accuracy"] == ["0.950 to 0.990", "-"]
    assert row["PGD accuracy at the smallest rank"][0].endswith(f"(r = {g['lrs_A_r_lo']})")
    assert row["full update minus best rank-r training, at least"][0] == f"{g['lrs_A_gap_min']:.2f}"
    with pytest.raises(ValueError, match="no regime"):
        experiments.lowrank_seed_findings({})

def test_lowrank_seed_same_runs_compares_each_replicate_with_its_regime_run():
    res = _fake_grid_result()
    res["config"] = {"adv_steps": 4000, "seed": 0}
    reg = {"config": dict(res["config"]), "clean": {"clean_acc": 1.0, "robust_acc": 0.37, "mixture_norm_median": 0.9},
           "adversarial": {"clean_acc": 1.0, "robust_acc": 0.99, "mixture_norm_median": 0.2}}
    assert experiments.lowrank_seed_same_runs([res], [reg]) == "identical at all 1 seeds"
    other = {**reg, "adversarial": {**reg["adversarial"], "robust_acc": 0.98}}
    assert experiments.lowrank_seed_same_runs([res], [other]) == "identical at 0 of 1 seeds"
    assert experiments.lowrank_seed_same_runs([res], []) == "identical at 0 of 1 seeds"  # no regime run of that seed


def test_regime_label_writes_a_variant_as_the_book_does():
    assert experiments.regime_label("A") == "A" and experiments.regime_label("Along") == "A (long)"
