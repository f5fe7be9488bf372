"""Internal links of the built site: every local page, anchor and asset a page points to exists."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("check_links", ROOT / "scripts" / "check_links.py")
check_links = sys.modules["check_links"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_links)


def test_every_toc_entry_is_a_page(site, book):
    missing = [d for d in book.docnames if not (site / f"{d}.html").is_file()]
    assert not missing, f"pages of _toc.yml missing from {site}: {missing}"


def test_no_broken_internal_links(site):
    problems = check_links.check_site(site)
    assert not problems, f"{len(problems)} broken internal link(s):\n" + "\n".join(problems)


def test_checker_catches_broken_links(tmp_path):
    """The checker itself: a missing page, a missing anchor and a missing image are reported."""
    (tmp_path / "a.html").write_text(
        '<h1 id="top">A</h1><a href="b.html#here">ok</a><a href="#top">ok</a>'
        '<a href="https://example.org/x.html">external, ignored</a>'
        '<a href="c.html">missing page</a><a href="b.html#gone">missing anchor</a>'
        '<img src="_images/none.png">')
    (tmp_path / "b.html").write_text('<p><a name="here"></a></p>')
    problems = check_links.check_site(tmp_path)
    assert len(problems) == 3, problems
    assert any("c.html" in p and "missing file" in p for p in problems)
    assert any("no id 'gone'" in p for p in problems)
    assert any("none.png" in p for p in problems)
