"""What every evaluation shares: the settings, the samples and their per-sample scores, a prepared
split's records and images, and the evaluation's sampling of generated images. The world's scores
(`arm.evaluate.world`) and a user's data's (`arm.evaluate.references`) both build on it.

>>> samples = Samples()
>>> samples.add("gen/acc", "single", 1.0, "r1#0"); samples.add("gen/acc", "two", 0.0, "r2#0")
>>> grouped(samples.scores)
{'gen/acc': [1.0, 0.0], 'gen/single': [1.0], 'gen/two': [0.0]}
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arm.config import SamplingConfig
from arm.data.shards import load_examples, load_images
from arm.evaluate.stats import Estimate, mean_ci, record_of
from arm.pipeline import Pipeline


@dataclass
class EvalSettings:
    limit: int | None = None          # records per task (None: all)
    samples_per_prompt: int = 1
    seed: int = 0                     # image i of a run draws with seed + i
    sampling: SamplingConfig | None = None  # None: the model's own (its sampling.json)


@dataclass
class Samples:
    """What the grids show, and the per-sample scores every summary and interval is computed from."""

    generation: list[dict] = field(default_factory=list)  # prompt, image, passed
    editing: list[dict] = field(default_factory=list)     # source, instruction, image, g_sc, g_pq
    understanding: list[dict] = field(default_factory=list)  # image, question, answer, prediction, correct, description
    scores: list[dict] = field(default_factory=list)      # {"metric", "group", "value", "item"} per sample and metric

    def add(self, metric: str, group: str | None, value: float, item: str | None = None) -> None:
        """`item` names what was scored (record id, and the sample's index when there are several), so
        two evaluations of the same records can be compared item by item."""
        self.scores.append({"metric": metric, "group": group, "value": float(value), "item": item})


def grouped(scores: list[dict], with_items: bool = False) -> dict[str, list]:
    """Per-sample values by key: every metric overall (`gen/acc`) and per group (`gen/two`, `edit/move/g_o`);
    with_items: (value, item) pairs."""
    by_key: dict[str, list] = defaultdict(list)
    for s in scores:
        task, name = s["metric"].split("/", 1)
        entry = (s["value"], s.get("item")) if with_items else s["value"]
        by_key[s["metric"]].append(entry)
        if s["group"] is not None:
            group_key = f"{task}/{s['group']}" if name == "acc" else f"{task}/{s['group']}/{name}"
            by_key[group_key].append(entry)
    return dict(sorted(by_key.items()))


def summarise(samples: Samples, seed: int = 0) -> dict[str, Estimate]:
    """Every grouped metric with its bootstrap interval. The several images of one prompt (items
    `<record>#<k>`) are not independent: they are resampled together, and n counts prompts."""
    out = {}
    for key, entries in grouped(samples.scores, with_items=True).items():
        records = [record_of(item) for _, item in entries]
        out[key] = mean_ci([v for v, _ in entries], seed=seed, clusters=None if None in records else records)
    return out


# What a record's meta carries when the world's verifier can score it (a user's records carry none of it).
WORLD_META = {"caption": "scene", "vqa": "scene", "t2i": "spec", "edit": "edit", "text": "held_out_thing"}


def scored_by_world(record: dict) -> bool:
    return WORLD_META.get(record["task"], "") in (record.get("meta") or {})


class SplitData:
    """A prepared split's records by task, with their images by key: `records`, those the world's verifier
    scores; `reference_records`, every other (a user's data), scored against their own references
    (`arm.evaluate.references`)."""

    def __init__(self, prepare_dir: str | Path, split: str):
        examples = load_examples(prepare_dir, split)
        self.records = [r for r in examples if scored_by_world(r)]
        self.reference_records = [r for r in examples if not scored_by_world(r)]
        keys, pixels = load_images(prepare_dir, split)
        self.keys = keys
        self.index = {k: i for i, k in enumerate(keys)}
        self.pixels = pixels

    def task(self, name: str, limit: int | None) -> list[dict]:
        chosen = [r for r in self.records if r["task"] == name]
        return chosen[:limit] if limit is not None else chosen

    def reference_task(self, name: str, limit: int | None) -> list[dict]:
        chosen = [r for r in self.reference_records if r["task"] == name]
        return chosen[:limit] if limit is not None else chosen

    def scenes_by_image(self) -> dict[str, dict]:
        """Each image's scene graph, from the records that show it as it is (captions and questions)."""
        return {r["image"]: r["meta"]["scene"] for r in self.records
                if r["task"] in ("caption", "vqa") and "scene" in r.get("meta", {})}

    def images(self, keys: list[str]) -> np.ndarray:
        return self.pixels[[self.index[k] for k in keys]] if keys else self.pixels[:0]


def values_since(samples: Samples, first: int) -> dict[str, float]:
    """Plain means of the scores added since index `first` (intervals are the stage's, computed once)."""
    return {k: float(np.mean(v)) for k, v in grouped(samples.scores[first:]).items()}


def generated_images(pipe: Pipeline, records: list[dict], settings: EvalSettings) -> tuple[np.ndarray, list]:
    """`samples_per_prompt` images for each record's prompt at the evaluation's sampling, and for each
    image its (record, item id `<record id>#<k>`): the images of one prompt are resampled together."""
    k = settings.samples_per_prompt
    images = pipe.generate([r["text"] for r in records for _ in range(k)], settings.seed, settings.sampling)
    return images, [(records[i // k], f"{records[i // k]['id']}#{i % k}") for i in range(len(images))]
