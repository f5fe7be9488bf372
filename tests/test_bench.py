"""The benchmarks (fp_helpers.bench) at tiny sizes: they run, measure what they claim, time the same
maths in both loops, write the promised JSON, and refuse bad input."""

import json
from pathlib import Path

import pytest
import torch

from fp_helpers import bench
from fp_helpers.__main__ import main
from fp_helpers.cifar_models import channels_last_safe, make_model
from fp_helpers.cifar_train import CifarTrainConfig, to_memory_format
from fp_helpers.runs import threads

TINY_CIFAR = {"batch": 4, "batches": 1, "warmup": 1, "width": 4}
TINY_SYNTHETIC = {"d": 30, "k": 3, "m": 10, "batch": 8, "steps": 3}
TINY_NTK = {"d": 30, "m": 10, "n_small": 8, "n_gram": 20}
ENV_FIELDS = ("device", "device_name", "threads", "torch", "date", "fp_helpers", "commit", "dirty")


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """One thread (tiny models; immune to a neighbour on the CI cores) and a small matmul for the peak."""
    matmul, conv = bench.matmul_peak, bench.conv_peak
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype: matmul(device, dtype, n=128, reps=1, min_seconds=0.01))
    monkeypatch.setattr(bench, "conv_peak", lambda device, dtype: conv(device, dtype, batch=2, reps=1, min_seconds=0.01))
    with threads(1):
        yield


def test_bench_cifar_runs_both_loops_and_reports_positive_speeds():
    r = bench.bench_cifar(device="cpu", verbose=False, **TINY_CIFAR)
    assert set(r["variants"]) == {"naive", "ours_fp32", "ours_bf16"}  # CPU: both precisions of ours
    for name, v in r["variants"].items():
        assert v["images_per_s"] > 0 and v["seconds_per_epoch"] > 0, name
        assert 0 < v["peak_fraction"] and 0 < v["conv_peak_fraction"] and v["tflops"] > 0, name
        assert v["tflops"] == pytest.approx(r["flops_per_image"]["useful_step"] * v["images_per_s"] / 1e12)
        assert 0 < v["cpu_utilisation"] <= 1.5, name
        assert v["precision"] == v["peak_reference"] in r["peak_tflops"]  # CPU: the variant's own precision
        assert v["seconds_per_epoch"] == pytest.approx(50_000 / v["images_per_s"])
    assert r["ours"] in ("ours_fp32", "ours_bf16")
    assert r["variants"][r["ours"]]["images_per_s"] == max(r["variants"][k]["images_per_s"] for k in ("ours_fp32", "ours_bf16"))
    assert r["speedup"] == pytest.approx(r["variants"][r["ours"]]["images_per_s"] / r["variants"]["naive"]["images_per_s"])
    assert r["batch"] == 4 and r["images_timed"] == 4 and r["width"] == 4
    only_fp32 = bench.bench_cifar(device="cpu", verbose=False, cpu_bf16=False, **TINY_CIFAR)
    assert set(only_fp32["variants"]) == {"naive", "ours_fp32"}


def test_flop_count_is_five_forwards_for_ours_and_six_for_the_naive_loop():
    f = bench.cifar_flops(width=4)
    # a conv's input gradient and its weight gradient each cost one forward; the first conv's input
    # gradient (an image gradient) is the one piece both steps need and the "5F / 6F" rule slightly misses
    assert f["ours_step"] == pytest.approx(5 * f["forward"], rel=0.02)
    assert f["naive_step"] == pytest.approx(6 * f["forward"], rel=0.02)
    assert f["naive_step"] - f["ours_step"] == pytest.approx(f["forward"], rel=0.02)
    # PreAct ResNet-18 at width 64: 0.56 G multiply-adds per 32x32 image
    assert bench.cifar_flops(width=64)["forward"] == pytest.approx(1.11e9, rel=0.01)


def _one_step(kind, amp=False, seed=5, batch=8):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    cfg = CifarTrainConfig(batch_size=batch, lr=0.05, attack="fgsm_rs", channels_last=True).validate()
    # width 16: the narrowest at which channels-last is safe on a CPU (cifar_models.channels_last_safe)
    model = make_model("preact_resnet18", seed=seed, width=16).train()
    assert channels_last_safe(model, "cpu")
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "naive":
        # fp_helpers' l-inf random start draws a Gaussian (used only for l2) before its uniform numbers:
        # skip as many in the naive loop's stream, so that both start from the same random point
        torch.randn(x.shape, generator=gen)
        step = bench.naive_fgsm_rs_step_fn(model, x, y, cfg.eps, cfg.alpha, cfg.lr, cfg.momentum, cfg.weight_decay, gen)
    else:
        model, cfg = to_memory_format(model, cfg, "cpu")
        assert cfg.channels_last
        step = bench.ours_fgsm_rs_step_fn(model, x, y, cfg, amp=amp, generator=gen)
    loss = step()
    return loss.float().item(), {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def test_both_loops_do_the_same_maths():
    naive_loss, naive_w = _one_step("naive")
    ours_loss, ours_w = _one_step("ours")
    # fp32 on CPU: the same loss and the same SGD update, up to NCHW / channels-last rounding (which FGSM's
    # sign() turns into a few flipped pixels: compare each tensor's update, not its last bits)
    assert ours_loss == pytest.approx(naive_loss, rel=1e-4)
    w0 = {k: v.detach().contiguous() for k, v in make_model("preact_resnet18", seed=5, width=16).state_dict().items()}

    def update_gap(w):
        return max(((w[k] - naive_w[k]).norm() / (naive_w[k] - w0[k]).norm()).item()
                   for k in naive_w if naive_w[k].is_floating_point() and (naive_w[k] - w0[k]).norm() > 0)

    assert update_gap(ours_w) < 0.02
    assert update_gap(_one_step("naive", seed=6)[1]) > 0.5  # another batch: another update
    # bf16 autocast: the same step, rounded
    bf16_loss, _ = _one_step("ours", amp=True)
    assert bf16_loss == pytest.approx(naive_loss, abs=0.05)
    # a different batch gives a different loss (the comparison above is not vacuous)
    assert _one_step("naive", seed=6)[0] != pytest.approx(naive_loss, rel=1e-4)


def test_bench_all_writes_the_json_with_environment_and_figures(tmp_path):
    out = tmp_path / "bench" / "cpu.json"
    r = bench.bench_all(out, device="cpu", synthetic=TINY_SYNTHETIC, ntk=TINY_NTK, cifar=TINY_CIFAR, verbose=False)
    saved = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["cpu.json"]  # atomic: no temporary file left
    for key in ENV_FIELDS:
        assert key in saved["environment"], key
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["threads"] == 1
    assert saved["environment"]["device_name"].startswith("CPU (")
    for mode in ("clean", "fgm"):
        assert saved["synthetic"][mode]["speedup"] > 0
    assert saved["ntk"]["ratio"] > 0 and saved["ntk"]["gram_shape"] == [20, 20]
    assert saved["cifar"]["speedup"] > 0 and saved["cifar"]["peak_tflops"]["fp32"] > 0
    assert saved["cifar"]["variants"]["naive"]["images_per_s"] > 0
    assert saved["seconds"] > 0 and saved == json.loads(json.dumps(r))


def test_default_path_is_named_after_the_device():
    slug = bench.device_slug("cpu")
    n = torch.get_num_threads()
    assert slug.startswith("cpu-") and slug.endswith(f"-{n}-thread{'s' if n != 1 else ''}")  # "1 thread", "2 threads"
    assert all(c.isalnum() or c == "-" for c in slug)
    assert str(bench.default_bench_path("cpu")) == f"results/bench/{slug}.json"


@pytest.mark.parametrize("kw, msg", [
    ({"batch": 0}, "batch must be an int >= 1, got 0"),
    ({"batches": -1}, "batches must be an int >= 1"),
    ({"batch": 2.5}, "batch must be an int"),
    ({"device": "tpu"}, "device 'tpu'"),
    ({"compile": "yes"}, "compile must be True or False"),
])
def test_bench_cifar_rejects_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        bench.bench_cifar(**{"device": "cpu", "verbose": False, **TINY_CIFAR, **kw})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench.bench_cifar(device="cuda", verbose=False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        bench.bench_all(tmp_path / "x.json", device="cuda", verbose=False)
    assert not (tmp_path / "x.json").exists()


def test_cli_bench_rejects_bad_input_and_writes_cifar_json(tmp_path, capsys):
    assert main(["bench", "cifar", "--batch", "0", "--device", "cpu"]) == 2
    assert "batch must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "all", "--device", "tpu", "--out", str(tmp_path / "a.json")]) == 2
    assert "device 'tpu'" in capsys.readouterr().err and not (tmp_path / "a.json").exists()
    out = tmp_path / "c.json"
    assert main(["bench", "cifar", "--device", "cpu", "--batch", "2", "--batches", "1", "--warmup", "0",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "ours (ours_" in printed
    saved = json.loads(out.read_text())
    assert saved["cifar"]["batch"] == 2 and saved["cifar"]["width"] == 64
    for key in ENV_FIELDS:
        assert key in saved["environment"], key


def test_notebook_times_table_and_markdown(tmp_path):
    log = {
        "cifar10@full@gpu": {"notebook": "book/cifar10.ipynb", "profile": "full", "device": "NVIDIA H100 80GB HBM3",
                         "seconds": 312.0, "date": "2026-12-01", "commit": "abc"},
        "theory@quick@cpu": {"notebook": "book/theory.ipynb", "profile": "quick", "device": "CPU (x86_64, 2 threads)",
                         "seconds": 3.0, "date": "2026-11-30", "commit": "abc"},
        "theory@full@cpu": {"notebook": "book/theory.ipynb", "profile": "full", "device": "CPU (x86_64, 1 threads)",
                        "seconds": 8.9, "date": "2026-11-25", "commit": "def"},
        "lower_bounds@full@cpu": {"notebook": "book/lower_bounds.ipynb", "profile": "full",
                                  "device": "CPU (x86_64, 2 threads)", "seconds": 200.0, "cpu_seconds": 372.0,
                                  "date": "2026-12-02", "commit": "abc"},
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(log))
    rows = bench.notebook_times_table(path)
    assert [(r["chapter"], r["profile"]) for r in rows] == [("theory", "quick"), ("theory", "full"),
                                                            ("lower_bounds", "full"), ("cifar10", "full")]
    assert rows[1]["threads"] == 1 and not rows[1]["gpu"] and rows[3]["gpu"] and rows[3]["threads"] is None
    assert rows[1]["cpu_seconds"] is None and rows[2]["cpu_seconds"] == 372.0  # older entries have no CPU time
    md = bench.notebook_times_markdown(path).splitlines()
    assert md[0] == "| chapter | quick, CPU | full, CPU | full, GPU |"
    assert md[2] == "| `theory` | 3.0 s (2026-11-30) | 8.9 s, 1 thread (2026-11-25) | not measured |"
    assert md[3] == "| `lower_bounds` | not measured | 3.3 min, CPU 6.2 min (2026-12-02) | not measured |"
    assert md[4] == "| `cifar10` | not measured | not measured | 5.2 min on NVIDIA H100 80GB HBM3 (2026-12-01) |"
    assert bench.notebook_times_markdown(path, all_columns=True).splitlines()[0] == \
        "| chapter | quick, CPU | full, CPU | full, GPU |"
    path.write_text(json.dumps({k: v for k, v in log.items() if k != "theory@quick@cpu"}))
    assert bench.notebook_times_markdown(path).splitlines()[0] == "| chapter | full, CPU | full, GPU |"
    assert bench.notebook_times_markdown(path, all_columns=True).splitlines()[0] == \
        "| chapter | quick, CPU | full, CPU | full, GPU |"
    path.write_text(json.dumps({"x@full": {"profile": "full"}}))
    with pytest.raises(ValueError, match="no 'seconds'"):
        bench.notebook_times_table(path)


def test_the_repository_execution_times_parse():
    rows = bench.notebook_times_table(Path(__file__).resolve().parents[1] / "results" / "execution_times.json")
    assert rows and all(r["seconds"] > 0 and r["date"] for r in rows)


def test_readme_notebook_times_table_is_the_one_the_results_give():
    """The README's table is generated (the command is next to it); this keeps it from drifting."""
    root = Path(__file__).resolve().parents[1]
    want = bench.notebook_times_markdown(root / "results" / "execution_times.json", all_columns=True)
    readme = (root / "README.md").read_text()
    assert want in readme, ("README.md's notebook-times table differs from results/execution_times.json; "
                            "regenerate it with the command printed above the table:\n" + want)


def test_execute_notebooks_keys_cpu_and_gpu_runs_apart_and_time_only_leaves_the_notebook(tmp_path, monkeypatch):
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", Path(__file__).resolve().parents[1] / "scripts" / "execute_notebooks.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    assert ex.entry_key("theory", "full", "CPU (x86_64, 2 threads)") == "theory@full@cpu"
    assert ex.entry_key("theory", "full", "NVIDIA H100 80GB HBM3") == "theory@full@gpu"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom fp_helpers.book import glue\nprint(os.environ['FP_CHECKPOINT_DIR'], os.environ['FP_GLUE'])\n"
        "glue('answer', 42)")])
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    log = tmp_path / "times.json"
    monkeypatch.delenv("FP_CHECKPOINT_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert ex.main(["--time-only", "--log", str(log), str(path)]) == 0
    assert path.read_text() == before
    entry = next(iter(json.loads(log.read_text()).values()))
    assert entry["config"]["FP_CHECKPOINT_DIR"] == "off" and entry["seconds"] > 0
    assert entry["cpu_seconds"] is not None and entry["cpu_seconds"] > 0
    assert ex.main(["--log", str(log), str(path)]) == 0
    outs = nbformat.read(path, 4).cells[0].outputs
    assert outs[0]["text"].strip() == "off 1"
    glued = [o for o in outs if o.get("metadata", {}).get("scrapbook", {}).get("name") == "answer"]
    assert glued and glued[0]["data"]["application/papermill.record/text/plain"] == "42"


def test_execute_notebooks_counts_the_cpu_time_of_processes_the_kernel_starts(tmp_path, monkeypatch):
    """cpu_seconds covers the kernel's child processes (fp_helpers.parallel's workers are such children): a cell
    whose subprocess burns 1.5 s of CPU while the kernel waits gives at least 1.5 s."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", Path(__file__).resolve().parents[1] / "scripts" / "execute_notebooks.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {busy!r}], check=True)")])
    path = tmp_path / "busy.ipynb"
    nbformat.write(nb, path)
    log = tmp_path / "times.json"
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert ex.main(["--time-only", "--log", str(log), str(path)]) == 0
    entry = next(iter(json.loads(log.read_text()).values()))
    assert entry["cpu_seconds"] >= 1.5, entry


def test_execute_notebooks_reads_a_relative_data_dir_from_where_it_was_called(tmp_path, monkeypatch):
    """The kernel runs in the notebook's folder (book/); FP_DATA_DIR=../shared/data/cifar10 given from the
    repository root must still name the same folder there."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", Path(__file__).resolve().parents[1] / "scripts" / "execute_notebooks.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    (tmp_path / "data").mkdir()
    (tmp_path / "book").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nprint(os.path.isdir(os.environ['FP_DATA_DIR']), os.path.isabs(os.environ['FP_DATA_DIR']))")])
    path = tmp_path / "book" / "tiny.ipynb"
    nbformat.write(nb, path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FP_DATA_DIR", "data")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    assert ex.main(["--log", str(tmp_path / "times.json"), str(path)]) == 0
    assert nbformat.read(path, 4).cells[0].outputs[0]["text"].strip() == "True True"


@pytest.mark.parametrize("value", [0.123456, "a |cos| text", 7])
def test_glue_fallback_records_what_myst_nb_records(value, monkeypatch):
    import IPython.display

    from fp_helpers import book

    myst_glue = pytest.importorskip("myst_nb.ext.glue")
    seen = []
    monkeypatch.setattr(myst_glue, "ipy_display", lambda *a, **k: seen.append((a, k)))
    myst_glue.glue("v", value, display=False)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: seen.append((a, k)))
    book._record("v", value, display=False)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_readme_benchmark_table_is_the_one_the_results_give():
    root = Path(__file__).resolve().parents[1]
    want = bench.bench_markdown(root / "results" / "bench")
    assert want in (root / "README.md").read_text(), (
        "README.md's benchmark table differs from results/bench/*.json; regenerate it with the command above it:\n"
        + want)


def test_notebook_times_log_marks_this_page_and_adds_the_training_run(tmp_path):
    log = {
        "cifar10@full@cpu": {"notebook": "book/cifar10.ipynb", "profile": "full", "device": "CPU (x86_64, 2 threads)",
                             "seconds": 12.0, "date": "2026-12-01", "commit": "abc"},
        "execution_statistics@full@cpu": {"notebook": "book/execution_statistics.ipynb", "profile": "full",
                                          "device": "CPU (x86_64, 2 threads)", "seconds": 7.0, "date": "2026-12-01",
                                          "commit": "abc"},
        "theory@full@cpu": {"notebook": "book/theory.ipynb", "profile": "full", "device": "CPU (x86_64, 2 threads)",
                            "seconds": 8.0, "cpu_seconds": 14.5, "date": "2026-12-01", "commit": "abc"},
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(log))
    run = tmp_path / "full.json"
    run.write_text(json.dumps({"seconds": 2520.4, "device": "cpu",
                               "environment": {"device_name": "CPU (x86_64, 1 threads)", "profile": "full"},
                               "provenance": {"commit": "def", "date": "2026-11-30T20:00:00Z", "profile": "full"}}))
    md = bench.notebook_times_log(path, this_page="execution_statistics",
                                  training_runs={"cifar10": run, "missing": tmp_path / "none.json"}).data.splitlines()
    assert md[0].endswith("| note |")
    body = [line.split(" | ") for line in md[2:]]
    assert [r[0].lstrip("| ") for r in body] == ["theory", "cifar10", "cifar10 (training run)", "execution_statistics"]
    assert md[0].startswith("| notebook | profile | device | wall time | CPU time |")
    assert body[0][3:5] == ["8.0 s", "14.5 s"] and body[1][3:5] == ["12.0 s", "-"]  # CPU time where recorded
    training = body[2]
    assert training[3] == "42.0 min" and training[4] == "-" and training[5] == "def" and training[6] == "2026-11-30"
    assert training[2] == "CPU (x86_64, 1 thread)"  # recorded by an older label as "1 threads"
    assert "not part of the notebook's time" in training[7]
    assert "previous execution" in body[3][7] and all("previous" not in "".join(r) for r in body[:3])
    # without the new arguments: the same rows as before, no notes
    plain = bench.notebook_times_log(path).data.splitlines()
    assert len(plain) == 5 and all(line.endswith("|  |") for line in plain[2:])
