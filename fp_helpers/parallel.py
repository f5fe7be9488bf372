"""Independent CPU runs (one per seed) in worker processes.

On a CPU, PyTorch's intra-op threads speed the small matrix products of synthetic *training* up only a
little (2 threads: 1.2-1.3x over 1 on the 2-core machine of the book), while separate processes run
independent runs side by side: three seeds of clean training in three 1-thread processes on 2 cores take
12-13 s where one 2-thread process takes 17-23 s. Whole seed sweeps gain much less there, because their
PGD evaluation already keeps both cores busy (``scripts/workers_ab.py``; README, "Worker processes").
The numbers do not change: a run's results are bit-identical with 1 or 2 threads, and every run draws
from its own seeded generators (``tests/test_parallel.py`` checks both).

``FP_WORKERS`` (or a ``workers=`` argument) overrides the automatic choice; ``1`` runs everything in this
process. Worker processes are started with ``spawn`` (never ``fork``: forking a process whose OpenMP pool is
running can hang the child), so the function they run must live in an importable module.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator

import torch

MIN_STEPS = 5_000  # below this many training steps per run, starting a process (~2 s) costs more than it saves


def cpu_cores() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def n_workers(n_tasks: int, device, steps_per_task: int, workers: int | None = None) -> int:
    """How many processes to run ``n_tasks`` independent runs in: ``workers`` (or ``$FP_WORKERS``) when
    given, else, on a CPU with 2+ cores and runs of ``MIN_STEPS`` steps or more, one per run up to twice
    the cores (each then gets ``cores // workers`` threads, at least one), where workers can start
    (:func:`spawn_safe`), else 1 (in this process).
    A GPU always gets 1: its runs share one device."""
    if workers is None and os.environ.get("FP_WORKERS", "").strip():
        raw = os.environ["FP_WORKERS"].strip()
        try:
            workers = int(raw)
        except ValueError:
            raise ValueError(f"FP_WORKERS must be a positive integer, got {raw!r}") from None
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer (1: no worker processes), got {workers!r}")
        return max(1, min(workers, n_tasks))
    if torch.device(device).type != "cpu" or n_tasks < 2 or steps_per_task < MIN_STEPS or not spawn_safe():
        return 1
    cores = cpu_cores()
    return 1 if cores < 2 else min(n_tasks, 2 * cores)


def spawn_safe() -> bool:
    """Whether worker processes can start without running the caller's own program again: a spawned worker
    imports the ``__main__`` module, so a plain script (``python my_script.py``) would be re-run in every
    worker unless its code sits under ``if __name__ == "__main__":``, which cannot be checked. True in a
    notebook or interactive session (no main file) and for a module run with ``python -m`` (the package's
    CLI, ipykernel, pytest), which is imported under another name; a script gets workers only when it asks
    (``workers=`` or ``FP_WORKERS``) and has that guard."""
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None or getattr(main, "__spec__", None) is not None


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("FP_PROGRESS", "0")  # bars of several processes would interleave


def run_unordered(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int) -> Iterator[tuple[int, Any]]:
    """``(i, fn(*tasks[i]))`` for every task, in the order they finish, from ``workers`` spawned processes
    with ``cores // workers`` threads each; ``workers=1``: one after the other in this process. An exception
    in a worker is raised here, and the other tasks are cancelled."""
    tasks = list(tasks)
    if workers <= 1:
        for i, args in enumerate(tasks):
            yield i, fn(*args)
        return
    threads = max(1, cpu_cores() // workers)
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
