"""Reliability: reproducible runs, honest results (provenance, stale warnings), safe failure (checkpoints,
resume after a kill, checksums on everything read)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from fp_helpers import baselines as bl
from fp_helpers import checkpoints, experiments, lower_bounds
from fp_helpers import provenance as pv
from fp_helpers.__main__ import main
from fp_helpers.cifar_experiments import cifar_config, load_run
from fp_helpers.runs import threads

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FP_DATA_DIR") or REPO.parent / "shared" / "data" / "cifar10")
needs_subset = pytest.mark.skipif(not (DATA / "cifar10_prefix.npz").is_file(),
                                  reason=f"the CIFAR-10 subset is not at {DATA} (set FP_DATA_DIR)")


def sets(*kv):
    return [a for x in kv for a in ("--set", x)]


# The quick profile of each experiment, shrunk by --set overrides: the same code path, in about a second.
SYN = sets("clean_steps=300", "adv_steps=100", "eval_n=200", "d=60", "m=40", "pgd_steps=5")
LB = sets("clean_steps=200", "adv_steps=50", "eval_n=100", "d=40", "m=30", "n_train=100", "degrees=1,2",
          "linear_steps=50", "lin_steps=50", "lin_adv_steps=20", "lb_eval_n=100", "curve_n=50", "pgd_steps=3")
CIFAR = sets("n_train=260", "n_test=60", "holdout=40", "eval_n=60", "clean_epochs=2", "adv_epochs=1",
             "ft_epochs=1", "ranks=1,2", "width=4", "batch_size=64", "eval_pgd_steps=3")


def canonical(obj) -> str:
    """JSON text without the fields that legitimately differ between two runs (timings, dates); NaN-safe."""
    return json.dumps(pv.strip_volatile(obj), sort_keys=True, default=str)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny runs: one thread is faster than two, and immune to other processes on the CI cores (two-thread
    OpenMP spins then slow these runs down several times). The CIFAR subprocess uses one thread too."""
    with threads(1):
        yield


# ------------------------------------------------------------------------------------------- 1. determinism


@pytest.mark.parametrize("experiment, args", [("synthetic", SYN), ("lower-bounds", LB)])
def test_same_seed_same_numbers(tmp_path, experiment, args):
    out = tmp_path / "r.json"
    cmd = ["run", experiment, "--profile", "quick", "--seed", "4", *args, "--out", str(out)]
    assert main(cmd) == 0
    first = json.loads(out.read_text())
    assert main(cmd) == 0
    second = json.loads(out.read_text())
    assert canonical(first) == canonical(second)
    assert first["provenance"]["date"] and first["seconds"] >= 0  # the excluded fields exist
    assert main([*cmd[:5], "5", *cmd[6:]]) == 0  # another seed: other numbers
    assert canonical(json.loads(out.read_text())) != canonical(first)


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory, one_thread):
    """Two uninterrupted CIFAR runs with identical commands (results moved aside after each), one thread."""
    if not (DATA / "cifar10_prefix.npz").is_file():
        pytest.skip(f"the CIFAR-10 subset is not at {DATA}")
    root = tmp_path_factory.mktemp("cifar")
    args = ["run", "cifar", "--profile", "quick", "--data", str(DATA), *CIFAR, "--checkpoint-dir", str(root / "ck"),
            "--save-dir", str(root / "save"), "--out", str(root / "out.json")]
    for name in ("a", "b"):
        assert main(args) == 0
        (root / "out.json").rename(root / f"{name}.json")
        (root / "save").rename(root / f"{name}_save")
    return root, args


def _same_models(folder_a: Path, folder_b: Path):
    names = sorted(p.name for p in folder_a.glob("*.pt"))
    assert names and names == sorted(p.name for p in folder_b.glob("*.pt"))
    for n in names:
        a = torch.load(folder_a / n, map_location="cpu", weights_only=True)
        b = torch.load(folder_b / n, map_location="cpu", weights_only=True)
        assert a.keys() == b.keys(), n
        assert all(torch.equal(a[k], b[k]) for k in a), n


@needs_subset
def test_cifar_same_seed_same_numbers_and_weights(cifar_runs):
    root, _ = cifar_runs
    a, b = (json.loads((root / f"{n}.json").read_text()) for n in ("a", "b"))
    assert canonical(a) == canonical(b)
    _same_models(root / "a_save", root / "b_save")
    assert not list((root / "ck").glob("*"))  # a completed run leaves no checkpoints behind


# ------------------------------------------------------------------------------------------- 2. provenance

REQUIRED = ("experiment", "command", "profile", "device", "fp_helpers", "commit", "code", "date")


def _result_files():
    return sorted(p for p in (REPO / "results").rglob("*.json") if p.name != "execution_times.json")


def test_every_committed_result_says_what_made_it():
    files = _result_files()
    assert len(files) >= 9
    fix = ("write results with fp_helpers.provenance.stamp (or record), or give an old file what is known "
           "with scripts/stamp_results.py")
    for f in files:
        r = json.loads(f.read_text())
        assert isinstance(r.get("config"), dict) and r["config"], f"{f} has no config: {fix}"
        prov = r.get("provenance")
        assert isinstance(prov, dict), f"{f} has no provenance block: {fix}"
        for key in REQUIRED:
            assert prov.get(key), f"{f}: provenance.{key} is missing: {fix}"
        assert prov["code"].get("hash") and prov["code"].get("modules"), f
    times = json.loads((REPO / "results" / "execution_times.json").read_text())
    for key, entry in times.items():
        assert entry.get("config") and entry["seconds"] > 0, f"execution_times.json[{key}] has no config: {fix}"
        for k in ("profile", "fp_helpers", "commit", "code", "date", "device_name"):
            assert (entry.get("provenance") or {}).get(k), f"execution_times.json[{key}]: no provenance.{k}: {fix}"


def test_committed_model_files_match_their_recorded_checksums():
    folder = REPO / "results" / "cifar" / "full"
    files = json.loads((folder / "result.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in folder.glob("*.pt"))
    for name, sha in files.items():
        assert pv.sha256_file(folder / name) == sha, name


def test_cli_results_record_config_version_profile_device_date_and_code(tmp_path):
    out = tmp_path / "r.json"
    assert main(["run", "synthetic", "--profile", "quick", *SYN, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    prov = r["provenance"]
    assert r["config"]["d"] == 60 and prov["profile"] == "quick" and prov["device"] == "cpu"
    assert prov["fp_helpers"] and prov["date"].endswith("Z") and prov["experiment"] == "synthetic"
    assert prov["code"]["hash"] == pv.code_fingerprint("synthetic")["hash"]
    # the recorded command recomputes exactly this config
    assert pv.config_from_command(prov["command"]) == r["config"]
    assert prov["command"].endswith(f"--out {out}")


def _sources_with(module: str, old: str, new: str) -> dict:
    src = {p.stem: p.read_text() for p in (REPO / "fp_helpers").glob("*.py")}
    assert src[module].count(old) == 1, old
    src[module] = src[module].replace(old, new)
    return src


def test_code_fingerprint_sees_code_changes_not_docstrings_or_unrelated_code():
    base = pv.code_fingerprint("synthetic")
    # a reachable function changes: the hash changes and says where
    changed = pv.code_fingerprint("synthetic", _sources_with("networks", "return torch.copysign(h, t), dh",
                                                             "return torch.copysign(h, t), dh * 1.0"))
    assert changed["hash"] != base["hash"]
    assert [m for m in base["modules"] if base["modules"][m] != changed["modules"][m]] == ["networks"]
    # a docstring, a comment, formatting: no change
    same = _sources_with("networks", '"""``h(u)`` for ``u >= 0``: polynomial', '"""Edited docstring: polynomial')
    same["networks"] = same["networks"].replace("class TwoLayerNet(nn.Module):", "class TwoLayerNet(nn.Module):  # c")
    assert pv.code_fingerprint("synthetic", same)["hash"] == base["hash"]
    # code a synthetic run cannot reach (CIFAR augmentation): no change for synthetic, a change for cifar
    aug = _sources_with("cifar", "flip = (torch.rand(n, generator=generator, device=gdev) < 0.5)",
                        "flip = (torch.rand(n, generator=generator, device=gdev) < 0.4)")
    assert pv.code_fingerprint("synthetic", aug)["hash"] == base["hash"]
    assert pv.code_fingerprint("cifar", aug)["hash"] != pv.code_fingerprint("cifar")["hash"]


def test_bench_fingerprint_covers_the_code_it_times_and_nothing_else():
    base = pv.code_fingerprint("bench")
    # the timed code: the synthetic training step, the NTK Gram matrix, the CIFAR training step
    for module, old, new in (("networks", "return torch.copysign(h, t), dh", "return torch.copysign(h, t), dh * 1.0"),
                             ("baselines", "class NTKKernel", "class NTKKernel_"),
                             ("cifar_train", "        cfg = dataclasses.replace(cfg, channels_last=False)\n",
                              "        cfg = dataclasses.replace(cfg, channels_last=True)\n")):
        assert pv.code_fingerprint("bench", _sources_with(module, old, new))["hash"] != base["hash"], module
    # what no benchmark runs (the book's exercises, the lower-bound study), and bench.py itself: no change
    for module, old, new in (("exercises", "def _check_dk(d: int, k: int)", "def _check_dk(d: int, k: int, _=0)"),
                             ("lower_bounds", "def stage_seed(", "def stage_seed_("),
                             ("bench", "def matmul_peak(", "def matmul_peak_(")):
        assert pv.code_fingerprint("bench", _sources_with(module, old, new))["hash"] == base["hash"], module
    assert "exercises" not in base["modules"] and "bench" not in base["modules"]


def test_a_result_names_the_code_its_run_started_with(monkeypatch):
    """A long run stamps its result at the end; code edited (or committed) while it ran must not be recorded
    as the code that made it. The CLI pins the fingerprint and the git state when a run starts."""
    from fp_helpers import runs

    pv._CACHE.clear()
    runs.git_commit.cache_clear()
    try:
        pv.pin("synthetic")
        at_start = pv.code_fingerprint("synthetic")["hash"]
        edited = _sources_with("networks", "return torch.copysign(h, t), dh", "return torch.copysign(h, t), dh * 2")
        monkeypatch.setattr(pv, "_package_sources", lambda: edited)  # the files change while the run goes on
        monkeypatch.setattr(runs.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git now")))
        rec = pv.record("synthetic")
        assert rec["code"]["hash"] == at_start != pv.code_fingerprint("synthetic")["hash"]
        assert runs.environment()["commit"] == rec["commit"]  # read once: both blocks name the same commit
    finally:
        pv._CACHE.clear()
        runs.git_commit.cache_clear()


def test_load_result_warns_when_config_or_code_is_stale(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "synthetic", "--profile", "quick", *SYN, "--out", str(out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current result: no warning at all
        data = pv.load_result(out)
    assert data["config"]["d"] == 60

    stale_cfg = json.loads(out.read_text())
    stale_cfg["config"]["tau"] = 0.99  # as if made with another config than its command gives today
    (tmp_path / "cfg.json").write_text(json.dumps(stale_cfg))
    with pytest.warns(pv.StaleResultWarning) as w:
        pv.load_result(tmp_path / "cfg.json")
    msg = str(w[0].message)
    assert "tau=0.99 in the result, 0.3 now" in msg and "python -m fp_helpers run synthetic --profile quick" in msg

    stale_code = json.loads(out.read_text())
    stale_code["provenance"]["code"]["hash"] = "0123456789abcdef"
    stale_code["provenance"]["code"]["modules"]["networks"] = "0" * 16
    (tmp_path / "code.json").write_text(json.dumps(stale_code))
    with pytest.warns(pv.StaleResultWarning, match=r"code it depends on has changed .*\(in networks;") as w:
        pv.load_result(tmp_path / "code.json")
    assert f"recompute it with:  {stale_code['provenance']['command']}" in str(w[0].message)

    # an explicit expected config is compared too
    with pytest.warns(pv.StaleResultWarning, match="d=60 in the result, 100 now"):
        pv.load_result(out, expected_config=experiments.synthetic_config("quick"))
    # historical=True: a printed note instead of a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capsys.readouterr()
        pv.load_result(tmp_path / "code.json", historical=True)
    note = capsys.readouterr().out
    assert note.startswith("note: ") and "historical record" in note and "1 difference;" in note
    assert str(tmp_path) not in note and ".../" in note  # outside the repository: only the last two parts

    (tmp_path / "bad.json").write_text(out.read_text()[:100])
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        pv.load_result(tmp_path / "bad.json")


def test_cli_check_and_skip_current(tmp_path, capsys):
    out = tmp_path / "r.json"
    cmd = ["run", "synthetic", "--profile", "quick", *SYN, "--skip-current", "--out", str(out)]
    assert main(cmd) == 0
    before = out.read_bytes()
    assert main(cmd) == 0 and "is current" in capsys.readouterr().out
    assert out.read_bytes() == before  # not recomputed
    assert main(["check", str(out)]) == 0
    data = json.loads(before)
    data["provenance"]["code"]["hash"] = "stale"
    out.write_text(json.dumps(data))
    assert main(["check", str(out)]) == 1 and "STALE" in capsys.readouterr().out
    assert main(cmd) == 0 and json.loads(out.read_text())["provenance"]["code"]["hash"] != "stale"  # recomputed


def test_regime_table_warns_once_about_stale_files(tmp_path):
    for name, tau in (("A_x", None), ("B_y", 0.77)):
        out = tmp_path / f"{name}.json"
        assert main(["run", "synthetic", "--profile", "quick", *SYN, "--out", str(out)]) == 0
        if tau is not None:
            data = json.loads(out.read_text())
            data["config"]["tau"] = tau
            out.write_text(json.dumps(data))
    with pytest.warns(pv.StaleResultWarning) as w:
        rows = experiments.regime_rows(tmp_path)
    assert len(rows) == 2 and len(w) == 1
    assert "1 of 2 results" in str(w[0].message) and "B_y.json" in str(w[0].message)


# ------------------------------------------------------------------------------------------- 3. checkpoints


def _tiny_syn(**kw):
    return experiments.synthetic_config("quick", {"clean_steps": 300, "adv_steps": 100, "eval_n": 200, "d": 60,
                                                  "m": 40, "pgd_steps": 5, **kw})


def _same_run(a, b):
    assert canonical(a.metrics) == canonical(b.metrics)
    for net in ("clean", "adversarial"):
        assert torch.equal(getattr(a, net).weight, getattr(b, net).weight)
    assert torch.equal(a.W0, b.W0)
    assert canonical(a.clean_history.rows) == canonical(b.clean_history.rows)
    assert canonical(a.adv_history.rows) == canonical(b.adv_history.rows)
    assert torch.equal(a.setup.gen.get_state(), b.setup.gen.get_state())  # later training draws the same


def test_interrupted_synthetic_run_resumes_after_its_last_stage(tmp_path, monkeypatch):
    cfg = _tiny_syn()
    ref = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=False)
    real_adv, real_clean = experiments.train_adversarial, experiments.train_clean

    def crash(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C during adversarial training

    monkeypatch.setattr(experiments, "train_adversarial", crash)
    with pytest.raises(KeyboardInterrupt):
        experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=tmp_path)
    (folder,) = list(tmp_path.iterdir())
    assert [p.name.split(".")[0] for p in folder.glob("*.pt")] == ["clean"]
    calls = []
    monkeypatch.setattr(experiments, "train_adversarial", real_adv)
    monkeypatch.setattr(experiments, "train_clean", lambda *a, **k: calls.append(1) or real_clean(*a, **k))
    resumed = experiments.run_synthetic(cfg, device="cpu", checkpoint_dir=tmp_path)
    assert calls == []  # clean training was not redone
    _same_run(ref, resumed)
    assert not folder.exists()  # completed: checkpoints removed


def _same_sweep(a, b):
    for k in ("clean", "adversarial", "radii"):
        assert (a[k] == b[k]).all(), k
    assert canonical(a["runs"]) == canonical(b["runs"])
    for ra, rb in zip(a["full_runs"], b["full_runs"]):
        _same_run(ra, rb)


def test_interrupted_seed_sweep_skips_completed_seeds_and_ignores_a_truncated_one(tmp_path, monkeypatch):
    cfg = _tiny_syn()
    ref = experiments.seed_curves(cfg, [0, 1], device="cpu", checkpoint_dir=False)
    real = experiments.run_synthetic

    def crash_on_seed_1(c, **k):
        if c.seed == 1:
            raise KeyboardInterrupt
        return real(c, **k)

    def sweep_interrupted(ck):
        monkeypatch.setattr(experiments, "run_synthetic", crash_on_seed_1)
        with pytest.raises(KeyboardInterrupt):
            experiments.seed_curves(cfg, [0, 1], device="cpu", checkpoint_dir=ck)
        monkeypatch.setattr(experiments, "run_synthetic", lambda c, **k: calls.append(c.seed) or real(c, **k))
        return next(ck.glob("seed_curves-*/seed0.*.pt"))

    calls: list[int] = []
    sweep_interrupted(tmp_path / "a")
    _same_sweep(ref, experiments.seed_curves(cfg, [0, 1], device="cpu", checkpoint_dir=tmp_path / "a"))
    assert calls == [1]  # seed 0 came from its checkpoint
    assert not list((tmp_path / "a").glob("*/*.pt"))

    calls.clear()
    unit = sweep_interrupted(tmp_path / "b")
    unit.write_bytes(unit.read_bytes()[: unit.stat().st_size // 2])  # a partial file under the final name
    with pytest.warns(checkpoints.CheckpointWarning, match="truncated or altered"):
        again = experiments.seed_curves(cfg, [0, 1], device="cpu", checkpoint_dir=tmp_path / "b")
    assert calls == [0, 1]  # the truncated seed was recomputed, never read
    _same_sweep(ref, again)


def test_interrupted_lower_bound_run_resumes_with_identical_numbers_and_models(tmp_path, monkeypatch):
    syn, lb = lower_bounds.lower_bounds_config("quick", [x for x in LB if x != "--set"])
    ref = lower_bounds.run_lower_bounds(syn, lb, device="cpu", keep_models=True, checkpoint_dir=False)
    real_fit, real_clean = bl.fit_kernel_adversarial, lower_bounds.train_clean
    n, per_kernel = {"fits": 0}, 1 + len(lb.adv_radius_mults)  # each kernel: at tau, then at the larger radii

    def crash_in_second_kernel(*a, **k):
        n["fits"] += 1
        if n["fits"] == per_kernel + 1:  # during the degree-2 kernel: two_layer, linear and poly_1 are done
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    monkeypatch.setattr(bl, "fit_kernel_adversarial", crash_in_second_kernel)
    with pytest.raises(KeyboardInterrupt):
        lower_bounds.run_lower_bounds(syn, lb, device="cpu", checkpoint_dir=tmp_path)
    done = sorted(p.name.split(".")[0] for p in tmp_path.glob("*/*.pt"))
    assert done == ["linear", "poly_1", "two_layer"]
    calls = []
    monkeypatch.setattr(bl, "fit_kernel_adversarial", real_fit)
    monkeypatch.setattr(lower_bounds, "train_clean", lambda *a, **k: calls.append(1) or real_clean(*a, **k))
    res = lower_bounds.run_lower_bounds(syn, lb, device="cpu", keep_models=True, checkpoint_dir=tmp_path)
    assert calls == []
    strip = lambda r: canonical({k: v for k, v in r.items() if not k.startswith("_")})  # noqa: E731
    assert strip(res) == strip(ref)
    assert list(res) == list(ref)  # same order of models (the chapter's tables)
    for name, model in ref["_models"].items():
        a, b = model.state_dict(), res["_models"][name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    x = ref["_setup"].x_eval[:50]
    for name, model in ref["_models"].items():
        assert torch.equal(model(x), res["_models"][name](x)), name


@needs_subset
def test_cifar_run_killed_after_its_first_checkpoint_resumes_bit_identically(cifar_runs):
    root, args = cifar_runs
    ck = root / "ck"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); "
                             "from fp_helpers.__main__ import main; sys.exit(main(sys.argv[1:]))", *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while not list(ck.glob("cifar-*/train_clean.pt")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint written in 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no cleanup, no finally: as a power cut or the OOM killer
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "out.json").exists()  # killed mid-way: no result was written
    (folder,) = list(ck.glob("cifar-*"))
    saved = torch.load(folder / "train_clean.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] >= 1 and saved["provenance"]["experiment"] == "cifar"  # epoch 1 unless this test stalled

    assert main(args) == 0  # the same command again resumes from the checkpoint
    assert not folder.exists()  # it used (and then removed) that very checkpoint folder
    resumed = json.loads((root / "out.json").read_text())
    assert canonical(resumed) == canonical(json.loads((root / "a.json").read_text()))
    _same_models(root / "a_save", root / "save")


# ------------------------------------------------------------------------------------------- 4. integrity


@needs_subset
def test_altered_or_truncated_model_file_is_refused_with_its_expected_checksum(cifar_runs, tmp_path):
    root, _ = cifar_runs
    folder = tmp_path / "run"
    shutil.copytree(root / "a_save", folder)
    cfg = cifar_config("quick", [x for x in CIFAR if x != "--set"])
    expected = json.loads((folder / "result.json").read_text())["files"]["clean.pt"]
    assert load_run(folder, cfg, device="cpu")["loaded_from"] == str(folder)
    data = (folder / "clean.pt").read_bytes()
    (folder / "clean.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ValueError, match=f"clean.pt is truncated or altered: .* expected {expected}"):
        load_run(folder, cfg, device="cpu")
    (folder / "clean.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"clean.pt is truncated or altered: .* expected {expected}"):
        load_run(folder, cfg, device="cpu")


@needs_subset
def test_cifar_run_from_changed_code_loads_with_a_stale_warning(cifar_runs, tmp_path):
    root, _ = cifar_runs
    folder = tmp_path / "run"
    shutil.copytree(root / "a_save", folder)
    result = json.loads((folder / "result.json").read_text())
    result["provenance"]["code"]["hash"] = "not-the-current-code"
    pv.write_json_atomic(folder / "result.json", result)
    cfg = cifar_config("quick", [x for x in CIFAR if x != "--set"])
    with pytest.warns(pv.StaleResultWarning, match="recompute it with:  python -m fp_helpers run cifar"):
        loaded = load_run(folder, cfg, device="cpu")
    assert loaded["experiments"] == result["experiments"] and loaded["stale"]


def test_torchvision_batch_with_wrong_md5_is_named_with_its_expected_md5(tmp_path, monkeypatch):
    from test_cifar_data import fake_batches_folder
    from torchvision.datasets import CIFAR10

    from fp_helpers.cifar import load_cifar10

    folder = fake_batches_folder(tmp_path / "root", monkeypatch)
    monkeypatch.setenv("FP_CACHE", str(tmp_path / "empty"))
    assert load_cifar10(folder).n_train == 100
    want = dict(CIFAR10.train_list)["data_batch_3"]
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=f"data_batch_3 has md5 [0-9a-f]{{32}}, expected {want}"):
        load_cifar10(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=f"data_batch_3 is missing \\(expected md5 {want}\\)"):
        load_cifar10(folder)


def test_npz_checksum_error_names_the_file_and_the_expected_sha256(tmp_path):
    from test_cifar_data import tiny_npz

    from fp_helpers.cifar import load_cifar10

    path = tiny_npz(tmp_path)
    want = json.loads((tmp_path / "manifest.json").read_text())["files"][path.name]["sha256_file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path.name} is corrupted: its sha256 checksum is [0-9a-f]{{64}}, "
                                         f"manifest.json expects {want}"):
        load_cifar10(path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match=f"truncated or corrupted: 100 bytes, .* with sha256 {want}"):
        load_cifar10(path)


def test_checkpoint_units_are_atomic_and_verified(tmp_path):
    ck = checkpoints.RunCheckpoints("synthetic", {"config": {"a": 1}}, tmp_path)
    assert ck.load("unit") is None
    ck.save("unit", {"w": torch.arange(5.0), "rows": [{"x": float("nan")}]})
    (path,) = list(ck.folder.glob("unit.*.pt"))
    assert path.name.split(".")[1] == pv.sha256_file(path)[:16]  # the name carries the checksum
    assert torch.equal(ck.load("unit")["w"], torch.arange(5.0))
    assert not list(ck.folder.glob(".*"))  # no temporary file left
    other = checkpoints.RunCheckpoints("synthetic", {"config": {"a": 2}}, tmp_path)
    assert other.folder != ck.folder and other.load("unit") is None  # another config never sees it
    altered = bytearray(path.read_bytes())
    altered[len(altered) // 2] ^= 1  # one bit flipped, same length
    path.write_bytes(bytes(altered))
    with pytest.warns(checkpoints.CheckpointWarning, match="truncated or altered"):
        assert ck.load("unit") is None
    assert checkpoints.checkpoint_root("off") is None and checkpoints.checkpoint_root(False) is None
    assert not checkpoints.RunCheckpoints("x", {}, "off").enabled


def test_every_command_line_experiment_has_a_fingerprint_and_a_config():
    from fp_helpers.__main__ import EXPERIMENTS
    from fp_helpers.provenance import CLI_EXPERIMENTS, ENTRY_POINTS, profile_config

    assert EXPERIMENTS == CLI_EXPERIMENTS
    for experiment in CLI_EXPERIMENTS:
        assert experiment in ENTRY_POINTS  # a result it writes can be checked for staleness
        assert profile_config(experiment, "quick")  # and its recorded command can be re-read
    with pytest.raises(ValueError, match="no command-line experiment"):
        profile_config("seed_curves", "quick")  # made inside the chapters only
