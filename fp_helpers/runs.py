"""Profiles, devices, seeds, thread counts, config overrides and the banner every notebook prints first."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import torch

from . import __version__

PROFILES = ("quick", "full")
NORMS = ("l2", "linf")

C = TypeVar("C")


def get_profile(profile: str | None = None) -> str:
    """Return the active profile: the argument, else ``FP_PROFILE``, else ``quick`` under CI, else ``full``."""
    if profile is None:
        profile = os.environ.get("FP_PROFILE") or ("quick" if os.environ.get("CI") else "full")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed profiles are {', '.join(PROFILES)}")
    return profile


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: the argument, else ``FP_DEVICE``, else CUDA when present, else CPU."""
    device = device or os.environ.get("FP_DEVICE")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda', got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, mps (also via FP_DEVICE)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; allowed: cpu, cuda, cuda:N, mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use cpu")
    return dev


def seed_everything(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Seed python, numpy and torch, and return a fresh ``torch.Generator`` on ``device``.

    All randomness in fp_helpers takes an explicit generator; the global seeds are set only so that
    a reader's own extra code in a notebook is reproducible too.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (:func:`torch.set_num_threads`), then restore the count
    it had. Nested uses restore in turn. Where a number must not depend on the thread count (a LAPACK
    factorisation), or where a background thread needs a core of its own (the sampler of
    :mod:`fp_helpers.training`), the code says so with this."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@functools.cache
def git_commit() -> str | None:
    """The git commit of the fp_helpers source tree, when it is a git checkout: read once per process, so a
    result stamped at the end of a long run names the commit its code was imported from, in its
    ``environment`` and its ``provenance`` alike, even if commits were made while it ran."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    isa = cpu_capability()
    isa = f", {isa}" if isa else ""
    return f"CPU ({platform.processor() or platform.machine()}{isa}, {torch.get_num_threads()} threads)"


def cpu_capability() -> str | None:
    """The vector instruction set PyTorch's CPU kernels use here (``AVX2``, ``AVX512``, ...). CPU results are
    bit-for-bit reproducible only on the same kind: oneDNN picks other kernels (another summation order)
    on another instruction set, and training amplifies the rounding differences."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def environment(profile: str | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """What produced a number: profile, device, versions. Stored with every result."""
    dev = get_device(device)
    return {
        "profile": get_profile(profile),
        "device": str(dev),
        "device_name": device_name(dev),
        "cpu_capability": cpu_capability(),
        "fp_helpers": __version__,
        "commit": git_commit(),
        "torch": str(torch.__version__),
    }


def banner(profile: str | None = None, device: str | torch.device | None = None) -> str:
    """One line saying at what scale and where the outputs below were made."""
    env = environment(profile, device)
    commit = f" ({env['commit']})" if env["commit"] else ""
    return (
        f"fp_helpers {env['fp_helpers']}{commit} | profile: {env['profile']} | "
        f"device: {env['device_name']} | torch {env['torch']}"
    )


def _coerce(value: str, target: Any, key: str) -> Any:
    """Convert the string ``value`` to the type of the current field value ``target``."""
    if isinstance(target, bool):
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={value!r}: expected a boolean (true/false)")
    if isinstance(target, tuple):
        parts = [p for p in value.replace(",", " ").split() if p]
        elem = target[0] if target else 0.0
        return tuple(_coerce(p, elem, key) for p in parts)
    if target is None:
        if value.lower() in ("none", "null", ""):
            return None
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    try:
        if isinstance(target, int):
            return int(value)
        if isinstance(target, float):
            return float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected a {type(target).__name__}") from None
    return value


def apply_overrides(config: C, overrides: Iterable[str] | dict[str, Any] | None) -> C:
    """Return a copy of the dataclass ``config`` with ``key=value`` overrides applied.

    Unknown keys raise ``ValueError`` listing the allowed ones; values are converted to the field's type.
    """
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; allowed keys are: {', '.join(sorted(fields))}")
        current = getattr(config, key)
        changes[key] = _coerce(value, current, key) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed norms are {', '.join(NORMS)}")
    return norm
