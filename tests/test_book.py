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
