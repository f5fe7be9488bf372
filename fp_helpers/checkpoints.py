"""Resumable long runs: each completed unit (a seed, a training stage) is saved at once; a rerun skips it.

The units of one run live in one folder, ``<root>/<experiment>-<key>``, where ``key`` hashes everything
that determines their content: the config, the code fingerprint of the experiment
(:func:`fp_helpers.provenance.code_fingerprint`), the torch version and the device type (and, for
CIFAR-10, the data). A unit saved under another config or by changed code is therefore never picked up.

Each unit is one file ``<unit>.<sha256 prefix>.pt``, written to a temporary file and renamed (a crash
leaves the whole file or none). On reading, the file's sha256 must match its name, and it is read with
``torch.load(..., weights_only=True)``: a truncated or altered unit is ignored with a warning and
recomputed (and then overwritten), never used.

Where: ``checkpoint_dir`` argument / ``--checkpoint-dir``, else ``$FP_CHECKPOINT_DIR``, else
``~/.cache/fp_helpers/runs``; ``off`` (or ``False``) disables checkpoints. A run that completes deletes its
folder: checkpoints exist to resume an interrupted run, not to cache results (a completed run is
recomputed from scratch, and gives the same numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from .provenance import save_torch_atomic, sha256_file

OFF = ("off", "0", "false", "no", "none")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used (corrupted) or written (read-only folder); the run goes on."""


def checkpoint_root(checkpoint_dir: str | os.PathLike | bool | None = None) -> Path | None:
    """The folder holding run checkpoints, or ``None`` when checkpoints are off (see the module docstring)."""
    if checkpoint_dir is False:
        return None
    if checkpoint_dir is None or checkpoint_dir is True:
        checkpoint_dir = os.environ.get("FP_CHECKPOINT_DIR") or Path.home() / ".cache" / "fp_helpers" / "runs"
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be a path, None (default) or False (off), got {checkpoint_dir!r}")
    if str(checkpoint_dir).strip().lower() in OFF:
        return None
    return Path(checkpoint_dir).expanduser()


def run_key(experiment: str, key: dict) -> str:
    """16 hex digits identifying a run: ``experiment`` and ``key`` (config, code fingerprint, versions)."""
    import torch

    payload = {"experiment": experiment, "torch": torch.__version__, **key}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunCheckpoints:
    """The completed units of one run (a no-op store when checkpoints are off)."""

    def __init__(self, experiment: str, key: dict, checkpoint_dir=None):
        root = checkpoint_root(checkpoint_dir)
        self.experiment = experiment
        self.folder = None if root is None else root / f"{experiment}-{run_key(experiment, key)}"
        self._key = key

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _files(self, unit: str) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{unit}.*.pt") if p.name.count(".") == 2)

    def load(self, unit: str):
        """The saved unit, or ``None`` (never saved, or unusable: then a :class:`CheckpointWarning`)."""
        import torch

        for path in self._files(unit):
            expected = path.name.split(".")[1]
            try:
                actual = sha256_file(path)[:len(expected)]
            except OSError:  # removed meanwhile (another run of the same config completed)
                continue
            if actual != expected:
                warnings.warn(CheckpointWarning(
                    f"checkpoint {path} is truncated or altered (sha256 starts {actual}, its name says {expected}); "
                    f"ignoring it and recomputing {unit!r}"), stacklevel=2)
                continue
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed, never used
                warnings.warn(CheckpointWarning(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                                                f"ignoring it and recomputing {unit!r}"), stacklevel=2)
        return None

    def path(self, unit: str) -> Path | None:
        """A path for a unit written by another writer (e.g. :func:`fp_helpers.cifar_train.train_cifar`)."""
        if self.folder is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"{unit}.pt"

    def save(self, unit: str, obj) -> None:
        """Save ``obj`` (tensors and plain containers) as ``unit``; on a write error warn and go on."""
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            info = self.folder / "run.json"
            if not info.exists():
                from .provenance import write_json_atomic

                write_json_atomic(info, {"experiment": self.experiment, "key": self._key})
            tmp = self.folder / f".{unit}.partial"
            digest = save_torch_atomic(tmp, obj)
            for old in self._files(unit):
                old.unlink(missing_ok=True)
            os.replace(tmp, self.folder / f"{unit}.{digest[:16]}.pt")
        except OSError as e:
            warnings.warn(CheckpointWarning(f"could not write checkpoint {unit!r} in {self.folder} ({e}); "
                                            "the run goes on without it"), stacklevel=2)

    def done(self) -> None:
        """The run completed: delete its checkpoints."""
        if self.folder is not None and self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)


def open_run(experiment: str, config, checkpoint_dir=None, device=None, **extra) -> RunCheckpoints:
    """The checkpoints of ``experiment`` run with ``config`` (a dataclass or dict) on ``device``."""
    from .provenance import _fingerprint_cached, config_dict
    from .runs import get_device

    if checkpoint_root(checkpoint_dir) is None:
        return RunCheckpoints(experiment, {}, False)
    key = {"config": config_dict(config), "code": _fingerprint_cached(experiment)["hash"],
           "device": get_device(device).type, **extra}
    return RunCheckpoints(experiment, key, checkpoint_dir)
