"""Pretraining data: prepared records + cached image codes -> token sequences, batched by task.

Every batch holds one task, drawn with the configured mix ratios, so sequences in a batch have nearly
the same length (length bucketing without packing: each task's template fixes most of the length) and
the loss per task is logged cleanly. Batch k is a pure function of (seed, k): resuming at step k
continues with exactly the batches an uninterrupted run would have seen.

`batch_size` is the global batch: under DDP or FSDP each of the W processes takes its own contiguous
B / W rows of the same global batch, so W processes see exactly what one process would.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from arm.data.shards import load_examples
from arm.model.sequences import IGNORE, build_sequence, reading_sequence, understanding_turns, with_caption_turn
from arm.model.vocab import Vocab

TASKS = ("t2i", "edit", "vqa", "caption", "text")
# Training tasks made from another task's records: caption reading asks the VQA questions after their
# image's caption, without the image (arm.model.sequences.reading_sequence).
RECORDS_OF = {"read": "vqa"}
# The tasks whose targets are text about an image or a question: what RL's understanding replay mixes.
UNDERSTANDING_TASKS = ("vqa", "caption", "text", "read")


def load_codes_by_key(encode_dir: str | Path, split: str) -> dict[str, np.ndarray]:
    from arm.encode import load_codes

    keys, codes = load_codes(encode_dir, split)
    return {k: c.reshape(-1).astype(np.int64) for k, c in zip(keys, codes)}


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process in the training job; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TaskRecords:
    """The usable records of a split, grouped by task (records whose images have no codes are dropped)."""

    def __init__(self, prepare_dir: str | Path, encode_dir: str | Path, split: str):
        self.codes = load_codes_by_key(encode_dir, split)
        self.by_task: dict[str, list[dict]] = defaultdict(list)
        for r in load_examples(prepare_dir, split):
            images = [r[k] for k in ("image", "source_image", "target_image") if k in r]
            if all(i in self.codes for i in images):
                self.by_task[r["task"]].append(r)
        self.questions_by_image: dict[str, list[dict]] = defaultdict(list)
        for r in self.by_task.get("vqa", []):
            self.questions_by_image[r["image"]].append(r)
        self.captions_by_image = {r["image"]: r["text_ids"] for r in self.by_task.get("caption", [])}

    def captions_for_questions(self) -> dict[str, list[int]]:
        """Caption ids by image for describe-first VQA; refuses, naming the fix, when a question's image
        has no caption (the turn the answer is read from would be missing)."""
        missing = sorted({r["image"] for r in self.by_task.get("vqa", [])} - set(self.captions_by_image))
        if missing:
            raise ValueError(f"pretrain.describe_first and caption reading (pretrain.task_mix.read) need a caption "
                             f"record for every VQA image; {len(missing)} images have questions but no caption "
                             f"(first: {missing[0]!r}). Add caption records for them, or set "
                             "pretrain.describe_first=false and pretrain.task_mix.read=0")
        return self.captions_by_image

    def counts(self) -> dict[str, int]:
        return {t: len(v) for t, v in sorted(self.by_task.items())}


def collate(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest: input_ids, labels (-100 on padding and prompts), attention_mask."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (s, l) in enumerate(sequences):
        ids[row, : len(s)] = torch.as_tensor(s)
        labels[row, : len(l)] = torch.as_tensor(l)
        mask[row, : len(s)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def vqa_turns_sequence(vocab: Vocab, record: dict, records: TaskRecords, rng: random.Random,
                       questions_per_sequence: int, describe_ids: list[int] | None = None,
                       captions: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
    """The drawn question first, then up to `questions_per_sequence - 1` other questions about the same
    image in random order (`understanding_turns`); with `captions`, after the image's caption turn."""
    others = [r for r in records.questions_by_image.get(record["image"], []) if r["id"] != record["id"]]
    rng.shuffle(others)
    chosen = [record] + others[: questions_per_sequence - 1]
    turns = with_caption_turn([(r["text_ids"], r["answer_ids"]) for r in chosen], record["image"], describe_ids, captions)
    return understanding_turns(vocab, records.codes[record["image"]], turns)


def question_cum_weights(questions: list[dict], weights: dict[str, float]) -> list[float] | None:
    """Cumulative draw weights of VQA records by `meta.question_type` (a type not named weighs 1, so does a
    record without one); None when `weights` is empty (a uniform draw). A named type that no record has
    is refused: a misspelt type would otherwise be silently ignored.

    >>> qs = [{"meta": {"question_type": t}} for t in ("exists", "color", "exists")]
    >>> question_cum_weights(qs, {"exists": 2.0})
    [2.0, 3.0, 5.0]
    """
    if not weights:
        return None
    types = [(q.get("meta") or {}).get("question_type") for q in questions]
    present = set(types)
    missing = sorted(set(weights) - present)
    if missing:
        raise ValueError(f"pretrain.question_type_weights names {missing}, which no training question has; "
                         f"the types present are {sorted(t for t in present if t)}")
    cum = list(itertools.accumulate(float(weights.get(t, 1.0)) for t in types))
    if not cum or cum[-1] <= 0:
        raise ValueError("pretrain.question_type_weights leave every training question at weight 0")
    return cum


def fit_to_data(p, records: TaskRecords, say=print):
    """The `pretrain` section `p` as the training records can carry it, each change said in one line
    (`say`): a task with no records gets weight 0 (the others share the mix); describe-first and caption
    reading turn off when a question's image has no caption to describe it with; per-type question
    weights are dropped when no question carries a type (data other than the world's). A type named
    while others are present still fails in `question_cum_weights`: that is a misspelling.

    >>> from types import SimpleNamespace
    >>> records = SimpleNamespace(by_task={"caption": [{"image": "a"}], "t2i": [{"image": "a"}]})
    >>> p = SimpleNamespace(task_mix={"t2i": 0.5, "vqa": 0.5}, describe_first=True, question_type_weights={})
    >>> fit_to_data(p, records, say=lambda line: None).task_mix
    {'t2i': 0.5, 'vqa': 0.0}
    """
    import dataclasses
    from types import SimpleNamespace

    mix = dict(p.task_mix)
    for task, weight in p.task_mix.items():
        if weight > 0 and not records.by_task.get(RECORDS_OF.get(task, task)):
            mix[task] = 0.0
            say(f"pretrain: the data has no {RECORDS_OF.get(task, task)} records: task_mix.{task} {weight:g} -> 0")
    describe_first = p.describe_first
    questions = records.by_task.get("vqa", [])
    captioned = {r["image"] for r in records.by_task.get("caption", [])}
    uncaptioned = sorted({r["image"] for r in questions} - captioned)
    if (describe_first or mix.get("read", 0) > 0) and uncaptioned:
        say(f"pretrain: describe-first and caption reading off: {len(uncaptioned)} of "
            f"{len({r['image'] for r in questions})} images with questions have no caption record to describe "
            f"them with (first: {uncaptioned[0]!r}); add captions for them to train describe-first")
        describe_first = False
        if "read" in mix:
            mix["read"] = 0.0
    elif describe_first and not questions:
        describe_first = False                  # nothing to answer after a description
    weights = dict(p.question_type_weights or {}) if questions else {}
    if weights and questions and not any((q.get("meta") or {}).get("question_type") for q in questions):
        say("pretrain: no training question carries a meta.question_type: question_type_weights ignored "
            "(questions drawn uniformly)")
        weights = {}
    changes = dict(task_mix=mix, describe_first=describe_first, question_type_weights=weights)
    if dataclasses.is_dataclass(p):
        return dataclasses.replace(p, **changes)
    return SimpleNamespace(**{**vars(p), **changes})


class TaskMixBatches(torch.utils.data.Dataset):
    """Item k = training batch `start_step + k`: a task drawn by `mix`, then `batch_size` of its records
    (VQA records drawn by `question_weights` per question type, if given; caption reading, `read`,
    draws VQA records the same way and asks them after their image's caption, without the image).
    With `questions_per_sequence > 1`, a VQA sequence also asks the image's other questions as turns;
    with `describe_first`, its questions follow the image's caption turn."""

    def __init__(self, records: TaskRecords, vocab: Vocab, describe_ids: list[int], mix: dict[str, float],
                 batch_size: int, num_steps: int, seed: int, p_drop: float, start_step: int = 0,
                 questions_per_sequence: int = 1, question_weights: dict[str, float] | None = None,
                 describe_first: bool = False):
        if questions_per_sequence < 1:
            raise ValueError(f"pretrain.questions_per_sequence must be at least 1, got {questions_per_sequence}")
        self.question_cum_weights = question_cum_weights(records.by_task.get("vqa", []), question_weights or {})
        tasks = [t for t in mix if mix[t] > 0 and records.by_task.get(RECORDS_OF.get(t, t))]
        if not tasks:
            raise ValueError(f"no training records for any task in pretrain.task_mix {dict(mix)}; "
                             f"the data has {records.counts()}")
        total = sum(mix[t] for t in tasks)
        self.tasks, self.weights = tasks, [mix[t] / total for t in tasks]
        self.records, self.vocab, self.describe_ids = records, vocab, describe_ids
        self.batch_size, self.num_steps, self.seed, self.p_drop, self.start_step = (
            batch_size, num_steps, seed, p_drop, start_step)
        self.questions_per_sequence = questions_per_sequence
        needs_captions = (describe_first and "vqa" in tasks) or "read" in tasks
        captions = records.captions_for_questions() if needs_captions else None
        self.captions = captions if describe_first else None   # VQA's caption turn
        self.reading_captions = captions                      # what caption reading reads

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)

    def __getitem__(self, k: int) -> dict:
        step = self.start_step + k
        rng = random.Random(self.seed * 1_000_003 + step)
        task = rng.choices(self.tasks, self.weights)[0]
        records_task = RECORDS_OF.get(task, task)
        pool = self.records.by_task[records_task]
        if records_task == "vqa" and self.question_cum_weights is not None:
            chosen = rng.choices(pool, cum_weights=self.question_cum_weights, k=self.batch_size)
        else:
            chosen = [pool[rng.randrange(len(pool))] for _ in range(self.batch_size)]
        if task == "read":
            seqs = [reading_sequence(self.vocab, self.describe_ids, self.reading_captions[r["image"]],
                                     r["text_ids"], r["answer_ids"]) for r in chosen]
        elif task == "vqa" and self.questions_per_sequence > 1:
            seqs = [vqa_turns_sequence(self.vocab, r, self.records, rng, self.questions_per_sequence,
                                       self.describe_ids, self.captions) for r in chosen]
        else:
            seqs = [build_sequence(self.vocab, r, self.records.codes, rng, self.p_drop, self.describe_ids,
                                   self.captions) for r in chosen]
        rank, world = process_rank()
        if self.batch_size % world:
            raise ValueError(f"pretrain.batch_size {self.batch_size} must be a multiple of the number of "
                             f"processes ({world}) so each takes an equal share of the global batch")
        share = self.batch_size // world
        batch = collate(seqs[rank * share:(rank + 1) * share], self.vocab.pad)
        batch["task"] = task
        return batch


class EvalBatches(torch.utils.data.Dataset):
    """Validation: each task's first records in order, no condition dropout; one task per batch."""

    def __init__(self, records: TaskRecords, vocab: Vocab, describe_ids: list[int], batch_size: int,
                 per_task: int, describe_first: bool = False):
        self.items = []
        for task in TASKS:
            pool = records.by_task.get(task, [])[:per_task]
            for start in range(0, len(pool), batch_size):
                self.items.append((task, pool[start:start + batch_size]))
        self.records, self.vocab, self.describe_ids = records, vocab, describe_ids
        self.captions = records.captions_for_questions() if describe_first and records.by_task.get("vqa") else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        task, chosen = self.items[k]
        rng = random.Random(k)
        seqs = [build_sequence(self.vocab, r, self.records.codes, rng, 0.0, self.describe_ids, self.captions)
                for r in chosen]
        batch = collate(seqs, self.vocab.pad)
        batch["task"] = task
        return batch
