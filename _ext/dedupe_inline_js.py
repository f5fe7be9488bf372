"""Drop inline <script> blocks that Sphinx 7.4 writes twice into every page.

Sphinx 7.4 registers an inline script added after the builder starts (``app.add_js_file(None,
body=...)``, as sphinx-thebe and sphinx-togglebutton do) once with the file name ``None`` and, when
it prepares writing, again with ``''``; its de-duplication compares the names, so both land in the
page. The second ``const THEBE_JS_URL = ...`` then throws "Identifier 'THEBE_JS_URL' has already been
declared" in the browser console of every page. This keeps the first of each identical script.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    # After the other handlers, so that scripts added per page are de-duplicated too.
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
