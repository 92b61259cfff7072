"""Two evaluations side by side: each metric's values, the difference B - A with a 95% bootstrap
interval computed from the per-sample scores, and whether the interval excludes zero.

    arm evaluate --compare artifacts/evaluate path/to/other/evaluate
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from arm.evaluate.stats import difference_ci

HEADLINE = ("gen/acc", "gen/knowledge_seen", "gen/knowledge_heldout", "edit/g_sc", "edit/g_pq", "edit/g_o",
            "und/acc", "und/text_knowledge_seen", "und/text_knowledge_heldout")


def load_per_sample(folder: str | Path) -> dict[str, list[float]]:
    """{metric key (split-prefixed as in metrics.json): per-sample values} from an evaluate folder."""
    path = Path(folder) / "per_sample.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} not found; pass folders written by `arm evaluate`")
    values: dict[str, list[float]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prefix = "" if row["split"] == "test" else f"{row['split']}/"
            values[prefix + row["metric"]].append(row["value"])
    return values


def compare(a: str | Path, b: str | Path, keys=HEADLINE, seed: int = 0) -> list[dict]:
    va, vb = load_per_sample(a), load_per_sample(b)
    rows = []
    for key in keys:
        if key not in va or key not in vb:
            continue
        d = difference_ci(va[key], vb[key], seed=seed)
        rows.append({"metric": key, "a": sum(va[key]) / len(va[key]), "b": sum(vb[key]) / len(vb[key]),
                     "delta": d.value, "low": d.low, "high": d.high, "significant": d.low > 0 or d.high < 0})
    return rows


def format_table(rows: list[dict], a: str, b: str) -> str:
    lines = [f"| metric | A ({a}) | B ({b}) | B - A | 95% CI | beyond CI |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['a']:.3f} | {r['b']:.3f} | {r['delta']:+.3f} | "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)
