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
        return run(cfg, stop_at_step=stop_at_step) if self.resumable else run(cfg)


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
