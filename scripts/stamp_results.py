"""Give the results committed before fp_helpers recorded provenance what can honestly be known of theirs.

    python scripts/stamp_results.py            # once; files that already have a provenance block are skipped

Nothing is invented. For each file:
- ``commit``, ``profile``, ``device``, ``device_name``, ``fp_helpers``, ``torch``: from the ``environment``
  the run recorded (``commit`` is the git HEAD at run time; uncommitted changes then are unknown: ``dirty``
  is ``null``);
- ``date``: the date of the commit that added the file (``git log --diff-filter=A``); the run itself is no
  later than that, its exact date was not recorded (``date_source`` says so);
- ``code``: the code fingerprint computed now from the fp_helpers sources *at the recorded commit*
  (``code.source`` says so), so that :func:`fp_helpers.provenance.load_result` can tell whether the code
  the result depends on has changed since;
- ``command``: the command that made it where it is known (``results/regimes/run.sh``, the README), else the
  command that recomputes its config with today's code (``command_source`` says which);
- CIFAR model files: the sha256 of each committed ``.pt`` under ``files`` (checked on every load).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fp_helpers import provenance as pv  # noqa: E402

RETROFIT = "scripts/stamp_results.py"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def added(path: Path) -> tuple[str, str]:
    line = git("log", "--diff-filter=A", "--format=%h,%cs", "--", str(path.relative_to(ROOT))).splitlines()[-1]
    commit, date = line.split(",")
    return commit, date


def regime_commands() -> dict[str, str]:
    """results/regimes/<name>.json -> the command run.sh ran for it."""
    out = {}
    for line in (ROOT / "results/regimes/run.sh").read_text().splitlines():
        m = re.match(r"^run (\S+)(.*)$", line.strip())
        if m:
            name, extra = m.group(1), m.group(2).split()
            extra = [a for a in extra if a != "--skip-current"]
            out[name] = pv.CLI + " " + " ".join(["run", "synthetic", "--profile", "full", *extra, "--out",
                                                 f"results/regimes/{name}.json"])
    return out


_SOURCES: dict[str, dict] = {}


def fingerprint_at(experiment: str, commit: str) -> dict:
    if commit not in _SOURCES:
        _SOURCES[commit] = pv.git_sources(commit, ROOT)
    fp = pv.code_fingerprint(experiment, _SOURCES[commit])
    fp["source"] = (f"retrofit ({RETROFIT}): computed from the fp_helpers sources at {commit}, the commit the run "
                    f"recorded; uncommitted changes at run time, if any, are not known")
    return fp


def provenance_for(path: Path, experiment: str, command: str | None, command_source: str) -> dict:
    data = json.loads(path.read_text())
    env = data.get("environment") or {}
    commit_added, date = added(path)
    run_commit = env.get("commit") or commit_added
    return {"format": pv.FORMAT, "experiment": experiment, "command": command, "command_source": command_source,
            "profile": env.get("profile"), "device": env.get("device"), "device_name": env.get("device_name"),
            "fp_helpers": env.get("fp_helpers"), "commit": run_commit, "dirty": None,
            "code": fingerprint_at(experiment, run_commit), "date": date,
            "date_source": f"git: the date of commit {commit_added}, which added this file (the run date itself "
                           f"was not recorded; the run is no later)",
            "torch": env.get("torch"), "python": None, "retrofitted_by": RETROFIT}


def stamp_file(path: Path, experiment: str, command: str | None, command_source: str, files: dict | None = None):
    data = json.loads(path.read_text())
    if "provenance" in data:
        print(f"skip {path.relative_to(ROOT)}: already has provenance")
        return
    data["provenance"] = provenance_for(path, experiment, command, command_source)
    if files is not None:
        data["files"] = files
    pv.write_json_atomic(path, data)
    reasons = pv.stale_reasons(data)
    state = "; ".join(reasons["config"] + reasons["code"]) or "current"
    print(f"stamped {path.relative_to(ROOT)}: {state}")


def stamp_execution_times(path: Path) -> None:
    log = json.loads(path.read_text())
    changed = False
    for key, entry in log.items():
        if "provenance" in entry:
            continue
        commit = entry.get("commit")
        version = re.search(r'__version__ = "([^"]+)"', git("show", f"{commit}:fp_helpers/__init__.py")).group(1)
        entry["config"] = {"FP_PROFILE": entry.get("profile")}
        entry["provenance"] = {
            "format": pv.FORMAT, "experiment": "package", "command": f"FP_PROFILE={entry.get('profile')} python "
            f"scripts/execute_notebooks.py {entry.get('notebook')}", "profile": entry.get("profile"),
            "device": "cpu" if str(entry.get("device", "")).startswith("CPU") else None,
            "device_name": entry.get("device"), "fp_helpers": version, "commit": commit, "dirty": None,
            "code": fingerprint_at("package", commit), "date": entry.get("date"),
            "date_source": "recorded by scripts/execute_notebooks.py (a date, no time)", "torch": None,
            "python": None, "retrofitted_by": RETROFIT}
        changed = True
    if changed:
        pv.write_json_atomic(path, log)
        print(f"stamped {path.relative_to(ROOT)}")


def main() -> int:
    cmds = regime_commands()
    for f in sorted((ROOT / "results/regimes").glob("*.json")):
        stamp_file(f, "synthetic", cmds.get(f.stem), "results/regimes/run.sh")
    lb = ROOT / "results/lower_bounds/full.json"
    stamp_file(lb, "lower-bounds", f"{pv.CLI} run lower-bounds --profile full --out results/lower_bounds/full.json",
               "the README's command for this file")
    folder = ROOT / "results/cifar/full"
    files = {p.name: pv.sha256_file(p) for p in sorted(folder.glob("*.pt"))}
    cmd = (f"{pv.CLI} run cifar --profile full --data ../shared/data/cifar10 --save-dir results/cifar/full "
           f"--out results/cifar/full.json")
    for f in (folder / "result.json", ROOT / "results/cifar/full.json"):
        stamp_file(f, "cifar", cmd, "the README's command for results/cifar/full", files)
    frozen = ROOT / "results/cifar/full_frozen_bn.json"
    stamp_file(frozen, "cifar", f"{pv.CLI} run cifar --profile full --set lowrank_train_bn=false --data "
               f"../shared/data/cifar10 --out results/cifar/full_frozen_bn.json",
               "retrofit: the command that recomputes this run with today's code (batch norm frozen in low-rank "
               "training was the only behaviour when it was made, before the lowrank_train_bn field existed); "
               "the original invocation was not recorded")
    stamp_execution_times(ROOT / "results/execution_times.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
