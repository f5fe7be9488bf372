"""CIFAR models, low-rank fine-tuning, training attacks, training loop and checkpoints, on tiny
CIFAR-shaped random data (no dataset needed)."""

import copy
import dataclasses
import math

import pytest
import torch

from fp_helpers import cifar_train
from fp_helpers.attacks import pgd
from fp_helpers.cifar import augment
from fp_helpers.cifar_models import (
    CIFAR_MEAN, CIFAR_STD, FrozenBatchNorm2d, Normalize, PreActResNet18, SmallResNet, apply_low_rank,
    clean_weights, count_parameters, effective_weights, first_layer_weight, low_rank_parameters,
    low_rank_updates, make_model, named_weight_matrices,
)
from fp_helpers.cifar_train import (
    CheckpointError, CifarTrainConfig, evaluate_cifar, fgsm_rs, learning_rate, random_start_pgd, train_cifar,
)
from fp_helpers.runs import threads


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is faster than two here, and immune to another process
    competing for the two CI cores (two-thread OpenMP then slows these tests down up to tenfold)."""
    with threads(1):
        yield


def colour_task(n=200, seed=0):
    """Images whose label (0, 1, 2) is the channel with the largest mean: learnable from the mean colour."""
    g = torch.Generator().manual_seed(seed)
    tint = torch.rand(n, 3, generator=g) * 0.4
    x = (torch.rand(n, 3, 32, 32, generator=g) * 0.6 + tint[:, :, None, None]).clamp(0, 1)
    return x, tint.argmax(1)


def tiny(seed=0, **kw):
    return make_model("small_resnet", seed=seed, **{"width": 4, **kw})


TINY = CifarTrainConfig(epochs=3, batch_size=50, lr=0.05, co_check_n=32, eval_pgd_steps=2, seed=3)


# --------------------------------------------------------------------------------------------------
# models


def test_forward_shapes_and_normalisation_inside_the_model():
    x = torch.rand(2, 3, 32, 32)
    big = PreActResNet18()
    assert 11e6 < count_parameters(big) < 11.3e6
    assert big(x).shape == (2, 10)
    small = SmallResNet()
    assert 5e4 < count_parameters(small) < 3e5
    assert small(x).shape == (2, 10)
    assert SmallResNet(width=8, blocks=(2, 1), num_classes=3)(x).shape == (2, 3)
    assert isinstance(small.normalize, Normalize)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(small.normalize(x), (x - mean) / std)
    # the model is the normalisation followed by the rest: its conv sees normalised pixels
    small.eval()
    manual = small.linear(torch.nn.functional.adaptive_avg_pool2d(torch.relu(small.bn(
        small.layers(small.conv1((x - mean) / std)))), 1).flatten(1))
    torch.testing.assert_close(small(x), manual)
    with pytest.raises(ValueError, match="expected"):
        small(torch.rand(2, 32, 32))


def test_make_model_names_seeds_and_layer_helpers():
    a, b = make_model("small_resnet", seed=1, width=4), make_model("small_resnet", seed=1, width=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="preact_resnet18, small_resnet"):
        make_model("resnet50")
    assert first_layer_weight(a).shape == (4, 3, 3, 3)
    mats = dict(named_weight_matrices(a))
    assert list(mats)[0] == "conv1" and list(mats)[-1] == "linear"
    assert mats["conv1"].shape == (4, 27) and mats["linear"].shape == (10, 16)


# --------------------------------------------------------------------------------------------------
# low-rank fine-tuning


def test_low_rank_starts_at_clean_model_and_trains_only_a_rank_r_update():
    torch.manual_seed(0)
    model = tiny()
    x, y = colour_task(16)
    model.train()
    model(x)  # move the BN running statistics away from their initial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean_out = model(x)
    rank = 2
    apply_low_rank(model, rank)
    assert torch.equal(model(x), clean_out)  # exactly the clean model at the start
    model.train()  # BatchNorm stays frozen in low-rank mode
    assert all(not m.training for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert torch.equal(model(x), clean_out)
    lr_params = low_rank_parameters(model)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in lr_params}
    ab_before = [p.detach().clone() for p in lr_params]
    opt = torch.optim.SGD(lr_params, lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(lr_params, ab_before))  # A, B moved
    # every clean weight, bias and BN parameter / statistic is untouched
    after = model.state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".parametrizations.weight.original")
        assert torch.equal(after[key], v), k
    clean, eff, upd = clean_weights(model), effective_weights(model), low_rank_updates(model)
    for name, w in clean.items():
        diff = (eff[name] - w).reshape(w.shape[0], -1)
        assert diff.abs().max() > 0
        # W - W_clean carries the float32 rounding of W_clean + A @ B (entries up to eps32 |W|): singular
        # values below that noise level are not rank (the real ones are 1e4 times larger here)
        noise = torch.finfo(torch.float32).eps * eff[name].abs().max() * math.sqrt(diff.numel())
        assert torch.linalg.matrix_rank(diff.double(), atol=noise.item(), rtol=0).item() <= rank
        assert torch.linalg.matrix_rank(upd[name]).item() <= rank
        torch.testing.assert_close(diff, upd[name])


def test_low_rank_with_trainable_batch_norm_starts_at_the_clean_model_and_keeps_the_stated_rank():
    """The mode the CIFAR experiment uses (``train_bn=True``): at step 0 the network is exactly the clean one,
    in eval mode and in train mode (batch statistics); after training, the weights in use are still
    ``W_clean + A B`` with ``A B`` of rank <= r, the clean weights are untouched and only A, B and the
    batch-norm parameters / statistics moved."""
    torch.manual_seed(0)
    x, y = colour_task(64)
    clean = tiny()
    clean.train()
    clean(x)  # BN running statistics away from their initial values
    clean.eval()
    rank = 2
    model = apply_low_rank(copy.deepcopy(clean), rank, generator=torch.Generator().manual_seed(3), train_bn=True)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    # step 0: the same network, bit for bit, in eval mode ...
    assert torch.equal(model.eval()(x), clean.eval()(x))
    # ... and in train mode (batch statistics; on copies, since a train-mode pass updates the running ones)
    a, b = copy.deepcopy(clean).train(), copy.deepcopy(model).train()
    assert torch.equal(b(x), a(x))
    for bn_a, bn_b in zip((m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)),
                          (m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))):
        assert torch.equal(bn_a.running_mean, bn_b.running_mean) and torch.equal(bn_a.running_var, bn_b.running_var)
    assert all(torch.equal(w, clean_weights(clean)[k]) for k, w in effective_weights(model).items())
    # trainable: the factors and every BN scale / shift, nothing else
    bn_params = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in low_rank_parameters(model) + bn_params}
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if ".bn" in k or k.startswith("bn.")}
    w_clean = {k: v.clone() for k, v in clean_weights(model).items()}
    hist = train_cifar(model, x, y, dataclasses.replace(TINY, epochs=2, attack="fgsm_rs", lr=0.1), progress=False)
    assert hist["finished"]
    assert all(torch.equal(v, clean_weights(model)[k]) for k, v in w_clean.items())  # W_clean frozen
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in bn_before.items() if k.endswith(".weight"))  # BN scale moved
    assert any(not torch.equal(after[k], v) for k, v in bn_before.items() if k.endswith("running_mean"))
    eff, upd = effective_weights(model), low_rank_updates(model)
    for name, w in w_clean.items():
        diff = (eff[name] - w).reshape(w.shape[0], -1)
        assert diff.abs().max() > 0
        torch.testing.assert_close(diff, upd[name])  # W = W_clean + A B ...
        noise = torch.finfo(torch.float32).eps * eff[name].abs().max() * math.sqrt(diff.numel())
        assert torch.linalg.matrix_rank(diff.double(), atol=noise.item(), rtol=0).item() <= rank  # ... of rank <= r
        assert torch.linalg.matrix_rank(upd[name]).item() <= rank
    for _, m in named_low_rank_layers(model):
        d = m.parametrizations.weight[0]
        assert torch.linalg.matrix_rank(d.A.double() @ d.B.double()).item() == rank  # generically exactly r


def named_low_rank_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def test_low_rank_rejects_bad_ranks():
    with pytest.raises(ValueError, match="allowed ranks are 1..4"):
        apply_low_rank(tiny(), 5)  # the first conv has 4 output channels
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rank must be a positive int"):
            apply_low_rank(tiny(), bad)
    m = apply_low_rank(tiny(), 1)
    with pytest.raises(ValueError, match="already in low-rank mode"):
        apply_low_rank(m, 1)
    with pytest.raises(ValueError, match="not in low-rank mode"):
        low_rank_parameters(tiny())


# --------------------------------------------------------------------------------------------------
# attacks


@pytest.fixture(scope="module")
def trained_tiny():
    x, y = colour_task(200)
    model = tiny(seed=1)
    cfg = dataclasses.replace(TINY, epochs=4, lr=0.1)
    train_cifar(model, x, y, cfg, progress=False)
    return model.eval(), x, y


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_training_attacks_stay_in_the_ball_and_in_the_image_range(trained_tiny, norm, eps):
    model, x, y = trained_tiny
    x = x[:64]
    x[:, :, :4] = 0.0
    x[:, :, 4:8] = 1.0  # saturated pixels: the clip to [0, 1] matters
    g = torch.Generator().manual_seed(0)
    for xa in (fgsm_rs(model, x, y[:64], eps, norm, generator=g),
               random_start_pgd(model, x, y[:64], eps, norm, eps / 4, 10, generator=g),
               pgd(model, x, y[:64], eps, norm, steps=10, restarts=2, generator=g, clip=(0, 1))):
        d = (xa - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert size.max() <= eps * (1 + 1e-5)
        assert size.max() >= 0.5 * eps  # the attack does move
        assert xa.min() >= 0 and xa.max() <= 1


def test_pgd_is_at_least_as_strong_as_fgsm(trained_tiny):
    model, x, y = trained_tiny
    eps = 8 / 255
    g = torch.Generator().manual_seed(0)
    ev = evaluate_cifar(model, x, y, eps, "linf", steps=10, batch_size=128, generator=g)
    xa = fgsm_rs(model, x, y, eps, "linf", generator=g)
    with torch.no_grad():
        fgsm_acc = (model(xa).argmax(1) == y).float().mean().item()
    assert ev["robust_acc"] <= fgsm_acc <= ev["clean_acc"]
    assert ev["robust_acc"] < ev["clean_acc"]
    assert ev["n"] == 200 and ev["attack"].startswith("PGD-10")
    assert model.training is False


# --------------------------------------------------------------------------------------------------
# training


def test_training_reduces_the_loss_on_a_learnable_task():
    x, y = colour_task(200)
    model = tiny()
    hist = train_cifar(model, x, y, dataclasses.replace(TINY, epochs=5, lr=0.1), x_val=x, y_val=y, progress=False)
    assert hist["epoch"] == [1, 2, 3, 4, 5] and hist["finished"]
    assert hist["train_loss"][-1] < 0.8 * hist["train_loss"][0]
    assert hist["train_acc"][-1] > 0.6 and hist["val_clean_acc"][-1] > 0.6
    assert len(hist["val_pgd_acc"]) == 5 and not hist["catastrophic_overfitting"]


def test_adversarial_training_runs_for_each_attack_and_norm():
    x, y = colour_task(100)
    for attack, norm in (("fgsm_rs", "linf"), ("pgd", "l2")):
        cfg = dataclasses.replace(TINY, epochs=1, attack=attack, norm=norm, train_pgd_steps=2)
        hist = train_cifar(tiny(), x, y, cfg, x_val=x, y_val=y, progress=False)
        assert math.isfinite(hist["train_loss"][0]) and hist["finished"]


def test_schedules():
    c = CifarTrainConfig(lr=0.2).validate()
    lrs = [learning_rate(c, s, 100) for s in range(100)]
    assert max(lrs) == pytest.approx(0.2, rel=0.02) and lrs.index(max(lrs)) in (39, 40)
    assert lrs[0] < 0.01 and lrs[-1] < 0.01
    cos = [learning_rate(dataclasses.replace(c, schedule="cosine"), s, 100) for s in range(100)]
    assert cos[0] == pytest.approx(0.2, rel=1e-3) and cos[-1] < 1e-3 and cos == sorted(cos, reverse=True)


def _no_time(hist):
    return {k: v for k, v in hist.items() if k != "seconds"}


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    x, y = colour_task(120)
    cfg = dataclasses.replace(TINY, attack="fgsm_rs")
    kw = dict(x_val=x[:40], y_val=y[:40], progress=False, augment=augment)  # crops and flips: more RNG to restore
    ref = tiny()
    ref_hist = train_cifar(ref, x, y, cfg, **kw)

    ck = tmp_path / "run.pt"
    h1 = train_cifar(tiny(), x, y, cfg, checkpoint=ck, stop_after_epoch=1, **kw)
    assert h1["epoch"] == [1] and not h1["finished"]

    # a second interruption in the middle of epoch 2 (Ctrl-C): the checkpoint still holds epoch 1
    calls = {"n": 0}

    def ctrl_c(xb, g):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return kw["augment"](xb, g)

    with pytest.raises(KeyboardInterrupt):
        train_cifar(tiny(seed=9), x, y, cfg, checkpoint=ck, **{**kw, "augment": ctrl_c})
    resumed = tiny(seed=9)  # other initial weights: everything must come from the checkpoint
    hist = train_cifar(resumed, x, y, cfg, checkpoint=ck, **kw)
    ref_state, state = ref.state_dict(), resumed.state_dict()
    assert ref_state.keys() == state.keys()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    assert _no_time(hist) == _no_time(ref_hist)
    # a finished checkpoint is loaded, not retrained
    again = tiny(seed=5)
    assert _no_time(train_cifar(again, x, y, cfg, checkpoint=ck, **kw)) == _no_time(ref_hist)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ref_state.items())


def test_bad_checkpoints_are_refused(tmp_path):
    x, y = colour_task(50)
    cfg = dataclasses.replace(TINY, epochs=2)
    ck = tmp_path / "run.pt"
    train_cifar(tiny(), x, y, cfg, checkpoint=ck, stop_after_epoch=1, progress=False)
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train_cifar(tiny(), x, y, cfg, checkpoint=ck, progress=False)
    assert ck.read_bytes() == data[: len(data) // 2]  # not overwritten
    torch.save({"something": 1}, ck)
    with pytest.raises(CheckpointError, match="not a fp_helpers.cifar_train"):
        train_cifar(tiny(), x, y, cfg, checkpoint=ck, progress=False)
    # resume=False starts again and overwrites
    train_cifar(tiny(), x, y, cfg, checkpoint=ck, resume=False, stop_after_epoch=1, progress=False)
    with pytest.raises(ValueError, match=r"lr=0.05 \(checkpoint\) vs 0.1 \(now\)"):
        train_cifar(tiny(), x, y, dataclasses.replace(cfg, lr=0.1), checkpoint=ck, progress=False)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train_cifar(tiny(width=8), x, y, cfg, checkpoint=ck, progress=False)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_catastrophic_overfitting_rule_and_restore(monkeypatch, tmp_path):
    co = cifar_train.catastrophic_overfitting
    assert not co([0.4]) and not co([0.4, 0.35]) and not co([0.05, 0.01])
    assert co([0.4, 0.45, 0.2]) and co([0.15, 0.05])  # absolute drop; below half of the best
    x, y = colour_task(100)
    cfg = dataclasses.replace(TINY, epochs=4, attack="fgsm_rs")
    ref = tiny()
    train_cifar(ref, x, y, cfg, checkpoint=tmp_path / "ref.pt", stop_after_epoch=2, progress=False)
    accs = iter([0.30, 0.40, 0.05, 0.5])
    monkeypatch.setattr(cifar_train, "evaluate_cifar",
                        lambda *a, **k: {"clean_acc": 0.9, "robust_acc": next(accs)})
    model = tiny()
    hist = train_cifar(model, x, y, cfg, x_val=x, y_val=y, progress=False)
    assert hist["catastrophic_overfitting"] and hist["co_epoch"] == 3
    assert hist["restored_epoch"] == 2 and hist["best_epoch"] == 2 and hist["epoch"] == [1, 2, 3]
    assert hist["finished"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.state_dict().items())
    accs = iter([0.30, 0.40, 0.05, 0.5])
    flagged = train_cifar(tiny(), x, y, dataclasses.replace(cfg, co_action="flag"), x_val=x, y_val=y, progress=False)
    assert flagged["co_epoch"] == 3 and flagged["epoch"] == [1, 2, 3, 4] and flagged["restored_epoch"] is None


@pytest.mark.parametrize("change,match", [
    ({"attack": "trades"}, "unknown training attack 'trades'; allowed: none, fgsm_rs, pgd"),
    ({"eps": -0.1}, "eps must be a finite number >= 0"),
    ({"schedule": "step"}, "unknown schedule 'step'; allowed schedules are onecycle, cosine"),
    ({"norm": "l1"}, "unknown norm 'l1'"),
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ({"co_action": "ignore"}, "unknown co_action"),
    ({"attack": "pgd", "eps": 0.0}, "needs eps > 0"),
])
def test_bad_config_values_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CifarTrainConfig(), **change).validate()


def test_config_defaults():
    c = CifarTrainConfig(attack="fgsm_rs").validate()
    assert c.eps == pytest.approx(8 / 255) and c.alpha == pytest.approx(10 / 255)
    assert CifarTrainConfig(attack="fgsm_rs").describe() == "FGSM-RS, linf, eps=8/255, alpha=10/255"
    p = CifarTrainConfig(attack="pgd").validate()
    assert p.alpha == pytest.approx(2 / 255)
    l2 = CifarTrainConfig(attack="pgd", norm="l2").validate()
    assert l2.eps == 0.5 and l2.alpha == 0.125


def test_train_cifar_on_a_low_rank_model_trains_only_the_factors():
    x, y = colour_task(100)
    model = apply_low_rank(tiny(), 2)
    clean = {k: v.clone() for k, v in clean_weights(model).items()}
    hist = train_cifar(model, x, y, dataclasses.replace(TINY, epochs=1, attack="fgsm_rs"), progress=False)
    assert hist["finished"] and all(torch.equal(v, clean_weights(model)[k]) for k, v in clean.items())
    assert all(torch.linalg.matrix_rank(u).item() <= 2 for u in low_rank_updates(model).values())
    assert any(u.abs().max() > 0 for u in low_rank_updates(model).values())


# --------------------------------------------------------------------------------------------------
# the oneDNN channels-last guard (cifar_models.channels_last_safe)

_CL_SCRIPT = """
import torch
from fp_helpers.cifar_models import make_model
from fp_helpers.cifar_train import CifarTrainConfig, train_cifar
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x, y = torch.rand(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
out = {}
for cl in (True, False):
    m = make_model("small_resnet", seed=0, width=4)
    train_cifar(m, x, y, CifarTrainConfig(epochs=1, batch_size=32, attack="fgsm_rs", channels_last=cl, seed=1),
                progress=False, device="cpu")
    out[cl] = m.state_dict()
assert all(torch.equal(out[True][k], out[False][k]) for k in out[False]), "channels-last request changed the numbers"
print("ok")
"""


def test_to_memory_format_converts_only_where_safe():
    from fp_helpers.cifar_train import to_memory_format

    def layout(m):
        w = m.conv1.weight
        return "nhwc" if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() else "nchw"

    cfg = CifarTrainConfig(channels_last=True).validate()
    m, c = to_memory_format(tiny(width=16), cfg, "cpu")  # safe: converted, the config still says channels-last
    assert c.channels_last and layout(m) == "nhwc"
    m, c = to_memory_format(tiny(), cfg, "cpu")  # width 4 on a CPU: left in NCHW, and the config says so
    assert not c.channels_last and cfg.channels_last and layout(m) == "nchw"
    off = CifarTrainConfig(channels_last=False).validate()
    m, c = to_memory_format(tiny(width=16), off, "cpu")  # not asked for: nothing changes
    assert c is off and layout(m) == "nchw"


def test_channels_last_is_refused_where_onednn_miscomputes_it():
    from fp_helpers.cifar_models import channels_last_safe

    assert not channels_last_safe(tiny(), "cpu")  # width 4: strided 1x1 convolutions with 4 and 8 inputs
    assert channels_last_safe(tiny(width=16), "cpu")
    assert channels_last_safe(PreActResNet18(), "cpu")
    assert channels_last_safe(tiny(), "cuda")  # cuDNN has no such bug: only the device type is read
    # Training a width-4 model with channels-last requested: on an AVX2 CPU this crashed or hung in the first
    # backward pass before the guard. A subprocess, so a crash fails this test instead of killing pytest.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _CL_SCRIPT], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_batchnorm_only_control_trains_batch_norm_and_nothing_else():
    """The control of low-rank fine-tuning: after adversarial training only BatchNorm scales, shifts and running
    statistics have moved; every conv / linear weight is the clean one, bit for bit."""
    from fp_helpers.cifar_models import batchnorm_only

    torch.manual_seed(0)
    x, y = colour_task(64)
    clean = tiny()
    model = batchnorm_only(copy.deepcopy(clean))
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == bn_params
    hist = train_cifar(model, x, y, dataclasses.replace(TINY, epochs=2, attack="fgsm_rs", lr=0.1), progress=False)
    assert hist["finished"]
    before, after = clean.state_dict(), model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(".bn" in k or k.startswith("bn.") for k in moved), moved
    assert any(k.endswith(".weight") for k in moved) and any(k.endswith("running_mean") for k in moved)
    assert all(torch.equal(w, clean_weights(clean)[k]) for k, w in clean_weights(model).items())
    with pytest.raises(ValueError, match="low-rank mode"):
        batchnorm_only(apply_low_rank(tiny(), 1))
