"""Small helpers for the notebooks: glue numbers into the prose, show tables."""

from __future__ import annotations

from typing import Sequence


def glue(name: str, value, display: bool = False) -> None:
    """``myst_nb.glue`` when building the book; a no-op elsewhere (Colab, plain Jupyter, the CLI).

    Returns nothing, so a ``glue`` call at the end of a cell adds no stray output."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], floatfmt: str = ".3f"):
    """A Markdown table (rendered by Jupyter and by the book) from rows of values."""
    from IPython.display import Markdown

    def fmt(v):
        # a literal "|" (|cos|, norms) would end the cell: escape it
        return (format(v, floatfmt) if isinstance(v, float) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return Markdown("\n".join(lines))
