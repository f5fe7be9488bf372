from fp_helpers.book import markdown_table


def test_markdown_table_escapes_pipes_so_every_row_keeps_its_columns():
    md = markdown_table(["|cos(w, w0)|", "ratio ||a||/||b||"], [[0.5, "x|y"], [1.0, "plain"]]).data
    lines = md.splitlines()
    # every line has exactly the header's number of unescaped cell separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert counts == {3}
    assert "0.500" in lines[2] and "x\\|y" in lines[2]
