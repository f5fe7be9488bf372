"""Keep the set-up block of every chapter's first code cell in step with ONE template.

    python scripts/sync_setup_cell.py            # rewrite book/*.ipynb where the block differs
    python scripts/sync_setup_cell.py --check    # exit 1 and name the notebooks out of step
    python scripts/sync_setup_cell.py --print    # show the block as the notebooks get it

The block (TEMPLATE below, between its two marker lines) installs ``fp_helpers`` on Colab or
Binder, pinned to the version of this repository (``fp_helpers.__version__``, git tag
``v{version}``; the repository URL comes from _config.yml ``repository.url``), only when it is
missing or another version, and never reinstalls or upgrades PyTorch. It then prints the
version/profile/device banner, and on a Colab runtime without a GPU, how to get one.

Each notebook keeps its own lines after the block (its imports, ``plots.set_style()``, ...).
A first cell written before the markers existed (the old ``find_spec`` install) is migrated:
the old install lines and the notebook's own ``print(runs.banner())`` (the block prints it now)
are replaced by the block. Only the source of that one cell changes; outputs and everything
else in the file are written back byte for byte as they were.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "# --- set-up: the same in every chapter (scripts/sync_setup_cell.py) ---"
END = "# --- end of set-up ---"

# The one template. {version} and {repo} are filled in; everything else is copied as it is.
TEMPLATE = '''\
# Colab, Binder: install the fp_helpers of this page when it is missing or
# another version; --no-deps and no -U, so the installed PyTorch is untouched.
import importlib, importlib.util, os, subprocess, sys
FP_HELPERS = "{version}"
REPO = "{repo}"
try:
    from fp_helpers import __version__ as _have
except ImportError:
    _have = None
if _have != FP_HELPERS:
    _pip = [sys.executable, "-m", "pip", "install", "-q"]
    _url = f"fp_helpers @ git+{{REPO}}@v{{FP_HELPERS}}"
    subprocess.run(_pip + ["--no-deps", _url], check=True)
    _deps = ["numpy", "matplotlib", "seaborn", "tqdm", "pyautoattack"]
    _missing = [m for m in _deps if importlib.util.find_spec(m) is None]
    if _missing:
        subprocess.run(_pip + _missing, check=True)
    for _m in [m for m in sys.modules if m.split(".")[0] == "fp_helpers"]:
        del sys.modules[_m]
    importlib.invalidate_caches()
import torch
from fp_helpers import runs
print(runs.banner())
_colab = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
if _colab and not torch.cuda.is_available():
    print("No GPU here: Runtime > Change runtime type > a GPU (e.g. T4), then")
    print("run the page again. Only the CIFAR-10 chapter needs one.")'''

# The install lines of the first cells written before the template (migrated once).
OLD_INSTALL = re.compile(
    r"\A(?:#[^\n]*\n)*"                                    # leading comment lines
    r"import importlib\.util, subprocess, sys\n"
    r"if importlib\.util\.find_spec\(\"fp_helpers\"\) is None:\n"
    r"(?:[ \t]+[^\n]*\n)+"                                 # the indented pip call
)
OLD_BANNER = re.compile(r"^print\(runs\.banner\(\)\)[ \t]*\n?", re.M)


def package_version() -> str:
    text = (ROOT / "fp_helpers" / "__init__.py").read_text()
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not m:
        raise SystemExit("fp_helpers/__init__.py: no __version__ = \"...\" line")
    return m.group(1)


def repository_url() -> str:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return url.rstrip("/")


def render(version: str | None = None, repo: str | None = None) -> str:
    """The block, markers included, as every notebook's first code cell starts."""
    body = TEMPLATE.format(version=version or package_version(), repo=repo or repository_url())
    return f"{BEGIN}\n{body}\n{END}\n"


def first_code_cell(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            return cell
    raise ValueError("no code cell")


def source_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def synced_source(source: str, block: str) -> str:
    """The first cell's source with its set-up block replaced by ``block``."""
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN]
    if starts:
        begin = starts[0]
        ends = [i for i in range(begin, len(lines)) if lines[i].rstrip("\n") == END]
        if not ends:
            raise ValueError(f"a {BEGIN!r} line without its {END!r} line")
        before, rest = "".join(lines[:begin]), "".join(lines[ends[0] + 1:])
    else:
        before = ""
        m = OLD_INSTALL.match(source)
        rest = source[m.end():] if m else source
        if m:  # migration: the block prints the banner now
            rest = OLD_BANNER.sub("", rest)
    new = before + block + rest.lstrip("\n")
    # Jupyter saves a cell without a final newline: keep the cell's own convention.
    return new if source.endswith("\n") else new.rstrip("\n")


def as_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def sync(path: Path, block: str, write: bool) -> bool:
    """Whether the notebook at ``path`` was (or, without ``write``, would be) changed."""
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    cell = first_code_cell(nb)
    old = source_text(cell)
    new = synced_source(old, block)
    if new == old:
        return False
    if write:
        cell["source"] = as_lines(new) if isinstance(cell.get("source"), list) else new
        path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any is out of step")
    parser.add_argument("--print", action="store_true", help="print the block and exit")
    args = parser.parse_args(argv)
    block = render()
    if args.print:
        print(block, end="")
        return 0
    paths = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    changed = [p for p in paths if sync(p, block, write=not args.check)]
    names = ", ".join(str(p) for p in changed)
    if args.check:
        if changed:
            print(f"set-up cell out of step with scripts/sync_setup_cell.py in {len(changed)} notebook(s): "
                  f"{names}\nrun: python scripts/sync_setup_cell.py", file=sys.stderr)
            return 1
        print(f"set-up cells in step: {len(paths)} notebook(s), fp_helpers {package_version()}")
        return 0
    print(f"rewrote the set-up cell of {len(changed)} notebook(s)" + (f": {names}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
