"""The skeleton the three training stages share (`tokenizer`, `pretrain`, `rl`): how a stage starts, the
Lightning Trainer it runs (TensorBoard under `run.log_dir`, `last.ckpt` checkpoints stamped with the
run's fingerprint so they resume only the same run, a live bar on a terminal and plain progress lines in
logs, stopping early on request), how it resumes (weights-only), and how it reports its metrics. Each
stage keeps its own data, module and outputs; what is the same is here.

    start_stage(seed)
    stamp = fingerprint(asdict(section), *inputs)
    resume, start_step = resume_point(ckpt_dir, stamp, "pretrain")
    trainer = stage_trainer("pretrain", cfg.run.log_dir, ckpt_dir, stamp=stamp, max_steps=..., checkpoint_every=500)
    fit(trainer, module, loader, val_loader, resume=resume)
    write_metrics(out, "pretrain", metrics)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from arm.checkpoints import CHECKPOINT_TYPES, stamp_checkpoints, stop_at
from arm.memory import keep_freed_memory
from arm.progress import quiet_lightning, training_progress


def start_stage(seed: int) -> None:
    """Quiet Lightning's notices, let each step reuse the last step's memory (arm/memory.py), seed everything."""
    import lightning as L

    quiet_lightning()
    keep_freed_memory()
    L.seed_everything(seed, workers=True, verbose=False)


def stage_trainer(name: str, log_dir: str | Path, ckpt_dir: str | Path, *, stamp: str, max_steps: int,
                  checkpoint_every: int, stop_at_step: int | None = None, callbacks: list | tuple = (),
                  log_name: str | None = None, **trainer_args):
    """A Lightning Trainer for stage `name`: `max_steps` optimiser steps, `last.ckpt` in `ckpt_dir` every
    `checkpoint_every` steps carrying the run's fingerprint `stamp` (`arm.checkpoints`), TensorBoard in
    `log_dir/<log_name or name>`, the learning rate logged, progress shown, and `stop_at_step` stopping
    it as an interruption would. `trainer_args` go to the Trainer
    (devices, strategy, precision, validation cadence)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    on_terminal = sys.stderr.isatty()
    # Always `last.ckpt`, the one file resume_point reads: by default Lightning saves beside another run's
    # `last.ckpt` as `last-v1.ckpt`, and this run could never resume its own checkpoints.
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=checkpoint_every,
                                  save_top_k=0, enable_version_counter=False)
    return L.Trainer(
        max_steps=max_steps, max_epochs=-1,
        logger=TensorBoardLogger(str(log_dir), name=log_name or name, version="", default_hp_metric=False),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), stamp_checkpoints(stamp)]
        + ([] if on_terminal else [training_progress(name)]) + list(callbacks)
        + ([stop_at(stop_at_step)] if stop_at_step else []),
        enable_progress_bar=on_terminal, enable_model_summary=False, num_sanity_val_steps=0, **trainer_args)


def fit(trainer, module, train_loader, val_loader=None, *, resume: Path | None = None) -> None:
    """`trainer.fit`, resuming from checkpoint `resume` (None: from the start). Lightning reads it
    weights-only (tensors, plain containers and arm.checkpoints.CHECKPOINT_TYPES), said explicitly: left
    unsaid, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment would let a checkpoint run code."""
    import torch

    with torch.serialization.safe_globals(list(CHECKPOINT_TYPES)):
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume) if resume else None, weights_only=True)


def metrics_line(name: str, metrics: dict) -> str:
    """`name: key value, ...` with floats to 4 significant digits.

    >>> metrics_line("pretrain", {"steps": 10, "val/loss": 1.234567})
    'pretrain: steps 10, val/loss 1.235'
    """
    return f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in sorted(metrics.items()))


def write_metrics(folder: str | Path | None, name: str, metrics: dict) -> dict:
    """Write `metrics.json` into `folder` (None: the caller saved it with its model) and print the line."""
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(metrics_line(name, metrics), file=sys.stderr)
    return metrics
