"""Clean and adversarial SGD for the two-layer network, on fresh samples or a fixed training set.

Training uses the network's closed-form gradients (no autograd graph) and draws fresh samples in
blocks of many steps at once; both matter on a CPU, where per-step overhead dominates.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attacks import fgm, pgd
from .runs import check_norm, threads
from .sparse_coding import SparseCoding

TRAIN_ATTACKS = ("none", "fgm", "pgd")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch: int = 128
    lr: float = 2.0
    attack: str = "none"  # "none" (clean training), "fgm" or "pgd" (adversarial training)
    tau: float = 0.15  # training radius
    norm: str = "l2"
    pgd_steps: int = 5  # only for attack="pgd"
    beta_ramp: float = 0.0  # share of the steps over which the dead zone ramps from 0 to net beta
    train_size: int = 0  # 0: fresh samples every step (population setting); n > 0: a fixed set of n
    log_every: int = 500
    block: int = 32  # online sampling: draw this many steps' worth of samples at once

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch", "log_every", "block", "pgd_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.train_size, int) or self.train_size < 0:
            raise ValueError(f"train_size must be an int >= 0 (0 = fresh samples), got {self.train_size!r}")
        if not (_is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.attack not in TRAIN_ATTACKS:
            raise ValueError(f"unknown training attack {self.attack!r}; allowed: {', '.join(TRAIN_ATTACKS)}")
        if not (_is_number(self.tau) and self.tau >= 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if not (_is_number(self.beta_ramp) and 0 <= self.beta_ramp <= 1):
            raise ValueError(f"beta_ramp must lie in [0, 1], got {self.beta_ramp!r}")
        check_norm(self.norm)
        return self


@dataclass
class History:
    """Metrics logged during training (one dict per logged step) and weight snapshots."""

    rows: list[dict] = field(default_factory=list)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)

    def column(self, key: str) -> list:
        return [r[key] for r in self.rows if key in r]


def _progress(total: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = not os.environ.get("CI") and os.environ.get("FP_PROGRESS", "1") != "0"
    if not enabled:
        return None
    from tqdm import tqdm  # the console bar: works in Jupyter without ipywidgets, and in scripts

    return tqdm(total=total, desc=desc, leave=False, mininterval=1.0)


class _Batches:
    """Yields ``(x, y)`` minibatches: fresh samples in blocks, or epochs over a fixed set.

    Fresh samples on a CPU with 2+ threads (``prefetch``): the next block is drawn in a background thread
    while the current one trains, and the training steps run with one thread fewer. Drawing a block is
    mostly serial work (the Gaussian noise: about a third of a clean step on 2 cores), so this keeps both
    cores busy. The generator is used exactly as without it: blocks are drawn one after another, only as
    many as the steps need, and never across a log step (whose ``eval_fn`` may draw from the generator
    too): a block is started only after the last log that comes before the step which would have drawn
    it, and the loop waits for a block in flight before logging (:meth:`settle`). The numbers and the
    generator's final state are therefore those of drawing each block when it is needed
    (``tests/test_training.py``). Use it as a context manager; the loop runs its evaluations inside
    :meth:`evaluation` and calls :meth:`logged` after a log.
    """

    def __init__(self, dist: SparseCoding, cfg: TrainConfig, gen: torch.Generator, data=None,
                 prefetch: bool | None = None):
        self.dist, self.cfg, self.gen = dist, cfg, gen
        self.buf: list = []
        self.fixed = cfg.train_size or (data is not None)
        if data is not None:
            self.X, self.Y = data
        elif cfg.train_size:
            self.X, self.Y = dist.sample(cfg.train_size, gen)
        self.blocks_left = -(-cfg.steps // cfg.block)  # fresh blocks the steps will use
        self.step = 0  # minibatches handed out so far = the step being trained
        if prefetch is None:
            prefetch = torch.get_num_threads() >= 2 and torch.device(dist.device).type == "cpu"
        self.prefetch = bool(prefetch) and not self.fixed
        self.eval_threads = torch.get_num_threads()
        self._pool = self._next = self._hold = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        if self.prefetch:
            from concurrent.futures import ThreadPoolExecutor

            self.eval_threads = torch.get_num_threads()
            self._stack.enter_context(threads(max(1, self.eval_threads - 1)))  # the sampler gets a core
            # on exit, first: a block in flight finishes, so nobody else touches the generator afterwards
            self._pool = self._stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="fp-sampler"))
            self._plan(1)
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self._pool = self._next = self._hold = None
        return False

    def _draw(self) -> list:
        cfg = self.cfg
        x, y = self.dist.sample(cfg.block * cfg.batch, self.gen)
        return list(zip(x.split(cfg.batch), y.split(cfg.batch)))[::-1]

    def _plan(self, first_step: int):
        """Start drawing the block that step ``first_step`` would draw: now, or after the last log step before
        ``first_step`` if that log is still to come (logs at step t come after step t's update)."""
        if self.blocks_left <= 0:
            return
        t = (first_step - 1) // self.cfg.log_every * self.cfg.log_every
        if t >= self.step:
            self._hold = t
        else:
            self._submit()

    def _submit(self):
        self._hold = None
        self.blocks_left -= 1
        self._next = self._pool.submit(self._draw)

    @contextlib.contextmanager
    def evaluation(self):
        """For an evaluation at a log: waits for the block being drawn (if any), so the generator is free for
        the caller, and gives it every thread."""
        if self._next is not None:
            self._next.result()
        with threads(self.eval_threads) if self._pool is not None else contextlib.nullcontext():
            yield

    def logged(self, step: int):
        """After a log at ``step``: a block held back for that log may start."""
        if self._pool is not None and self._hold is not None and step >= self._hold:
            self._submit()

    def _refill(self):
        cfg = self.cfg
        if self.fixed:
            n = self.X.shape[0]
            perm = torch.randperm(n, generator=self.gen, device=self.X.device)
            n_full = max(1, n // cfg.batch)
            idx = perm[: n_full * cfg.batch].view(n_full, -1) if n >= cfg.batch else perm[None]
            self.buf = [(self.X[i], self.Y[i]) for i in idx]
            self.buf.reverse()
        elif self._pool is not None:
            if self._next is None:  # held back for a log the loop did not make: draw it now
                self._submit()
            self.buf, self._next = self._next.result(), None
            self._plan(self.step + cfg.block)
        else:
            self.blocks_left -= 1
            self.buf = self._draw()

    def next(self):
        self.step += 1
        if not self.buf:
            self._refill()
        return self.buf.pop()


def train(net, dist: SparseCoding, cfg: TrainConfig, generator: torch.Generator,
          eval_fn: Callable[[int, object], dict] | None = None, snapshot_steps=(), progress: bool | None = None,
          desc: str | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None) -> History:
    """Train ``net`` in place with SGD on the logistic loss; clean or adversarial (FGM / PGD).

    ``eval_fn(step, net)`` is called every ``log_every`` steps and at the end; what it returns is logged.
    ``snapshot_steps`` lists steps at which to keep a copy of the weights (step 0 = the start).
    ``data = (X, Y)`` trains on that fixed set (epochs in random order) instead of fresh samples.
    Any model with ``grads``/``sgd_step`` (the two-layer network, :mod:`fp_helpers.baselines`) can be trained.
    """
    cfg = cfg.validate()
    if data is not None:
        from .attacks import check_batch

        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError(f"data must be a pair (X, Y) of tensors, got {type(data).__name__}")
        check_batch(*data)
        if data[0].shape[1:] != (dist.d,):
            raise ValueError(f"data X has points of shape {tuple(data[0].shape[1:])}, the distribution's are ({dist.d},)")
    hist = History()
    target_beta = float(getattr(getattr(net, "config", None), "beta", 0.0))
    ramp_steps = int(cfg.beta_ramp * cfg.steps)
    snap = set(int(s) for s in snapshot_steps)
    bar = _progress(cfg.steps, desc or ("clean training" if cfg.attack == "none" else f"{cfg.attack} training"),
                    progress)
    batches = _Batches(dist, cfg, generator, data)

    def log(step: int, loss: float):
        row = {"step": step, "loss": loss, "beta": net.beta}
        if eval_fn is not None:
            with batches.evaluation():  # eval_fn may draw from the generator too: not while a block is drawn
                row.update(eval_fn(step, net))
        hist.rows.append(row)
        batches.logged(step)

    if 0 in snap:
        hist.snapshots[0] = net.snapshot()
    if ramp_steps:
        net.beta = 0.0
    with batches:
        log(0, float("nan"))
        for step in range(1, cfg.steps + 1):
            if ramp_steps:
                net.beta = target_beta * min(1.0, step / ramp_steps)
            x, y = batches.next()
            if cfg.attack == "fgm":
                x = fgm(net, x, y, cfg.tau, cfg.norm)
            elif cfg.attack == "pgd":
                x = pgd(net, x, y, cfg.tau, cfg.norm, steps=cfg.pgd_steps)
            loss, grad_w, _, _ = net.grads(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}); lower lr={cfg.lr}")
            net.sgd_step(grad_w, cfg.lr)
            if step in snap:
                hist.snapshots[step] = net.snapshot()
            if step % cfg.log_every == 0 or step == cfg.steps:
                log(step, loss.item())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return hist
