"""The lifecycle's stages, in order. Each is at once a DVC stage (`dvc.yaml`, whose command is
`arm <name> --config ${config}`), an `arm` subcommand, a Prefect task (`flows/lifecycle.py`) and a config
section of the same name (`package` and `evaluate` included). The CLI and the flow read this list; a
test holds `dvc.yaml` to it.

>>> [stage.name for stage in STAGES]
['prepare', 'tokenizer', 'encode', 'pretrain', 'rl', 'evaluate', 'package']
>>> by_name("pretrain").resumable
True
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str       # one line for `arm --help`
    entry: str         # "module:function", called with the config (imported only when the stage runs)
    resumable: bool = False  # a training stage: resumes from its last checkpoint, takes --stop-at-step

    def run(self, cfg, stop_at_step: int | None = None):
        module, function = self.entry.split(":")
        run = getattr(importlib.import_module(module), function)
        if not self.resumable:
            return run(cfg)
        announce_machine(self.name, getattr(getattr(cfg, self.name), "accelerator", "cpu"))
        return run(cfg, stop_at_step=stop_at_step)


def announce_machine(name: str, accelerator: str) -> None:
    """A training stage's first line: the machine measured (CPU model, vector units, matmul speed now),
    so a slow machine or a busy hour is named in the log rather than guessed from the stage's minutes.
    Once per job: Lightning's rank-zero rule (the rank from RANK, LOCAL_RANK, SLURM_PROCID... as each
    process starts) keeps a data-parallel job's other processes quiet."""
    import sys

    from lightning.pytorch.utilities import rank_zero_only

    from arm.machine import describe_machine

    if rank_zero_only.rank == 0:
        print(f"{name}: on {describe_machine(accelerator)}", file=sys.stderr, flush=True)


STAGES = (
    Stage("prepare", "validate the manifest, make splits, text tokenizer, shards", "arm.prepare:prepare"),
    Stage("tokenizer", "train the semantic visual tokenizer (four losses, FSQ)", "arm.tokenizer.stage:tokenizer_stage",
          resumable=True),
    Stage("encode", "visual tokens for every prepared image, written once", "arm.encode:encode_stage"),
    Stage("pretrain", "train the unified autoregressive model on the task mix", "arm.model.stage:pretrain_stage",
          resumable=True),
    Stage("rl", "GRPO preference optimisation of the pretrained model (gen, edit or joint)", "arm.rl.stage:rl_stage",
          resumable=True),
    Stage("evaluate", "score the unified model on the world benchmarks", "arm.evaluate.stage:evaluate_stage"),
    Stage("package", "save the model to the BentoML store and build the Bento", "arm.package:package_stage"),
)
NAMES = tuple(stage.name for stage in STAGES)


def by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; the lifecycle has {list(NAMES)}")
