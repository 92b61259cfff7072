"""Stage `evaluate`: the trained unified model on every configured split. Records of the world are
scored by its verifier (`arm.evaluate.world`); every other record (a user's data) against its own
references (`arm.evaluate.references`), its prompts by an agreement judge trained here on the training
split and by FID and KID (`arm.evaluate.agreement`): the metrics follow what the data carries.

    arm evaluate --config configs/default.yaml
    arm evaluate --config configs/default.yaml evaluate.model=rl evaluate.limit=100

Writes `artifacts/evaluate/`:
- `metrics.json` (DVC metrics): the tokenizer's fidelity on test images (`tok/psnr`, `tok/ssim`,
  `tok/exact_recovery`, `tok/code_usage`, `tok/rfid`); the unified model's flat keys, the test split unprefixed (`gen/acc`, `edit/g_o`, `und/acc`,
  per group `gen/two`, `edit/move/g_o`, `und/color`), other splits prefixed (`holdout/gen/acc`); on a
  user's data `gen/agreement`, `gen/agreement_real`, `gen/fid`, `gen/kid`, `edit/target_psnr`,
  `edit/kept_psnr`, `und/exact_match`, `und/token_f1`;
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
from arm.outputs import refuse_foreign_files

OUTPUTS = ("metrics.json", "scores.json", "per_sample.jsonl", "report.html", "plots")


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


def agreement_judge(cfg: ArmConfig, splits: dict):
    """The judge of whether a generated image shows its prompt (`arm.evaluate.agreement`), trained on the
    training split's text-to-image pairs that the world's verifier does not score; None when no
    evaluated split has such prompts (the world alone) or `evaluate.agreement_train_images` is 0."""
    from arm.evaluate.agreement import fit_judge
    from arm.evaluate.samples import SplitData

    limit = cfg.evaluate.agreement_train_images
    prompts = [r["text"] for data in splits.values() for r in data.reference_task("t2i", cfg.evaluate.limit)]
    if not prompts or limit <= 0:
        return None
    train = SplitData(cfg.stage_dir("prepare"), "train")
    pairs = train.reference_task("t2i", limit)
    if len(pairs) < 2:
        print("evaluate: no prompt agreement: the training split has fewer than 2 text-to-image pairs to train "
              "its judge on", file=sys.stderr)
        return None
    started = time.monotonic()
    judge = fit_judge(train.images([r["image"] for r in pairs]), [r["text"] for r in pairs], prompts, cfg.evaluate.seed)
    judge.trained_on = len(pairs)
    print(f"evaluate: prompt agreement by a {judge.kind} judge trained on {len(pairs)} training pairs in "
          f"{time.monotonic() - started:.0f}s", file=sys.stderr)
    return judge


def generated_image_scores(data, samples, judge, seed: int, limit: int | None) -> dict:
    """For a split's prompts outside the world: FID and KID of the generated images against the split's
    images of those prompts (`gen/fid`, `gen/kid` with `kid_low`, `kid_high`), and the judge's agreement
    on those real images (`gen/agreement_real`: the ceiling a generator can reach under the judge), also
    added to `samples` per record for its interval."""
    import numpy as np

    from arm.evaluate.agreement import fid_and_kid

    records = data.reference_task("t2i", limit)
    generated = [s["image"] for s in samples.generation if s.get("reference")]
    if not records or not generated:
        return {}
    real = data.images([r["image"] for r in records])
    out = {}
    if judge is not None:
        agreed = judge.agrees(real, [r["text"] for r in records])
        for r, ok in zip(records, agreed):
            samples.add("gen/agreement_real", None, ok, r["id"])
        out["gen/agreement_real"] = float(np.mean(agreed))
    fidelity = fid_and_kid(real, np.stack(generated), seed)
    if fidelity:
        out.update({"gen/fid": fidelity["fid"], "gen/kid": fidelity["kid"], "kid_low": fidelity["kid_low"],
                    "kid_high": fidelity["kid_high"], "n_generated": fidelity["n_generated"]})
    return out


def evaluate_stage(cfg: ArmConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    from arm.evaluate.report import render_report, write_tensorboard
    from arm.evaluate.stats import Estimate
    from arm.evaluate.samples import EvalSettings, Samples, SplitData, summarise
    from arm.evaluate.world import evaluate_all
    from arm.pipeline import Pipeline

    e = cfg.evaluate
    out = cfg.stage_dir("evaluate")
    # It writes over files of its outputs' names: in another stage's folder they would be lost.
    refuse_foreign_files(out, OUTPUTS, "evaluate", setting="evaluate.out_dir", kept=[cfg.run.log_dir])
    started = time.monotonic()
    pipe = Pipeline.load(cfg.model_dir(e.model), cfg.stage_dir("tokenizer"), batch_size=e.batch_size)
    settings = EvalSettings(limit=e.limit, samples_per_prompt=e.samples_per_prompt, seed=e.seed)
    s = pipe.sampling  # the model's own, from its sampling.json
    metrics: dict[str, float] = {}
    intervals: dict[str, dict] = {}
    report_parts = {}
    per_sample = []
    writer = SummaryWriter(str(Path(cfg.run.log_dir) / "evaluate"))
    splits = {split: SplitData(cfg.stage_dir("prepare"), split) for split in e.splits}
    judge = agreement_judge(cfg, splits)
    for split, data in splits.items():
        split_started = time.monotonic()
        samples = Samples()
        scores = evaluate_all(pipe, data, settings, samples, judge)
        fidelity = generated_image_scores(data, samples, judge, e.seed, e.limit)
        scores.update({k: fidelity[k] for k in ("gen/fid", "gen/kid", "gen/agreement_real") if k in fidelity})
        prefix = "" if split == "test" else f"{split}/"
        metrics.update({f"{prefix}{k}": v for k, v in scores.items()})
        estimates = summarise(samples, e.seed)
        if "gen/kid" in fidelity:  # a set-level score: its interval comes from its subsets, not from samples
            estimates["gen/kid"] = Estimate(fidelity["gen/kid"], fidelity["kid_low"], fidelity["kid_high"],
                                            fidelity["n_generated"])
        intervals.update({f"{prefix}{k}": est.to_dict() for k, est in estimates.items()})
        write_plots(out / "plots", split, estimates)
        report_parts[split] = (estimates, samples)
        per_sample += [{"split": split, **row} for row in samples.scores]
        write_tensorboard(writer, samples, 0, prefix=f"evaluate/{split}")
        print(f"evaluate: {split} in {time.monotonic() - split_started:.0f}s: " + ", ".join(
            f"{k} {est.value:.3f} [{est.low:.3f}, {est.high:.3f}]" for k, est in estimates.items()
            if k in ("gen/acc", "edit/g_o", "und/acc", "gen/agreement", "gen/kid", "edit/target_psnr", "und/exact_match")),
            file=sys.stderr)
    if e.tokenizer_images > 0:
        from arm.evaluate.fidelity import tokenizer_fidelity

        data = splits.get("test") or SplitData(cfg.stage_dir("prepare"), "test")
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
            "guidance": f"generation {s.generation_guidance}; editing: text {s.edit_guidance}, "
                        f"image {s.edit_image_guidance}",
            "sampling": f"the model's sampling.json: temperature {s.temperature}, top-k {s.top_k or 'off'}, "
                        f"top-p {s.top_p}; image i drawn with seed {e.seed} + i",
            "samples per prompt": e.samples_per_prompt, "intervals": "95% bootstrap, 1,000 resamples"}
    if judge is not None:
        meta["prompt agreement"] = f"{judge.kind} judge trained on {judge.trained_on} training pairs (docs/evaluation.md)"
    title = "arm evaluation" + (": world benchmarks" if not any(d.reference_records for d in splits.values()) else "")
    (out / "report.html").write_text(render_report(report_parts, title, meta), encoding="utf-8")
    writer.close()
    print(f"evaluate: wrote {out / 'metrics.json'} and {out / 'report.html'}", file=sys.stderr)
    return metrics
