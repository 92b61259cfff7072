"""Pretraining's step time on the real task mix, and what each of its speed-ups is worth.

The first `--steps` batches of the config's training run (the task mix, its lengths and its padding),
each timed (forward, backward, AdamW) two ways, interleaved so the machine's drift hits both alike:

    full          every position's logits, with the padding mask (the plain formulation)
    target        the output head only where a target is predicted, no padding mask on right-padded
                  batches (`arm.model.train.target_loss`, what `arm pretrain` runs)

and each in two processes, glibc's default allocator settings and `arm.memory.keep_freed_memory`
(what the training stages set), with the page faults per step. Rounds alternate the two processes.

    python benchmarks/train_step.py                     # needs the prepare and encode stages' outputs
    python benchmarks/train_step.py --steps 40 --rounds 1

Prints a table and writes benchmarks/results/train_step.json; `projected_train_minutes_*` is the mean
step times `pretrain.max_steps` (validation, sample grids and checkpoints not included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from reporting import report


def measure(config: str, steps: int, overrides: list[str]) -> dict:
    """One process: ms per step of each formulation, per task, and page faults per step."""
    import torch

    from arm.config import load_config
    from arm.model.backbone import build_causal_lm
    from arm.model.data import TaskRecords
    from arm.model.sequences import DESCRIBE
    from arm.model.train import attention_mask_for, next_token_loss, target_loss
    from arm.model.vocab import Vocab
    from arm.model.stage import backbone_kwargs, training_batches
    from arm.text_tokenizer import load_tokenizer

    cfg = load_config(config, overrides)
    p = cfg.pretrain
    prepare_dir, encode_dir = cfg.stage_dir("prepare"), cfg.stage_dir("encode")
    if not (encode_dir / "summary.json").exists():
        raise SystemExit(f"{encode_dir} has no image codes; run `dvc repro encode` (or `arm encode`) first")
    tokenizer = load_tokenizer(prepare_dir / "tokenizer.json")
    encoded = json.loads((encode_dir / "summary.json").read_text())
    vocab = Vocab.from_tokenizer(tokenizer, encoded["codebook_size"])
    describe_ids = tokenizer.encode(DESCRIBE, add_special_tokens=False).ids
    run = training_batches(p, TaskRecords(prepare_dir, encode_dir, "train"), vocab, describe_ids)
    batches = [run[k] for k in range(steps)]
    torch.manual_seed(p.seed)
    model = build_causal_lm(**backbone_kwargs(cfg, vocab, encoded["grid"]))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr * 0.01)
    losses = {
        "full": lambda b: next_token_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                          b["labels"]),
        "target": lambda b: target_loss(model, b["input_ids"], b["labels"], attention_mask_for(b)),
    }

    def step(name, b):
        losses[name](b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:3]:
        for name in losses:
            step(name, b)
    seconds, faults = defaultdict(float), defaultdict(int)
    per_task = defaultdict(lambda: defaultdict(list))
    for k, b in enumerate(batches):
        for name in (list(losses) if k % 2 else list(losses)[::-1]):
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            step(name, b)
            took = time.perf_counter() - start
            seconds[name] += took
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            per_task[name][b["task"]].append(took)
    return {name: {"ms_per_step": 1000 * seconds[name] / steps, "page_faults_per_step": faults[name] / steps,
                   "ms_per_step_by_task": {t: 1000 * sum(v) / len(v) for t, v in sorted(per_task[name].items())}}
            for name in losses}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=60, help="training batches timed per process")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of processes (default and kept memory)")
    parser.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()

    if args.child:
        if args.child == "kept":
            from arm.memory import keep_freed_memory

            assert keep_freed_memory(), "glibc's mallopt is not available here"
        print(json.dumps(measure(args.config, args.steps, args.overrides)))
        return

    runs = defaultdict(list)
    for r in range(args.rounds):
        for memory in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
            print(f"round {r + 1}/{args.rounds}: {memory} memory, {args.steps} steps x 2 formulations", file=sys.stderr)
            out = subprocess.run([sys.executable, __file__, "--child", memory, "--config", args.config,
                                  "--steps", str(args.steps), *args.overrides],
                                 check=True, capture_output=True, text=True).stdout
            runs[memory].append(json.loads(out.strip().splitlines()[-1]))

    from arm.config import load_config

    max_steps = load_config(args.config, args.overrides).pretrain.max_steps
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                    "steps_per_process": args.steps, "rounds": args.rounds, "max_steps": max_steps}
    mean = lambda memory, name, key: sum(run[name][key] for run in runs[memory]) / len(runs[memory])
    for memory in ("default", "kept"):
        for name in ("full", "target"):
            result[f"ms_per_step_{name}_{memory}_memory"] = mean(memory, name, "ms_per_step")
            result[f"page_faults_per_step_{name}_{memory}_memory"] = mean(memory, name, "page_faults_per_step")
        for task in runs[memory][0]["target"]["ms_per_step_by_task"]:
            result[f"ms_per_step_target_{memory}_memory_{task}"] = (
                sum(run["target"]["ms_per_step_by_task"][task] for run in runs[memory]) / len(runs[memory]))
    base, ours = result["ms_per_step_full_default_memory"], result["ms_per_step_target_kept_memory"]
    result["speedup_target_vs_full"] = result["ms_per_step_full_kept_memory"] / result["ms_per_step_target_kept_memory"]
    result["speedup_kept_vs_default_memory"] = (result["ms_per_step_target_default_memory"]
                                                / result["ms_per_step_target_kept_memory"])
    result["speedup_both"] = base / ours
    result["projected_train_minutes_full_default_memory"] = base * max_steps / 60_000
    result["projected_train_minutes_target_kept_memory"] = ours * max_steps / 60_000
    report(result, args.out, width=44)


if __name__ == "__main__":
    main()
