"""Stage `rl`: GRPO preference optimisation of the pretrained unified model on the world's rewards
(or, on a user's data, on rewards the user names; with neither, the pretrained model is copied
unchanged and the stage says why).

    arm rl --config configs/default.yaml                          # joint: generation and editing
    arm rl --config configs/default.yaml rl.mode=gen rl.out_dir=artifacts/rl-gen

Writes `artifacts/rl/` (or `rl.out_dir`) in the same layout as `pretrain`'s output (a Hugging Face
model folder, `vocab.json`, `tokenizer.json`, `sampling.json` from the config's `sampling` section), so `arm evaluate evaluate.model=rl`, the Pipeline and
the Bento load it the same way, plus `metrics.json`: the mean reward of each task and component over
the first and the last tenth of the run. Checkpoints go to `<artifacts>/checkpoints/rl/` (or under
`rl.out_dir`) and an interrupted run resumes there.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict

import numpy as np
import torch

from arm.checkpoints import fingerprint, resume_point, source_files
from arm.config import ArmConfig
from arm.outputs import clear_outputs, refuse_foreign_files
from arm.precision import warn_if_bf16_is_emulated


def reward_summary(history: list[dict]) -> dict[str, float]:
    """Each reward key's mean over the first and the last tenth of the steps (`reward/t2i/total/first`)."""
    if not history:
        return {}
    tenth = max(1, len(history) // 10)
    out = {}
    for key in sorted({k for h in history for k in h}):
        for name, part in (("first", history[:tenth]), ("last", history[-tenth:])):
            values = [h[key] for h in part if key in h]
            if values:
                out[f"reward/{key}/{name}"] = round(float(np.mean(values)), 6)
    return out


def understanding_replay(cfg: ArmConfig, info, text_tokenizer):
    """Batches of understanding sequences from the training split (the pretraining mix's vqa, caption,
    text and caption-reading shares), one per RL step, no condition dropout."""
    from arm.model.data import RECORDS_OF, UNDERSTANDING_TASKS, TaskMixBatches, TaskRecords
    from arm.model.sequences import DESCRIBE

    if not (cfg.stage_dir("encode") / "summary.json").exists():
        raise ValueError(f"rl.replay_weight > 0 needs the image codes in {cfg.stage_dir('encode')}; run `arm encode` "
                         "or set rl.replay_weight=0")
    records = TaskRecords(cfg.stage_dir("prepare"), cfg.stage_dir("encode"), "train")
    mix = {t: w for t, w in cfg.pretrain.task_mix.items() if t in UNDERSTANDING_TASKS and w > 0
           and records.by_task.get(RECORDS_OF.get(t, t))}
    if not mix:
        print("rl: no understanding records in the training split to replay; rl.replay_weight ignored", file=sys.stderr)
        return None
    describe_ids = text_tokenizer.encode(DESCRIBE, add_special_tokens=False).ids
    return TaskMixBatches(records, info.vocab(), describe_ids, mix, cfg.rl.replay_batch_size, cfg.rl.max_steps,
                          cfg.rl.seed + 1, p_drop=0.0, describe_first=info.describe_first)


def rl_data(cfg: ArmConfig) -> tuple[bool | None, str]:
    """Which records RL runs on: (True, "") the world's, scored by the configured rewards; (False, "")
    a user's, when every weighted reward is the user's own; (None, why) none, when the rewards need the
    world's scene graphs and the data's records of the mode's tasks carry none."""
    from arm.evaluate.samples import SplitData
    from arm.rl.data import TASKS_OF_MODE
    from arm.rl.rewards import world_rewards

    r = cfg.rl
    tasks = TASKS_OF_MODE[r.mode]
    data = SplitData(cfg.stage_dir("prepare"), "train")
    if all(data.task(t, 1) for t in tasks):
        return True, ""
    needs_world = sorted({name for t in tasks for name in world_rewards(r.task_rewards(t))})
    if not needs_world and all(data.reference_task(t, 1) for t in tasks):
        return False, ""
    if needs_world:
        return None, (f"rl.rewards {needs_world} score with the world's scene graphs, which the training "
                      f"{'/'.join(tasks)} records do not carry; name a reward of your own in rl.rewards "
                      "(package.module:function, docs/rl.md) and weigh the built-in ones 0 to run RL on this data")
    return None, f"the training split has no {'/'.join(tasks)} records for rl.mode={r.mode}"


def copy_unchanged(source, out, reason: str, mode: str, sampling) -> dict:
    """The `rl` output when RL cannot run: the pretrained model as it is (sampling as this config says),
    and a metrics.json saying why."""
    from arm.model.saved import write_sampling

    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "metrics.json":
            shutil.copyfile(item, out / item.name)
    write_sampling(out, sampling)
    metrics = {"steps": 0, "mode": mode, "copied_from": str(source), "skipped": reason}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"rl: copying {source} to {out} unchanged: {reason}", file=sys.stderr)
    return metrics


def rl_stage(cfg: ArmConfig, *, stop_at_step: int | None = None) -> dict | None:
    from arm.model.saved import UNIFIED_MODEL_FILES, load_unified_model, save_unified_model
    from arm.rl.data import RLPrompts
    from arm.rl.rewards import task_rewards
    from arm.model.stage import training_strategy
    from arm.rl.train import GRPOModule
    from arm.tokenizer.model import VisualTokenizer
    from arm.training import fit, stage_trainer, start_stage, write_metrics

    # Checkpoints hold the weights after each step's update, which is what resuming needs.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    r = cfg.rl
    started = time.monotonic()
    source, out = cfg.model_dir(r.init), cfg.stage_dir("rl")
    ckpt_dir = out / "checkpoints" if r.out_dir else cfg.artifacts / "checkpoints" / "rl"
    if out.resolve() == source.resolve():
        raise ValueError(f"rl.out_dir {out} is the folder RL starts from; choose another folder")
    written_besides = (ckpt_dir, cfg.run.log_dir)   # the run's checkpoints and logs, when inside `out`
    refuse_foreign_files(out, UNIFIED_MODEL_FILES, "rl", setting="rl.out_dir", kept=written_besides)
    world, reason = rl_data(cfg)
    if world is None:
        clear_outputs(out, UNIFIED_MODEL_FILES, kept=written_besides)
        return copy_unchanged(source, out, reason, r.mode, cfg.sampling)
    start_stage(r.seed)
    model, info, text_tokenizer = load_unified_model(source)
    reference = copy.deepcopy(model) if r.beta > 0 else None   # the KL term's frozen reference
    visual = VisualTokenizer.load(cfg.stage_dir("tokenizer"))
    reward_fn = task_rewards({task: r.task_rewards(task) for task in ("t2i", "edit")})

    stamp = fingerprint(asdict(r), source / "model.safetensors", cfg.stage_dir("prepare") / "summary.json",
                        cfg.stage_dir("encode") / "summary.json",
                        *source_files("rl", "generate.py", "pipeline.py", "world", "model", "training.py"),
                        extra=f"{cfg.pretrain.task_mix} {asdict(cfg.sampling)}")   # rollouts draw at the sampling section
    resume, start_step = resume_point(ckpt_dir, stamp, "rl")
    prompts = RLPrompts(cfg.stage_dir("prepare"), r.mode, r.rollout_prompts, r.max_steps, r.seed,
                        start_step=start_step // r.inner_updates, world=world)
    print(f"rl: {r.mode} from {source}, {r.max_steps} steps x {r.prompts_per_step} prompts x {r.group_size} "
          f"samples{f' (the most varied of {r.rollout_prompts} prompts rolled out)' if r.rollout_prompts > r.prompts_per_step else ''}; prompts available {({k: len(v) for k, v in prompts.prompts.items()})}", file=sys.stderr)
    replay = understanding_replay(cfg, info, text_tokenizer) if r.replay_weight > 0 else None
    total_updates = r.max_steps * r.inner_updates
    module = GRPOModule(model, reference, visual, info, text_tokenizer, reward_fn, r, cfg.sampling, replay)
    module.prompts = prompts   # rl.curriculum draws each step's prompts itself
    loader = torch.utils.data.DataLoader(prompts, batch_size=None, shuffle=False)
    log_name = "rl" if not r.out_dir else f"rl-{out.name}"
    warn_if_bf16_is_emulated(r.precision, r.accelerator, "rl.precision")
    trainer = stage_trainer(
        "rl", cfg.run.log_dir, ckpt_dir, stamp=stamp, max_steps=total_updates,
        checkpoint_every=max(1, r.checkpoint_every_steps * r.inner_updates), stop_at_step=stop_at_step,
        log_name=log_name, accelerator=r.accelerator, devices=r.devices, strategy=training_strategy(r),
        precision=r.precision, use_distributed_sampler=False, log_every_n_steps=1, limit_val_batches=0)
    fit(trainer, module, loader, resume=resume)
    # Every process ends with the same weights and the whole run's rewards: only process 0 writes them.
    if stop_at_step or trainer.global_rank != 0:
        return None
    clear_outputs(out, UNIFIED_MODEL_FILES, kept=written_besides)
    metrics = {"train_minutes": round((time.monotonic() - started) / 60, 2), "steps": r.max_steps,
               "mode": r.mode, "samples": r.max_steps * r.rollout_prompts * r.group_size,
               **reward_summary(module.history)}
    save_unified_model(out, module.model, info, source / "tokenizer.json", cfg.sampling, metrics)
    return write_metrics(None, "rl", metrics)
