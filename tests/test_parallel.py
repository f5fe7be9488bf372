"""Seeds in worker processes (fp_helpers.parallel) give the numbers of one process, and the choice of
how many workers follows its documented rules."""

import json
import math

import pytest
import torch

from fp_helpers import experiments, parallel
from fp_helpers.provenance import strip_volatile
from fp_helpers.runs import threads


def canonical(obj) -> str:
    return json.dumps(strip_volatile(obj), sort_keys=True, default=str)


def _tiny(**kw):
    return experiments.synthetic_config("quick", {"clean_steps": 300, "adv_steps": 100, "eval_n": 200, "d": 60,
                                                  "m": 40, "pgd_steps": 5, **kw})


def _numbers(metrics: dict) -> dict:
    # provenance says which process made a number (its thread count): everything else must agree
    return canonical({k: v for k, v in metrics.items()
                      if k not in ("provenance", "environment") and not k.startswith("_")})


def test_training_is_bit_identical_with_one_or_two_threads():
    s_cfg = _tiny(clean_steps=400)
    weights = []
    for t in (1, 2):
        with threads(t):
            net, _, _ = experiments.train_clean(experiments.setup(s_cfg, "cpu"), progress=False)
            weights.append(net.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("adversarial", [True, False])
def test_seeds_in_worker_processes_give_the_numbers_of_one_process(adversarial):
    cfg = _tiny()
    one = experiments.seed_curves(cfg, [0, 1, 2], adversarial=adversarial, device="cpu", checkpoint_dir=False,
                                  workers=1)
    many = experiments.seed_curves(cfg, [0, 1, 2], adversarial=adversarial, device="cpu", checkpoint_dir=False,
                                   workers=3)
    for key in ("clean", "adversarial", "radii"):
        if key in one:
            assert (one[key] == many[key]).all(), key
    assert [_numbers(m) for m in one["runs"]] == [_numbers(m) for m in many["runs"]]
    assert len(one["full_runs"]) == len(many["full_runs"]) == 3
    for a, b in zip(one["full_runs"], many["full_runs"]):
        assert a.cfg == b.cfg
        for net in ("clean", "adversarial") if adversarial else ("clean",):
            assert torch.equal(getattr(a, net).weight, getattr(b, net).weight)
        assert torch.equal(a.W0, b.W0)
        assert canonical(a.clean_history.rows) == canonical(b.clean_history.rows)
        if adversarial:
            assert canonical(a.adv_history.rows) == canonical(b.adv_history.rows)
        else:
            assert a.adversarial is None and a.adv_history is None
        # what later cells draw from the run's generator is the same too
        assert torch.equal(a.setup.gen.get_state(), b.setup.gen.get_state())
    # and the seeds differ from one another (the workers did not all run one seed)
    assert not (many["clean"][0] == many["clean"][1]).all() or not (many["clean"][1] == many["clean"][2]).all()


def test_a_failing_worker_raises_here():
    with pytest.raises(ValueError, match="math domain error"):
        list(parallel.run_unordered(math.sqrt, [(4.0,), (-1.0,)], 2))
    assert sorted(parallel.run_unordered(math.sqrt, [(4.0,), (9.0,)], 2)) == [(0, 2.0), (1, 3.0)]


def test_worker_count_rules(monkeypatch):
    monkeypatch.delenv("FP_WORKERS", raising=False)
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    assert parallel.n_workers(3, "cpu", 24_000) == 3  # one process per seed on 2+ cores
    assert parallel.n_workers(9, "cpu", 24_000) == 4  # at most twice the cores
    assert parallel.n_workers(3, "cpu", 1_000) == 1  # short runs: not worth starting processes
    assert parallel.n_workers(1, "cpu", 24_000) == 1
    assert parallel.n_workers(3, "cuda", 24_000) == 1  # one GPU: runs share it
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 1)
    assert parallel.n_workers(3, "cpu", 24_000) == 1
    assert parallel.n_workers(3, "cpu", 1_000, workers=2) == 2  # an explicit choice wins
    assert parallel.n_workers(2, "cpu", 1_000, workers=5) == 2  # never more workers than runs
    monkeypatch.setenv("FP_WORKERS", "1")
    assert parallel.n_workers(3, "cpu", 24_000) == 1
    monkeypatch.setenv("FP_WORKERS", "two")
    with pytest.raises(ValueError, match="FP_WORKERS must be a positive integer"):
        parallel.n_workers(3, "cpu", 24_000)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        parallel.n_workers(3, "cpu", 24_000, workers=0)


def _lb_tiny(**kw):
    from fp_helpers import lower_bounds

    over = {"clean_steps": 200, "adv_steps": 50, "eval_n": 100, "d": 40, "m": 30, "n_train": 100, "degrees": (1, 2),
            "linear_steps": 50, "lin_steps": 50, "lin_adv_steps": 20, "lb_eval_n": 100, "curve_n": 50, "pgd_steps": 3,
            **kw}
    return lower_bounds.lower_bounds_config("quick", over)


def test_lower_bound_stages_in_worker_processes_give_the_numbers_of_one_process():
    from fp_helpers import lower_bounds

    syn, lb = _lb_tiny()
    one = lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=False, keep_models=True, workers=1)
    many = lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=False, keep_models=True, workers=4)
    names = lower_bounds.model_names(one)
    assert len(names) >= 10 and names == lower_bounds.model_names(many)  # same models, same order
    assert _numbers(one) == _numbers(many)
    for name in names:
        a, b = one["_models"][name].state_dict(), many["_models"][name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_baseline_does_not_depend_on_which_other_models_the_run_trains():
    from fp_helpers import lower_bounds

    syn, lb = _lb_tiny()
    every = lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=False, workers=1)
    syn, poly_only = _lb_tiny(models=("poly", "two_layer"), degrees=(2,))
    alone = lower_bounds.run_lower_bounds(syn, poly_only, device="cpu", checkpoint_dir=False, workers=1)
    assert "poly_1" not in alone and "linear" not in alone
    for name in ("poly_2", "poly_2_adv", "two_layer", "two_layer_adv"):
        assert canonical(alone[name]) == canonical(every[name]), name


def test_linear_stage_orders_start_with_the_runs_own_and_differ_after():
    from fp_helpers import lower_bounds

    syn, lb = _lb_tiny(models=("linear", "two_layer"), n_train=300)  # more than a batch: the order matters
    run = lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=False, workers=1)
    orders = lower_bounds.linear_stage_orders(syn, lb, orders=3, device="cpu", workers=1)
    assert len(orders) == 3 and len({o["seed"] for o in orders}) == 3
    own = orders[0]["linear_adv"]
    assert own["robust_acc"] == run["linear_adv"]["robust_acc"] and own["clean_acc"] == run["linear_adv"]["clean_acc"]
    assert orders[1]["linear"]["w_norm"] != orders[0]["linear"]["w_norm"]  # another order: another SGD path
    assert all(o[n]["w_norm"] > 0 for o in orders for n in ("linear", "linear_adv"))
    in_workers = lower_bounds.linear_stage_orders(syn, lb, orders=3, device="cpu", workers=3)
    assert [_numbers(o) for o in in_workers] == [_numbers(o) for o in orders]
    with pytest.raises(ValueError, match="orders must be a positive int"):
        lower_bounds.linear_stage_orders(syn, lb, orders=0)
    # the run's own order taken from the run instead of trained again: the same rows
    kept = lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=False, workers=1, keep_models=True)
    reused = lower_bounds.linear_stage_orders(syn, lb, orders=3, device="cpu", workers=1, run=kept)
    assert [_numbers(o) for o in reused] == [_numbers(o) for o in orders]
    with pytest.raises(ValueError, match="keep_models=True"):
        lower_bounds.linear_stage_orders(syn, lb, orders=2, run=run)
    other_syn, other_lb = _lb_tiny(models=("linear", "two_layer"), n_train=300, linear_lr=0.5)
    with pytest.raises(ValueError, match="same syn and lb configs"):
        lower_bounds.linear_stage_orders(other_syn, other_lb, orders=2, run=kept)


def test_a_clean_sweep_returns_each_seeds_training_as_train_clean_gives_it():
    """The clean chapter takes seed 0's network, history and snapshots from its seed sweep instead of training
    it a second time: they must be what training that seed alone gives."""
    cfg = _tiny()
    sweep = experiments.seed_curves(cfg, [0, 1], adversarial=False, device="cpu", checkpoint_dir=False, workers=2,
                                    snapshot_steps=(0, 150, cfg.clean_steps))
    net, W0, hist = experiments.train_clean(experiments.setup(cfg, "cpu"), progress=False,
                                            snapshot_steps=(0, 150, cfg.clean_steps))
    run = sweep["full_runs"][0]
    assert torch.equal(run.clean.weight, net.weight) and torch.equal(run.W0, W0)
    assert sorted(run.clean_history.snapshots) == [0, 150, cfg.clean_steps]
    assert all(torch.equal(run.clean_history.snapshots[t], hist.snapshots[t]) for t in hist.snapshots)
    assert torch.equal(run.clean_history.snapshots[0], W0)
    assert canonical(run.clean_history.rows) == canonical(hist.rows)
    assert not torch.equal(sweep["full_runs"][1].clean.weight, net.weight)
    with pytest.raises(ValueError, match="snapshot_steps is for a sweep of clean training"):
        experiments.seed_curves(cfg, [0], snapshot_steps=(0,))


def test_lowrank_study_ranks_do_not_depend_on_each_other_nor_on_workers():
    """Each rank trains from its own generator (experiments.lowrank_seed): asking for rank 2 alone, in worker
    processes, gives the numbers it has among ranks 1 and 2 in this process; the run's generator is untouched."""
    run = experiments.run_synthetic(_tiny(lowrank_ranks=(1, 2)), device="cpu", checkpoint_dir=False, curves=False)
    state = run.setup.gen.get_state()
    both = experiments.lowrank_study(run, truncation_ranks=(4,), workers=1)
    alone = experiments.lowrank_study(run, trained_ranks=(2,), truncation_ranks=(1, 4), workers=2)
    assert sorted(both["trained"]) == [1, 2] and sorted(both["truncated"]) == [1, 2, 4]
    assert alone["trained"][2] == both["trained"][2]
    assert alone["truncated"] == both["truncated"]
    assert both["trained"][1] != both["trained"][2]  # two trainings, not one result twice
    assert torch.equal(run.setup.gen.get_state(), state)
    assert [row[0] for row in both["rows"]] == [1, 2, 4]


def test_a_plain_script_is_not_rerun_by_workers(monkeypatch):
    import sys
    import types

    monkeypatch.delenv("FP_WORKERS", raising=False)
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 2)
    script = types.ModuleType("__main__")
    script.__file__, script.__spec__ = "/tmp/my_script.py", None  # python my_script.py
    monkeypatch.setitem(sys.modules, "__main__", script)
    assert parallel.n_workers(3, "cpu", 24_000) == 1
    assert parallel.n_workers(3, "cpu", 24_000, workers=3) == 3  # asked for: the script has its guard
    script.__spec__ = types.SimpleNamespace(name="fp_helpers.__main__")  # python -m fp_helpers ...
    assert parallel.n_workers(3, "cpu", 24_000) == 3
    del script.__file__  # a notebook or an interactive session
    script.__spec__ = None
    assert parallel.n_workers(3, "cpu", 24_000) == 3


def test_the_kernels_larger_training_radii_leave_the_runs_own_models_alone():
    from fp_helpers import lower_bounds

    syn, with_sweep = _lb_tiny(models=("poly",), degrees=(2,), adv_radius_mults=(2.0, 4.0))
    _, without = _lb_tiny(models=("poly",), degrees=(2,), adv_radius_mults=())
    a = lower_bounds.run_lower_bounds(syn, with_sweep, device="cpu", checkpoint_dir=False, workers=1)
    b = lower_bounds.run_lower_bounds(syn, without, device="cpu", checkpoint_dir=False, workers=1)
    assert "adv_radius_sweep" not in b
    for name in ("poly_2", "poly_2_adv"):
        assert canonical(a[name]) == canonical(b[name]), name
    sweep = a["adv_radius_sweep"]["poly_2_adv"]
    assert [r["radius_mult"] for r in sweep] == [2.0, 4.0]
    assert [r["train_radius"] for r in sweep] == pytest.approx([2 * syn.tau, 4 * syn.tau])
    for r in sweep:
        assert 0 <= r["robust_acc"] <= r["clean_acc"] <= 1
    # a model trained at a larger radius is another model: it is measured at tau like the run's own
    assert any(r["clean_acc"] != a["poly_2_adv"]["clean_acc"] or r["robust_acc"] != a["poly_2_adv"]["robust_acc"]
               for r in sweep)
