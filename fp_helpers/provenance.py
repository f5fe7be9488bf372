"""Provenance of every result file, and whether a saved result is still current.

Every result fp_helpers writes (``python -m fp_helpers run ... --out``, ``results/regimes``,
``results/lower_bounds``, ``results/cifar``, the entries of ``results/execution_times.json``) carries its
``config`` and a ``provenance`` block (:func:`record`)::

    experiment   synthetic | lower-bounds | cifar | lowrank | seed_curves | notebook
    command      the exact command that recomputes it (``python -m fp_helpers run ...``)
    profile, device, device_name
    fp_helpers   the package version;  commit / dirty: git HEAD and uncommitted changes under fp_helpers/
    code         the code fingerprint: {"hash", "modules": {module: hash}} (see below)
    date         when it was made (UTC, ISO 8601);  torch, python: versions

Model files (``.pt``) get theirs through the JSON beside them: ``results/cifar/<profile>/result.json``
lists each ``.pt`` with its sha256 under ``files`` (checked on every load), and training checkpoints hold
a ``provenance`` entry.

**Code version.** The package version is bumped by hand, and the git commit changes with any edit anywhere
in the repository (and does not exist outside a checkout: Colab's pip install, a zip); neither says
whether the code behind *this* result changed. The fingerprint does: from the experiment's entry point
(e.g. ``experiments.run_synthetic``) it follows every name the code refers to, through ``from .x import
y`` and ``module.attr`` references, to every top-level function, class and constant of fp_helpers that
the experiment can reach, and hashes their syntax trees (docstrings, comments, formatting and line numbers
do not count). Editing any function the experiment can call changes the hash, and the ``modules`` part
says where; editing a docstring, a plot, the CIFAR loader (for a synthetic result) or bookkeeping (this
module, :mod:`fp_helpers.checkpoints`, the CLI, the version banner) does not. It over-approximates: a
method counts through its class, so an edit to any method of a class the experiment names counts.
Benchmark results (experiment ``bench``) start from everything :mod:`fp_helpers.bench` uses: they go stale
when the code they time changes, not when an exercise or a study they never run does.

**Stale results.** :func:`load_result` returns a saved result and warns (:class:`StaleResultWarning`,
shown by Jupyter under the cell) when its config differs from the expected one (given, or what its
recorded command gives with today's presets and defaults) or its code fingerprint differs from today's;
the warning names the differences and the command that recomputes the file.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
FORMAT = "fp_helpers.provenance/1"
# experiment -> its entry points ("module.name"); "package" = every definition of the package
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "synthetic": ("experiments.run_synthetic",),
    "seed_curves": ("experiments.seed_curves",),
    "lower-bounds": ("lower_bounds.run_lower_bounds",),
    "cifar": ("cifar_experiments.run_cifar",),
    "cifar-autoattack": ("cifar_experiments.run_cifar_autoattack",),
    "cifar-frozen-bn": ("cifar_experiments.run_cifar_frozen_bn",),
    "lowrank": ("experiments.run_lowrank",),
    "attack-check": ("experiments.run_attack_check",),
}
# "bench": the benchmarks time the package's code, so their results depend on every definition bench.py reaches
# (bench.py itself is bookkeeping: it measures, it computes no number of the book)
EXPERIMENTS = tuple(ENTRY_POINTS) + ("bench", "package")
# those `python -m fp_helpers run` makes (seed_curves is made inside the chapters only)
CLI_EXPERIMENTS = ("synthetic", "lower-bounds", "cifar", "lowrank", "attack-check", "cifar-autoattack",
                   "cifar-frozen-bn")
# those that start from a saved `run cifar` (--models): their config is the run's
ON_SAVED_RUN = ("cifar-autoattack", "cifar-frozen-bn")
# bookkeeping that never changes a number: left out of every fingerprint
BOOKKEEPING_MODULES = frozenset({"provenance", "checkpoints", "__main__", "__init__", "book", "plots", "bench",
                                 "parallel"})  # parallel: where runs execute, never their numbers (test_parallel)
BOOKKEEPING_NAMES = frozenset({"runs.environment", "runs.banner", "runs.git_commit", "runs.device_name",
                               "runs.cpu_capability"})
# keys that legitimately differ between two runs of the same command (timings, dates)
VOLATILE_KEYS = frozenset({"seconds", "train_seconds", "wall_seconds", "date"})
FINGERPRINT_VERSION = 1  # bump when the fingerprint's algorithm changes (old hashes then cannot be compared)


class StaleResultWarning(UserWarning):
    """A saved result was made with another config or by code that has changed since."""


# ------------------------------------------------------------------------------------------- atomic writes


def _write_atomic(path: str | Path, mode: str, write, digest: bool = False) -> str | None:
    """``write(file)`` into a temporary file in the same folder, then rename: a reader never sees a
    half-written file. With ``digest``, returns the sha256 of what was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        sha = sha256_file(tmp) if digest else None
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename): never a half-written result."""
    def write(f):
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")

    _write_atomic(path, "w", write)


def save_torch_atomic(path: str | Path, obj) -> str:
    """``torch.save`` atomically (temporary file, then rename); returns the file's sha256."""
    import torch

    return _write_atomic(path, "wb", lambda f: torch.save(obj, f), digest=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_torch_checked(path: str | Path, sha256: str | None, what: str = "file"):
    """``torch.load(path, weights_only=True)`` on the CPU after checking the file's sha256 (when given).

    A missing, truncated or altered file raises ``ValueError`` naming the file and the expected checksum."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} is missing" + (f" (expected sha256 {sha256})" if sha256 else ""))
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ValueError(f"{what} {path} is truncated or altered: its sha256 is {actual}, expected {sha256} "
                             f"({path.stat().st_size:,} bytes); recompute it or restore it from git")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{what} {path} is unreadable: truncated or corrupted ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------- code fingerprint


def _strip_docstring(body: list) -> list:
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _dump(node) -> str:
    """A canonical text of a syntax tree: no docstrings, positions, contexts; empty fields omitted (so the
    text does not depend on the Python version's optional fields)."""
    if isinstance(node, ast.AST):
        parts = [type(node).__name__]
        for name in node._fields:
            if name in ("ctx", "type_comment", "kind"):
                continue
            value = getattr(node, name, None)
            if name == "body" and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                value = _strip_docstring(value)
            if value is None or value == []:
                continue
            parts.append(f"{name}={_dump(value)}")
        return "(" + " ".join(parts) + ")"
    if isinstance(node, list):
        return "[" + ",".join(_dump(v) for v in node) + "]"
    return repr(node)


class _Module:
    def __init__(self, name: str, source: str):
        self.name = name
        tree = ast.parse(source)
        self.defs: dict[str, ast.AST] = {}
        self.other: list[ast.AST] = []
        self.aliases: dict[str, tuple[str, str | None]] = {}  # local name -> (module, name or None: a module)
        for node in _strip_docstring(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            self.defs[n.id] = node
            elif not isinstance(node, (ast.Import, ast.ImportFrom)):
                self.other.append(node)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    mod = node.module
                elif node.level == 0 and node.module and node.module.split(".")[0] == "fp_helpers":
                    mod = node.module.partition(".")[2] or None
                else:
                    continue
                for a in node.names:
                    self.aliases[a.asname or a.name] = (a.name, None) if mod is None else (mod, a.name)


def _package_sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(PACKAGE_DIR.glob("*.py"))}


def git_sources(commit: str, repo: str | Path = REPO_DIR) -> dict[str, str]:
    """The fp_helpers sources at a git ``commit`` (to fingerprint the code behind an old result)."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:fp_helpers"], cwd=repo, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n[:-3]: subprocess.run(["git", "show", f"{commit}:fp_helpers/{n}"], cwd=repo, check=True,
                                   capture_output=True, text=True).stdout for n in names if n.endswith(".py")}


def code_fingerprint(experiment: str, sources: dict[str, str] | None = None) -> dict:
    """``{"hash", "modules": {module: hash}}`` of every fp_helpers definition ``experiment`` can reach
    (see the module docstring); ``sources`` (module name -> text) defaults to the installed package."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; allowed: {', '.join(EXPERIMENTS)}")
    sources = _package_sources() if sources is None else sources
    mods = {n: _Module(n, s) for n, s in sources.items() if n not in BOOKKEEPING_MODULES}
    reached: dict[str, dict[str, str]] = {}

    def resolve(mod: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        m = mods.get(mod)
        if m is None or depth > 10:
            return None
        if name in m.defs:
            return mod, name
        if name in m.aliases and m.aliases[name][1] is not None:
            return resolve(*m.aliases[name], depth + 1)
        return None

    if experiment == "package":
        queue = [(m.name, n) for m in mods.values() for n in m.defs]
    elif experiment == "bench":  # entry points: everything bench.py uses (its own definitions are dropped below)
        mods["bench"] = _Module("bench", sources["bench"])
        queue = [("bench", n) for n in mods["bench"].defs]
    else:
        queue = [tuple(e.split(".", 1)) for e in ENTRY_POINTS[experiment]]
    while queue:
        mod, name = queue.pop()
        if f"{mod}.{name}" in BOOKKEEPING_NAMES or name in reached.get(mod, {}):
            continue
        node = mods[mod].defs.get(name) if mod in mods else None
        if node is None:
            continue
        reached.setdefault(mod, {})[name] = hashlib.sha256(_dump(node).encode()).hexdigest()
        m = mods[mod]
        for n in ast.walk(node):
            target = None
            if isinstance(n, ast.Name):
                target = resolve(mod, n.id)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                alias = m.aliases.get(n.value.id)
                if alias is not None and alias[1] is None:  # module.attr
                    target = resolve(alias[0], n.attr)
            if target is not None:
                queue.append(target)
    if experiment == "bench":
        reached.pop("bench", None)
    modules = {}
    for mod in sorted(reached):
        lines = [f"{k}:{v}" for k, v in sorted(reached[mod].items())]
        lines += [_dump(n) for n in mods[mod].other]
        modules[mod] = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    total = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()[:16]
    return {"hash": total, "modules": modules, "algorithm": FINGERPRINT_VERSION}


# ------------------------------------------------------------------------------------------- the record

_CACHE: dict[str, Any] = {}  # one fingerprint / commit per process: the code that was imported


def _fingerprint_cached(experiment: str) -> dict:
    key = f"code:{experiment}"
    if key not in _CACHE:
        _CACHE[key] = code_fingerprint(experiment)
    return _CACHE[key]


def pin(experiment: str) -> None:
    """Read ``experiment``'s code fingerprint and the git state now, at the start of a run: a result stamped
    when the run ends then describes the code this process imported, not files edited while it ran."""
    _fingerprint_cached(experiment)
    git_state()


def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)``: git HEAD (short) and whether fp_helpers/ has uncommitted changes (None: no git)."""
    if "git" not in _CACHE:
        from .runs import git_commit

        commit, dirty = git_commit(), None
        if commit is not None:
            try:
                out = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=PACKAGE_DIR,
                                     capture_output=True, text=True, timeout=5)
                dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                pass
        _CACHE["git"] = (commit, dirty)
    return _CACHE["git"]


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def record(experiment: str, profile: str | None = None, device=None, command: str | None = None) -> dict:
    """The ``provenance`` block of a result made now by ``experiment`` at ``profile`` on ``device``."""
    from .runs import environment

    env = environment(profile, device)
    commit, dirty = git_state()
    return {"format": FORMAT, "experiment": experiment, "command": command, "profile": env["profile"],
            "device": env["device"], "device_name": env["device_name"], "fp_helpers": env["fp_helpers"],
            "commit": commit, "dirty": dirty, "code": _fingerprint_cached(experiment), "date": now_utc(),
            "torch": str(env["torch"]), "python": platform.python_version()}


def config_dict(config) -> dict:
    """A config (dataclass, tuple of dataclasses merged in order, or dict) as a plain JSON dict."""
    if isinstance(config, tuple) and all(dataclasses.is_dataclass(c) for c in config):
        merged: dict = {}
        for c in config:
            merged.update(dataclasses.asdict(c))
        config = merged
    elif dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dataclass, a tuple of dataclasses or a dict, got {type(config).__name__}")
    return json.loads(json.dumps(config))


def stamp(result: dict, experiment: str, config, profile: str | None = None, device=None,
          command: str | None = None, out: str | Path | None = None, extra_args: Iterable[str] = ()) -> dict:
    """Put ``config``, ``environment`` and ``provenance`` into ``result`` (in place; returned).

    ``command`` defaults to the canonical CLI command that recomputes this config (:func:`cli_command`)."""
    from .runs import environment

    result["config"] = config_dict(config)
    result["environment"] = environment(profile, device)
    if command is None and experiment in CLI_EXPERIMENTS:
        command = cli_command(experiment, result["environment"]["profile"], result["config"], out, extra_args)
    result["provenance"] = record(experiment, profile, device, command)
    return result


# ------------------------------------------------------------------------------------------- commands

CLI = "python -m fp_helpers"


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)


def profile_config(experiment: str, profile: str, overrides=None, seed: int | None = None) -> dict:
    """The config (plain dict) that ``run <experiment> --profile <profile> --set ...`` gives today."""
    if experiment in ("synthetic", "lowrank", "attack-check"):  # a synthetic run's config (the rest is code)
        from .experiments import synthetic_config

        return config_dict(synthetic_config(profile, overrides, seed=seed))
    if experiment == "lower-bounds":
        from .lower_bounds import lower_bounds_config

        return config_dict(lower_bounds_config(profile, overrides, seed=seed))
    if experiment in ("cifar",) + ON_SAVED_RUN:  # a command on a saved run: the run's config
        from .cifar_experiments import cifar_config

        return config_dict(cifar_config(profile, overrides, seed=seed))
    raise ValueError(f"no command-line experiment {experiment!r}; allowed: {', '.join(CLI_EXPERIMENTS)}")


def cli_command(experiment: str, profile: str, config: dict, out: str | Path | None = None,
                extra_args: Iterable[str] = ()) -> str:
    """The shortest ``python -m fp_helpers run`` command whose config is ``config``: ``--set`` for every
    field that differs from the profile's preset."""
    preset = profile_config(experiment, profile)
    args = ["run", experiment, "--profile", profile]
    for k in sorted(config):
        if k not in preset:
            continue  # not a field any more: the config check reports it
        if json.loads(json.dumps(config[k])) != preset[k]:
            args += ["--set", f"{k}={_fmt(config[k])}"]
    args += list(extra_args)
    if out is not None:
        args += ["--out", str(out)]
    return f"{CLI} {shlex.join(args)}"


def config_from_command(command: str) -> dict | None:
    """The config that a recorded ``python -m fp_helpers run ...`` command gives with today's code
    (``None`` for other commands)."""
    parts = shlex.split(command or "")
    head = shlex.split(CLI)
    if parts[:len(head)] != head or len(parts) < len(head) + 2 or parts[len(head)] != "run":
        return None
    from .__main__ import _parser

    args, _ = _parser().parse_known_args(parts[len(head):] + ([] if "--out" in parts else ["--out", "-"]))
    from .runs import get_profile

    return profile_config(args.experiment, get_profile(args.profile), args.overrides, seed=args.seed)


# ------------------------------------------------------------------------------------------- stale check


def config_differences(saved: dict, expected: dict) -> list[str]:
    saved, expected = json.loads(json.dumps(saved)), json.loads(json.dumps(expected))
    out = []
    for k in sorted(set(saved) | set(expected)):
        if k not in saved:
            out.append(f"{k} (absent in the result, {expected[k]!r} now)")
        elif k not in expected:
            out.append(f"{k} (={saved[k]!r} in the result, no such field now)")
        elif saved[k] != expected[k]:
            out.append(f"{k}={saved[k]!r} in the result, {expected[k]!r} now")
    return out


def stale_reasons(result: dict, expected_config=None, check_config: bool = True) -> dict[str, list[str]]:
    """Why ``result`` may not be what today's code would compute: ``{"config": [...], "code": [...]}``
    (both empty: current). ``expected_config`` defaults to what the recorded command gives today."""
    prov = result.get("provenance")
    reasons: dict[str, list[str]] = {"config": [], "code": []}
    if not isinstance(prov, dict):
        prov = {}
        reasons["code"].append("it has no provenance record (made before fp_helpers recorded one)")
    if check_config:
        expected = None
        if expected_config is not None:
            expected = config_dict(expected_config)
        elif prov.get("command"):
            try:
                expected = config_from_command(prov["command"])
            except ValueError as e:
                reasons["config"].append(f"its recorded command no longer works ({e})")
        if expected is not None:
            diff = config_differences(result.get("config", {}), expected)
            if diff:
                reasons["config"].append("its config differs from the expected one: " + "; ".join(diff))
    if not prov:
        return reasons
    code = prov.get("code") or {}
    if not code.get("hash"):
        reasons["code"].append("the version of the code that made it is unknown")
    elif code.get("algorithm") != FINGERPRINT_VERSION:
        reasons["code"].append(f"its code fingerprint was computed another way (algorithm {code.get('algorithm')}, "
                               f"now {FINGERPRINT_VERSION}): whether the code changed is unknown")
    elif prov.get("experiment") in EXPERIMENTS:
        now = _fingerprint_cached(prov["experiment"])
        if now["hash"] != code["hash"]:
            old = code.get("modules", {})
            changed = sorted(m for m in set(old) | set(now["modules"]) if old.get(m) != now["modules"].get(m))
            reasons["code"].append(f"the code it depends on has changed since {prov.get('commit') or 'it was made'} "
                                   f"(in {', '.join(changed) or 'fp_helpers'}; fingerprint {code['hash']} then, "
                                   f"{now['hash']} now)")
    return reasons


def recompute_hint(result: dict, path: str | Path | None = None) -> str:
    prov = result.get("provenance") or {}
    cmd = prov.get("recompute") or prov.get("command")
    return f"recompute it with:  {cmd}" if cmd else "recompute it (see how it was made in its provenance)"


def read_result(path: str | Path) -> tuple[Path, dict]:
    """``(file, data)`` of a saved JSON result (a file, or a folder holding ``result.json``), unchecked;
    a missing, truncated or non-object file raises an error naming it."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    if not p.is_file():
        raise FileNotFoundError(f"no saved result at {p}")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p} is not valid JSON (truncated or corrupted? {e}); recompute it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p} does not hold a result (a JSON object), got {type(data).__name__}")
    return p, data


def load_result(path: str | Path, expected_config=None, *, historical: bool = False) -> dict:
    """Read a saved JSON result (a file, or a folder holding ``result.json``) and check that it is current.

    Returns the data. When its config differs from ``expected_config`` (default: the config its recorded
    command gives with today's code) or the code it depends on has changed, warns with
    :class:`StaleResultWarning` naming the differences and the exact command that recomputes it. With
    ``historical=True`` (a result kept on purpose from an earlier version) a one-line note is printed
    instead of the warning.
    """
    p, data = read_result(path)
    reasons = stale_reasons(data, expected_config)
    problems = reasons["config"] + reasons["code"]
    if problems:
        prov = data.get("provenance") or {}
        made = f"made {prov.get('date', 'on an unknown date')} by fp_helpers {prov.get('commit') or '?'}"
        from .book import portable_paths

        shown = portable_paths(str(Path(p).resolve()))  # no machine's absolute path in the book
        if historical:
            print(f"note: {shown} is a historical record ({made}), shown as it was: its config and the code behind "
                  f"it differ from today's ({len(problems)} difference{'s' if len(problems) != 1 else ''}; "
                  f"python -m fp_helpers check {shown} lists them)")
        else:
            msg = f"{shown} ({made}) may be stale: {'; '.join(problems)}. {recompute_hint(data, p)}"
            warnings.warn(StaleResultWarning(msg), stacklevel=2)
    return data


def strip_volatile(obj):
    """``obj`` without the keys that differ between two identical runs (timings, dates)."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj
