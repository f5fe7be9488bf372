"""scripts/sync_setup_cell.py: one template for every chapter's set-up cell, and what the cell does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fp_helpers

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_setup_cell", ROOT / "scripts" / "sync_setup_cell.py")
sync_setup_cell = sys.modules["sync_setup_cell"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_setup_cell)

OLD_CELL = (
    "# Set-up: install fp_helpers when it is missing (Colab, Binder), then say at what scale this page ran.\n"
    "import importlib.util, subprocess, sys\n"
    "if importlib.util.find_spec(\"fp_helpers\") is None:\n"
    "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
    "                    \"fp_helpers @ git+https://github.com/feature-purification/fp-book\"], check=True)\n"
    "import matplotlib.pyplot as plt\n"
    "from fp_helpers import plots, runs\n"
    "\n"
    "plots.set_style()\n"
    "PROFILE = runs.get_profile()\n"
    "print(runs.banner())"
)


def notebook(first_source: str) -> dict:
    lines = first_source.splitlines(keepends=True)
    return {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# A chapter\n", "text"]},
        {"cell_type": "code", "execution_count": 1, "metadata": {"tags": ["keep"]}, "source": lines,
         "outputs": [{"name": "stdout", "output_type": "stream", "text": ["fp_helpers 0.1.0 | profile: full\n"]}]},
        {"cell_type": "code", "execution_count": 2, "metadata": {}, "source": ["x = 1"], "outputs": []},
    ], "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def first_source(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_the_block_is_python_pinned_to_this_version_and_repository():
    block = sync_setup_cell.render()
    compile(block, "<set-up cell>", "exec")
    assert f'FP_HELPERS = "{fp_helpers.__version__}"' in block
    assert f'REPO = "{sync_setup_cell.repository_url()}"' in block
    assert 'f"fp_helpers @ git+{REPO}@v{FP_HELPERS}"' in block
    assert max(len(line) for line in block.splitlines()) <= 80  # fits the book's code column
    assert sync_setup_cell.repository_url().startswith("https://github.com/")
    assert "--no-deps" in block
    code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
    for forbidden in ('"-U"', "--upgrade", "--force-reinstall", "drive.mount"):
        assert forbidden not in code


def test_migrates_an_old_cell_and_keeps_the_notebooks_own_lines(tmp_path):
    path = tmp_path / "chapter.ipynb"
    write(path, notebook(OLD_CELL))
    before = json.loads(path.read_text())
    assert sync_setup_cell.main(["--check", str(path)]) == 1
    assert sync_setup_cell.main([str(path)]) == 0
    src = first_source(path)
    assert src.startswith(sync_setup_cell.BEGIN + "\n")
    own = src.split(sync_setup_cell.END + "\n", 1)[1]
    assert own == ("import matplotlib.pyplot as plt\nfrom fp_helpers import plots, runs\n\n"
                   "plots.set_style()\nPROFILE = runs.get_profile()")  # the block prints the banner now
    assert "find_spec(\"fp_helpers\") is None" not in src
    after = json.loads(path.read_text())
    # Only the source of the first code cell changed: outputs, metadata and other cells as they were.
    before["cells"][1].pop("source"), after["cells"][1].pop("source")
    assert after == before
    assert sync_setup_cell.main(["--check", str(path)]) == 0
    text = path.read_text()
    assert sync_setup_cell.main([str(path)]) == 0
    assert path.read_text() == text  # idempotent


def test_check_catches_an_edited_block_and_sync_restores_it(tmp_path):
    path = tmp_path / "chapter.ipynb"
    write(path, notebook(OLD_CELL))
    sync_setup_cell.main([str(path)])
    good = path.read_text()
    nb = json.loads(good)
    cell = nb["cells"][1]
    cell["source"] = [line.replace('"-q"', '"-q", "-U"') for line in cell["source"]]
    write(path, nb)
    assert sync_setup_cell.main(["--check", str(path)]) == 1
    sync_setup_cell.main([str(path)])
    assert path.read_text() == good


def test_a_cell_without_any_set_up_gets_the_block_on_top(tmp_path):
    path = tmp_path / "chapter.ipynb"
    write(path, notebook("import torch\nx = torch.ones(2)"))
    sync_setup_cell.main([str(path)])
    src = first_source(path)
    assert src.startswith(sync_setup_cell.BEGIN) and src.endswith(sync_setup_cell.END + "\nimport torch\nx = torch.ones(2)")


def test_writing_back_an_unchanged_notebook_is_byte_identical(tmp_path):
    """The script writes JSON as Jupyter does: a synced notebook's other bytes never churn."""
    for src in sorted((ROOT / "book").glob("*.ipynb")):
        raw = src.read_text(encoding="utf-8")
        assert json.dumps(json.loads(raw), sort_keys=True, indent=1, ensure_ascii=False) + "\n" == raw, src


RUN_BLOCK = r"""
import json, subprocess, sys
calls, real_run = [], subprocess.run
def fake_run(cmd, *args, **kwargs):
    if isinstance(cmd, (list, tuple)) and list(cmd[1:3]) == ["-m", "pip"]:
        calls.append(list(cmd))  # record pip, run nothing
        return subprocess.CompletedProcess(cmd, 0)
    return real_run(cmd, *args, **kwargs)
subprocess.run = fake_run
exec(compile(sys.stdin.read(), "<set-up cell>", "exec"), {"__name__": "__main__"})
print("CALLS " + json.dumps(calls))
"""


def run_block(version: str, env_extra: dict | None = None) -> tuple[str, list]:
    """Run the block in a fresh interpreter with pip replaced by a recorder."""
    import os

    block = sync_setup_cell.render(version=version)
    env = {k: v for k, v in os.environ.items() if k != "COLAB_RELEASE_TAG"}
    env.update({"FP_PROFILE": "quick", **(env_extra or {})})
    out = subprocess.run([sys.executable, "-c", RUN_BLOCK], input=block, capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    text, calls_line = out.stdout.rsplit("CALLS ", 1)
    return text, json.loads(calls_line)


def test_the_block_installs_nothing_when_the_version_matches():
    text, calls = run_block(fp_helpers.__version__)
    assert calls == []
    assert text.startswith(f"fp_helpers {fp_helpers.__version__}") and "profile: quick" in text
    assert "No GPU" not in text  # not on Colab


def test_the_block_installs_only_fp_helpers_at_its_tag_when_the_version_differs():
    _, calls = run_block("9.9.9")
    assert calls, "no pip call"
    first = calls[0]
    assert first[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in first
    assert first[-1] == f"fp_helpers @ git+{sync_setup_cell.repository_url()}@v9.9.9"
    flat = " ".join(" ".join(c) for c in calls)
    assert "torch" not in flat.replace("fp_helpers", "") and "-U" not in flat and "--upgrade" not in flat


def test_the_block_says_how_to_get_a_gpu_on_colab():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    text, _ = run_block(fp_helpers.__version__, {"COLAB_RELEASE_TAG": "test"})
    assert "Runtime > Change runtime type" in text
