"""The CIFAR-10 experiment: layer table, frequency analysis, save / load, CLI, bad input."""

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from fp_helpers import cifar_models as cm
from fp_helpers import purification as pur
from fp_helpers.__main__ import main
from fp_helpers.cifar_experiments import (STANDARD_RADII, cifar_config, frozen_bn_key, layer_table, load_or_run,
                                          load_run, model_keys, run_cifar, save_run)
from fp_helpers.runs import threads

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FP_DATA_DIR") or REPO.parent / "shared" / "data" / "cifar10")
needs_subset = pytest.mark.skipif(not (DATA / "cifar10_prefix.npz").is_file(),
                                  reason=f"the CIFAR-10 subset is not at {DATA} (set FP_DATA_DIR)")
TINY = ["n_train=260", "n_test=60", "holdout=40", "eval_n=60", "clean_epochs=2", "adv_epochs=1", "ft_epochs=1",
        "ranks=1,2", "width=4", "batch_size=64", "eval_pgd_steps=3"]


@pytest.fixture(scope="module")
def tiny_run():
    with threads(1):
        cfg = cifar_config("quick", TINY)
        yield cfg, run_cifar(cfg, data_dir=DATA, device="cpu", progress=False, keep_models=True)


def test_spectral_energy_share_separates_smooth_from_oscillating_maps():
    const = torch.ones(2, 3, 8, 8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).float() * 2 - 1
    assert pur.spectral_energy_share(const, 1e-6).abs().max() < 1e-6  # all energy in the DC term
    assert torch.allclose(pur.spectral_energy_share(checker, 0.25), torch.tensor(1.0))  # all at Nyquist
    smooth = torch.cos(2 * torch.pi * torch.arange(8) / 8)[None, :].expand(8, 8)  # 1/8 cycle per pixel
    assert pur.spectral_energy_share(smooth, 0.25) < 1e-6
    assert pur.spectral_energy_share(smooth, 1e-6) > 0.99
    with pytest.raises(ValueError, match="min_radius"):
        pur.spectral_energy_share(const, 1.5)


def test_layer_table_cosines_are_consistent():
    a = cm.make_model("small_resnet", seed=0, width=4)
    b = cm.make_model("small_resnet", seed=1, width=4)
    rows = layer_table(a, a, b, a)
    for r in rows:
        assert abs(r["cos_clean_init"] - 1) < 1e-9 and abs(r["cos_clean_ft"] - 1) < 1e-9
        assert abs(r["cos_scratch_init"]) < 0.5  # independent initialisations are nearly orthogonal
        assert r["rel_change_ft"] == 0


def test_radius_defaults_to_the_standard_radius_of_the_norm():
    linf, l2 = cifar_config("quick"), cifar_config("quick", ["norm=l2"])
    assert linf.eps is None and linf.radius == 8 / 255 and linf.other_norm == "l2" and linf.other_radius == 0.5
    assert l2.radius == 0.5 and l2.other_norm == "linf" and l2.other_radius == 8 / 255
    # every training run and the evaluation use it
    for kind in ("adv", "ft", "pgd_ft", "lowrank"):
        assert l2.train_config(kind).eps == 0.5 and l2.train_config(kind).norm == "l2"
        assert linf.train_config(kind).eps == pytest.approx(8 / 255)
    assert l2.train_config("other_ft").norm == "linf" and l2.train_config("other_ft").eps == pytest.approx(8 / 255)
    assert linf.train_config("other_ft").norm == "l2" and linf.train_config("other_ft").eps == 0.5
    # an explicit radius wins, in either norm
    assert cifar_config("quick", ["norm=l2", "eps=1.0"]).radius == 1.0
    assert cifar_config("quick", ["eps=0.0156"]).train_config("adv").eps == 0.0156
    assert cifar_config("quick", ["other_eps=0.25"]).train_config("other_ft").eps == 0.25
    assert cifar_config("quick", ["eps=none"]).radius == STANDARD_RADII["linf"]
    with pytest.raises(ValueError, match="eps=2.0 is out of range for the linf ball"):
        cifar_config("quick", ["eps=2.0"])
    assert cifar_config("quick", ["norm=l2", "eps=2.0"]).radius == 2.0  # fine in l2


def test_profiles_evaluate_with_the_issue_attacks():
    quick, full = cifar_config("quick"), cifar_config("full")
    assert (quick.eval_pgd_steps, quick.eval_restarts) == (20, 1)  # PGD-20 in quick
    assert full.eval_pgd_steps == 50 and full.eval_restarts >= 2  # PGD-50 with restarts in full
    # the full profile runs every experiment of the issue: PGD training and the l2 radius included
    assert full.pgd_ft_epochs > 0 and full.pgd_ft_steps == 7 and full.other_norm_epochs > 0
    assert full.train_config("pgd_ft").describe() == "PGD-7 (random start), linf, eps=8/255, alpha=2/255"
    assert full.train_config("other_ft").describe() == "FGSM-RS, l2, eps=0.5, alpha=0.625"
    assert model_keys(cifar_config("quick", ["pgd_ft_epochs=0", "other_norm_epochs=0"])) == [
        "init", "clean", "adv_scratch", "adv_from_clean", "lowrank_1", "lowrank_4", "bn_only", "adv_from_clean_seed1",
        "ft_clean"]
    assert "bn_only" not in model_keys(cifar_config("quick", ["bn_only_control=false"]))
    assert not {"adv_from_clean_seed1", "ft_clean"} & set(model_keys(cifar_config("quick", ["direction_controls=false"])))
    # the control without attack is (c)'s schedule exactly, the attack left out
    ft, ft_clean = full.train_config("ft"), full.train_config("ft_clean")
    assert ft_clean.attack == "none" and ft.attack == "fgsm_rs"
    attack_only = ("attack", "alpha")  # the attack and its step size
    assert {k: v for k, v in vars(ft_clean).items() if k not in attack_only} == {
        k: v for k, v in vars(ft).items() if k not in attack_only}
    assert full.train_config("ft", seed=1).seed == 1 and ft.seed == 0



def _changed(clean, change):
    """A copy of ``clean`` whose conv / linear weights are ``W + change(name, W)``."""
    import copy

    m = copy.deepcopy(clean)
    for name, mod in cm._weight_layers(m):
        mod.weight.data += change(name, mod.weight.data).view_as(mod.weight)
    return m


def test_change_directions_separates_a_shared_direction_from_a_shared_rescaling():
    from fp_helpers.cifar_experiments import change_directions

    clean = cm.make_model("small_resnet", seed=0, width=4)
    g = torch.Generator().manual_seed(1)
    rank1 = {}  # one fixed rank-1 direction per layer: what (c) and its repeat share
    for name, w in cm.named_weight_matrices(clean):
        a, b = torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g)
        rank1[name] = (a @ b) * 0.05 * w.norm() / (a @ b).norm()

    def shared(name, w):  # weight decay's rescaling plus the shared rank-1 direction
        return -0.1 * w.reshape(w.shape[0], -1) + rank1[name]

    def other(name, w):  # the same rescaling, plus an unrelated random direction of the same size
        r = torch.randn(w.reshape(w.shape[0], -1).shape, generator=g)
        return -0.1 * w.reshape(w.shape[0], -1) + r * 0.05 * w.norm() / r.norm()

    models = {"clean": clean, "adv_from_clean": _changed(clean, shared),
              "adv_from_clean_seed1": _changed(clean, lambda n, w: shared(n, w) + 0.1 * rank1[n]),
              "ft_clean": _changed(clean, other), "lowrank_2": clean}
    out = change_directions(models)
    assert out["rank"] == 2  # the largest low-rank run's rank
    assert [k for k, _ in out["columns"]] == ["adv_from_clean_seed1", "ft_clean"]  # only the runs present
    for row in out["rows"]:
        w = dict(cm.named_weight_matrices(clean))[row["layer"]].double()
        d = -0.1 * w + rank1[row["layer"]].double()
        assert row["shrink"] == pytest.approx((-(d * w).sum() / (d.norm() * w.norm())).item(), abs=1e-6)
        assert row["shrink"] > 0.5  # most of the change is the rescaling ...
        assert row["adv_from_clean_seed1"] > 0.99  # ... but the shared direction is found once it is projected out
        assert abs(row["ft_clean"]) < 5 * row["random"]  # and the shared rescaling alone does not count
        assert row["random"] == pytest.approx(1 / math.sqrt(math.prod(row["shape"])))
        assert 0 < row["top_r_random"] < 1 and 0 < row["top_r"] <= 1 + 1e-9
    assert out["above_control"] == len(out["rows"])
    assert set(out["medians"]) >= {"shrink", "adv_from_clean_seed1", "ft_clean", "top_r", "top_r_random"}
    # a rank-1 change is all in its top direction; a Gaussian matrix is not
    pure = change_directions({"clean": clean, "adv_from_clean": _changed(clean, lambda n, w: rank1[n])}, rank=1)
    for row in pure["rows"]:
        assert row["top_r"] == pytest.approx(1.0, abs=1e-9) and row["top_r_random"] < 0.9
    assert pure["above_control"] is None and pure["columns"] == []
    with pytest.raises(ValueError, match="adv_from_clean"):
        change_directions({"clean": clean})
    with pytest.raises(ValueError, match="rank"):
        change_directions(models, rank=0)


def test_direction_verdicts_follow_the_numbers():
    from fp_helpers.cifar_experiments import direction_verdicts

    def dirs(seed1, control, scratch, top, top_random, layers=4):
        rows = [{"adv_from_clean_seed1": seed1[i], "ft_clean": control[i], "adv_scratch": scratch,
                 "top_r": top[i], "top_r_random": top_random, "random": 0.02} for i in range(layers)]
        med = {k: float(torch.tensor([r[k] for r in rows]).median()) for k in rows[0]}
        return {"rows": rows, "medians": med, "rank": 8,
                "above_control": sum(r["adv_from_clean_seed1"] > r["ft_clean"] for r in rows)}

    v = direction_verdicts(dirs([0.8] * 4, [0.2] * 4, 0.05, [0.9] * 4, 0.5))
    assert "in every layer" in v["reproducible"] and "shares only in part" in v["reproducible"]
    assert "hardly at all" in v["scratch"] and "in every layer" in v["lowrank"] and "10%" in v["lowrank"]
    v = direction_verdicts(dirs([0.8, 0.1, 0.1, 0.1], [0.2] * 4, 0.5, [0.9, 0.1, 0.1, 0.1], 0.5))
    assert "only in 1 of the 4 layers" in v["reproducible"] and "cannot be told" in v["reproducible"]
    assert "partly towards (b)" in v["scratch"] and "in 1 of the 4 layers" in v["lowrank"]
    v = direction_verdicts(dirs([0.8] * 4, [0.2] * 4, 0.05, [0.1] * 4, 0.5))
    assert "not low-rank" in v["lowrank"]
    v = direction_verdicts(dirs([0.8] * 4, [0.05] * 4, 0.05, [0.9] * 4, 0.5))  # the control at the random scale
    assert "does not take" in v["reproducible"] and "in every layer" in v["reproducible"]
    no_controls = dirs([0.8] * 4, [0.2] * 4, 0.05, [0.9] * 4, 0.5)
    no_controls["above_control"] = None
    for r in no_controls["rows"]:
        del r["adv_from_clean_seed1"], r["ft_clean"]
    del no_controls["medians"]["adv_from_clean_seed1"], no_controls["medians"]["ft_clean"]
    v = direction_verdicts(no_controls)
    assert v["reproducible"] == "" and v["scratch"] == ""  # nothing to compare with: no sentence

@needs_subset
def test_run_cifar_reports_every_experiment(tiny_run):
    cfg, r = tiny_run
    ex = r["experiments"]
    frozen = frozen_bn_key(2, 0.01)
    assert list(ex) == ["init", "clean", "adv_scratch", "adv_from_clean", "adv_from_clean_pgd",
                        "adv_from_clean_other", "clean_other", "lowrank_1", "lowrank_2", "bn_only", frozen,
                        "adv_from_clean_seed1", "ft_clean"]
    for key in ex:
        assert 0 <= ex[key]["robust_acc"] <= ex[key]["clean_acc"] <= 1, key
    # the attacks: the main norm at 8/255, the other norm (and its clean baseline) at l2 0.5
    for key in ex:
        other = key in ("adv_from_clean_other", "clean_other")
        assert ex[key]["norm"] == ("l2" if other else "linf"), key
        assert ex[key]["eps"] == pytest.approx(0.5 if other else 8 / 255), key
        assert ex[key]["attack"].startswith("PGD-3 x1"), key
    assert ex["adv_from_clean_pgd"]["history"]["attack"].startswith("PGD-3 (random start), linf, eps=8/255")
    assert ex["adv_from_clean_other"]["history"]["attack"] == "FGSM-RS, l2, eps=0.5, alpha=0.625"
    assert ex["clean_other"]["clean_acc"] == ex["clean"]["clean_acc"]  # the same model
    assert ex[frozen]["rank"] == 2 and ex[frozen]["lr"] == 0.01 and ex[frozen]["train_bn"] is False
    assert ex[frozen]["history"]["config"]["lr"] == 0.01
    # the direction controls: (c) with the next seed, and (c)'s schedule without attack, both from the clean weights
    seed1, ft_clean = ex["adv_from_clean_seed1"]["history"], ex["ft_clean"]["history"]
    assert seed1["config"] == {**ex["adv_from_clean"]["history"]["config"], "seed": cfg.seed + 1}
    assert seed1["attack"] == ex["adv_from_clean"]["history"]["attack"] and ft_clean["attack"] == "clean training"
    assert ft_clean["config"]["lr"] == ex["adv_from_clean"]["history"]["config"]["lr"]
    assert len(ft_clean["epoch"]) == len(seed1["epoch"]) == cfg.ft_epochs
    W = {k: dict(cm.named_weight_matrices(r["_models"][k])) for k in ("clean", "adv_from_clean", "adv_from_clean_seed1")}
    assert all(not torch.equal(W["adv_from_clean"][n], W["adv_from_clean_seed1"][n]) for n in W["clean"])  # another seed
    for key in ("adv_from_clean", "adv_from_clean_pgd", "adv_from_clean_other", "lowrank_1", "lowrank_2", frozen,
                "adv_from_clean_seed1", "ft_clean"):
        assert -1 <= ex[key]["cos_clean_median"] <= 1 and ex[key]["rel_change_median"] >= 0, key
        assert list(ex[key]["cos_clean_layers"]) == [row["layer"] for row in r["layers"]], key
    assert ex["adv_from_clean"]["cos_clean_layers"] == {row["layer"]: row["cos_clean_ft"] for row in r["layers"]}
    assert r["n_train"] == 220 and r["n_test"] == 60 and r["is_subset"]
    assert "1,000" not in r["data"] and "260 train" in r["data"]
    assert ex["lowrank_1"]["trainable_params"] < ex["lowrank_2"]["trainable_params"] < ex["lowrank_1"]["full_params"]
    # BatchNorm is trained in low-rank mode (lowrank_train_bn), on top of the rank-r factors
    assert ex["lowrank_1"]["low_rank_params"] < ex["lowrank_1"]["trainable_params"]
    # the batch-norm-only control trains exactly the batch-norm part of (d): the same optimiser and schedule
    assert ex["bn_only"]["trainable_params"] == ex["lowrank_1"]["trainable_params"] - ex["lowrank_1"]["low_rank_params"]
    assert ex["bn_only"]["history"]["config"] == ex["lowrank_1"]["history"]["config"]
    bn_model, clean_model = r["_models"]["bn_only"], r["_models"]["clean"]
    assert all(torch.equal(w, dict(cm.named_weight_matrices(clean_model))[n])
               for n, w in cm.named_weight_matrices(bn_model))  # every conv / linear weight is the clean one
    names = [row["layer"] for row in r["layers"]]
    assert names[0] == "conv1" and names[-1] == "linear"
    # the low-rank models are rank-r updates of the clean model
    for rank in (1, 2):
        model = r["_models"][f"lowrank_{rank}"]
        clean = dict(cm.named_weight_matrices(r["_models"]["clean"]))
        updates = cm.low_rank_updates(model)
        for name, W in cm.named_weight_matrices(model):
            assert torch.allclose(W - clean[name], updates[name], atol=1e-6)  # W = W_clean + A B ...
            assert torch.linalg.matrix_rank(updates[name], rtol=1e-4) <= rank  # ... of rank <= r (fp32)


@needs_subset
def test_saved_run_loads_identically_and_a_changed_config_is_not_shown_as_current(tiny_run, tmp_path):
    cfg, r = tiny_run
    save_run(r, tmp_path / "run")
    loaded = load_run(tmp_path / "run", cfg, device="cpu")
    x = r["_x"]
    assert list(loaded["_models"]) == list(r["_models"]) == model_keys(cfg)  # (c') and (c'') included
    for key, model in r["_models"].items():
        assert torch.allclose(model(x), loaded["_models"][key](x), atol=1e-5), key  # memory formats may differ
    assert loaded["experiments"] == json.loads(json.dumps(r["experiments"]))
    other = cifar_config("quick", TINY + ["ft_lr=0.01"])
    with pytest.raises(ValueError, match="ft_lr"):
        load_run(tmp_path / "run", other)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert load_or_run(other, tmp_path / "run", save=False, data_dir=DATA, device="cpu",
                           progress=False)["config"]["ft_lr"] == 0.01
    assert any("recomputing" in str(x.message) for x in w)
    assert load_run(tmp_path / "nothing", cfg) is None


@needs_subset
def test_saved_run_is_shown_without_the_data(tiny_run, tmp_path, monkeypatch):
    """A reader with the repository but no CIFAR-10 still gets the committed run (it cannot be recomputed)."""
    cfg, r = tiny_run
    save_run(r, tmp_path / "run")
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "empty"))
    with pytest.warns(UserWarning, match="CIFAR-10 was not found"):
        loaded = load_or_run(cfg, tmp_path / "run", device="cpu", progress=False)
    assert loaded["loaded_from"] == str(tmp_path / "run")
    assert loaded["experiments"] == json.loads(json.dumps(r["experiments"]))


@pytest.mark.parametrize("args, msg", [
    (["--set", "model=vgg"], "unknown model 'vgg'"),
    (["--set", "eps=-1"], "eps=-1 is out of range"),
    (["--set", "norm=l2", "--set", "eps=100"], "eps=100 is out of range for the l2 ball"),
    (["--set", "frozen_bn_lrs=0"], "frozen_bn_lrs must be finite numbers > 0"),
    (["--set", "ranks=0"], "ranks must be positive"),
    (["--data", "/nonexistent/cifar"], "FP_DATA_DIR"),
])
def test_cli_cifar_rejects_bad_input(tmp_path, capsys, monkeypatch, args, msg):
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    out = tmp_path / "c.json"
    assert main(["run", "cifar", "--profile", "quick", *args, "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


@needs_subset
def test_saved_run_with_other_data_or_model_is_refused(tiny_run, tmp_path):
    cfg, r = tiny_run
    save_run(r, tmp_path / "run")
    with pytest.raises(ValueError, match="data found now"):
        load_run(tmp_path / "run", cfg, device="cpu", data_counts=(999, 60))
    (tmp_path / "run" / "clean.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="incomplete or corrupted"):
        load_run(tmp_path / "run", cfg, device="cpu")


# ------------------------------------------------------------------------------------------------ the chapter's analyses

def _toy_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 10)).eval()


def _toy_batch(model, n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, 3, 8, 8, generator=g)  # away from 0 and 1: clipping never binds
    with torch.no_grad():
        y = model(x).argmax(1)  # every point classified correctly
    return x, y


def test_full_budget_perturbations_use_the_whole_radius_and_beat_one_step():
    from fp_helpers.attacks import margins, pgd
    from fp_helpers.cifar_experiments import full_budget_perturbations

    cfg = cifar_config("quick")
    model = _toy_model()
    x, y = _toy_batch(model)
    d = full_budget_perturbations(model, x, y, cfg, steps=20)
    assert torch.allclose(d.flatten(1).abs().amax(1), torch.full((x.shape[0],), cfg.radius), atol=1e-6)
    # the early-stopping PGD keeps the first misclassifying iterate: often a single step of 2.5 eps / 20
    early = pgd(model, x, y, cfg.radius, "linf", steps=20, clip=(0.0, 1.0)) - x
    assert (early.flatten(1).abs().amax(1) < cfg.radius - 1e-6).any()
    one_step = full_budget_perturbations(model, x, y, cfg, steps=1)  # one step of 2.5 eps, clipped to eps
    one_small = (x + 2.5 * cfg.radius / 20 * d.sign()).clamp(0, 1) - x
    m_full, m_one = margins(model, x + d, y), margins(model, x + one_small, y)
    assert (m_full <= m_one + 1e-5).all() and m_full.mean() < m_one.mean()
    assert m_full.mean() <= margins(model, x + one_step, y).mean() + 1e-5
    # near the border of [0, 1] the perturbation is clipped, never beyond the radius
    xb = torch.zeros_like(x)
    db = full_budget_perturbations(model, xb, y, cfg, steps=20)
    assert (db >= 0).all() and db.abs().max() <= cfg.radius + 1e-6


def test_fixed_pgd_flags_broken_points_and_rejects_bad_input():
    from fp_helpers.attacks import margins
    from fp_helpers.cifar_experiments import fixed_pgd

    model = _toy_model()
    x, y = _toy_batch(model)
    for loss in ("ce", "margin"):
        xa, broken = fixed_pgd(model, x, y, 0.5, "linf", steps=10, loss=loss)
        assert torch.equal(broken[margins(model, xa, y) <= 0], torch.ones_like(broken[margins(model, xa, y) <= 0]))
        assert broken.any()
    _, none = fixed_pgd(model, x, y, 0.0, "linf", steps=3)
    assert not none.any()
    with pytest.raises(ValueError, match="unknown loss"):
        fixed_pgd(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="steps"):
        fixed_pgd(model, x, y, 0.1, steps=0)


def test_perturbation_analysis_uses_only_images_every_model_gets_right():
    from fp_helpers.cifar_experiments import perturbation_analysis

    cfg = cifar_config("quick")
    a, b = _toy_model(0), _toy_model(1)
    x, y = _toy_batch(a, n=40)
    with torch.no_grad():
        both = (b(x).argmax(1) == y)
    out = perturbation_analysis({"a": a, "b": b}, x, y, cfg, steps=10)
    assert out["n_total"] == 40 and out["n_used"] == int(both.sum()) and torch.equal(out["x"], x[both])
    for k in ("a", "b"):
        assert out["delta"][k].shape == out["x"].shape
        assert out["linf"][k] == pytest.approx(cfg.radius, abs=1e-6)
        assert 0 <= out["highfreq"][k] <= 1 and 0 <= out["success"][k] <= 1
    with pytest.raises(ValueError, match="none of the"):
        perturbation_analysis({"a": a}, x[:3], (y[:3] + 1) % 10, cfg)


def test_attack_strength_orders_the_attacks():
    from fp_helpers.cifar_experiments import attack_strength, standard_error

    cfg = cifar_config("quick", ["eps=0.1"])
    model = _toy_model()
    x, y = _toy_batch(model, n=48)
    out = attack_strength({"toy": model}, x, y, cfg, strong_steps=20, strong_restarts=2)
    r = out["rows"][0]
    assert out["n"] == 48 and r["clean"] == 1.0
    assert r["worst"] <= min(r["fgsm"], r["pgd_run"], r["strong"]) and r["pgd_run"] <= r["fgsm"]
    assert out["max_gap"] == pytest.approx(r["pgd_run"] - r["worst"])
    assert out["ordered"] == (r["fgsm"] >= r["pgd_run"] and r["strong"] <= r["pgd_run"]) == r["ordered"]
    # paired counts: the accuracies differ by exactly the images one attack breaks and the other does not
    assert (r["pgd_run"] - r["strong"]) * 48 == pytest.approx(r["strong_only"] - r["run_only"])
    assert r["extra"] == round((r["pgd_run"] - r["worst"]) * 48) and out["max_extra"] == r["extra"]
    assert ("every image" in out["verdict"]) == (r["extra"] == 0)
    assert r["se_pgd_run"] == pytest.approx(standard_error(r["pgd_run"], 48))
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="positive int"):
        standard_error(0.5, 0)


def _fake_result():
    layers = [{"layer": "a", "cos_clean_ft": math.sqrt(1 - 0.3 ** 2), "rel_change_ft": 0.3},
              {"layer": "b", "cos_clean_ft": 0.99, "rel_change_ft": 0.2}]
    lr = lambda r, acc: {"rank": r, "robust_acc": acc, "clean_acc": 0.4, "low_rank_params": 10 * r,
                         "trainable_params": 10 * r + 5, "cos_clean_median": 0.99, "full_params": 100,
                         "rel_change_median": 0.1}
    return {"n_test": 500, "layers": layers, "layer_medians": {"rel_change_ft": 0.25},
            "experiments": {"clean": {"robust_acc": 0.0, "clean_acc": 0.7},
                            "adv_from_clean": {"robust_acc": 0.2, "clean_acc": 0.5, "cos_clean_median": 0.97,
                                               "rel_change_median": 0.25},
                            "lowrank_1": lr(1, 0.17), "lowrank_4": lr(4, 0.18), "lowrank_8": lr(8, 0.18)}}


def test_cosine_bounds_are_the_bound_the_relative_change_forces():
    from fp_helpers.cifar_experiments import cosine_bounds

    out = cosine_bounds(_fake_result())
    assert out["bound_median"] == pytest.approx(math.sqrt(1 - 0.25 ** 2))
    a, b = out["layers"]
    assert a["bound"] == pytest.approx(a["cos"]) and a["excess"] == pytest.approx(0, abs=1e-12)
    assert b["bound"] == pytest.approx(math.sqrt(1 - 0.04)) and out["max_excess"] == pytest.approx(b["excess"])
    assert set(out["runs"]) == {"adv_from_clean", "lowrank_1", "lowrank_4", "lowrank_8"}
    # the bound is a true bound: a random change of relative size r never has a smaller cosine
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, generator=g)
    for r in (0.1, 0.3, 0.9):
        d = torch.randn(1000, generator=g)
        w2 = w + r * w.norm() * d / d.norm()
        assert torch.nn.functional.cosine_similarity(w, w2, 0) >= math.sqrt(1 - r * r) - 1e-6


def test_lowrank_summary_picks_best_and_worst_rank():
    from fp_helpers.cifar_experiments import lowrank_summary

    out = lowrank_summary(_fake_result())
    assert out["best"]["rank"] == 4 and out["worst"]["rank"] == 1  # a tie goes to the smaller rank
    assert out["best_ranks"] == "4 and 8"
    assert out["share"] == pytest.approx(0.18 / 0.2) and out["cmp"] == "about the same as"
    assert [r[0] for r in out["rows"]] == [1, 4, 8, "full (c)"] and out["rows"][-1][1] == 100
    assert out["bn_only"] is None
    # with the batch-norm-only control: its row before (c), and the verdict at two standard errors
    res = _fake_result()
    res["experiments"]["bn_only"] = {"rank": 0, "robust_acc": 0.175, "clean_acc": 0.45, "trainable_params": 5}
    out = lowrank_summary(res)
    assert [r[0] for r in out["rows"]] == [1, 4, 8, "0 (batch norm only)", "full (c)"]
    assert out["cmp_bn"] == "about the same as" and "does not support" in out["bn_verdict"]
    res["experiments"]["bn_only"]["robust_acc"] = 0.05
    out = lowrank_summary(res)
    assert out["cmp_bn"] == "higher than" and "do add robustness" in out["bn_verdict"]
    assert out["bn_share"] == pytest.approx(0.05 / 0.2)
    res = _fake_result()
    res["experiments"] = {k: v for k, v in res["experiments"].items() if not k.startswith("lowrank_")}
    with pytest.raises(ValueError, match="no low-rank run"):
        lowrank_summary(res)


def test_historical_frozen_bn_reads_the_record_or_gives_none(tmp_path):
    from fp_helpers.cifar_experiments import historical_frozen_bn

    assert historical_frozen_bn(tmp_path / "missing.json") is None
    path = REPO / "results" / "cifar" / "full_frozen_bn.json"
    if path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = historical_frozen_bn(path)
        assert old["lr"] > 0 and 0 <= old["max_robust"] <= old["max_clean"] + 1 and "earlier" in old["note"]


@needs_subset
def test_evaluation_images_are_the_ones_the_run_attacks(tiny_run):
    from fp_helpers.cifar_experiments import describe_run, evaluation_images

    cfg, res = tiny_run
    x, y = evaluation_images(cfg, DATA, device="cpu")
    assert x.shape[0] == res["n_test"] and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[:16], res["_x"].cpu())
    assert "training images" in describe_run(res, cfg)


def test_runs_overview_reads_every_run_from_the_config():
    from fp_helpers.cifar_experiments import RUNS_HEADER, runs_overview

    cfg = cifar_config("full")
    rows = {r[0]: r for r in runs_overview(cfg)}
    assert all(len(r) == len(RUNS_HEADER) for r in rows.values())
    assert rows["(a) clean"][2:6] == ["none", "-", cfg.clean_epochs, f"{cfg.lr:g}"]
    assert rows["(c) adversarial, from clean"][1:6] == ["(a)'s weights", "FGSM, random start", "l-inf 8/255",
                                                         cfg.ft_epochs, f"{cfg.ft_lr:g}"]
    assert rows["(c') PGD, from clean"][2] == f"PGD-{cfg.pgd_ft_steps}"
    assert rows["(c'') adversarial, from clean, other norm"][3] == "l2 0.5"
    assert rows[f"control of (d): rank {max(cfg.ranks)}, batch norm frozen"][5] == ", ".join(f"{x:g}" for x in cfg.frozen_bn_lrs)
    from fp_helpers.cifar_experiments import FROZEN_BN_FOLLOWUP_LRS

    plain = rows["follow-up of that control: without attack"]
    smaller = rows["follow-up of that control: the control again, and smaller learning rates"]
    assert plain[2:6] == ["none", "-", cfg.ft_epochs, ", ".join(f"{x:g}" for x in cfg.frozen_bn_lrs)]
    assert smaller[2] == "FGSM, random start"
    assert smaller[5] == ", ".join(f"{x:g}" for x in FROZEN_BN_FOLLOWUP_LRS + cfg.frozen_bn_lrs)
    stats = rows["follow-up of that control: statistics of each batch, scale and shift frozen"]
    assert stats[2] == "FGSM, random start" and stats[5] == ", ".join(f"{x:g}" for x in cfg.frozen_bn_lrs + (cfg.lowrank_lr,))
    # runs the config does not make are not listed
    from dataclasses import replace

    off = replace(cfg, pgd_ft_epochs=0, other_norm_epochs=0, direction_controls=False, bn_only_control=False,
                  frozen_bn_lrs=())
    assert [r[0] for r in runs_overview(off)] == ["(a) clean", "(b) adversarial, from scratch",
                                                 "(c) adversarial, from clean", "(d) low-rank, ranks 1, 4, 8"]


def test_attack_strength_box_check_finds_an_l2_budget_spent_outside_the_images():
    """Half the pixels sit at 1 and the label's margin falls as they rise: the run's PGD keeps pushing budget there
    (clipped away), the box-aware PGD spends it on the other half, so only it breaks the middle points."""
    from fp_helpers.cifar_experiments import attack_strength

    cfg = cifar_config("quick")
    d, eps = 3 * 4 * 4, 0.5
    sat = torch.arange(d) < d // 2  # these pixels are at 1.0
    w = torch.where(sat, -1.0, 1.0)
    lin = torch.nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(d), w]))
        lin.bias.copy_(torch.tensor([0.0, 0.5 * (d // 2)]))  # cancels the pixels' value at t = 0
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    scale = eps * math.sqrt(d // 2)  # the margin an l2 step of eps along the free pixels removes
    t = torch.tensor([0.5, 0.85, 1.2]).repeat_interleave(4)  # margins in units of scale
    x = torch.where(sat, 1.0, 0.5)[None].repeat(len(t), 1)
    x[:, ~sat] += (t * scale / (d // 2))[:, None]  # margin = sum over free pixels of (x - 0.5) = t * scale
    x = x.view(-1, 3, 4, 4)
    y = torch.ones(len(t), dtype=torch.long)
    out = attack_strength({"linear": model}, x, y, cfg, strong_steps=50, strong_restarts=1, norm="l2", eps=eps)
    r = out["rows"][0]
    assert out["norm"] == r["norm"] == "l2" and r["eps"] == eps and r["clean"] == 1.0
    # the unclipped budget reaches eps / sqrt(2) along the free pixels: t = 0.5 breaks, 0.85 and 1.2 do not;
    # the box-aware attack reaches nearly eps there: 0.85 breaks too
    assert r["pgd_run"] == pytest.approx(8 / 12) and r["fgsm"] == pytest.approx(8 / 12)
    assert r["box_only"] == 4 and r["unboxed_only"] == 0 and out["max_box_only"] == 4
    assert r["strong"] == pytest.approx(4 / 12) and r["extra"] == 4 and "overstate" in out["verdict"]
    assert r["ordered"] and out["ordered"]  # FGSM = run's PGD here, and the box-aware strong attack is below both


def test_paired_comparison_counts_only_the_images_the_two_models_disagree_on():
    from fp_helpers.cifar_experiments import compare_accuracies, compare_paired

    n = 1000
    a = torch.zeros(n, dtype=torch.bool)
    b = torch.zeros(n, dtype=torch.bool)
    a[:230], b[:200] = True, True  # b's correct images are a subset of a's: 30 discordant, all for a
    p = compare_paired(a, b)
    assert (p["only_a"], p["only_b"], p["diff"]) == (30, 0, pytest.approx(0.03))
    assert p["se"] == pytest.approx(math.sqrt(30 - 900 / n) / n)
    assert p["verdict"] == "higher than" and compare_accuracies(0.23, 0.20, n) == "about the same as"
    c = b.clone()
    c[200:210], c[:10] = True, False  # same accuracy as b, 20 discordant images
    assert compare_paired(b, c)["verdict"] == "about the same as" and compare_paired(c, c)["se"] == 0.0
    assert compare_paired(b, a)["verdict"] == "lower than"
    with pytest.raises(ValueError, match="same images"):
        compare_paired(a, b[:10])


def test_worst_case_comparisons_redo_the_paired_verdicts_under_the_worst_case():
    from fp_helpers.cifar_experiments import compare_paired, worst_case_comparisons

    n = 1000
    def mask(k, offset=0):
        m = torch.zeros(n, dtype=torch.bool)
        m[offset:offset + k] = True
        return m
    row = lambda m, run, worst: {"model": m, "pgd_run": run.float().mean().item(), "worst": worst.float().mean().item(),
                                 "_run": run, "_worst": worst}
    # c beats b clearly under the run's PGD; under the worst case c loses the images it alone kept
    check = {"n": n, "rows": [row("c", mask(300), mask(220)), row("b", mask(250), mask(240)),
                              row("d", mask(310), mask(290))]}
    cb, dc = worst_case_comparisons(check, [("c", "b"), ("d", "c")])
    assert cb["cmp_run"] == "higher than" and cb["cmp_worst"] == "lower than" and not cb["same"]
    assert (cb["only_a_run"], cb["only_b_run"], cb["only_a_worst"], cb["only_b_worst"]) == (50, 0, 0, 20)
    assert dc["cmp_worst"] == compare_paired(mask(290), mask(220))["verdict"] == "higher than"
    assert (cb["pgd_a"], cb["worst_b"]) == (pytest.approx(0.30), pytest.approx(0.24))
    assert worst_case_comparisons(check, [("b", "b")])[0]["same"]
    with pytest.raises(ValueError, match="no model x"):
        worst_case_comparisons(check, [("c", "x")])

def test_attack_check_runs_the_chapters_models_and_glues_what_its_rows_say():
    from fp_helpers.cifar_experiments import (ATTACK_CHECK_HEADER, COMPARISON_HEADER, attack_check,
                                              attack_check_comparisons, attack_check_glue, attack_check_rows)

    cfg = cifar_config("quick", ["eps=0.1"])
    res = _fake_result()
    keys = ["clean", "adv_scratch", "adv_from_clean", "adv_from_clean_pgd", "lowrank_4", "bn_only",
            "adv_from_clean_other"]
    res["_models"] = {k: _toy_model(seed=i) for i, k in enumerate(keys)}
    res["n_test"] = 48
    labels = {k: f"model {k}" for k in keys}
    x, y = _toy_batch(res["_models"]["adv_from_clean"], n=48)
    check = attack_check(res, cfg, labels, x, y, n_check=40, strong_steps=5, strong_restarts=1)
    assert check["best_lr"] == "lowrank_4"  # ranks 4 and 8 tie at 0.18: the smaller rank
    assert check["keys"] == keys[:6] and check["main"]["n"] == 40 and check["other"]["norm"] == "l2"
    rows = attack_check_rows(check)
    assert len(rows) == 8 and all(len(r) == len(ATTACK_CHECK_HEADER) for r in rows)
    assert rows[0][1] == "linf 0.1" and rows[-1][0] == "model adv_from_clean_other" and rows[-1][1] == "l2 0.5"
    g = attack_check_glue(check)
    c_row = check["main"]["rows"][2]
    assert g["cf_as_n_text"] == "the first 40 of the 48" and g["cf_as_n"] == "40" and g["cf_as_n_models"] == 8
    assert (g["cf_as_c_worst"], g["cf_as_c_pgd_run"]) == (c_row["worst"], c_row["pgd_run"])
    assert g["cf_as2_c_worst"] == check["other"]["rows"][1]["worst"]
    assert g["cf_as_gap"] == check["main"]["max_gap"] == max(r["pgd_run"] - r["worst"] for r in check["main"]["rows"])
    assert ("holds for every model in both norms" == g["cf_as_order_text"]) == all(
        r["ordered"] for r in check["main"]["rows"] + check["other"]["rows"])
    cmps, cg, crows = attack_check_comparisons(check, labels)
    assert len(cmps) == len(crows) == 4 and all(len(r) == len(COMPARISON_HEADER) for r in crows)
    assert cmps[3]["a"] == "model lowrank_4" and cmps[3]["b"] == "model bn_only"
    w = {r["model"]: r["worst"] for r in check["main"]["rows"]}
    assert cg["cf_as_lr_share_worst"] == pytest.approx(w["model lowrank_4"] / max(w["model adv_from_clean"], 1e-9))
    assert cg["cf_as_cmp_changed"] == sum(not c["same"] for c in cmps)
    del res["_models"]["bn_only"]  # a run without the batch-norm control: three comparisons
    check = attack_check(res, cfg, labels, x, y, strong_steps=5, strong_restarts=1)
    assert attack_check_glue(check)["cf_as_n_text"] == "all 48"
    cmps, cg, _ = attack_check_comparisons(check, labels)
    assert len(cmps) == 3 and cg["cf_as_cmp_bn_worst"] == "not compared" and math.isnan(cg["cf_as_bn_share_worst"])
    with pytest.raises(ValueError, match="n_check"):
        attack_check(res, cfg, labels, x, y, n_check=0)


# ------------------------------------------------------------------------------------------------ AutoAttack

def _two_class_linear(seed=0):
    """A linear 10-class model whose classes 2-9 never win: for it, the exact l-inf robust accuracy is known."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3 * 8 * 8, 10)
    with torch.no_grad():
        lin.weight[2:] = 0
        lin.bias[2:] = -100.0
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def test_autoattack_breaks_exactly_the_breakable_images_of_a_linear_model():
    from fp_helpers.cifar_experiments import autoattack

    model = _two_class_linear()
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(80, 3, 8, 8, generator=g)  # eps <= 0.3 below: the box [0, 1] never binds
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:5] = 1 - y[:5]  # five images misclassified before any attack: broken by definition
    w = model[1].weight.detach()
    dw = (w[y] - w[1 - y]).abs().sum(1)  # l1 norm of the weight difference: the l-inf margin's slope
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, (1 - y)[:, None])).squeeze(1)
    eps = float((margin[5:] / dw[5:]).median())  # about half of the correct images are robust
    exact = margin > eps * dw  # robust exactly when the worst corner of the ball keeps the label
    out = autoattack({"lin": model}, x, y, "linf", eps, attacks=("apgd-ce", "apgd-t"))["lin"]
    robust = torch.tensor([c == "1" for c in out["robust"]])
    clear = (margin - eps * dw).abs() > 0.05 * eps * dw  # leave out the knife edge
    assert clear.sum() > 40 and not robust[:5].any()
    assert torch.equal(robust[clear], exact[clear])
    assert out["acc"] == pytest.approx(robust.float().mean().item()) and 0.2 < out["acc"] < 0.8


def test_attack_check_takes_autoattack_into_the_worst_case(monkeypatch):
    from fp_helpers import cifar_experiments as cx
    from fp_helpers.attacks import margins

    cfg = cifar_config("quick", ["eps=0.01"])
    res = _fake_result()
    keys = ["clean", "adv_from_clean", "lowrank_4", "adv_from_clean_other"]
    res["_models"] = {k: _toy_model(seed=i) for i, k in enumerate(keys)}
    res["n_test"] = 30
    labels = {k: f"model {k}" for k in cx.LABELS} | {k: f"model {k}" for k in keys}
    x, y = _toy_batch(res["_models"]["adv_from_clean"], n=30)
    aa = cx.autoattack_check(res, cfg, x, y, attacks=("apgd-ce",))
    assert set(aa["main"]["models"]) == {"clean", "adv_from_clean", "lowrank_4"}
    assert set(aa["other"]["models"]) == {"clean", "adv_from_clean_other"} and aa["other"]["eps"] == 0.5
    assert aa["version"] == "custom version: APGD-CE" and aa["n"] == 30
    # plant an image that only "AutoAttack" breaks: the worst case must lose it, and the counts must say so
    without = cx.attack_check(res, cfg, labels, x, y, strong_steps=5, strong_restarts=1)
    row = without["main"]["rows"][1]
    keep = row["_worst"].nonzero().squeeze(1)
    assert keep.numel() > 0 and row["autoattack"] is None and row["aa_only"] is None
    broken = (~row["_worst"] & (margins(res["_models"]["adv_from_clean"], x, y) > 0)).nonzero().squeeze(1)
    assert broken.numel() > 0  # correct images one of our attacks breaks
    bits = list(aa["main"]["models"]["adv_from_clean"]["robust"])
    bits[int(keep[0])] = "0"  # AutoAttack alone breaks it
    bits[int(broken[0])] = "1"  # AutoAttack misses what ours break: the worst case keeps it broken
    aa["main"]["models"]["adv_from_clean"]["robust"] = "".join(bits)
    check = cx.attack_check(res, cfg, labels, x, y, strong_steps=5, strong_restarts=1, autoattack=aa)
    row2 = check["main"]["rows"][1]
    assert int(row2["_worst"].sum()) <= int(row["_worst"].sum()) - 1 and row2["aa_only"] >= 1
    assert row2["worst"] <= min(row2["autoattack"], row2["pgd_run"], row2["strong"], row2["fgsm"])
    assert not row2["_worst"][keep[0]] and not row2["_worst"][broken[0]] and row2["ours_only"] >= 1
    g = cx.attack_check_glue(check)
    assert g["cf_as_n_attacks"] == "four" and "AutoAttack" in g["cf_as_attacks"]
    assert g["cf_as_aa_max_only"] == max(r["aa_only"] for r in check["main"]["rows"] + check["other"]["rows"])
    assert cx.attack_check_glue(without)["cf_as_aa_text"] == "AutoAttack was not run"
    assert cx.attack_check_rows(without)[0][6] == "not run"
    # AutoAttack that breaks exactly what ours break: nothing only one side breaks, and the text says so
    same = dict(aa, **{part: {**aa[part], "models": {k: {**v, "robust": "".join(
        "1" if b else "0" for b in without[part]["rows"][i]["_worst"].tolist())} for i, (k, v) in
        enumerate(aa[part]["models"].items())}} for part in ("main", "other")})
    g0 = cx.attack_check_glue(cx.attack_check(res, cfg, labels, x, y, strong_steps=5, strong_restarts=1, autoattack=same))
    assert g0["cf_as_aa_max_only"] == 0 and g0["cf_as_aa_alone"] == 5
    assert g0["cf_as_aa_text"].startswith("AutoAttack breaks no image") and "on all 5 model-norm pairs" in g0["cf_as_aa_text"]
    bad = dict(aa, images="0" * 16)  # a result of other images is refused, not merged
    with pytest.raises(ValueError, match="other images"):
        cx.attack_check(res, cfg, labels, x, y, strong_steps=5, strong_restarts=1, autoattack=bad)


def test_saved_autoattack_is_used_only_for_its_run_config_images_and_attacks(tmp_path, monkeypatch):
    from fp_helpers import cifar_experiments as cx
    from fp_helpers.provenance import stamp

    cfg = cifar_config("quick", ["eps=0.1"])
    res = _fake_result()
    res["_models"] = {k: _toy_model(seed=i) for i, k in enumerate(["clean", "adv_from_clean", "lowrank_4"])}
    res["provenance"] = {"date": "2026-01-01T00:00:00Z", "code": {"hash": "abc"}}
    x, y = _toy_batch(res["_models"]["adv_from_clean"], n=20)
    monkeypatch.setitem(cx.AUTOATTACK_ATTACKS, "quick", ("apgd-ce",))
    saved = stamp(cx.autoattack_check(res, cfg, x, y, attacks=("apgd-ce",)), "cifar-autoattack", cfg, "quick")
    saved["run"] = {"date": "2026-01-01T00:00:00Z", "code": "abc", "stale": []}
    path = tmp_path / "aa.json"
    path.write_text(json.dumps(saved))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # current code, this run, same config: loaded silently
        got = cx.load_or_run_autoattack(res, cfg, x, y, path, profile="quick")
    assert "loaded_from" in got and got["main"]["models"] == saved["main"]["models"]
    with pytest.warns(UserWarning, match="other images"):
        assert "loaded_from" not in cx.load_or_run_autoattack(res, cfg, x[:10], y[:10], path, profile="quick")
    redone = dict(res, provenance={"date": "2026-02-01T00:00:00Z", "code": {"hash": "abc"}})  # same config, new run
    with pytest.warns(UserWarning, match="another run"):
        assert "loaded_from" not in cx.load_or_run_autoattack(redone, cfg, x, y, path, profile="quick")
    with pytest.warns(UserWarning, match="another config"):
        assert "loaded_from" not in cx.load_or_run_autoattack(res, cifar_config("quick", ["eps=0.2"]), x, y, path,
                                                              profile="quick")
    monkeypatch.setitem(cx.AUTOATTACK_ATTACKS, "quick", ("apgd-ce", "apgd-t"))
    with pytest.warns(UserWarning, match="recomputing AutoAttack"):
        again = cx.load_or_run_autoattack(res, cfg, x, y, path, profile="quick")
    assert "loaded_from" not in again and again["version"] == "custom version: APGD-CE, APGD-T"


def test_autoattack_refuses_points_outside_the_ball(monkeypatch):
    import pyautoattack

    from fp_helpers.cifar_experiments import autoattack

    model = _toy_model()
    x, y = _toy_batch(model, n=8)
    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation",
                        lambda self, x, y, **kw: ((x + 0.05).clamp(0, 1), y))  # 0.05 > eps = 0.03
    with pytest.raises(RuntimeError, match="outside the linf ball"):
        autoattack({"toy": model}, x, y, "linf", 0.03, attacks=("apgd-ce",))


@needs_subset
def test_cli_autoattack_attacks_the_saved_run_and_records_how(tiny_run, tmp_path, monkeypatch, capsys):
    from fp_helpers import cifar_experiments as cx
    from fp_helpers.provenance import stale_reasons

    cfg, r = tiny_run
    save_run(r, tmp_path / "run")
    monkeypatch.setitem(cx.AUTOATTACK_ATTACKS, "quick", ("apgd-ce",))
    out = tmp_path / "aa.json"
    args = ["run", "cifar-autoattack", "--profile", "quick", "--data", str(DATA), "--models", str(tmp_path / "run"),
            "--checkpoint-dir", "off", "--out", str(out)] + [a for s in TINY for a in ("--set", s)]
    with threads(1):
        assert main(args) == 0
    saved = json.loads(out.read_text())
    assert f"--models {tmp_path / 'run'}" in saved["provenance"]["command"]
    assert saved["run"]["date"] == r["provenance"]["date"] and saved["n"] == r["n_test"]
    assert not stale_reasons(saved)["config"] and not stale_reasons(saved)["code"]
    from fp_helpers.attacks import margins
    from fp_helpers.cifar_experiments import evaluation_images

    x, y = evaluation_images(cfg, DATA)
    for part in ("main", "other"):
        for key, v in saved[part]["models"].items():
            robust = torch.tensor([c == "1" for c in v["robust"]])
            # an image counts as robust only if the model classifies it correctly unattacked
            assert len(robust) == saved["n"] and not (robust & ~(margins(r["_models"][key], x, y) > 0).cpu()).any()
    assert "AutoAttack (custom version: APGD-CE)" in capsys.readouterr().out
    missing = ["run", "cifar-autoattack", "--profile", "quick", "--models", str(tmp_path / "nothing"), "--out",
               str(tmp_path / "x.json")]
    assert main(missing) == 2 and "--models must be a folder" in capsys.readouterr().err


# ------------------------------------------------------------------ the frozen-batch-norm follow-up (run cifar-frozen-bn)

@needs_subset
def test_frozen_bn_followup_repeats_the_runs_control_and_changes_only_what_it_says(tiny_run):
    from fp_helpers import cifar_experiments as cx

    cfg, r = tiny_run
    lr = cfg.frozen_bn_lrs[0]
    clean = r["_models"]["clean"]
    before = {k: v.clone() for k, v in clean.state_dict().items()}
    with threads(1):
        out = cx.frozen_bn_followup(r, cfg, DATA, "cpu", lrs=(), keep_models=True)
    key = frozen_bn_key(cfg.frozen_bn_rank, lr)
    d_lr = frozen_bn_key(cfg.frozen_bn_rank, cfg.lowrank_lr) + "_batchstats"
    runs = out["runs"]
    assert list(runs) == [key + "_noattack", key, key + "_batchstats", d_lr]
    assert runs[d_lr]["lr"] == cfg.lowrank_lr == r["experiments"][f"lowrank_{cfg.frozen_bn_rank}"]["history"]["config"]["lr"]
    # the control repeated: the same model, schedule, data, held-out check and evaluation give identical numbers
    mine, run = runs[key], r["experiments"][key]
    for f in ("clean_acc", "robust_acc", "cos_clean_median", "rel_change_median", "attack"):
        assert mine[f] == run[f], f
    assert mine["history"]["train_loss"] == run["history"]["train_loss"]
    # evaluated on the images the chapter checks against; per image, as the attack check attacks them
    x, y = cx.evaluation_images(cfg, DATA)
    assert out["images"] == cx._data_fingerprint(x.cpu(), y.cpu()) and out["n"] == len(y) == mine["n"]
    xs, ys = x[:cx.ATTACK_CHECK_N], y[:cx.ATTACK_CHECK_N]
    with threads(1):
        for k in (key, key + "_batchstats"):
            check_run = cx.attack_strength({"m": out["_models"][k]}, xs, ys, cfg, strong_steps=2,
                                           strong_restarts=1)["rows"][0]["_run"]
            assert torch.equal(cx._robust_mask(runs[k]["pgd_run_images"]), check_run.cpu())
    # without the attack: only the attack is left out
    plain = runs[key + "_noattack"]
    assert plain["train_attack"] == "none" and plain["history"]["config"]["attack"] == "none" and plain["bn"] == "frozen"
    assert mine["train_attack"] == cfg.attack and plain["history"]["config"]["lr"] == lr
    # only the low-rank factors train in every run
    low = r["experiments"][f"lowrank_{cfg.frozen_bn_rank}"]["low_rank_params"]
    assert {v["trainable_params"] for v in runs.values()} == {low}
    clean_bn = [m for m in clean.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for k, bn_mode in ((key, "frozen"), (key + "_batchstats", "batch_stats")):
        bns = [m for m in out["_models"][k].modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert runs[k]["bn"] == bn_mode and len(bns) == len(clean_bn) > 0
        for m, c in zip(bns, clean_bn):
            assert not m.weight.requires_grad and torch.equal(m.weight, c.weight) and torch.equal(m.bias, c.bias)
        moved = [not torch.equal(m.running_mean, c.running_mean) for m, c in zip(bns, clean_bn)]
        if bn_mode == "frozen":  # the clean statistics, always
            assert all(type(m) is cm.FrozenBatchNorm2d for m in bns) and not any(moved)
        else:  # train mode during training: the statistics of each batch, and running statistics of those batches
            assert all(type(m) is torch.nn.BatchNorm2d for m in bns) and all(moved)
    # the run's clean model is left as it was, weights and statistics
    assert clean.training is False
    assert all(torch.equal(before[k], v) for k, v in clean.state_dict().items())


def _fake_run(control_clean=0.102):
    pgd = "PGD-50 x2 restarts, linf, eps=0.0313725"
    ev = lambda acc, rob: {"clean_acc": acc, "robust_acc": rob, "attack": pgd, "eps": 8 / 255, "norm": "linf",  # noqa
                           "n": 1017}
    trained = {**ev(0.455, 0.183), "rank": 8, "history": {"config": {"lr": 0.05}}}
    control = {**ev(control_clean, min(control_clean, 0.102)), "rank": 8, "lr": 0.01}
    result = {"experiments": {"clean": ev(0.696, 0.0), "lowrank_8": trained, frozen_bn_key(8, 0.01): control}}
    ctrl = {"best": control, "trained": trained, "collapsed": control_clean <= 0.15}
    return result, ctrl


def _followup(plain, adv, stats, again=0.102, falling=()):
    """A fake follow-up: ``plain`` the clean accuracy without the attack; ``adv`` / ``stats``: (lr, clean, PGD); the
    control repeated at 0.01 with clean accuracy ``again``; ``falling``: learning rates whose clean accuracy falls."""
    pgd = "PGD-50 x2 restarts, linf, eps=0.0313725"

    def run(lr, attack, bn, acc, rob, rel=0.07, loss=3.8):
        val = [0.6, 0.4, 0.3, 0.2] if lr in falling and attack != "none" else [0.6, 0.5, 0.55, 0.5]
        # every run trades clean accuracy for robustness except those on their way to collapse (no PGD gain)
        pgd_val = [0.0, 0.0, 0.0, 0.0] if lr in falling and attack != "none" else [0.0, 0.05, 0.1, 0.12]
        return {"rank": 8, "lr": lr, "train_attack": attack, "bn": bn, "attack": pgd, "clean_acc": acc,
                "robust_acc": rob, "eps": 8 / 255, "norm": "linf", "n": 1017, "rel_change_median": rel,
                "history": {"train_loss": [loss, 2.3], "val_clean_acc": val, "val_pgd_acc": pgd_val}}

    runs = {frozen_bn_key(8, 0.01) + "_noattack": run(0.01, "none", "frozen", plain, 0.0, rel=0.018, loss=0.763),
            frozen_bn_key(8, 0.01): run(0.01, "fgsm_rs", "frozen", again, min(again, 0.102))}
    for lr, acc, rob in adv:
        runs[frozen_bn_key(8, lr)] = run(lr, "fgsm_rs", "frozen", acc, rob)
    for lr, acc, rob in stats:
        runs[frozen_bn_key(8, lr) + "_batchstats"] = run(lr, "fgsm_rs", "batch_stats", acc, rob)
    return {"runs": runs}


def test_frozen_bn_followup_summary_says_what_each_outcome_means():
    from fp_helpers import cifar_experiments as cx

    result, ctrl = _fake_run()
    small = [(0.001, 0.199, 0.001), (0.003, 0.111, 0.079)]  # no robustness; collapsed at 0.003
    stats = [(0.01, 0.448, 0.043), (0.05, 0.422, 0.155)]
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, small, stats, falling=(0.001,)))
    v = s["verdict"]
    assert "Repeated by the follow-up, the control gives clean / PGD accuracy 0.102 / 0.102 at 0.01 (in the run: " \
           "0.102 / 0.102)" in v
    assert "does not collapse: clean accuracy 0.700, where the clean model it starts from has 0.696" in v
    assert "median relative weight change 0.018, against 0.070 with the attack" in v and "0.763 in the first epoch" in v
    assert "frozen batch norm alone does not make the training collapse; with the adversarial objective it does" in v
    assert ("0.199 / 0.001 at 0.001 (clean accuracy falling after every epoch, no robustness gained), 0.111 / 0.079 at "
            "0.003 (collapsed)" in v and "lower than (d)'s at every one" in v and "does not rescue" in v)
    assert "0.448 / 0.043 at 0.01, 0.422 / 0.155 at 0.05." in v  # trading clean accuracy for robustness: no mark
    assert "(d) at rank 8 with batch norm trained (learning rate 0.05): 0.455 / 0.183" in v
    assert "At 0.01, where the control with frozen statistics collapses, it does not (one seed)" in v
    assert "points to the frozen statistics" in v and "what makes the control collapse" in v
    assert "about the same as (d)'s: 0.155 against 0.183, a difference of 0.028 where two standard errors" in v
    assert "of the unpaired difference are 0.033" in v and "no robustness that we can tell apart from none (one seed" in v
    assert s["summary"] == ("without the attack it does not collapse (learning rate 0.01); smaller learning rates do "
                            "not rescue it; with the statistics of each batch (scale and shift still frozen) it does "
                            "not collapse at 0.01, which points to the frozen statistics; at (d)'s learning rate its "
                            "PGD accuracy is about the same as (d)'s")
    labels = [r["label"] for r in s["rows"]]
    assert labels[0] == "(d) r=8 with batch norm trained, lr=0.05 (for comparison)"
    assert [lb.split(", ", 1)[1] for lb in labels[1:]] == [  # in the order of the questions, by learning rate
        "batch norm frozen, lr=0.01, no attack", "batch norm frozen, lr=0.001, with the attack",
        "batch norm frozen, lr=0.003, with the attack", "batch norm frozen, lr=0.01, with the attack (the control again)",
        "batch statistics, scale and shift frozen, lr=0.01, with the attack",
        "batch statistics, scale and shift frozen, lr=0.05, with the attack"]
    assert s["rows"][1]["attack"] == "PGD-50 x2 restarts, linf, eps=8/255"
    assert "Image by image" not in v  # no attack check given: unpaired only
    # image by image against (d)'s outcomes in the attack check: the paired test decides
    n = 1017
    d_run = torch.arange(n) < 186  # 0.183
    check, labels = {"main": {"rows": [{"model": "(d) r=8", "_run": d_run}]}}, {"lowrank_8": "(d) r=8"}
    follow = _followup(0.70, small, stats, falling=(0.001,))
    follow["runs"][frozen_bn_key(8, 0.05) + "_batchstats"]["pgd_run_images"] = "1" * 158 + "0" * (n - 158)  # 0.155
    s = cx.frozen_bn_followup_summary(result, ctrl, follow, check, labels)
    v = s["verdict"]
    assert "about the same as (d)'s: 0.155 against 0.183" in v  # unpaired
    assert ("Image by image, on the attack check's 1,017 images under the same attack, it keeps 0 images that (d) "
            "loses and loses 28 that (d) keeps: lower than (d)'s at two standard errors of the paired difference "
            "(0.010)") in v and "needs its trained scale and shift as well" in v and "tell apart" not in v
    assert s["summary"].endswith("at (d)'s learning rate its PGD accuracy is lower than (d)'s (image by image)")
    # images that do not match the check's: no pairing
    follow["runs"][frozen_bn_key(8, 0.05) + "_batchstats"]["pgd_run_images"] = "1" * 158
    assert "Image by image" not in cx.frozen_bn_followup_summary(result, ctrl, follow, check, labels)["verdict"]
    # below (d) at its learning rate: (d) needs its trained scale and shift too
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, small, [(0.01, 0.448, 0.043), (0.05, 0.45, 0.06)]))
    assert "lower than (d)'s: 0.060 against 0.183" in s["verdict"] and "needs its trained scale and shift" in s["verdict"]
    # the statistics of each batch do not avoid it: not the statistics alone
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, small, [(0.01, 0.10, 0.10), (0.05, 0.11, 0.10)]))
    assert "alone do not explain the collapse" in s["verdict"] and "against 0.183, a" not in s["verdict"]
    # collapses without the attack too: no evidence about adversarial inputs
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.10, small, []))
    assert "collapses too" in s["verdict"] and "not evidence about adversarial inputs" in s["verdict"]
    assert "even without the attack" in s["summary"]
    # a smaller step keeps the clean accuracy and reaches (d): partly a matter of step size
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, [(0.001, 0.40, 0.17), (0.003, 0.11, 0.08)], []))
    assert "At 0.001 its PGD accuracy is about the same as (d)'s" in s["verdict"] and "step size" in s["verdict"]
    assert "a smaller learning rate (0.001) avoids it" in s["summary"]
    # ... but not when its clean accuracy is still falling (on its way to collapse)
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, [(0.001, 0.40, 0.17)], [], falling=(0.001,)))
    assert "None of them keeps its clean accuracy" in s["verdict"] and "step size" not in s["verdict"]
    # a control that did not collapse: no cause is named for a collapse that did not happen
    result, ctrl = _fake_run(control_clean=0.40)
    s = cx.frozen_bn_followup_summary(result, ctrl, _followup(0.70, small, stats, again=0.40))
    assert "with the adversarial objective it does" not in s["verdict"] and "points to" not in s["verdict"]
    assert "where the control with frozen statistics collapses" not in s["verdict"]


def test_saved_frozen_bn_followup_is_used_only_for_its_run_images_and_runs(tmp_path, monkeypatch):
    from fp_helpers import cifar_experiments as cx
    from fp_helpers.provenance import stamp

    cfg = cifar_config("quick")
    res = {"provenance": {"date": "2026-01-01T00:00:00Z", "code": {"hash": "abc"}}}
    x, y = torch.rand(6, 3, 4, 4), torch.arange(6)
    runs = {k: {"lr": lr, "train_attack": a, "bn": bn} for k, lr, a, bn in cx.frozen_bn_followup_runs(cfg)}
    saved = stamp({"runs": runs, "n": 6, "images": cx._data_fingerprint(x, y),
                   "run": {"date": "2026-01-01T00:00:00Z", "code": "abc", "stale": []}}, "cifar-frozen-bn", cfg, "quick")
    path = tmp_path / "fb.json"
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(cx, "frozen_bn_followup", lambda *a, **k: {"recomputed": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # current code, this run, same config, images and runs: loaded silently
        got = cx.load_or_run_frozen_bn(res, cfg, x, y, path)
    assert got["runs"] == runs and "loaded_from" in got
    redone = {"provenance": {"date": "2026-02-01T00:00:00Z", "code": {"hash": "abc"}}}
    with pytest.warns(UserWarning, match="started from the models of another run"):
        assert cx.load_or_run_frozen_bn(redone, cfg, x, y, path) == {"recomputed": True}
    with pytest.warns(UserWarning, match="another config"):
        assert "loaded_from" not in cx.load_or_run_frozen_bn(res, cifar_config("quick", ["eps=0.2"]), x, y, path)
    with pytest.warns(UserWarning, match="evaluated on other test images"):
        assert "loaded_from" not in cx.load_or_run_frozen_bn(res, cfg, x.flip(0), y, path)
    fewer = dict(saved, runs={k: v for k, v in runs.items() if v["train_attack"] == "none"})  # another version's runs
    path.write_text(json.dumps(fewer))
    with pytest.warns(UserWarning, match="ran frozen_bn_r4_lr0p01_noattack, this version"):
        assert "loaded_from" not in cx.load_or_run_frozen_bn(res, cfg, x, y, path)
    assert "loaded_from" not in cx.load_or_run_frozen_bn(res, cfg, x, y, tmp_path / "missing.json")


@needs_subset
def test_cli_frozen_bn_starts_from_the_saved_run_and_records_how(tiny_run, tmp_path, monkeypatch, capsys):
    from fp_helpers import cifar_experiments as cx
    from fp_helpers.provenance import stale_reasons

    cfg, r = tiny_run
    save_run(r, tmp_path / "run")
    out = tmp_path / "fb.json"
    args = ["run", "cifar-frozen-bn", "--profile", "quick", "--data", str(DATA), "--models", str(tmp_path / "run"),
            "--checkpoint-dir", "off", "--out", str(out)] + [a for s in TINY for a in ("--set", s)]
    with threads(1):
        assert main(args) == 0
    saved = json.loads(out.read_text())
    assert f"--models {tmp_path / 'run'}" in saved["provenance"]["command"]
    assert saved["run"]["date"] == r["provenance"]["date"] and "_models" not in saved
    assert not stale_reasons(saved)["config"] and not stale_reasons(saved)["code"]
    assert sorted(saved["runs"]) == sorted(k for k, *_ in cx.frozen_bn_followup_runs(cfg))
    for v in saved["runs"].values():
        assert 0 <= v["robust_acc"] <= v["clean_acc"] <= 1 and v["n"] == r["n_test"]
    key = frozen_bn_key(cfg.frozen_bn_rank, cfg.frozen_bn_lrs[0])
    assert saved["runs"][key]["clean_acc"] == r["experiments"][key]["clean_acc"]  # the control, repeated
    assert "clean/PGD accuracy: frozen_bn_r2_lr0p01_noattack" in capsys.readouterr().out
    missing = ["run", "cifar-frozen-bn", "--profile", "quick", "--models", str(tmp_path / "nothing"), "--out",
               str(tmp_path / "x.json")]
    assert main(missing) == 2 and "--models must be a folder" in capsys.readouterr().err


def test_falling_means_losing_clean_accuracy_without_gaining_robustness():
    from fp_helpers.cifar_experiments import _falling

    run = lambda clean, pgd: {"history": {"val_clean_acc": clean, "val_pgd_acc": pgd}}  # noqa: E731
    assert _falling(run([0.68, 0.55, 0.27, 0.20, 0.18], [0.0, 0.0, 0.0, 0.0, 0.0]))  # lr 0.001 of the CPU run
    assert not _falling(run([0.62, 0.54, 0.43, 0.41, 0.40], [0.0, 0.0, 0.016, 0.04, 0.052]))  # trades it for robustness
    assert not _falling(run([0.38, 0.40, 0.41, 0.39, 0.38], [0.03, 0.12, 0.14, 0.17, 0.15]))  # not falling every epoch
    assert not _falling(run([0.6, 0.5], [0.0, 0.0])) and not _falling({})  # too short to tell, or no history
