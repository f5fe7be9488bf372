"""Execute notebooks (the outputs the website shows) and record how long each took.

    FP_PROFILE=full python scripts/execute_notebooks.py book/*.ipynb              # outputs written back
    FP_PROFILE=quick python scripts/execute_notebooks.py --time-only book/*.ipynb  # timed, notebooks untouched

The appendix (``execution_statistics``), which shows the recorded times, runs after the other notebooks given.
Appends one entry per notebook to results/execution_times.json, keyed ``chapter@profile@cpu|gpu`` (a GPU run
never overwrites a CPU one): notebook, profile, device, seconds (wall time), cpu_seconds (the CPU time of the
kernel and every process it started and waited for, e.g. the worker processes of fp_helpers.parallel: user +
system, from ``getrusage(RUSAGE_CHILDREN)``; on 2 cores a notebook cannot take less wall time than half of it),
commit, date, and the provenance block of fp_helpers.provenance (versions, code fingerprint, date and time, the
command).

The kernel inherits this environment (FP_DATA_DIR, FP_CHECKPOINT_DIR and FP_CACHE made absolute: the kernel runs
in the notebook's folder), with three defaults: ``FP_PROGRESS=0`` (committed outputs carry no
progress bars), ``FP_CHECKPOINT_DIR=off`` (the time is the computation's, never a read of cached stage
checkpoints) and ``FP_GLUE=1`` (``fp_helpers.book.glue`` records glued values even where myst-nb is not
installed, e.g. on a GPU machine with only the kernel's packages).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
try:
    import resource  # POSIX
except ImportError:  # Windows: no CPU time recorded
    resource = None
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp_helpers import provenance, runs  # noqa: E402
from fp_helpers.bench import device_kind  # noqa: E402
from fp_helpers.provenance import write_json_atomic  # noqa: E402

DEFAULTS = {"FP_PROGRESS": "0", "FP_CHECKPOINT_DIR": "off", "FP_GLUE": "1"}
# the kernels run in each notebook's folder (book/), so these are made absolute first
PATH_VARIABLES = ("FP_DATA_DIR", "FP_CHECKPOINT_DIR", "FP_CACHE")


def entry_key(stem: str, profile: str, device_name: str) -> str:
    return f"{stem}@{profile}@{device_kind(device_name)}"


def children_cpu_seconds() -> float | None:
    """User + system CPU time of this process's terminated, waited-for children and their waited-for
    descendants (a kernel and its worker processes, once the kernel has been shut down); None without
    ``resource``."""
    if resource is None:
        return None
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--time-only", action="store_true", help="record the time, leave the notebook file as it is")
    ap.add_argument("--log", default="results/execution_times.json")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    for k in PATH_VARIABLES:  # a path given relative to here must not be read relative to the notebook's folder
        v = os.environ.get(k)
        if v and v != "off" and not os.path.isabs(v):
            os.environ[k] = os.path.abspath(v)
    log_path = Path(args.log)
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    env = runs.environment()
    provenance.pin("package")  # the code the kernels import now, whatever is edited while they run
    # the appendix shows the times recorded here: it runs last, after the chapters it reports on
    # (tests/test_book.py checks that its committed table is what results/execution_times.json gives)
    for p in sorted(args.notebooks, key=lambda p: Path(p).stem == "execution_statistics"):
        path = Path(p)
        nb = nbformat.read(path, as_version=4)
        t0, c0 = time.perf_counter(), children_cpu_seconds()
        # execute() shuts the kernel down and waits for it, so its CPU time (and its workers') is counted
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds, c1 = time.perf_counter() - t0, children_cpu_seconds()
        cpu = None if c0 is None else round(c1 - c0, 1)
        if not args.time_only:
            nbformat.write(nb, path)
        flags = " --time-only" if args.time_only else ""
        log[entry_key(path.stem, env["profile"], env["device_name"])] = {
            "notebook": str(path), "profile": env["profile"], "device": env["device_name"],
            "seconds": round(seconds, 1), "cpu_seconds": cpu, "commit": env["commit"], "date": dt.date.today().isoformat(),
            "config": {"FP_PROFILE": env["profile"], **{k: os.environ[k] for k in DEFAULTS}},
            "provenance": provenance.record(
                "package", env["profile"],
                command=f"FP_PROFILE={env['profile']} python scripts/execute_notebooks.py{flags} {path}")}
        write_json_atomic(log_path, log)  # after each notebook: an interrupted batch keeps what it measured
        print(f"{path}: {seconds:.1f}s ({cpu} s of CPU) at profile {env['profile']} on {env['device_name']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
