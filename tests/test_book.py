import json
from pathlib import Path

from fp_helpers import bench
from fp_helpers.book import markdown_table


def test_markdown_table_escapes_pipes_so_every_row_keeps_its_columns():
    md = markdown_table(["|cos(w, w0)|", "ratio ||a||/||b||"], [[0.5, "x|y"], [1.0, "plain"]]).data
    lines = md.splitlines()
    # every line has exactly the header's number of unescaped cell separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert counts == {3}
    assert "0.500" in lines[2] and "x\\|y" in lines[2]


def test_portable_paths_hide_this_machines_layout(monkeypatch, tmp_path):
    from pathlib import Path

    from fp_helpers.book import portable_paths

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("FP_DATA_DIR", str(tmp_path / "cifar10"))
    text = (f"npz subset at {tmp_path}/x/../cifar10/cifar10_prefix.npz) | loaded from {root}/results/cifar/full "
            f"(made ...) | model at /opt/elsewhere/models/m.pt, ratio 1/2")
    out = portable_paths(text)
    assert out == ("npz subset at $FP_DATA_DIR/cifar10_prefix.npz) | loaded from results/cifar/full (made ...) | "
                   "model at .../models/m.pt, ratio 1/2")


def test_appendix_table_of_execution_times_is_what_results_give():
    """The appendix shows the committed outputs of ``book/execution_statistics.ipynb``: its table of execution
    times must be the one ``results/execution_times.json`` gives now (a chapter re-executed without
    re-executing the appendix left the site showing old times). The appendix's own row is left out: a
    notebook's execution is recorded after it ran, so its table can never show its own latest time."""
    root = Path(__file__).resolve().parents[1]
    nb = json.loads((root / "book" / "execution_statistics.ipynb").read_text())
    shown = None
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            md = "".join(out.get("data", {}).get("text/markdown", []))
            if md.startswith("| notebook | profile |"):
                shown = md
    assert shown is not None, "the appendix has no committed table of execution times"
    expected = bench.appendix_times_log(root).data

    def others(md):
        return [line for line in md.splitlines() if not line.startswith("| execution_statistics |")]

    assert others(shown) == others(expected), (
        "book/execution_statistics.ipynb shows other times than results/execution_times.json: re-execute it "
        "(FP_PROFILE=full python scripts/execute_notebooks.py book/execution_statistics.ipynb)")


def test_every_glued_name_the_prose_cites_is_glued_by_the_same_notebook():
    """A ``{glue:text}`name``` whose name no cell of the notebook glues renders as a missing key (the build fails
    on its warning); this finds it without building, and names the notebook and key."""
    import json
    import re

    role = re.compile(r"\{glue(?::\w+)?\}`([^`]+)`")
    book = Path(__file__).resolve().parents[1] / "book"
    for path in sorted(book.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        glued = {o.get("metadata", {}).get("scrapbook", {}).get("name")
                 for c in nb["cells"] for o in c.get("outputs", [])} - {None}
        cited = {m.split(":")[0] for c in nb["cells"] if c["cell_type"] == "markdown"
                 for m in role.findall("".join(c["source"])) if "::" not in m}
        assert not cited - glued, f"{path.name} cites glue names no cell glues: {sorted(cited - glued)}"
    # the check itself: a cited but unglued name is found
    assert role.findall("x {glue:text}`cf_a:.3f` and {glue}`b`") == ["cf_a:.3f", "b"]
