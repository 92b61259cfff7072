"""The world benchmarks for a unified model: every test record is run through the same `Pipeline` a user
calls, and the result is scored by the world's verifier (`arm.world.scores`), no judge involved.

- understanding: VQA answers and captions (accuracy per question type), text-only knowledge QA (seen
  and held-out things);
- generation: GenEval-style pass rate per prompt category, WISE-style knowledge score of knowledge
  prompts, seen and held-out things side by side;
- editing: G_SC, G_PQ, G_O per edit type and overall.

Each returns flat metrics (`und/acc`, `gen/acc`, `edit/g_o`, ...) and the samples behind them, for grids.

    pipe = Pipeline.load("artifacts/rl", "artifacts/tokenizer")
    metrics, samples = evaluate_split(pipe, "artifacts/prepare", "test", EvalSettings(limit=64))
"""

from __future__ import annotations

from pathlib import Path

from arm.evaluate import references
from arm.evaluate.samples import EvalSettings, Samples, SplitData, generated_images, values_since
from arm.model.sequences import DESCRIBE
from arm.pipeline import Pipeline
from arm.world.scene import Scene
from arm.world.scores import answer_correct, edit_score, generation_pass, knowledge_score
from arm.world.texts import Edit, GenSpec
from arm.world.verifier import parse


def evaluate_understanding(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples) -> dict:
    """VQA and captions (`und/acc`, per question type) and text-only knowledge QA
    (`und/text_knowledge_seen`, `und/text_knowledge_heldout`)."""
    first = len(samples.scores)
    records = data.task("vqa", settings.limit) + data.task("caption", settings.limit)
    if records:
        images = data.images([r["image"] for r in records])
        questions = [r["text"] if r["task"] == "vqa" else DESCRIBE for r in records]
        # A describe-first model answers after its own description, kept to show beside the answer.
        explained = pipe.explain(images, questions)
        for r, image, q, (pred, description) in zip(records, images, questions, explained):
            qtype = r["meta"].get("question_type", "describe")
            answer = r["answer"] if r["task"] == "vqa" else r["text"]
            ok = answer_correct(qtype, pred, answer)
            samples.add("und/acc", qtype, ok, r["id"])
            samples.understanding.append({"image": image, "question": q, "answer": answer, "prediction": pred,
                                          "correct": ok, "description": description})
    text = data.task("text", None)
    if text:
        predictions = pipe.understand(None, [r["text"] for r in text])
        for p, r in zip(predictions, text):
            which = "heldout" if r["meta"].get("held_out_thing") else "seen"
            samples.add(f"und/text_knowledge_{which}", None, answer_correct("color", p, r["answer"]), r["id"])
    out = values_since(samples, first)
    if records:
        out["und/count"] = len(records)
    return out


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
    out = values_since(samples, first)
    out["gen/count"] = len(images)
    return out


def evaluate_editing(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples) -> dict:
    """GEdit-style G_SC, G_PQ and G_O (0 to 10), overall (`edit/g_o`) and per edit type (`edit/move/g_o`)."""
    records = data.task("edit", settings.limit)
    if not records:
        return {}
    first = len(samples.scores)
    sources = data.images([r["source_image"] for r in records])
    edited = pipe.edit(sources, [r["text"] for r in records], settings.seed, settings.sampling)
    for r, source, image in zip(records, sources, edited):
        score = edit_score(Scene.from_dict(r["meta"]["scene"]), Edit.from_dict(r["meta"]["edit"]), image,
                           pipe.image_size)
        edit_type = r["meta"]["edit"]["type"]
        for name, value in (("g_sc", score.g_sc), ("g_pq", score.g_pq), ("g_o", score.g_o)):
            samples.add(f"edit/{name}", edit_type, value, r["id"])
        samples.editing.append({"source": source, "instruction": r["text"], "image": image,
                                "g_sc": score.g_sc, "g_pq": score.g_pq})
    out = values_since(samples, first)
    out["edit/count"] = len(records)
    return out


def evaluate_all(pipe: Pipeline, data: SplitData, settings: EvalSettings, samples: Samples, judge=None) -> dict:
    """Every task of a split: the world's records by the verifier, every other record against its own
    references (`arm.evaluate.references`; generation's agreement needs `judge`)."""
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
