"""ARM's cross-task synergy experiment on the world: RL on generation only, on editing only, and on both,
from the same pretrained model with the same budget, each scored against the pretrained model.

    python benchmarks/synergy.py                                  # modes gen, edit, joint; seeds 0 and 1
    python benchmarks/synergy.py --seeds 0 --modes joint rl.max_steps=50

Each run goes to `--work` (default artifacts/synergy/<mode>-seed<k>/) and is reused when it is already
there, so an interrupted experiment continues; if the pretrained model has changed since, the script
stops and says so rather than mix runs from two bases. The base and every RL model are evaluated on the test
split (the same records and sampling seed); `arm evaluate --compare` computes each delta's 95% bootstrap
interval from per-sample scores, paired by record. Prints a markdown table per seed and writes
benchmarks/results/synergy.json, the tables to benchmarks/results/synergy.md, and a report page
(`<work>/report.html`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COLUMNS = ("gen/acc", "gen/knowledge_seen", "gen/knowledge_heldout", "edit/g_sc", "edit/g_pq", "edit/g_o", "und/acc")


def lifecycle_run(cfg, mode: str, seed: int, overrides: list[str]) -> bool:
    """Whether `dvc repro` already trained and evaluated this run: same mode and seed, no overrides, and
    an evaluation of the full test split of that model with the configured sampling."""
    import json

    e = cfg.evaluate
    metrics = cfg.stage_dir("evaluate") / "metrics.json"
    if overrides or mode != cfg.rl.mode or seed != cfg.rl.seed or e.model != "rl" or e.limit is not None:
        return False
    if not (cfg.stage_dir("rl") / "metrics.json").exists() or not metrics.exists():
        return False
    return "test" in e.splits and json.loads(metrics.read_text()).get("gen/count", 0) > 0


def check_same_base(work: Path, base_model: Path) -> None:
    """Runs and evaluations in `work` are reused only while the pretrained model they started from is the
    same one: its weights' digest is recorded on the first run and checked on every later one."""
    import hashlib

    digest = hashlib.sha256((base_model / "model.safetensors").read_bytes()).hexdigest()
    record = work / "base.json"
    if record.exists() and json.loads(record.read_text())["sha256"] != digest:
        raise SystemExit(f"synergy: the runs in {work} started from a different pretrained model than "
                         f"{base_model} holds now; move or delete {work} (or pass --work NEW_FOLDER) to run again")
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"model": str(base_model), "sha256": digest}) + "\n")


def table(rows: dict[str, dict], seed: int) -> str:
    """rows: {label: {metric: {"b", "delta", "low", "high", "significant"}}} -> markdown."""
    lines = [f"Seed {seed} (value; for RL rows the change from base and its 95% interval, * = beyond the interval)",
             "", "| model | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for label, metrics in rows.items():
        cells = []
        for key in COLUMNS:
            m = metrics.get(key)
            if m is None:
                cells.append("-")
            elif label == "base":
                cells.append(f"{m['a']:.3f}")
            else:
                star = "*" if m["significant"] else ""
                cells.append(f"{m['b']:.3f} ({m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]{star})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--modes", nargs="+", default=["gen", "edit", "joint"], choices=["gen", "edit", "joint"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--limit", type=int, default=None, help="test records per task (default: all)")
    parser.add_argument("--work", default="artifacts/synergy")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "synergy.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every RL run, e.g. rl.max_steps=50")
    args = parser.parse_args()

    from arm.config import load_config
    from arm.evaluate.compare import compare
    from arm.evaluate.stage import evaluate_stage
    from arm.rl.stage import rl_stage

    work = Path(args.work)
    limit = [f"evaluate.limit={args.limit}"] if args.limit else []
    evaluation = ["evaluate.splits=[test]", "evaluate.tokenizer_images=0", *limit]

    evaluations: dict[str, Path] = {}

    def evaluated(model: Path, name: str) -> Path:
        if name in evaluations:
            return evaluations[name]
        out = work / f"eval-{name}"
        if not (out / "per_sample.jsonl").exists():
            evaluate_stage(load_config(args.config, [*args.overrides, *evaluation, f"evaluate.model={model}",
                                                     f"evaluate.out_dir={out}", f"run.log_dir={work / 'logs' / name}"]))
        return out

    cfg = load_config(args.config, args.overrides)
    check_same_base(work, cfg.model_dir(cfg.rl.init))
    base = evaluated(cfg.model_dir(cfg.rl.init), "base")
    result = {"config": args.config, "overrides": args.overrides, "rl_steps": cfg.rl.max_steps,
              "samples_per_run": cfg.rl.max_steps * cfg.rl.prompts_per_step * cfg.rl.group_size, "runs": {}}
    tables, sections = [], {}
    for seed in args.seeds:
        rows = {"base": {r["metric"]: r for r in compare(base, base)}}
        for mode in args.modes:
            name = f"{mode}-seed{seed}"
            folder = work / name
            if lifecycle_run(cfg, mode, seed, args.overrides):
                # The lifecycle's own RL run is this very configuration: reuse it and its evaluation
                # (the same test records, sampling seed and settings), rather than train it twice.
                folder, evaluations[name] = cfg.stage_dir("rl"), cfg.stage_dir("evaluate")
                print(f"synergy: {name} is the lifecycle's run ({folder}, {evaluations[name]})")
            elif not (folder / "metrics.json").exists():
                started = time.monotonic()
                rl_stage(load_config(args.config, [*args.overrides, f"rl.mode={mode}", f"rl.seed={seed}",
                                                   f"rl.out_dir={folder}", f"run.log_dir={work / 'logs'}"]))
                print(f"synergy: {name} trained in {(time.monotonic() - started) / 60:.1f} min")
            rl_metrics = json.loads((folder / "metrics.json").read_text())
            comparison = compare(base, evaluated(folder, name))
            rows[f"{mode}-only" if mode != "joint" else "joint"] = {r["metric"]: r for r in comparison}
            result["runs"][name] = {"rl": rl_metrics, "compare": comparison}
        tables.append(table(rows, seed))
        sections[f"Seed {seed}"] = rows
        print(tables[-1] + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text("\n\n".join(tables) + "\n")
    from arm.evaluate.report import render_comparison

    report = work / "report.html"
    report.write_text(render_comparison(
        sections, COLUMNS, title="arm RL: the cross-task synergy experiment",
        note=f"Test split, {cfg.evaluate.samples_per_prompt} image(s) per generation prompt. Each RL row: its value, "
             "the change from base, and the change's 95% interval (paired: the same records); * = beyond it."),
        encoding="utf-8")
    print(f"wrote {args.out} and {report}")


if __name__ == "__main__":
    main()
