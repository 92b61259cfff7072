"""Rewards for RL on the world: pluggable functions with one signature, weighted in config.

    reward(sample: RewardSample) -> float in [0, 1]

Built in:
- `instruction`: the fraction of the prompt's constraint atoms (generation) or of the instruction's
  atoms (editing) that the verifier finds met in the image;
- `consistency` (editing): the fraction of preservation atoms met (untouched objects unchanged, nothing
  extra), times the fraction of pixels outside the edited cells left as they were;
- `quality`: 0.5 realism + 0.5 cleanliness (docs/world.md, Scores), the same for both tasks;
- `exact`: 1 when every constraint is met (generation: GenEval's pass, no object missing or extra;
  editing: the instruction done and everything else kept), else 0;
- `evaluation`: the evaluation's own score of the sample (generation: GenEval's pass, 0 or 1; editing:
  G_O / 10 = sqrt(G_SC G_PQ) / 10, where G_SC multiplies the instruction and preservation fractions).
A user's own reward is named `package.module:function` in `rl.rewards` and gets the same sample; on
data without the world's metadata (no spec, scene or edit) it gets the image, the prompt or
instruction (`text`) and, for an edit, the source and the record's target image, and RL runs with
user rewards alone (`world_rewards` says which names need the world).

    total = combined_reward({"instruction": 1.0, "quality": 0.2})(sample)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from arm.world.scene import Scene, cell_row_col
from arm.world.scores import cleanliness, consistency, edit_atoms, generation_pass, realism
from arm.world.texts import Edit, GenSpec
from arm.world.verifier import parse


@dataclass
class RewardSample:
    task: str                       # "t2i" | "edit"
    image: np.ndarray               # (S, S, 3) uint8, the sampled output decoded
    spec: GenSpec | None = None     # generation: the prompt's constraints
    source: np.ndarray | None = None        # editing: the source image
    source_scene: Scene | None = None
    edit: Edit | None = None
    size: int = 64
    text: str = ""                  # the prompt or the instruction
    target: np.ndarray | None = None        # editing, on a user's data: the record's target image
    _parsed: Scene | None = None

    @property
    def parsed(self) -> Scene:
        if self._parsed is None:
            self._parsed = parse(self.image, self.size)
        return self._parsed


def instruction_reward(s: RewardSample) -> float:
    if s.task == "t2i":
        return consistency(s.spec, s.parsed)
    met, total, _, _ = edit_atoms(s.source_scene, s.edit, s.parsed)
    return met / total


def exact_reward(s: RewardSample) -> float:
    """1 when the verifier finds every constraint met (GenEval's pass for a prompt: nothing missing,
    nothing extra; for an edit, the instruction done and everything else kept), else 0. The dense
    `instruction` reward gives an extra object one atom of many; this one gives it the whole reward."""
    if s.task == "t2i":
        return float(generation_pass(s.spec, s.parsed))
    met, total, kept, kept_total = edit_atoms(s.source_scene, s.edit, s.parsed)
    return float(met == total and kept == kept_total)


def evaluation_reward(s: RewardSample) -> float:
    """What the evaluation scores, per sample: a prompt's pass (every atom met, nothing extra), an edit's
    G_O / 10. The dense `instruction` reward pays an extra object one atom in many and sums what an edit
    did and kept; this one fails the prompt and multiplies them, as the scores do."""
    if s.task == "t2i":
        return float(generation_pass(s.spec, s.parsed))
    met, total, kept, kept_total = edit_atoms(s.source_scene, s.edit, s.parsed)
    g_sc = 10.0 * (met / total) * (kept / kept_total)
    return float(np.sqrt(g_sc * 10.0 * realism(s.image, s.parsed, s.size))) / 10.0


def _outside_edit_mask(edit: Edit, size: int) -> np.ndarray:
    """(S, S) True outside the grid cells the edit touches."""
    mask = np.ones((size, size), bool)
    step = size / 3
    for cell in (edit.source_cell, edit.target_cell):
        if cell is not None:
            r, c = cell_row_col(cell)
            mask[int(r * step):int((r + 1) * step), int(c * step):int((c + 1) * step)] = False
    return mask


def consistency_reward(s: RewardSample, tolerance: int = 24) -> float:
    if s.task != "edit":
        return 1.0
    _, _, kept, total = edit_atoms(s.source_scene, s.edit, s.parsed)
    outside = _outside_edit_mask(s.edit, s.size)
    diff = np.abs(s.image.astype(int) - s.source.astype(int)).max(axis=-1)
    pixels_kept = float((diff[outside] <= tolerance).mean()) if outside.any() else 1.0
    return (kept / total) * pixels_kept


def quality_reward(s: RewardSample) -> float:
    return 0.5 * realism(s.image, s.parsed, s.size) + 0.5 * cleanliness(s.image, s.size)


BUILT_IN: dict[str, Callable[[RewardSample], float]] = {
    "instruction": instruction_reward, "consistency": consistency_reward, "quality": quality_reward,
    "exact": exact_reward, "evaluation": evaluation_reward}


def world_rewards(weights: dict[str, float]) -> list[str]:
    """The weighted rewards that score with the world's scene graphs (every built-in one)."""
    return sorted(name for name, w in weights.items() if w and name in BUILT_IN)


def resolve(name: str) -> Callable[[RewardSample], float]:
    if name in BUILT_IN:
        return BUILT_IN[name]
    if ":" not in name:
        raise ValueError(f"unknown reward {name!r}; use {sorted(BUILT_IN)} or 'package.module:function'")
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward {name!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not callable")
    return fn


def task_rewards(weights_by_task: dict[str, dict[str, float]]) -> Callable[[RewardSample], dict[str, float]]:
    """-> a function scoring each sample with its task's weighted rewards (`combined_reward`).

    >>> from arm.world.render import render
    >>> score = task_rewards({"t2i": {"quality": 1.0}, "edit": {"consistency": 1.0}})
    >>> score(RewardSample("t2i", np.asarray(render(Scene(()), 64))))    # a clean empty canvas
    {'quality': 1.0, 'total': 1.0}
    """
    by_task = {task: combined_reward(weights) for task, weights in weights_by_task.items()}
    return lambda sample: by_task[sample.task](sample)


def combined_reward(weights: dict[str, float]) -> Callable[[RewardSample], dict[str, float]]:
    """-> a function giving each component and their weighted sum under "total"."""
    parts = {name: (resolve(name), w) for name, w in weights.items() if w}

    def score(sample: RewardSample) -> dict[str, float]:
        out = {name: float(fn(sample)) for name, (fn, _) in parts.items()}
        out["total"] = sum(parts[n][1] * v for n, v in out.items())
        return out

    return score
