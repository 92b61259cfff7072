"""RL prompts: the world's generation prompts and (source, instruction) pairs of a prepared split, with
what the rewards need to score a sample (the prompt's constraints, the source scene and the edit).

Each step draws `prompts_per_step` of them from a generator seeded by (seed, step), so a resumed run
continues with the very prompts it would have seen. In a data-parallel job (rl.strategy=ddp) every
process draws the same step and keeps every W-th prompt from its rank on: whole groups, an equal share
each, and each prompt keeps its `index` in the step, from which its samples' seeds follow, so W
processes roll out exactly the one-process step between them.

    prompts = RLPrompts("artifacts/prepare", "joint", prompts_per_step=8, steps=200)
    prompts[0]   # -> [Prompt(task="t2i", text=...), ..., Prompt(task="edit", ...)]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from arm.model.data import process_rank
from arm.world.scene import Scene
from arm.world.texts import Edit, GenSpec

TASKS_OF_MODE = {"gen": ("t2i",), "edit": ("edit",), "joint": ("t2i", "edit")}


@dataclass
class Prompt:
    task: str                          # "t2i" | "edit"
    text: str                          # the prompt or the instruction
    spec: GenSpec | None = None        # generation: the constraints the image must meet
    source: np.ndarray | None = None   # editing: (S, S, 3) uint8 source image
    scene: Scene | None = None         # editing: the source's scene graph
    edit: Edit | None = None
    target: np.ndarray | None = None   # editing, on a user's data: the record's target image
    index: int = 0                     # its place among the step's prompts (all processes'): seeds its samples
    category: str = ""                 # the world's kind of prompt: a GenSpec's category, an Edit's type


def load_prompts(prepare_dir: str | Path, split: str, tasks: tuple[str, ...], world: bool = True) -> dict[str, list[Prompt]]:
    """The split's records of the given tasks as Prompts: with `world`, the world's records with what the
    built-in rewards need (the spec, the source scene and the edit); else every other record (a user's
    data, for rewards of the user's own), with an edit's source and target images."""
    from arm.evaluate.samples import SplitData

    data = SplitData(prepare_dir, split)
    if not world:
        out = {}
        if "t2i" in tasks:
            out["t2i"] = [Prompt("t2i", r["text"]) for r in data.reference_task("t2i", None)]
        if "edit" in tasks:
            records = data.reference_task("edit", None)
            sources = data.images([r["source_image"] for r in records])
            targets = data.images([r["target_image"] for r in records])
            out["edit"] = [Prompt("edit", r["text"], source=s, target=t) for r, s, t in zip(records, sources, targets)]
        for task, prompts in out.items():
            if not prompts:
                raise ValueError(f"the {split} split of {prepare_dir} has no {task} records to run RL on; "
                                 "choose an rl.mode whose tasks the data has (gen: t2i, edit: edit)")
        return out
    out: dict[str, list[Prompt]] = {}
    if "t2i" in tasks:
        specs = [(r["text"], GenSpec.from_dict(r["meta"]["spec"])) for r in data.task("t2i", None) if "spec" in r["meta"]]
        out["t2i"] = [Prompt("t2i", text, spec=spec, category=spec.category) for text, spec in specs]
    if "edit" in tasks:
        records = [r for r in data.task("edit", None) if "edit" in r["meta"]]
        sources = data.images([r["source_image"] for r in records])
        edits = [Edit.from_dict(r["meta"]["edit"]) for r in records]
        out["edit"] = [Prompt("edit", r["text"], source=src, scene=Scene.from_dict(r["meta"]["scene"]), edit=e,
                              category=e.type) for r, src, e in zip(records, sources, edits)]
    for task, prompts in out.items():
        if not prompts:
            raise ValueError(f"the {split} split of {prepare_dir} has no world {task} records to run RL on; "
                             "RL's built-in rewards need the world's metadata (use the Shapes world, or name your "
                             "own reward in rl.rewards and give records a meta field)")
    return out


class RLPrompts(torch.utils.data.Dataset):
    """Step i -> a list of Prompts: all of one task, or for `joint` the first half generation and the
    second half editing; in a job of W processes, this process's share (every W-th, from its rank on).
    `draw(step, weights)` draws by category instead (rl.curriculum)."""

    def __init__(self, prepare_dir: str | Path, mode: str, prompts_per_step: int, steps: int, seed: int = 0,
                 start_step: int = 0, split: str = "train", world: bool = True):
        self.tasks = TASKS_OF_MODE[mode]
        self.prompts = load_prompts(prepare_dir, split, self.tasks, world)
        self.per_step, self.steps, self.seed, self.start = prompts_per_step, steps, seed, start_step
        self._categories: dict[str, dict[str, list[int]]] = {}

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, i: int) -> list[Prompt]:
        return self.draw(self.start + i)

    def categories(self, task: str) -> dict[str, list[int]]:
        """The task's categories and the indices of their prompts, in first-seen order."""
        if task not in self._categories:
            groups: dict[str, list[int]] = {}
            for j, p in enumerate(self.prompts[task]):
                groups.setdefault(p.category, []).append(j)
            self._categories[task] = groups
        return self._categories[task]

    def draw(self, step: int, weights: dict[str, dict[str, float]] | None = None) -> list[Prompt]:
        """The step's prompts (this process's share). `weights` (task -> category -> weight): each prompt's
        category is drawn in proportion to them, then a prompt of that category uniformly; None: uniformly
        over the task's prompts. The same (seed, step, weights) always draws the same prompts."""
        # (The trailing 0 stands where the process rank was when each process drew prompts of its own:
        # one process draws what it always drew.)
        rng = np.random.default_rng([self.seed, step, 0])
        counts = [self.per_step // len(self.tasks)] * len(self.tasks)
        counts[0] += self.per_step - sum(counts)
        chosen = []
        for task, n in zip(self.tasks, counts):
            pool = self.prompts[task]
            if weights is None or task not in weights:
                chosen += [pool[j] for j in rng.choice(len(pool), size=n, replace=len(pool) < n)]
                continue
            groups = self.categories(task)
            names = list(groups)
            w = np.array([max(float(weights[task].get(c, 0.0)), 0.0) for c in names])
            w = w / w.sum() if w.sum() > 0 else np.full(len(names), 1.0 / len(names))
            for c in rng.choice(len(names), size=n, p=w):
                members = groups[names[c]]
                chosen.append(pool[members[rng.integers(len(members))]])
        rank, world = process_rank()   # at iteration time: the process group exists only once fitting starts
        if self.per_step % world:
            raise ValueError(f"rl.prompts_per_step {self.per_step} must be a multiple of the number of processes "
                             f"({world}) so each rolls out an equal share of whole groups")
        return [replace(p, index=k) for k, p in enumerate(chosen)][rank::world]
