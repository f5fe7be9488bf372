"""Rewrite README.md's generated tables from results/ (between <!-- NAME --> and <!-- /NAME --> markers).

    python scripts/readme_tables.py          # rewrite
    python scripts/readme_tables.py --check  # exit 1 if README.md is not what results/ gives

bench-table: results/bench/*.json (fp_helpers.bench.bench_markdown); notebook-times: results/execution_times.json
(fp_helpers.bench.notebook_times_markdown). tests/test_bench.py checks both against README.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fp_helpers import bench  # noqa: E402

TABLES = {
    "bench-table": lambda: bench.bench_markdown(ROOT / "results" / "bench"),
    "notebook-times": lambda: bench.notebook_times_markdown(ROOT / "results" / "execution_times.json", all_columns=True),
}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pat = re.compile(rf"(<!-- {name} -->\n)(?:.*?\n)?(<!-- /{name} -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> block")
        text = pat.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if "--check" in argv:
        if new != old:
            print("README.md's generated tables are out of date: python scripts/readme_tables.py")
            return 1
        return 0
    path.write_text(new)
    print("README.md tables " + ("rewritten" if new != old else "already current"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
