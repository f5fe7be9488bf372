"""Tests of the built website (_build/html): internal links, and a real browser on every page.

They need a built site, so the unit run (`pytest tests`, `make unit`) does not collect them:

    make linkcheck       # internal links and anchors, pure Python
    make browser-test    # headless Debian Chromium through every page (needs /usr/bin/chromium)

Both build the site first when it is missing or older than its sources. By hand:
``FP_SITE_TESTS=1 pytest tests/site`` (``FP_SITE_DIR`` picks another build, ``FP_CHROMIUM``
another browser, ``FP_SCREENSHOTS`` where the screenshots go).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

if os.environ.get("FP_SITE_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


@dataclass(frozen=True)
class BookConfig:
    """What the site must show, derived from _config.yml and _toc.yml (the one place it is set)."""

    repo_url: str  # https://github.com/ORG/REPO
    branch: str
    path_to_book: str
    colab_url: str
    binderhub_url: str
    notebook_interface: str
    docnames: tuple[str, ...]  # from _toc.yml, e.g. book/theory

    @property
    def org_repo(self) -> str:
        return self.repo_url.split("github.com/", 1)[1].strip("/")

    def source_suffix(self, docname: str) -> str:
        for suffix in (".ipynb", ".md"):
            if (ROOT / self.path_to_book / f"{docname}{suffix}").exists():
                return suffix
        raise FileNotFoundError(f"no source for {docname} under {ROOT / self.path_to_book}")

    def notebook_path(self, docname: str) -> str:
        """The notebook's path inside the repository."""
        return "/".join(p for p in (self.path_to_book.strip("/"), f"{docname}.ipynb") if p)

    def colab_link(self, docname: str) -> str:
        return f"{self.colab_url}/github/{self.org_repo}/blob/{self.branch}/{self.notebook_path(docname)}"

    def binder_link(self, docname: str) -> str:
        ui = {"classic": "tree", "jupyterlab": "lab/tree"}[self.notebook_interface]
        return f"{self.binderhub_url}/v2/gh/{self.org_repo}/{self.branch}?urlpath={ui}/{self.notebook_path(docname)}"


def _toc_docnames(toc: dict) -> list[str]:
    names = [toc["root"]]

    def walk(node):
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                if "file" in child:
                    names.append(child["file"])
                walk(child)

    walk(toc)
    return names


def load_book_config() -> BookConfig:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    repo = cfg["repository"]
    launch = cfg.get("launch_buttons", {})
    return BookConfig(
        repo_url=repo["url"].rstrip("/"),
        branch=repo.get("branch", "main"),
        path_to_book=repo.get("path_to_book", "") or "",
        colab_url=launch.get("colab_url", "").rstrip("/"),
        binderhub_url=launch.get("binderhub_url", "").rstrip("/"),
        notebook_interface=launch.get("notebook_interface", "classic"),
        docnames=tuple(_toc_docnames(toc)),
    )


def site_dir() -> Path:
    return Path(os.environ.get("FP_SITE_DIR", ROOT / "_build" / "html")).resolve()


@pytest.fixture(scope="session")
def book() -> BookConfig:
    return load_book_config()


@pytest.fixture(scope="session")
def site() -> Path:
    path = site_dir()
    if not (path / "index.html").is_file():
        pytest.fail(f"no built site at {path}: run `make book` (or `make linkcheck`, which builds it)")
    return path
