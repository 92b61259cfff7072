"""Two evaluations side by side: each metric's values, the difference B - A with a 95% bootstrap
interval computed from the per-sample scores, and whether the interval excludes zero. When both scored
the same items (same records, same samples per prompt) the interval is paired: records are resampled
with both their scores (all images of a prompt together), so differences between records cancel;
otherwise the two are resampled independently.

    arm evaluate --compare artifacts/evaluate path/to/other/evaluate
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from arm.evaluate.stats import difference_ci, paired_difference_ci, record_of
from arm.evaluate.summary import WORLD_HEADLINE

HEADLINE = WORLD_HEADLINE


def load_per_sample(folder: str | Path) -> dict[str, list[tuple[str | None, float]]]:
    """{metric key (split-prefixed as in metrics.json): [(item, value)] per sample} from an evaluate
    folder (item None where an older evaluation did not record it)."""
    path = Path(folder) / "per_sample.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} not found; pass folders written by `arm evaluate`")
    values: dict[str, list[tuple[str | None, float]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prefix = "" if row["split"] == "test" else f"{row['split']}/"
            values[prefix + row["metric"]].append((row.get("item"), row["value"]))
    return values


def _paired(a: list[tuple[str | None, float]], b: list[tuple[str | None, float]]):
    """(a values, b values, cluster labels) aligned item by item, or None unless both scored exactly the
    same items. Items `<record id>#<k>` (the k-th image of a prompt) cluster by record."""
    da, db = dict(a), dict(b)
    if None in da or len(da) != len(a) or len(db) != len(b) or da.keys() != db.keys():
        return None
    items = sorted(da)
    return [da[i] for i in items], [db[i] for i in items], [record_of(i) for i in items]


def split_prefixes(keys) -> list[str]:
    """'' for the test split, then 'holdout/' and any other split's prefix found among metric keys."""
    return [""] + sorted({k.split("/", 1)[0] + "/" for k in keys if k.split("/", 1)[1] in HEADLINE})


def compare(a: str | Path, b: str | Path, keys=None, seed: int = 0) -> list[dict]:
    """Each metric both folders scored, B against A with a 95% interval: by default the headline metrics
    of every split (test first, then e.g. `holdout/gen/acc`)."""
    va, vb = load_per_sample(a), load_per_sample(b)
    if keys is None:
        keys = [prefix + key for prefix in split_prefixes(va.keys() & vb.keys()) for key in HEADLINE]
    rows = []
    for key in keys:
        if key not in va or key not in vb:
            continue
        xa, xb = [v for _, v in va[key]], [v for _, v in vb[key]]
        paired = _paired(va[key], vb[key])
        d = (paired_difference_ci(paired[0], paired[1], clusters=paired[2], seed=seed) if paired
             else difference_ci(xa, xb, seed=seed))
        rows.append({"metric": key, "a": sum(xa) / len(xa), "b": sum(xb) / len(xb), "delta": d.value,
                     "low": d.low, "high": d.high, "significant": d.low > 0 or d.high < 0,
                     "paired": paired is not None})
    return rows


def format_table(rows: list[dict], a: str, b: str) -> str:
    lines = [f"| metric | A ({a}) | B ({b}) | B - A | 95% CI | beyond CI |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        kind = "paired" if r.get("paired") else "unpaired"
        lines.append(f"| {r['metric']} | {r['a']:.3f} | {r['b']:.3f} | {r['delta']:+.3f} | "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] {kind} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)


def write_report(path: str | Path, a: str, b: str, rows: list[dict]) -> None:
    """The comparison as a self-contained HTML page (what `arm evaluate --compare A B --report F` writes)."""
    from arm.evaluate.report import render_comparison

    table = {f"A: {a}": {r["metric"]: r for r in rows}, f"B: {b}": {r["metric"]: r for r in rows}}
    note = ("B's value, B - A and its 95% interval (paired when both scored the same items); * marks an "
            "interval that excludes zero.")
    Path(path).write_text(render_comparison({"B against A": table}, [r["metric"] for r in rows],
                                            title="arm evaluate --compare", note=note), encoding="utf-8")
