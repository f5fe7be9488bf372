"""Check the internal links of the built website: no broken page, anchor or local asset.

    python scripts/check_links.py [_build/html]

Reads every HTML page of the site with ``html.parser`` (no browser, no network). For each
``href`` and ``src`` that points inside the site: the target file must exist, and a ``#fragment``
must be an ``id`` (or ``<a name>``) of the target page. External links (``https:``, ``mailto:``,
...) are ignored. Exits 1 and lists every problem as ``page: link -> why``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Attributes that hold a link, by tag. `href` of <link> and `src` of <script>/<img> are local
# assets (style sheets, scripts, figures): a missing one is as broken as a missing page.
LINK_ATTRS = {"a": ("href",), "link": ("href",), "img": ("src",), "script": ("src",),
              "iframe": ("src",), "source": ("src",), "video": ("src", "poster"), "audio": ("src",),
              "object": ("data",), "embed": ("src",)}
# Folders of the build that hold assets and templates, not pages of the book.
NOT_PAGES = ("_static/", "_sources/", "_images/", "_downloads/")


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    links: list[tuple[str, str, int]] = field(default_factory=list)  # (tag, url, line)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if d.get("id"):
            self.page.ids.add(d["id"])
        if tag == "a" and d.get("name"):
            self.page.ids.add(d["name"])
        for attr in LINK_ATTRS.get(tag, ()):
            value = d.get(attr)
            if value is not None:
                self.page.links.append((tag, value.strip(), self.getpos()[0]))

    handle_startendtag = handle_starttag


def parse(path: Path) -> Page:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.page


def site_pages(site: Path) -> list[Path]:
    """Every HTML page of the book (not the theme's templates under ``_static``)."""
    return sorted(p for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith(NOT_PAGES))


def is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc) or url.startswith("//")


def check_site(site: Path) -> list[str]:
    """All broken internal links of the site at ``site``, one readable line each."""
    site = site.resolve()
    pages = site_pages(site)
    if not pages:
        return [f"{site}: no HTML pages (build the book first: make book)"]
    parsed: dict[Path, Page] = {}

    def page_of(path: Path) -> Page:
        if path not in parsed:
            parsed[path] = parse(path)
        return parsed[path]

    problems = []
    for page_path in pages:
        rel = page_path.relative_to(site).as_posix()
        for tag, url, line in page_of(page_path).links:
            if not url or url.startswith(("javascript:", "data:", "mailto:", "tel:")) or is_external(url):
                continue
            parts = urlsplit(url)
            target_path = page_path
            if parts.path:
                target_path = (page_path.parent / unquote(parts.path)).resolve()
                if parts.path.endswith("/"):
                    target_path = target_path / "index.html"
                try:
                    target_path.relative_to(site)
                except ValueError:
                    problems.append(f"{rel}:{line}: <{tag}> {url} -> points outside the site")
                    continue
                if not target_path.is_file():
                    problems.append(f"{rel}:{line}: <{tag}> {url} -> missing file "
                                    f"{target_path.relative_to(site).as_posix()}")
                    continue
            fragment = unquote(parts.fragment)
            if fragment and target_path.suffix == ".html" and fragment not in page_of(target_path).ids:
                where = "" if target_path == page_path else f" of {target_path.relative_to(site).as_posix()}"
                problems.append(f"{rel}:{line}: <{tag}> {url} -> no id {fragment!r}{where}")
    return problems


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "_build/html")
    problems = check_site(site)
    n = len(site_pages(site)) if site.is_dir() else 0
    if problems:
        print(f"{len(problems)} broken internal link(s) in {n} page(s) of {site}:")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print(f"internal links OK: {n} pages of {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
