"""The world benchmarks for a unified model: every test record is run through the same `Pipeline` a user
calls, and the result is scored by the world's verifier (`arm.world.scores`), no judge involved.

- understanding: VQA answers and captions (accuracy per question type), text-only knowledge QA (seen
  and held-out things);
- generation: GenEval-style pass rate per prompt category, WISE-style knowledge score of knowledge
  prompts, seen and held-out things side by side;
- editing: G_SC, G_PQ, G_O per edit type and overall.

Each returns flat metrics (`und/acc`, `gen/acc`, `edit/g_o`, ...) and the samples behind them, for grids.

>>> # pipe = Pipeline.load("artifacts/pretrain", "artifacts/tokenizer")
>>> # metrics, samples = evaluate_split(pipe, "artifacts/prepare", "test", limit=64)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arm.data.shards import load_examples, load_images
from arm.evaluate.stats import Estimate, mean_ci, record_of
from arm.generate import Sampling
from arm.model.data import DESCRIBE
from arm.pipeline import Guidance, Pipeline
from arm.world.scene import Scene
from arm.world.scores import answer_correct, edit_score, generation_pass, knowledge_score
from arm.world.texts import Edit, GenSpec
from arm.world.verifier import parse


@dataclass
class EvalSettings:
    limit: int | None = None          # records per task (None: all)
    samples_per_prompt: int = 1
    guidance: Guidance = field(default_factory=Guidance)
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0
    # Generation's own text scale (None: guidance.scale). Guidance trades missing objects for extra ones
    # differently from how it trades a kept source for a done edit (benchmarks/generation_failures.py).
    generation_guidance_scale: float | None = None

    @property
    def generation_guidance(self) -> Guidance:
        if self.generation_guidance_scale is None:
            return self.guidance
        return Guidance(self.generation_guidance_scale, self.guidance.image_scale)


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


def _values(samples: Samples, first: int) -> dict[str, float]:
    """Plain means of the scores added since index `first` (intervals are the stage's, computed once)."""
    return {k: float(np.mean(v)) for k, v in grouped(samples.scores[first:]).items()}


def evaluate_understanding(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples) -> dict:
    """VQA and captions (`und/acc`, per question type) and text-only knowledge QA
    (`und/text_knowledge_seen`, `und/text_knowledge_heldout`)."""
    first = len(samples.scores)
    records = data.task("vqa", settings.limit) + data.task("caption", settings.limit)
    if records:
        images = data.images([r["image"] for r in records])
        questions = [r["text"] if r["task"] == "vqa" else DESCRIBE for r in records]
        # A describe-first model answers after its own description, kept to show beside the answer.
        explained = pipe.explain(images, questions, sampling=Sampling(temperature=0.0))
        for r, image, q, (pred, description) in zip(records, images, questions, explained):
            qtype = r["meta"].get("question_type", "describe")
            answer = r["answer"] if r["task"] == "vqa" else r["text"]
            ok = answer_correct(qtype, pred, answer)
            samples.add("und/acc", qtype, ok, r["id"])
            samples.understanding.append({"image": image, "question": q, "answer": answer, "prediction": pred,
                                          "correct": ok, "description": description})
    text = data.task("text", None)
    if text:
        predictions = pipe.understand(None, [r["text"] for r in text], sampling=Sampling(temperature=0.0))
        for p, r in zip(predictions, text):
            which = "heldout" if r["meta"].get("held_out_thing") else "seen"
            samples.add(f"und/text_knowledge_{which}", None, answer_correct("color", p, r["answer"]), r["id"])
    out = _values(samples, first)
    if records:
        out["und/count"] = len(records)
    return out


def generated_images(pipe: Pipeline, records: list[dict], settings: EvalSettings) -> tuple[np.ndarray, list]:
    """`samples_per_prompt` images for each record's prompt at the evaluation's sampling, and for each
    image its (record, item id `<record id>#<k>`): the images of one prompt are resampled together."""
    k = settings.samples_per_prompt
    images = pipe.generate([r["text"] for r in records for _ in range(k)], settings.generation_guidance,
                           Sampling(settings.temperature, settings.top_k, seed=settings.seed))
    return images, [(records[i // k], f"{records[i // k]['id']}#{i % k}") for i in range(len(images))]


def evaluate_generation(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples) -> dict:
    """GenEval-style pass rate (`gen/acc`, per category), `samples_per_prompt` images per prompt, and the
    WISE-style knowledge score of knowledge prompts (`gen/knowledge_seen`, `gen/knowledge_heldout`)."""
    records = data.task("t2i", settings.limit)
    if not records:
        return {}
    first = len(samples.scores)
    images, items = generated_images(pipe, records, settings)
    for image, (r, item) in zip(images, items):
        spec = GenSpec.from_dict(r["meta"]["spec"])
        passed = generation_pass(spec, parse(image, pipe.image_size))
        samples.add("gen/acc", spec.category, passed, item)
        if spec.category == "knowledge":
            which = "heldout" if r["meta"].get("held_out_thing") else "seen"
            samples.add(f"gen/knowledge_{which}", None, knowledge_score(spec, image, pipe.image_size), item)
        samples.generation.append({"prompt": r["text"], "image": image, "passed": passed})
    out = _values(samples, first)
    out["gen/count"] = len(images)
    return out


def evaluate_editing(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples) -> dict:
    """GEdit-style G_SC, G_PQ and G_O (0 to 10), overall (`edit/g_o`) and per edit type (`edit/move/g_o`)."""
    records = data.task("edit", settings.limit)
    if not records:
        return {}
    first = len(samples.scores)
    sources = data.images([r["source_image"] for r in records])
    edited = pipe.edit(sources, [r["text"] for r in records], settings.guidance,
                       Sampling(settings.temperature, settings.top_k, seed=settings.seed))
    for r, source, image in zip(records, sources, edited):
        score = edit_score(Scene.from_dict(r["meta"]["scene"]), Edit.from_dict(r["meta"]["edit"]), image,
                           pipe.image_size)
        edit_type = r["meta"]["edit"]["type"]
        for name, value in (("g_sc", score.g_sc), ("g_pq", score.g_pq), ("g_o", score.g_o)):
            samples.add(f"edit/{name}", edit_type, value, r["id"])
        samples.editing.append({"source": source, "instruction": r["text"], "image": image,
                                "g_sc": score.g_sc, "g_pq": score.g_pq})
    out = _values(samples, first)
    out["edit/count"] = len(records)
    return out


def evaluate_all(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples, judge=None) -> dict:
    """Every task of a split: the world's records by the verifier, every other record against its own
    references (`arm.evaluate.references`; generation's agreement needs `judge`)."""
    from arm.evaluate import references

    metrics: dict[str, float] = {}
    for run in (evaluate_understanding, evaluate_generation, evaluate_editing,
                references.evaluate_understanding, references.evaluate_editing):
        metrics.update(run(pipe, data, settings, samples))
    metrics.update(references.evaluate_generation(pipe, data, settings, samples, judge))
    return metrics


def evaluate_split(pipe: Pipeline, prepare_dir: str | Path, split: str,
                   settings: EvalSettings | None = None, judge=None) -> tuple[dict, Samples]:
    """All three tasks on one prepared split -> (flat metrics, samples with per-sample scores)."""
    settings = settings or EvalSettings()
    data, samples = SplitData(prepare_dir, split), Samples()
    return evaluate_all(pipe, data, settings, samples, judge), samples
