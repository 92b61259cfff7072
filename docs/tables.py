"""Regenerate the docs' table of the default's scores from the committed DVC metrics
(`artifacts/evaluate/metrics.json` and `scores.json`, written by `dvc repro` and committed to git).

    python docs/tables.py            # rewrite the table between the markers in README.md and docs/results.md
    python docs/tables.py --check    # exit 1 where a table differs from the committed metrics (a test runs it)

The table sits between `<!-- default-scores:begin ... -->` and `<!-- default-scores:end -->`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arm.evaluate.summary import folder_scores_table  # noqa: E402

FILES = ("README.md", "docs/results.md")
BLOCK = re.compile(r"(<!-- default-scores:begin[^\n]*-->\n)(.*?)(<!-- default-scores:end -->)", re.S)


def regenerate(text: str, table: str) -> str:
    if not BLOCK.search(text):
        raise ValueError("no <!-- default-scores:begin ... --> / <!-- default-scores:end --> markers")
    return BLOCK.sub(lambda m: m.group(1) + table + "\n" + m.group(3), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    parser.add_argument("--metrics", default=str(ROOT / "artifacts" / "evaluate"), help="the evaluation folder")
    args = parser.parse_args(argv)
    table = folder_scores_table(args.metrics)
    if table is None:
        print(f"no metrics.json in {args.metrics}; run `dvc repro` (or check out the committed metrics)")
        return 1
    stale = []
    for name in FILES:
        path = ROOT / name
        old = path.read_text()
        new = regenerate(old, table)
        if new != old:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"tables differ from {args.metrics}: {stale}; run `python docs/tables.py`")
        return 1
    print(("rewrote " + ", ".join(stale)) if stale and not args.check else "tables match the committed metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
