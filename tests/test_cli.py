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
