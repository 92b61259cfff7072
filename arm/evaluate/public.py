"""Adapters for the public benchmarks. Nothing is downloaded: the user supplies each benchmark's files.

- GenEval: read `evaluation_metadata.jsonl`, write `<out>/<index:05d>/metadata.jsonl` and
  `<out>/<index:05d>/samples/<k:05d>.png`, the layout GenEval's own `evaluate_images.py` reads, so its
  scorer runs unchanged.
- WISE: read its prompt JSON files, generate, and score each image with a judge (consistency, realism,
  aesthetic quality, each 0 to 2): WiScore = (0.7 C + 0.2 R + 0.1 A) / 2; overall = 0.4 cultural +
  0.167 time + 0.133 space + 0.1 biology + 0.1 physics + 0.1 chemistry.
- GEdit-Bench: records of (source image, instruction, group, language); edit; judge editing success and
  over-editing (SC = their min) and naturalness and artifacts (PQ = their min), each 0 to 10;
  O = sqrt(SC x PQ) per sample; means per group; G_SC, G_PQ, G_O = unweighted means over groups.

Judge failures are counted per benchmark and left out of the means (see `arm.evaluate.judge`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------------
# GenEval


def read_geneval_metadata(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found; pass GenEval's prompts/evaluation_metadata.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
            if not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{n}: no 'prompt' string; is this GenEval's evaluation_metadata.jsonl?")
            records.append(record)
    return records


def write_geneval(records: list[dict], images_per_prompt: list[list[np.ndarray]], out: str | Path) -> Path:
    """One folder per prompt in GenEval's layout; the metadata line is copied unchanged."""
    out = Path(out)
    for index, (record, images) in enumerate(zip(records, images_per_prompt)):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
        for k, image in enumerate(images):
            Image.fromarray(np.asarray(image, np.uint8)).save(folder / "samples" / f"{k:05d}.png")
    return out


# --------------------------------------------------------------------------------------------------
# WISE

WISE_WEIGHTS = {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1}
WISE_INSTRUCTION = (
    "You are judging an image generated for this prompt: \"{prompt}\". The intended content is: {explanation}. "
    "Score consistency (does the image show what the prompt means, 0 to 2), realism (0 to 2) and "
    "aesthetic_quality (0 to 2).")


def wise_category(record: dict, file_name: str) -> str:
    """cultural | time | space | biology | physics | chemistry: from the record's Category, else its
    Subcategory, else its file's name."""
    for field in ("Category", "category", "Subcategory", "subcategory"):
        words = str(record.get(field, "")).lower().replace("-", " ").split()
        for name in ("cultural", "time", "space", "biology", "physics", "chemistry"):
            if name in words:
                return name
    if "cultural" in file_name.lower():
        return "cultural"
    raise ValueError(f"cannot tell the WISE category of prompt {record.get('prompt_id')!r} in {file_name}; "
                     "expected a Category or Subcategory naming cultural, time, space, biology, physics or chemistry")


def read_wise_prompts(folder: str | Path) -> list[dict]:
    """Every prompt of the WISE JSON files in `folder`: {id, prompt, explanation, category}."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise ValueError(f"no WISE prompt files (*.json) in {folder}; pass WISE's data folder")
    prompts = []
    for path in files:
        for record in json.loads(path.read_text(encoding="utf-8")):
            text = record.get("Prompt") or record.get("prompt")
            if not isinstance(text, str):
                raise ValueError(f"{path}: a record without a 'Prompt' string: {str(record)[:200]}")
            prompts.append({"id": record.get("prompt_id", len(prompts)), "prompt": text,
                            "explanation": record.get("Explanation") or record.get("explanation") or "",
                            "category": wise_category(record, path.name)})
    return prompts


def wiscore(consistency: float, realism: float, aesthetic: float) -> float:
    """One image, each judge score 0 to 2 -> 0 to 1."""
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic) / 2


def wise_overall(per_category: dict[str, float]) -> float:
    """The weighted overall; every category must be present."""
    missing = set(WISE_WEIGHTS) - set(per_category)
    if missing:
        raise ValueError(f"WISE overall needs every category; missing {sorted(missing)}")
    return sum(w * per_category[c] for c, w in WISE_WEIGHTS.items())


def score_wise(prompts: list[dict], images: list[np.ndarray], judge) -> dict:
    per_category: dict[str, list[float]] = defaultdict(list)
    errors = []
    for p, image in zip(prompts, images):
        verdict = judge.score([image], WISE_INSTRUCTION.format(prompt=p["prompt"], explanation=p["explanation"]),
                              keys=("consistency", "realism", "aesthetic_quality"), scale=(0, 2))
        if verdict.scores is None:
            errors.append({"id": p["id"], "error": verdict.error})
            continue
        s = verdict.scores
        per_category[p["category"]].append(wiscore(s["consistency"], s["realism"], s["aesthetic_quality"]))
    means = {c: float(np.mean(v)) for c, v in per_category.items()}
    result = {"judge_model": judge.model, "per_category": means, "scored": sum(map(len, per_category.values())),
              "judge_errors": errors}
    result["overall"] = wise_overall(means) if set(WISE_WEIGHTS) <= set(means) else None
    return result


# --------------------------------------------------------------------------------------------------
# GEdit-Bench

GEDIT_SC = ("You compare a source image (first) and an edited image (second) for the instruction: "
            "\"{instruction}\". Score editing_success (how fully the instruction is carried out, 0 to 10) and "
            "over_editing (10 = nothing changed that the instruction did not ask for, 0 to 10).")
GEDIT_PQ = "Score the edited image's naturalness (0 to 10) and artifacts (10 = no artifacts, 0 to 10)."


def read_gedit_records(path: str | Path) -> list[dict]:
    """JSONL: {"id", "source_image" (path relative to the file), "instruction", "group", "language"}."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found; pass a JSONL of GEdit-Bench records")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        missing = [k for k in ("source_image", "instruction", "group") if k not in r]
        if missing:
            raise ValueError(f"{path}:{n}: missing {missing}")
        r["source_image"] = str((path.parent / r["source_image"]).resolve())
        r.setdefault("language", "en")
        r.setdefault("id", str(n))
        records.append(r)
    return records


def gedit_sample(editing_success: float, over_editing: float, naturalness: float, artifacts: float) -> dict:
    sc, pq = min(editing_success, over_editing), min(naturalness, artifacts)
    return {"sc": sc, "pq": pq, "o": math.sqrt(sc * pq)}


def gedit_summary(samples: list[tuple[str, dict]]) -> dict:
    """(group, {sc, pq, o}) per sample -> group means and their unweighted means G_SC, G_PQ, G_O."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for group, s in samples:
        groups[group].append(s)
    per_group = {g: {k: float(np.mean([s[k] for s in v])) for k in ("sc", "pq", "o")} for g, v in sorted(groups.items())}
    out = {"per_group": per_group}
    for k, name in (("sc", "G_SC"), ("pq", "G_PQ"), ("o", "G_O")):
        out[name] = float(np.mean([v[k] for v in per_group.values()])) if per_group else float("nan")
    return out


def score_gedit(records: list[dict], sources: list[np.ndarray], edited: list[np.ndarray], judge,
                language: str | None = "en") -> dict:
    scored, errors = [], []
    for r, src, out in zip(records, sources, edited):
        if language and r["language"] != language:
            continue
        sc = judge.score([src, out], GEDIT_SC.format(instruction=r["instruction"]),
                         keys=("editing_success", "over_editing"), scale=(0, 10))
        pq = judge.score([out], GEDIT_PQ, keys=("naturalness", "artifacts"), scale=(0, 10))
        if sc.scores is None or pq.scores is None:
            errors.append({"id": r["id"], "error": sc.error or pq.error})
            continue
        scored.append((r["group"], gedit_sample(sc.scores["editing_success"], sc.scores["over_editing"],
                                                pq.scores["naturalness"], pq.scores["artifacts"])))
    return {"judge_model": judge.model, "scored": len(scored), "judge_errors": errors, **gedit_summary(scored)}


# --------------------------------------------------------------------------------------------------
# Running them with a pipeline


def _load_rgb(path: str, size: int) -> np.ndarray:
    from arm.images import square_rgb

    with Image.open(path) as im:
        return square_rgb(im, size)


def run_geneval(pipe, metadata: str | Path, out: str | Path, images_per_prompt: int = 4, guidance=None,
                sampling=None) -> Path:
    records = read_geneval_metadata(metadata)
    images = pipe.generate([r["prompt"] for r in records for _ in range(images_per_prompt)], guidance, sampling)
    grouped = [list(images[i * images_per_prompt:(i + 1) * images_per_prompt]) for i in range(len(records))]
    return write_geneval(records, grouped, out)


def run_wise(pipe, prompt_folder: str | Path, judge, out: str | Path, guidance=None, sampling=None) -> dict:
    prompts = read_wise_prompts(prompt_folder)
    images = pipe.generate([p["prompt"] for p in prompts], guidance, sampling)
    result = score_wise(prompts, list(images), judge)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "wise.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_gedit(pipe, records_path: str | Path, judge, out: str | Path, guidance=None, sampling=None,
              language: str | None = "en") -> dict:
    records = read_gedit_records(records_path)
    sources = np.stack([_load_rgb(r["source_image"], pipe.image_size) for r in records])
    edited = pipe.edit(sources, [r["instruction"] for r in records], guidance, sampling)
    result = score_gedit(records, list(sources), list(edited), judge, language)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gedit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
