"""Does the RL stage pay for itself? The lifecycle's RL run against its pretrained base and against the
honest control: the same wall-clock minutes spent continuing pretraining from that base.

    python benchmarks/rl_control.py                        # pretraining seed 0: the lifecycle's base and RL run
    python benchmarks/rl_control.py --pretrain-seeds 0 1 2 # two more bases, each pretrained here (~22 min each)

For each pretraining seed k:
- the base: seed 0 is the lifecycle's `artifacts/pretrain`; another seed is pretrained with
  `pretrain.seed=k` into `<work>/seed<k>/artifacts/pretrain` (the lifecycle's prepared data, codes and
  tokenizer linked in);
- RL: the configured `rl` section from that base (seed 0 reuses the lifecycle's run and its evaluation when
  `dvc repro` made them with this very configuration, as `benchmarks/synergy.py` does);
- the control: pretraining continued from the base (`pretrain.pretrained_path`) for as many steps as
  the base's own training pace fits into RL's measured minutes, at the learning rate the base ended on
  (`pretrain.lr x pretrain.min_lr_ratio`, constant) and on batches of another seed;
- each model is scored on the test and hold-out splits (`evaluate.splits`), and `arm evaluate --compare`
  pairs them record by record: RL - base, control - base and RL - control, with 95% intervals.

Runs already in `<work>` are reused, so an interrupted run continues. Prints a markdown table per seed and
writes benchmarks/results/rl_control.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synergy import lifecycle_run

COLUMNS = ("gen/acc", "edit/g_sc", "edit/g_o", "und/acc", "holdout/gen/acc", "holdout/edit/g_o")
LINKED = ("prepare", "encode", "tokenizer")   # what a run's own artifacts folder borrows from the lifecycle's


def artifacts_folder(folder: Path, lifecycle: Path) -> Path:
    """An artifacts folder of a run's own, with the lifecycle's prepared data, codes and tokenizer linked in."""
    folder.mkdir(parents=True, exist_ok=True)
    for stage in LINKED:
        link = folder / stage
        if not link.exists():
            link.symlink_to((lifecycle / stage).resolve(), target_is_directory=True)
    return folder


def row(comparison: list[dict]) -> dict:
    return {r["metric"]: r for r in comparison if r["metric"] in COLUMNS}


def table(seed: int, values: dict[str, dict], deltas: dict[str, dict]) -> str:
    lines = [f"Pretraining seed {seed} (test split unless named; differences paired, 95% interval, * = beyond it)",
             "", "| | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for label, metrics in values.items():
        lines.append(f"| {label} | " + " | ".join(f"{metrics[k]:.3f}" if k in metrics else "-" for k in COLUMNS) + " |")
    for label, metrics in deltas.items():
        cells = []
        for key in COLUMNS:
            m = metrics.get(key)
            cells.append("-" if m is None else
                         f"{m['delta']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]{'*' if m['significant'] else ''}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--pretrain-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--work", default="artifacts/rl-control")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rl_control.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every stage run here")
    args = parser.parse_args()

    from arm.config import load_config
    from arm.evaluate.compare import compare
    from arm.evaluate.stage import evaluate_stage
    from arm.model.stage import pretrain_stage
    from arm.rl.stage import rl_stage

    work = Path(args.work)
    cfg = load_config(args.config, args.overrides)
    lifecycle = cfg.artifacts
    evaluation = ["evaluate.splits=[test, holdout]", "evaluate.tokenizer_images=0"]

    def evaluated(model: Path, out: Path) -> Path:
        if not (out / "per_sample.jsonl").exists():
            evaluate_stage(load_config(args.config, [*args.overrides, *evaluation, f"evaluate.model={model}",
                                                     f"evaluate.out_dir={out}", f"run.log_dir={work / 'logs'}"]))
        return out

    def pretrained(folder: Path, overrides: list[str]) -> tuple[Path, dict]:
        """Train `pretrain` into <folder>/pretrain (unless it is there) -> the model folder and its metrics."""
        artifacts_folder(folder, lifecycle)
        model = folder / "pretrain"
        if not (model / "metrics.json").exists():
            pretrain_stage(load_config(args.config, [*args.overrides, f"run.artifacts_dir={folder}",
                                                     f"run.log_dir={work / 'logs'}", *overrides]))
        return model, json.loads((model / "metrics.json").read_text())

    result = {"config": args.config, "overrides": args.overrides, "seeds": {}}
    tables = []
    for seed in args.pretrain_seeds:
        here = work / f"seed{seed}"
        if seed == cfg.pretrain.seed:
            base, base_metrics = cfg.stage_dir("pretrain"), json.loads((cfg.stage_dir("pretrain") / "metrics.json").read_text())
        else:
            base, base_metrics = pretrained(here / "artifacts", [f"pretrain.seed={seed}"])
        # RL: the lifecycle's own run when it is this configuration from this base, else one of ours.
        if seed == cfg.pretrain.seed and lifecycle_run(cfg, cfg.rl.mode, cfg.rl.seed, args.overrides):
            rl_model, rl_eval = cfg.stage_dir("rl"), cfg.stage_dir("evaluate")
        else:
            rl_model, rl_eval = here / "rl", here / "eval-rl"
            if not (rl_model / "metrics.json").exists():
                rl_stage(load_config(args.config, [*args.overrides, f"rl.init={base}", f"rl.out_dir={rl_model}",
                                                   f"run.log_dir={work / 'logs'}"]))
        rl_minutes = json.loads((rl_model / "metrics.json").read_text())["train_minutes"]
        # The control: as many steps as the base's own pace fits into RL's minutes, at its final learning rate.
        minutes_per_step = base_metrics["train_minutes"] / base_metrics["steps"]
        steps = max(1, round(rl_minutes / minutes_per_step))
        p = cfg.pretrain
        started = time.monotonic()
        control, control_metrics = pretrained(here / "control", [
            f"pretrain.pretrained_path={base}", f"pretrain.max_steps={steps}", f"pretrain.lr={p.lr * p.min_lr_ratio}",
            "pretrain.schedule=constant", f"pretrain.warmup_steps={min(p.warmup_steps, 10)}",
            f"pretrain.seed={seed + 1000}", "pretrain.sample_every_steps=0", f"pretrain.val_every_steps={steps + 1}"])
        print(f"rl_control: seed {seed}: RL {rl_minutes:.1f} min; control {steps} steps, "
              f"{control_metrics['train_minutes']:.1f} min ({(time.monotonic() - started) / 60:.1f} here)")
        base_eval = evaluated(base, here / "eval-base")
        rl_eval = evaluated(rl_model, rl_eval)   # the lifecycle's evaluation is there already
        control_eval = evaluated(control, here / "eval-control")
        comparisons = {"RL - base": compare(base_eval, rl_eval), "control - base": compare(base_eval, control_eval),
                       "RL - control": compare(control_eval, rl_eval)}
        values = {"base": {k: m["a"] for k, m in row(comparisons["RL - base"]).items()},
                  "RL": {k: m["b"] for k, m in row(comparisons["RL - base"]).items()},
                  "control": {k: m["b"] for k, m in row(comparisons["control - base"]).items()}}
        tables.append(table(seed, values, {label: row(c) for label, c in comparisons.items()}))
        print(tables[-1] + "\n")
        result["seeds"][str(seed)] = {"base": str(base), "rl": str(rl_model), "rl_minutes": rl_minutes,
                                      "control_steps": steps, "control_minutes": control_metrics["train_minutes"],
                                      "compare": comparisons}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text("\n\n".join(tables) + "\n")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
