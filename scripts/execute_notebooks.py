"""Execute notebooks in place (the outputs the website shows) and record how long each took.

    FP_PROFILE=full python scripts/execute_notebooks.py book/*.ipynb

Writes each notebook back with its outputs, and appends one line per notebook to
results/execution_times.json (notebook, profile, device, seconds, commit, date, and the provenance block of
fp_helpers.provenance: versions, code fingerprint of the whole package, date and time).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp_helpers import provenance, runs  # noqa: E402
from fp_helpers.provenance import write_json_atomic  # noqa: E402


def main(paths: list[str]) -> int:
    # committed outputs carry no progress bars (the kernel inherits this environment)
    os.environ.setdefault("FP_PROGRESS", "0")
    log_path = Path("results/execution_times.json")
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    env = runs.environment()
    for p in paths:
        path = Path(p)
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - t0
        nbformat.write(nb, path)
        log[f"{path.stem}@{env['profile']}"] = {"notebook": str(path), "profile": env["profile"], "device": env["device_name"],
                                              "seconds": round(seconds, 1), "commit": env["commit"],
                                              "date": dt.date.today().isoformat(),
                                              "config": {"FP_PROFILE": env["profile"]},
                                              "provenance": provenance.record(
                                                  "package", env["profile"],
                                                  command=f"FP_PROFILE={env['profile']} python scripts/execute_notebooks.py {path}")}
        write_json_atomic(log_path, log)  # after each notebook: an interrupted batch keeps what it measured
        print(f"{path}: {seconds:.1f}s at profile {env['profile']} on {env['device_name']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
