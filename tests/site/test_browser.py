"""A real browser through every page of the built site (headless Debian Chromium, Playwright).

Serves the site on localhost and checks, page by page: no console error, every figure loaded,
MathJax typeset every formula (no raw TeX and no TeX error left), no Markdown table left as text,
the launch (Colab, Binder) and repository buttons point where _config.yml says; then the search
page and the dark-mode switch. A full-page
screenshot of each page lands in _build/browser-test/ (FP_SCREENSHOTS), with report.json.

The test machine has no internet. Requests that leave localhost are blocked and recorded,
except MathJax 3, which the pages load from a CDN: it is served from the pinned copy of
MathJax 3.2.2 in requirements-browser.txt (django-static-mathjax), so that the test sees
formulas typeset by the same MathJax the readers get.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install -r requirements-browser.txt")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FP_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)",
                allow_module_level=True)

SHOTS = Path(os.environ.get("FP_SCREENSHOTS", ROOT / "_build" / "browser-test"))
# Flags that keep Chromium off the network it cannot reach here (else it floods refused connections).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000  # two busy cores: MathJax on a long page can take a while
# The pages load MathJax 3 from a CDN (Sphinx's default mathjax_path); served from the local copy.
MATHJAX_CDN = re.compile(r"/mathjax@3(?:\.[\d.]+)?/(es5/.+?)(?:\?.*)?$")
# A Markdown table left as text (a `|---|---|` rule, whose dashes Sphinx may turn into em dashes).
RAW_TABLE = re.compile(r"\|\s*:?[-\u2013\u2014]+:?\s*\|")
# Raw TeX that MathJax should have replaced, looked for in the visible text outside code.
RAW_TEX = re.compile(r"\$\$|\\begin\{|\\end\{|\\\(|\\\)|\\\[|\\\]|(?<![\w$])\$[^$\s][^$\n]{0,200}?(?<!\s)\$(?![\w$])")


def mathjax_root() -> Path:
    try:
        import mathjax  # django-static-mathjax: MathJax 3.2.2 as static files
    except ImportError:
        pytest.fail("MathJax 3 is missing: pip install -r requirements-browser.txt")
    return Path(mathjax.__file__).parent / "static" / "mathjax"


def is_redirect(path: Path) -> bool:
    """A page that only forwards elsewhere (the root index.html): test_root_redirects checks it."""
    return path.stat().st_size < 1000 and 'http-equiv="Refresh"' in path.read_text(errors="replace")


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the site, relative to its root (theme templates under _static excluded)."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith(("_static/", "_sources/", "_images/"))
                  and not is_redirect(p))


def pytest_generate_tests(metafunc):
    if "page_name" in metafunc.fixturenames:
        site = Path(os.environ.get("FP_SITE_DIR", ROOT / "_build" / "html")).resolve()
        pages = site_pages(site) if site.is_dir() else []
        metafunc.parametrize("page_name", pages or ["<no built site>"])


# ----------------------------------------------------------------------------- fixtures

class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def base_url(site):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def report():
    data: dict = {}
    yield data
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "report.json").write_text(json.dumps(data, indent=1, sort_keys=True))


class Visit:
    """One fresh browser context (empty localStorage), offline but for localhost and MathJax."""

    def __init__(self, browser, base_url: str):
        self.base_url = base_url
        self.console: list[dict] = []
        self.page_errors: list[str] = []
        self.blocked: list[str] = []  # requests that would leave localhost
        self.local_failures: list[str] = []  # local requests that failed or got >= 400
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        self.page.on("requestfailed", self._on_failed)
        self.page.on("response", self._on_response)

    def _local(self, url: str) -> bool:
        return url.startswith(self.base_url)

    def _route(self, route):
        url = route.request.url
        if self._local(url) or url.startswith(("data:", "blob:")):
            return route.continue_()
        m = MATHJAX_CDN.search(urlsplit(url).path)
        if m:
            path = mathjax_root() / m.group(1)
            if path.is_file():
                return route.fulfill(path=str(path))
            return route.fulfill(status=404, body=f"not in the local MathJax copy: {m.group(1)}")
        self.blocked.append(url)
        return route.abort("internetdisconnected")

    def _on_console(self, msg):
        self.console.append({"type": msg.type, "text": msg.text, "url": (msg.location or {}).get("url", "")})

    def _on_failed(self, request):
        if self._local(request.url):
            self.local_failures.append(f"{request.url}: {request.failure}")

    def _on_response(self, response):
        if self._local(response.url) and response.status >= 400:
            self.local_failures.append(f"{response.url}: HTTP {response.status}")

    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions, less the load failures of blocked external URLs."""
        out = [f"uncaught exception: {e}" for e in self.page_errors]
        for m in self.console:
            if m["type"] != "error":
                continue
            if m["text"].startswith("Failed to load resource") and m["url"] in self.blocked:
                continue  # the closed network, not the site (recorded in report.json)
            out.append(f"console.error: {m['text']} (at {m['url'] or '?'})")
        return out

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, base_url):
    v = Visit(browser, base_url)
    yield v
    v.close()


# ----------------------------------------------------------------------------- in-page probes

WAIT_FOR_MATHJAX = """async () => {
  const wanted = document.querySelector('script[src*="mathjax"]') !== null;
  if (!wanted) return {wanted: false};
  const t0 = performance.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (performance.now() - t0 > %d) return {wanted: true, loaded: false};
    await new Promise(r => setTimeout(r, 100));
  }
  await MathJax.startup.promise;
  return {wanted: true, loaded: true, version: MathJax.version};
}""" % TIMEOUT_MS

MATH_STATE = """() => {
  const math = [...document.querySelectorAll('.math')];
  const untypeset = math.filter(el => !el.querySelector('mjx-container'))
                        .map(el => el.textContent.trim().slice(0, 120));
  // TeX errors: a parse error gives <merror>; an undefined macro is shown in red (noundefined).
  const merrors = [];
  if (window.MathJax && MathJax.startup && MathJax.startup.document && MathJax.startup.toMML) {
    for (const item of MathJax.startup.document.math) {
      const mml = MathJax.startup.toMML(item.root);
      if (/<merror|mathcolor="red"/.test(mml)) merrors.push(String(item.math).slice(0, 120));
    }
  }
  return {math: math.length, containers: document.querySelectorAll('mjx-container').length,
          untypeset, merrors};
}"""

# Visible text outside code, math output and hidden elements, one entry per text node.
VISIBLE_TEXT = """() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const out = [];
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility({visibilityProperty: true})) continue;
    if (node.nodeValue.trim()) out.push(node.nodeValue);
  }
  return out;
}"""

LOAD_IMAGES = """async () => {
  const imgs = [...document.images];
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener('load', done); img.addEventListener('error', done); setTimeout(done, 30000);
  })));
  return imgs.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                           width: img.naturalWidth, alt: img.alt || ''}));
}"""

ANCHORS = "() => [...document.querySelectorAll('a[href]')].map(a => a.href)"


def shot_name(page_name: str, suffix: str = "") -> str:
    return page_name.removesuffix(".html").replace("/", "-") + suffix + ".png"


def docname_of(page_name: str) -> str:
    return page_name.removesuffix(".html")


# ----------------------------------------------------------------------------- the tests

def test_every_page(page_name, visit, site, book, report):
    """Load one page: no console error, math typeset, figures loaded, the right buttons."""
    if page_name == "<no built site>":
        pytest.fail(f"no built site at {site}: run `make book` first")
    page = visit.page
    page.goto(visit.base_url + page_name, wait_until="load")
    mj = page.evaluate(WAIT_FOR_MATHJAX)
    images = page.evaluate(LOAD_IMAGES)
    page.wait_for_load_state("networkidle")
    math = page.evaluate(MATH_STATE)
    texts = page.evaluate(VISIBLE_TEXT)
    hrefs = set(page.evaluate(ANCHORS))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / shot_name(page_name)), full_page=True)

    problems = list(visit.errors())
    problems += [f"local request failed: {f}" for f in visit.local_failures]

    # MathJax: loaded where the page has math, every formula typeset, none in error.
    if math["math"] and not mj.get("loaded"):
        problems.append(f"{math['math']} formulas but MathJax never started ({mj})")
    problems += [f"formula not typeset: {t!r}" for t in math["untypeset"]]
    problems += [f"TeX error (MathJax shows it in red): {t!r}" for t in math["merrors"]]
    for text in texts:
        for m in RAW_TEX.finditer(text):
            start = max(0, m.start() - 40)
            problems.append(f"raw TeX {m.group(0)!r} in the visible text: {text[start:m.end() + 40]!r}")
        if RAW_TABLE.search(text):
            problems.append(f"a Markdown table shown as text, not rendered: {text[:120]!r}")

    # Figures: every local image loaded with a size. External ones (the Colab badge) cannot load
    # on this closed network; they are recorded in report.json.
    local_images = [i for i in images if i["src"].startswith(visit.base_url)]
    problems += [f"image did not load: {i['src']} (alt {i['alt']!r})"
                 for i in local_images if not (i["complete"] and i["width"] > 0)]
    problems += [f"image from a non-https URL: {i['src']}"
                 for i in images if not i["src"].startswith((visit.base_url, "https://", "data:"))]

    # Buttons, from _config.yml: repository on every page with a header; Colab and Binder on
    # every notebook page; a Colab badge in the text, if any, must agree with the button.
    docname = docname_of(page_name)
    has_header = page.locator(".article-header-buttons").count() > 0
    if has_header and book.repo_url not in hrefs:
        problems.append(f"no repository button to {book.repo_url}")
    if docname in book.docnames and book.source_suffix(docname) == ".ipynb":
        for kind, want in (("Colab", book.colab_link(docname)), ("Binder", book.binder_link(docname))):
            if want not in hrefs:
                problems.append(f"no {kind} launch button to {want}")
        colab_hrefs = {h for h in hrefs if h.startswith(book.colab_url)}
        stray = colab_hrefs - {book.colab_link(docname)}
        problems += [f"Colab link {h} is not {book.colab_link(docname)}" for h in sorted(stray)]

    report[page_name] = {"problems": problems, "mathjax": mj, "math": math["math"],
                         "typeset": math["containers"], "images": len(images),
                         "local_images": len(local_images), "blocked_external": sorted(set(visit.blocked)),
                         "console": visit.console}
    assert not problems, f"{page_name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)


def _has_math(path) -> bool:
    import json

    cells = json.loads(path.read_text())["cells"]
    return any("$" in "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_the_chapters_have_math_and_figures(book, report):
    """Guard against a vacuous pass: the chapters do show typeset formulas and loaded figures."""
    chapters = [d for d in book.docnames if book.source_suffix(d) == ".ipynb"]
    seen = {d: report.get(f"{d}.html") for d in chapters}
    if any(v is None for v in seen.values()):
        pytest.skip("runs after test_every_page (run the whole module)")
    # every chapter whose markdown has maths shows typeset formulas (an appendix table page may have none)
    with_math = [d for d in chapters if _has_math(ROOT / book.path_to_book / f"{d}.ipynb")]
    assert len(with_math) >= len(chapters) - 1, with_math
    assert all(seen[d]["typeset"] > 0 for d in with_math), {d: seen[d]["typeset"] for d in with_math}
    assert sum(v["local_images"] for v in seen.values()) >= len(chapters), seen


def test_root_redirects_to_the_first_page(visit, book):
    visit.page.goto(visit.base_url + "index.html")
    visit.page.wait_for_url(f"**/{book.docnames[0]}.html")
    assert not visit.errors()


@pytest.mark.parametrize("how", ["url", "search box"])
def test_search_finds_a_word(visit, book, how):
    """The search page finds "purification" on chapter pages, asked directly or from the search box."""
    page = visit.page
    if how == "url":
        page.goto(visit.base_url + "search.html?q=purification")
    else:
        page.goto(visit.base_url + f"{book.docnames[1]}.html")
        page.locator(".search-button__button").first.click()
        box = page.locator("#pst-search-dialog input[name=q]")
        box.fill("purification")
        box.press("Enter")
        page.wait_for_url("**/search.html?q=purification*")
    results = page.locator("#search-results ul.search li")
    results.first.wait_for()
    page.wait_for_function("() => !document.querySelector('#search-progress') || "
                           "/found|finished|matching|Search Results/i.test(document.body.innerText)")
    links = [a.get_attribute("href") or "" for a in page.locator("#search-results ul.search li a").all()]
    assert results.count() > 0 and any("book/" in h for h in links), links
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"search-{how.replace(' ', '-')}.png"), full_page=False)
    assert not visit.errors(), visit.errors()


def test_dark_mode_switch(visit, book):
    """The theme's switch button changes data-theme on <html>, both ways, and the choice persists."""
    page = visit.page
    page.goto(visit.base_url + f"{book.docnames[1]}.html")
    page.wait_for_load_state("networkidle")
    html = page.locator("html")
    first = html.get_attribute("data-theme")
    assert first in ("light", "dark"), first
    button = page.locator(".theme-switch-button").first
    seen = [first]
    for _ in range(3):
        button.click()
        seen.append(html.get_attribute("data-theme"))
        if {"light", "dark"} <= set(seen) and seen[-1] == "dark":
            break
    assert {"light", "dark"} <= set(seen), f"data-theme over clicks: {seen}"
    assert seen[-1] == "dark", seen
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / shot_name(f"{book.docnames[1]}.html", "-dark")), full_page=False)
    page.reload()
    assert html.get_attribute("data-theme") == "dark", "the dark choice did not survive a reload"
    assert not visit.errors(), visit.errors()
