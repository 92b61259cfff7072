"""The headline scores, named once: which keys the report, `arm evaluate --compare`, the flow's Prefect
artifact and the docs' generated tables show first, with their labels, and the markdown table of an
evaluation folder (`metrics.json` and `scores.json`, the DVC metrics committed to git).

>>> print(scores_table({"gen/acc": 0.5, "holdout/gen/acc": 0.25},
...                    {"gen/acc": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 100}}, keys=["gen/acc"]))
| score | test | 95% interval | n | hold-out split |
| --- | --- | --- | --- | --- |
| generation accuracy (`gen/acc`) | 0.500 | [0.400, 0.600] | 100 | 0.250 |
"""

from __future__ import annotations

import json
from pathlib import Path

LABELS = {
    "gen/acc": "generation accuracy",
    "gen/knowledge_seen": "knowledge score, seen things",
    "gen/knowledge_heldout": "knowledge score, held-out things",
    "edit/g_sc": "edit G_SC",
    "edit/g_pq": "edit G_PQ",
    "edit/g_o": "edit G_O",
    "und/acc": "understanding accuracy",
    "und/text_knowledge_seen": "text knowledge, seen things",
    "und/text_knowledge_heldout": "text knowledge, held-out things",
    # a user's data, against its own references
    "gen/agreement": "prompt agreement",
    "gen/agreement_real": "prompt agreement of real images",
    "gen/kid": "KID",
    "edit/target_psnr": "edit PSNR to the target (dB)",
    "edit/kept_psnr": "edit PSNR where the target kept the source (dB)",
    "und/exact_match": "answer exact match",
    "und/token_f1": "answer token F1",
    # the visual tokenizer
    "tok/psnr": "tokenizer PSNR (dB)",
    "tok/exact_recovery": "tokenizer exact scene recovery",
}
WORLD_HEADLINE = ("gen/acc", "gen/knowledge_seen", "gen/knowledge_heldout", "edit/g_sc", "edit/g_pq", "edit/g_o",
                  "und/acc", "und/text_knowledge_seen", "und/text_knowledge_heldout")
REFERENCE_HEADLINE = ("gen/agreement", "gen/agreement_real", "gen/kid", "edit/target_psnr", "edit/kept_psnr",
                      "und/exact_match", "und/token_f1")
HEADLINE = WORLD_HEADLINE + REFERENCE_HEADLINE


def scores_table(metrics: dict, intervals: dict, keys=HEADLINE + ("tok/psnr", "tok/exact_recovery")) -> str:
    """Markdown: each key present in `metrics` with its label, test value, 95% interval and n, and the
    hold-out split's value where the evaluation scored one."""
    rows = ["| score | test | 95% interval | n | hold-out split |", "| --- | --- | --- | --- | --- |"]
    for key in keys:
        if key not in metrics:
            continue
        ci = intervals.get(key)
        span = f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "-"
        holdout = metrics.get(f"holdout/{key}")
        rows.append(f"| {LABELS.get(key, key)} (`{key}`) | {metrics[key]:.3f} | {span} | {ci['n'] if ci else '-'} | "
                    f"{'-' if holdout is None else f'{holdout:.3f}'} |")
    return "\n".join(rows)


def folder_scores_table(folder: str | Path) -> str | None:
    """`scores_table` of an evaluation folder; None when it holds no metrics.json."""
    folder = Path(folder)
    if not (folder / "metrics.json").is_file():
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    intervals = json.loads((folder / "scores.json").read_text()) if (folder / "scores.json").is_file() else {}
    return scores_table(metrics, intervals)
