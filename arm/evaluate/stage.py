"""Stage `evaluate`: the world benchmarks on the trained unified model, for every configured split.

    arm evaluate --config configs/default.yaml
    arm evaluate --config configs/default.yaml evaluate.model=rl evaluate.limit=100

Writes `artifacts/evaluate/`:
- `metrics.json` (DVC metrics): the tokenizer's fidelity on test images (`tok/psnr`, `tok/ssim`,
  `tok/exact_recovery`, `tok/code_usage`, `tok/rfid`); the unified model's flat keys, the test split unprefixed (`gen/acc`, `edit/g_o`, `und/acc`,
  per group `gen/two`, `edit/move/g_o`, `und/color`), other splits prefixed (`holdout/gen/acc`);
- `scores.json`: every metric with its 95% bootstrap interval and sample count;
- `plots/<split>_<task>.csv` (DVC plots): one row per category, edit type or question type;
- `per_sample.jsonl`: every sample's score, from which `arm evaluate --compare` bootstraps differences;
- `report.html`: self-contained (inline CSS and images), the tables and the sample grids;
and the same grids to TensorBoard under `evaluate/<split>/`.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from arm.config import ArmConfig


def write_plots(folder: Path, split: str, estimates: dict) -> None:
    """Per-group rows for DVC plots: gen (category, acc), edit (type, g_sc, g_pq, g_o), und (type, acc)."""
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, dict[str, float]]] = {"gen": {}, "edit": {}, "und": {}}
    for key, est in estimates.items():
        parts = key.split("/")
        if parts[0] not in groups or len(parts) < 2 or parts[1] in ("acc", "g_sc", "g_pq", "g_o") \
                or parts[1].startswith(("knowledge", "text_knowledge")):
            continue
        metric = parts[2] if len(parts) == 3 else "acc"
        row = groups[parts[0]].setdefault(parts[1], {"n": est.n})
        row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = est.value, est.low, est.high
    for task, rows in groups.items():
        if not rows:
            continue
        columns = ["group"] + sorted({c for r in rows.values() for c in r})
        with open(folder / f"{split}_{task}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for group, row in sorted(rows.items()):
                writer.writerow({"group": group, **{k: round(v, 6) for k, v in row.items()}})


def evaluate_stage(cfg: ArmConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    from arm.evaluate.report import render_report, write_tensorboard
    from arm.evaluate.world import EvalSettings, evaluate_split, summarise
    from arm.pipeline import Guidance, Pipeline

    e = cfg.evaluate
    started = time.monotonic()
    pipe = Pipeline.load(cfg.model_dir(e.model), cfg.stage_dir("tokenizer"), batch_size=e.batch_size)
    settings = EvalSettings(limit=e.limit, samples_per_prompt=e.samples_per_prompt,
                            guidance=Guidance(e.guidance_scale, e.image_guidance_scale), temperature=e.temperature,
                            top_k=e.top_k, seed=e.seed, generation_guidance_scale=e.generation_guidance_scale)
    out = cfg.stage_dir("evaluate")
    metrics: dict[str, float] = {}
    intervals: dict[str, dict] = {}
    report_parts = {}
    per_sample = []
    writer = SummaryWriter(str(Path(cfg.run.log_dir) / "evaluate"))
    for split in e.splits:
        split_started = time.monotonic()
        scores, samples = evaluate_split(pipe, cfg.stage_dir("prepare"), split, settings)
        prefix = "" if split == "test" else f"{split}/"
        metrics.update({f"{prefix}{k}": v for k, v in scores.items()})
        estimates = summarise(samples, e.seed)
        intervals.update({f"{prefix}{k}": est.to_dict() for k, est in estimates.items()})
        write_plots(out / "plots", split, estimates)
        report_parts[split] = (estimates, samples)
        per_sample += [{"split": split, **row} for row in samples.scores]
        write_tensorboard(writer, samples, 0, prefix=f"evaluate/{split}")
        print(f"evaluate: {split} in {time.monotonic() - split_started:.0f}s: " + ", ".join(
            f"{k} {est.value:.3f} [{est.low:.3f}, {est.high:.3f}]" for k, est in estimates.items()
            if k in ("gen/acc", "edit/g_o", "und/acc")), file=sys.stderr)
    if e.tokenizer_images > 0:
        from arm.evaluate.fidelity import tokenizer_fidelity
        from arm.evaluate.world import SplitData

        data = SplitData(cfg.stage_dir("prepare"), "test")
        scenes = data.scenes_by_image()
        keys = data.keys[:e.tokenizer_images]
        fidelity = tokenizer_fidelity(pipe.visual, data.images(keys), [scenes.get(k) for k in keys], with_rfid=e.rfid)
        metrics.update(fidelity)
        print("evaluate: tokenizer " + ", ".join(f"{k} {v:.4g}" for k, v in fidelity.items()), file=sys.stderr)
    metrics["minutes"] = round((time.monotonic() - started) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (out / "scores.json").write_text(json.dumps(intervals, indent=2, sort_keys=True) + "\n")
    with open(out / "per_sample.jsonl", "w", encoding="utf-8") as f:  # for `arm evaluate --compare`
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in per_sample)
    meta = {"model": str(cfg.model_dir(e.model)), "tokenizer": str(cfg.stage_dir("tokenizer")),
            "guidance": f"generation {settings.generation_guidance.scale}; editing: text {e.guidance_scale}, "
                        f"image {e.image_guidance_scale}",
            "sampling": f"temperature {e.temperature}, top-k {e.top_k or 'off'}, seed {e.seed}",
            "samples per prompt": e.samples_per_prompt, "intervals": "95% bootstrap, 1,000 resamples"}
    (out / "report.html").write_text(render_report(report_parts, "arm evaluation: world benchmarks", meta),
                                     encoding="utf-8")
    writer.close()
    print(f"evaluate: wrote {out / 'metrics.json'} and {out / 'report.html'}", file=sys.stderr)
    return metrics
