"""Small helpers for the notebooks: glue numbers into the prose, show tables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence


GLUE_PREFIX = "application/papermill.record/"  # myst-nb's mime prefix for glued values


def glue(name: str, value, display: bool = False) -> None:
    """``myst_nb.glue`` when building the book; a no-op elsewhere (Colab, plain Jupyter, the CLI).

    With ``FP_GLUE=1`` (``scripts/execute_notebooks.py`` sets it) and no myst-nb installed, the value is
    recorded in the output exactly as ``myst_nb.glue`` records it, so notebooks executed on a machine with
    only Jupyter's kernel (a GPU machine, say) still feed the book's ``{glue}`` references.
    Returns nothing, so a ``glue`` call at the end of a cell adds no stray output."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        import os

        if os.environ.get("FP_GLUE") == "1":
            _record(name, value, display)
        return
    _glue(name, value, display=display)


def _record(name: str, value, display: bool) -> None:
    """What ``myst_nb.glue`` (myst-nb 1.x) does: a display bundle under the glue prefix, named in metadata."""
    import IPython
    from IPython.display import display as ipy_display

    bundle, metadata = IPython.core.formatters.format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], floatfmt: str = ".3f"):
    """A Markdown table (rendered by Jupyter and by the book) from rows of values."""
    from IPython.display import Markdown

    def fmt(v):
        # a literal "|" (|cos|, norms) would end the cell: escape it
        return (format(v, floatfmt) if isinstance(v, float) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return Markdown("\n".join(lines))


_ABS_PATH = re.compile(r"(?<![\w.])/[^\s()'\",|;]+")


def portable_paths(text: str) -> str:
    """``text`` with this machine's absolute paths made portable, for outputs a website shows: a path inside
    the repository becomes relative to it, one inside ``$FP_DATA_DIR`` starts with ``$FP_DATA_DIR``, any
    other keeps its last two parts after ``.../``."""
    root = Path(__file__).resolve().parents[1]
    data = os.environ.get("FP_DATA_DIR")
    data = Path(data).resolve() if data else None

    def repl(m):
        p = Path(m.group(0)).resolve()
        for base, prefix in ((root, ""), (data, "$FP_DATA_DIR/")):
            if base is not None and p.is_relative_to(base):
                rel = p.relative_to(base).as_posix()
                return prefix + rel if rel != "." else (prefix.rstrip("/") or ".")
        return ".../" + "/".join(p.parts[-2:])

    return _ABS_PATH.sub(repl, text)
