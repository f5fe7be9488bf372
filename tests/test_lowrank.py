"""Rank-r adversarial training with other optimisers and step sizes (experiments.run_lowrank, `run lowrank`)."""

import json

import pytest
import torch

from fp_helpers import experiments
from fp_helpers.__main__ import main
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
    """SGD at cfg.lowrank_lr without progress evaluations ends at train_adversarial's weights (with them)."""
    cfg = _tiny()
    run = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False, curves=False)
    s = run.setup

    def fresh():
        gen = torch.Generator().manual_seed(experiments.lowrank_seed(cfg, 2))
        return experiments.replace(s, gen=gen)

    ours, _ = experiments.lowrank_train(fresh(), run.clean, run.W0, 2)
    chapters, _ = experiments.train_adversarial(fresh(), run.clean, run.W0, rank=2, progress=False)
    assert torch.equal(ours.weight, chapters.weight)
    other, _ = experiments.lowrank_train(fresh(), run.clean, run.W0, 2, "sgd", lr=2 * cfg.lowrank_lr)
    assert not torch.equal(other.weight, chapters.weight)
    with pytest.raises(ValueError, match="unknown optimiser 'rmsprop'"):
        experiments.lowrank_train(fresh(), run.clean, run.W0, 2, "rmsprop")


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
            assert t["robust_acc"] <= t["fgm_acc"]  # PGD with restarts is at least as strong as FGM
            assert 0 < t["update_rel_norm"] < float("inf")
    assert out["provenance"]["experiment"] == "lowrank"
    json.dumps(out)  # plain numbers: the CLI writes it as it is


def test_cli_run_lowrank_writes_a_current_result(tmp_path, capsys):
    out = tmp_path / "lowrank.json"
    tiny = ["--set", "clean_steps=200", "--set", "adv_steps=60", "--set", "eval_n=100", "--set", "d=40",
            "--set", "m=20", "--set", "pgd_steps=3"]
    assert main(["run", "lowrank", "--profile", "quick", *tiny, "--checkpoint-dir", "off", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["d"] == 40 and r["provenance"]["command"].startswith("python -m fp_helpers run lowrank")
    assert len(r["trained"]) == len(experiments.LOWRANK_GRID) * len(experiments.LOWRANK_GRID_RANKS)
    assert "best rank-r training" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0
    assert main(["run", "lowrank", "--profile", "quick", *tiny, "--skip-current", "--out", str(out)]) == 0
    assert "is current" in capsys.readouterr().out
