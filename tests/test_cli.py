import json

import pytest

from fp_helpers.__main__ import main

TINY = ["--set", "clean_steps=300", "--set", "adv_steps=100", "--set", "eval_n=200", "--set", "d=60",
        "--set", "m=40", "--set", "lowrank_ranks=1"]


def test_run_synthetic_writes_the_promised_json(tmp_path):
    out = tmp_path / "r.json"
    assert main(["run", "synthetic", "--profile", "quick", "--seed", "3", *TINY, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("d", "k", "m", "tau", "norm", "clean_steps", "adv_steps", "seed"):
        assert key in r["config"]
    assert r["config"]["seed"] == 3 and r["config"]["d"] == 60
    assert r["seconds"] > 0
    for net in ("clean", "adversarial"):
        for key in ("clean_acc", "robust_acc", "dense_direction_acc", "top1_energy_median", "mixture_norm_median",
                    "cos_init_median", "principle_ratio_median", "principle_holds_fraction"):
            assert 0 <= r[net][key] < float("inf"), key
    assert r["environment"]["profile"] == "quick"


@pytest.mark.parametrize("args, msg", [
    (["run", "synthetic", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "synthetic", "--set", "nope=1"], "unknown config key 'nope'"),
    (["run", "synthetic", "--set", "k=101"], "k=101 must be at most d=100"),
    (["run", "synthetic", "--set", "tau=-0.1"], "tau must be"),
    (["run", "synthetic", "--set", "norm=l3"], "unknown norm 'l3'"),
    (["run", "cifar100"], "unknown experiment 'cifar100'"),
    (["bench", "everything"], "unknown benchmark 'everything'"),
])
def test_cli_rejects_bad_input_without_writing(tmp_path, capsys, args, msg):
    out = tmp_path / "r.json"
    extra = ["--profile", "quick"] if args[0] == "run" and "--profile" not in args else []
    extra += ["--out", str(out)] if args[0] == "run" else []
    assert main(args + extra) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("experiment, printed", [("lowrank", "best rank-r training"),
                                                 ("attack-check", "every attack at once")])
def test_cli_run_on_a_synthetic_config_writes_a_current_result(tmp_path, capsys, experiment, printed):
    from fp_helpers import experiments

    out = tmp_path / f"{experiment}.json"
    tiny = ["--set", "clean_steps=200", "--set", "adv_steps=60", "--set", "eval_n=100", "--set", "d=40",
            "--set", "m=20", "--set", "pgd_steps=3"]
    assert main(["run", experiment, "--profile", "quick", *tiny, "--checkpoint-dir", "off", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["d"] == 40 and r["provenance"]["command"].startswith(f"python -m fp_helpers run {experiment}")
    assert r["provenance"]["experiment"] == experiment and printed in capsys.readouterr().out
    if experiment == "lowrank":
        assert len(r["trained"]) == len(experiments.LOWRANK_GRID) * len(experiments.LOWRANK_GRID_RANKS)
    else:
        assert r["attacks"][-1] == "every attack" and len(r["curves"]["adversarial"]["every attack"]) == len(r["radii"])
    assert main(["check", str(out)]) == 0
    assert main(["run", experiment, "--profile", "quick", *tiny, "--skip-current", "--out", str(out)]) == 0
    assert "is current" in capsys.readouterr().out
