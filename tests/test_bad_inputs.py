"""Bad input, table-driven: every case gets a clear error (ValueError / TypeError / FileNotFoundError) whose
message names the bad value and what is allowed, and no case touches an existing results file."""

import pytest
import torch

from fp_helpers import attacks, baselines, checkpoints, cifar, experiments, lower_bounds, provenance, purification, runs
from fp_helpers.__main__ import main
from fp_helpers.cifar_experiments import cifar_config
from fp_helpers.cifar_train import evaluate_cifar
from fp_helpers.networks import NetConfig, TwoLayerNet
from fp_helpers.sparse_coding import SparseCoding, SparseCodingConfig
from fp_helpers.training import TrainConfig, train

# ------------------------------------------------------------------------------------------- command line
# (arguments, substrings the error message must contain: the bad value, then what is allowed)
CLI_CASES = [
    (["run", "synthetic", "--profile", "huge"], ["unknown profile 'huge'", "quick, full"]),
    (["run", "cifar100"], ["unknown experiment 'cifar100'", "synthetic, lower-bounds, cifar"]),
    (["run", "synthetic", "--set", "nope=1"], ["unknown config key 'nope'", "allowed keys are", "tau"]),
    (["run", "synthetic", "--set", "d600"], ["override 'd600'", "key=value"]),
    (["run", "synthetic", "--set", "m=abc"], ["m='abc'", "expected a int"]),  # wrong type
    (["run", "synthetic", "--set", "d=0"], ["d must be a positive int", "got 0"]),  # zero size
    (["run", "synthetic", "--set", "batch=-4"], ["batch must be a positive int", "got -4"]),  # negative size
    (["run", "synthetic", "--set", "k=101"], ["k=101", "at most d=100"]),  # k > d
    (["run", "synthetic", "--set", "tau=-0.1"], ["tau must be a finite number >= 0", "got -0.1"]),  # radius < 0
    (["run", "synthetic", "--set", "tau=nan"], ["tau must be a finite number >= 0", "got nan"]),
    (["run", "synthetic", "--set", "radii=0,-0.1"], ["radii must be finite and >= 0", "-0.1"]),
    (["run", "synthetic", "--set", "norm=l3"], ["unknown norm 'l3'", "l2, linf"]),
    (["run", "synthetic", "--set", "adv_attack=cw"], ["unknown training attack 'cw'", "none, fgm, pgd"]),
    (["run", "synthetic", "--seed", "-1"], ["seed must be a non-negative int", "got -1"]),
    (["run", "synthetic", "--device", "tpu"], ["unknown device 'tpu'", "cpu, cuda"]),
    (["run", "lower-bounds", "--set", "degrees=1,0"], ["polynomial degree must be an int >= 1", "got 0"]),
    (["run", "lower-bounds", "--set", "models=linear,svm"], ["unknown model 'svm'", "linear, poly, ntk"]),
    (["run", "lower-bounds", "--set", "lb_radii=0.2,0.1"], ["lb_radii must be increasing", "(0.2, 0.1)"]),
    (["run", "lower-bounds", "--set", "lb_eval_n=5000"], ["lb_eval_n=5000", "eval_n=500", "lb_eval_n <= eval_n"]),
    (["run", "cifar", "--set", "model=vgg"], ["unknown model 'vgg'", "preact_resnet18", "small_resnet"]),
    (["run", "cifar", "--set", "eps=2"], ["eps=2 is out of range", "allowed 0 < eps <= 1"]),  # radius too large
    (["run", "cifar", "--set", "n_train=-5"], ["n_train must be an int >= 0", "got -5"]),
    (["run", "cifar", "--set", "ranks=0"], ["ranks must be positive ints", "(0,)"]),
    (["run", "cifar", "--data", "/nonexistent/cifar"], ["CIFAR-10 not found", "/nonexistent/cifar", "FP_DATA_DIR",
                                                        "download=True"]),  # missing data directory
    (["bench", "everything"], ["unknown benchmark 'everything'", "synthetic, ntk"]),
    (["bench", "synthetic", "--steps", "0"], ["--steps must be a positive int", "got 0"]),
    (["check", "/nonexistent/result.json"], ["no saved result at /nonexistent/result.json"]),
]


@pytest.mark.parametrize("args, needles", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_rejects_bad_input_and_leaves_results_alone(tmp_path, capsys, monkeypatch, args, needles):
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "results" / "r.json"
    out.parent.mkdir()
    precious = b'{"experiment": "an earlier result", "robust_acc": 0.5}\n'
    out.write_bytes(precious)
    argv = args + (["--profile", "quick"] if args[0] == "run" and "--profile" not in args else [])
    argv += ["--out", str(out)] if args[0] == "run" else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert out.read_bytes() == precious  # byte-identical: never truncated, never half-written
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------- public functions

NET = TwoLayerNet(10, NetConfig(m=4), generator=torch.Generator().manual_seed(0))
X, Y = torch.randn(8, 10), torch.ones(8)
X_NAN = X.clone()
X_NAN[3, 2] = float("nan")
DIST = SparseCoding(SparseCodingConfig(d=10, k=2))
TINY_CIFAR = cifar.CifarData(torch.zeros(10, 3, 32, 32), torch.arange(10), torch.zeros(10, 3, 32, 32),
                             torch.arange(10), "test data")

# (name, call, exception type, substrings of the message)
API_CASES = [
    ("k > d", lambda: SparseCodingConfig(d=5, k=6).validate(), ValueError, ["k=6", "at most d=5"]),
    ("zero samples", lambda: DIST.sample(0, torch.Generator()), ValueError,
     ["number of samples must be a positive int", "got 0"]),
    ("size given as float", lambda: experiments.SyntheticConfig(d=10.5).validate(), ValueError,
     ["d must be a positive int", "got 10.5"]),
    ("radius given as str", lambda: experiments.SyntheticConfig(tau="0.1").validate(), ValueError,
     ["tau must be a finite number >= 0", "got '0.1'"]),
    ("learning rate as str", lambda: TrainConfig(lr="0.1").validate(), ValueError,
     ["lr must be a finite number > 0", "got '0.1'"]),
    ("input of the wrong width", lambda: NET(torch.randn(3, 7)), ValueError,
     ["input has shape (3, 7)", "expected (n, d) with d = 10"]),
    ("negative attack radius", lambda: attacks.fgm(NET, X, Y, -0.1), ValueError,
     ["attack radius tau must be a finite number >= 0", "got -0.1"]),
    ("unknown attack norm", lambda: attacks.pgd(NET, X, Y, 0.1, "l1"), ValueError, ["unknown norm 'l1'", "l2, linf"]),
    ("zero PGD steps", lambda: attacks.pgd(NET, X, Y, 0.1, steps=0), ValueError,
     ["steps must be a positive int", "got 0"]),
    ("unknown attack", lambda: attacks.robust_accuracy(NET, X, Y, 0.1, attacks.AttackSpec("cw")), ValueError,
     ["unknown attack 'cw'", "fgm, pgd, dense"]),
    ("NaN in the inputs", lambda: attacks.robust_accuracy(NET, X_NAN, Y, 0.1), ValueError,
     ["1 non-finite entries", "must be finite"]),
    ("points and labels of different lengths", lambda: attacks.robust_accuracy(NET, X, Y[:5], 0.1), ValueError,
     ["x (8, 10)", "y (5,)", "same n"]),
    ("no points at all", lambda: attacks.accuracy(NET, X[:0], Y[:0]), ValueError,
     ["x is empty (0 points)", "at least one point"]),
    ("NaN in a training set", lambda: train(NET, DIST, TrainConfig(steps=2, batch=4), torch.Generator(),
                                            data=(X_NAN, Y)), ValueError, ["non-finite entries", "must be finite"]),
    ("training set of the wrong width", lambda: train(NET, SparseCoding(SparseCodingConfig(d=12, k=2)),
                                                      TrainConfig(steps=2, batch=4), torch.Generator(), data=(X, Y)),
     ValueError, ["shape (10,)", "distribution's are (12,)"]),
    ("mismatched weight shapes", lambda: purification.decompose(torch.randn(3, 4), torch.randn(3, 5)), ValueError,
     ["clean (3, 4)", "adversarial (3, 5)"]),
    ("zero kernel ridge", lambda: baselines.fit_kernel_ridge(baselines.PolyKernel(2), X, Y, 0.0), ValueError,
     ["ridge must be a finite number > 0", "got 0.0"]),
    ("polynomial degree 0", lambda: baselines.PolyKernel(0), ValueError,
     ["polynomial degree must be an int >= 1", "got 0"]),
    ("NaN radius", lambda: lower_bounds.LowerBoundConfig(lb_radii=(0.0, float("nan"))).validate(), ValueError,
     ["lb_radii must be a non-empty list of finite numbers", "nan"]),
    ("no seeds", lambda: experiments.seed_curves(experiments.synthetic_config("quick"), []), ValueError,
     ["seeds is empty", "at least one seed"]),
    ("negative seed", lambda: experiments.seed_curves(experiments.synthetic_config("quick"), [0, -2]), ValueError,
     ["non-negative ints", "got -2"]),
    ("a profile name instead of a config", lambda: experiments.run_synthetic("quick"), TypeError,
     ["cfg must be a SyntheticConfig", "got str"]),
    ("configs swapped", lambda: lower_bounds.run_lower_bounds(*reversed(lower_bounds.lower_bounds_config("quick"))),
     TypeError, ["SyntheticConfig and a LowerBoundConfig", "got LowerBoundConfig and SyntheticConfig"]),
    ("CIFAR radius out of range", lambda: cifar_config("quick", ["norm=l2", "eps=100"]), ValueError,
     ["eps=100 is out of range for the l2 ball", "allowed 0 < eps <= 55.4256"]),
    ("empty CIFAR subset", lambda: cifar.subset(TINY_CIFAR, 0), ValueError,
     ["n_train must be an int in 1..10", "got 0"]),
    ("missing data directory", lambda: cifar.load_cifar10("/nonexistent/data"), FileNotFoundError,
     ["/nonexistent/data", "FP_DATA_DIR", "download=True"]),
    ("image batch without its batch axis", lambda: cifar.augment(torch.zeros(3, 32, 32)), ValueError,
     ["[N,C,H,W]", "[3, 32, 32]"]),
    ("zero evaluation batch", lambda: evaluate_cifar(torch.nn.Flatten(), torch.zeros(2, 3), torch.zeros(2).long(),
                                                     batch_size=0), ValueError,
     ["batch_size must be a positive int", "got 0"]),
    ("unknown device", lambda: runs.get_device("tpu"), ValueError, ["unknown device 'tpu'", "cpu, cuda"]),
    ("seed as a string", lambda: runs.seed_everything("3"), ValueError, ["non-negative int", "got '3'"]),
    ("unknown profile", lambda: runs.get_profile("huge"), ValueError, ["unknown profile 'huge'", "quick, full"]),
    ("missing result file", lambda: provenance.load_result("/nonexistent/result.json"), FileNotFoundError,
     ["no saved result at /nonexistent/result.json"]),
    ("checkpoint folder of the wrong type", lambda: checkpoints.checkpoint_root(3), TypeError,
     ["checkpoint_dir must be a path", "got 3"]),
]


@pytest.mark.parametrize("name, call, exc, needles", API_CASES, ids=[c[0] for c in API_CASES])
def test_public_functions_reject_bad_input_clearly(monkeypatch, tmp_path, name, call, exc, needles):
    monkeypatch.delenv("FP_DATA_DIR", raising=False)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(exc) as e:
        call()
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))

