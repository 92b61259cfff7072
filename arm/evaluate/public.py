"""Adapters for the public benchmarks. Nothing is downloaded: the user supplies each benchmark's files,
and its judge prompts come from those files, not from our paraphrase.

- GenEval: read `evaluation_metadata.jsonl`, write `<out>/<index:05d>/metadata.jsonl` and
  `<out>/<index:05d>/samples/<k:05d>.png`, the layout GenEval's own `evaluate_images.py` reads, so its
  scorer runs unchanged.
- WISE: from a checkout of its repository, the prompt files and the judge prompt of its evaluation
  script (the verified protocol, one binary score, or the original GPT-4o one, consistency, realism and
  aesthetic quality from 0 to 2: WiScore = (0.7 C + 0.2 R + 0.1 A) / 2); categories by prompt_id and
  their weights as its scorers have them.
- GEdit-Bench: its released dataset folder (records of key, task type, instruction, language, source
  image) and the VIEScore prompts of a Step1X-Edit checkout; SC = min(editing success, over-editing),
  PQ = min(naturalness, artifacts), O = sqrt(SC x PQ) per sample; means per task type; G_SC, G_PQ, G_O =
  their unweighted means, overall and on the records whose edit region intersects (`intersection`).

The judge is an OpenAI-compatible endpoint named in the config (`evaluate.judge_base_url`,
`evaluate.judge_model`) and recorded with the scores. Judge failures are counted per benchmark and left
out of the means (see `arm.evaluate.judge`).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
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
# Reading a benchmark's own prompt text out of its scripts


def python_constants(path: Path) -> dict[str, str]:
    """Module-level string constants of a Python file (`NAME = "..."`), read with `ast`, never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def render_fstring(node: ast.JoinedStr, fields: dict[str, str], source: str) -> str:
    """An f-string of a benchmark's script with its `record['Field']` parts filled from `fields`."""
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif (isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Subscript)
              and isinstance(value.value.slice, ast.Constant) and value.value.slice.value in fields):
            parts.append(str(fields[value.value.slice.value]))
        else:
            raise ValueError(f"{source}: the judge prompt has a part this adapter cannot fill "
                             f"({ast.unparse(value)}); a newer version of the benchmark?")
    return "".join(parts)


def message_texts(path: Path, function: str) -> tuple[str | None, ast.JoinedStr]:
    """From the function that builds a judge's chat messages: the system message's text (a constant) and
    the user prompt (the f-string that reads the record's `Prompt`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    fn = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if fn is None:
        raise ValueError(f"{path} has no function {function}(); is this the benchmark's evaluation script?")
    system = None
    for node in ast.walk(fn):
        if isinstance(node, ast.Dict):
            items = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
            if isinstance(items.get("role"), ast.Constant) and items["role"].value == "system":
                texts = [n.value for n in ast.walk(items.get("content")) if isinstance(n, ast.Constant)
                         and isinstance(n.value, str) and n.value not in ("text", "type")]
                system = max(texts, key=len) if texts else None
    prompt = next((n for n in ast.walk(fn) if isinstance(n, ast.JoinedStr)
                   and any(isinstance(v, ast.FormattedValue) and "Prompt" in ast.unparse(v) for v in n.values)), None)
    if prompt is None:
        raise ValueError(f"{path}: {function}() has no f-string reading the record's Prompt")
    return system, prompt


# --------------------------------------------------------------------------------------------------
# WISE, read from the user's checkout of its repository
#
# Two versions live in one checkout: the verified protocol (the root's vllm_eval.py and data_verified/, one
# binary score) and the original GPT-4o protocol (WISE_legacy/gpt_eval.py and WISE_legacy/data/; older
# checkouts keep it at the root). The judge's prompt is read from those scripts; each version's official
# scorer buckets prompts by prompt_id and weighs the categories as below (Calculate.py,
# calculate_verified.py).

WISE_CATEGORIES = {
    "legacy": {"cultural": (1, 400), "time": (401, 567), "space": (568, 700), "biology": (701, 800),
               "physics": (801, 900), "chemistry": (901, 1000)},
    "verified": {"cultural": (1, 400), "time": (401, 520), "space": (521, 640), "biology": (641, 760),
                 "physics": (761, 880), "chemistry": (881, 1000)},
}
WISE_WEIGHTS = {
    "legacy": {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1},
    "verified": {"cultural": 0.4, "time": 0.12, "space": 0.12, "biology": 0.12, "physics": 0.12, "chemistry": 0.12},
}
WISE_MAX_TOKENS = {"legacy": 2000, "verified": 500}


@dataclass
class WiseSetup:
    version: str                 # legacy | verified
    script: Path                 # the evaluation script the judge's prompt is read from
    prompt_files: list[Path]
    system: str | None
    prompt: ast.JoinedStr

    def judge_text(self, record: dict) -> str:
        return render_fstring(self.prompt, {"Prompt": record["prompt"], "Explanation": record["explanation"]},
                              str(self.script))


def wise_setup(checkout: str | Path, version: str = "auto") -> WiseSetup:
    """The prompt files and the judge's prompt of a WISE checkout (`version`: verified, legacy, or auto:
    verified where the checkout has it)."""
    root = Path(checkout)
    candidates = {"verified": (root / "vllm_eval.py", root / "data_verified"),
                  "legacy": next(((d / "gpt_eval.py", d / "data") for d in (root / "WISE_legacy", root)
                                  if (d / "gpt_eval.py").is_file()), (root / "WISE_legacy" / "gpt_eval.py", root / "WISE_legacy" / "data"))}
    order = ["verified", "legacy"] if version == "auto" else [version]
    for name in order:
        if name not in candidates:
            raise ValueError(f"WISE version must be verified, legacy or auto, got {version!r}")
        script, data = candidates[name]
        if script.is_file() and data.is_dir():
            files = sorted(f for f in data.glob("*.json") if "rewrite" not in f.name and f.name != "merge.json")
            files = files or sorted(data.glob("merge.json"))
            if not files:
                raise ValueError(f"{data} holds no WISE prompt files (*.json)")
            system, prompt = message_texts(script, "build_evaluation_messages")
            return WiseSetup(name, script, files, system, prompt)
    raise ValueError(f"{root} is not a WISE checkout: expected vllm_eval.py with data_verified/, or "
                     "WISE_legacy/gpt_eval.py with WISE_legacy/data/ (clone the WISE repository and pass its folder)")


def read_wise_prompts(files: list[Path]) -> list[dict]:
    """Every record of WISE's prompt files: {id, prompt, explanation}."""
    prompts = []
    for path in files:
        for record in json.loads(path.read_text(encoding="utf-8")):
            if not isinstance(record.get("Prompt"), str) or not isinstance(record.get("prompt_id"), int):
                raise ValueError(f"{path}: a record without a Prompt string and an integer prompt_id: {str(record)[:200]}")
            prompts.append({"id": record["prompt_id"], "prompt": record["Prompt"],
                            "explanation": record.get("Explanation", "")})
    return prompts


def wise_category(prompt_id: int, version: str) -> str:
    for name, (low, high) in WISE_CATEGORIES[version].items():
        if low <= prompt_id <= high:
            return name
    raise ValueError(f"WISE prompt_id {prompt_id} is outside 1 to 1000")


_WISE_LEGACY = re.compile(r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*[:：]?\s*(\d)", re.IGNORECASE)
_WISE_VERIFIED = re.compile(r"\*{0,2}Score\*{0,2}\s*[:：]?\s*([01])\b", re.IGNORECASE)


def parse_wise_reply(text: str, version: str) -> dict[str, float]:
    """The scores a WISE judge's reply gives, read as the official scripts read them (labelled lines, or
    bare digits on their own lines); a reply without them is a JudgeError, never a zero."""
    from arm.evaluate.judge import JudgeError

    text = re.sub(r"<think>.*?</think>", "", text or "", flags=re.DOTALL)
    if version == "verified":
        match = _WISE_VERIFIED.search(text)
        bare = re.findall(r"(?m)^\s*([01])\s*$", text)
        if match:
            return {"score": float(match.group(1))}
        if len(bare) == 1:
            return {"score": float(bare[0])}
        raise JudgeError(f"no 'Score: 0' or 'Score: 1' in the reply: {text[:200]!r}")
    found = {k.lower().replace(" ", "_"): int(v) for k, v in _WISE_LEGACY.findall(text)}
    if not found:
        bare = re.findall(r"(?m)^\s*([0-2])\s*$", text)
        if len(bare) >= 3:
            found = dict(zip(("consistency", "realism", "aesthetic_quality"), map(int, bare)))
    missing = {"consistency", "realism", "aesthetic_quality"} - set(found)
    if missing or any(not 0 <= v <= 2 for v in found.values()):
        raise JudgeError(f"the reply lacks {sorted(missing) or 'scores from 0 to 2'}: {text[:200]!r}")
    return {k: float(found[k]) for k in ("consistency", "realism", "aesthetic_quality")}


def wiscore(consistency: float, realism: float, aesthetic: float) -> float:
    """One image, each judge score 0 to 2 -> 0 to 1 (the original protocol)."""
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic) / 2


def wise_overall(per_category: dict[str, float], version: str = "legacy") -> float:
    """The weighted overall; every category must be present."""
    weights = WISE_WEIGHTS[version]
    missing = set(weights) - set(per_category)
    if missing:
        raise ValueError(f"WISE overall needs every category; missing {sorted(missing)}")
    return sum(w * per_category[c] for c, w in weights.items())


def score_wise(setup: WiseSetup, prompts: list[dict], images: list[np.ndarray], judge) -> dict:
    per_category: dict[str, list[float]] = defaultdict(list)
    rows, errors = [], []
    for p, image in zip(prompts, images):
        verdict = judge.ask(setup.judge_text(p), [image], lambda reply: parse_wise_reply(reply, setup.version),
                            system=setup.system, text_first=True, max_tokens=WISE_MAX_TOKENS[setup.version])
        if verdict.scores is None:
            errors.append({"id": p["id"], "error": verdict.error})
            continue
        s = verdict.scores
        value = s["score"] if setup.version == "verified" else wiscore(s["consistency"], s["realism"], s["aesthetic_quality"])
        per_category[wise_category(p["id"], setup.version)].append(value)
        rows.append({"prompt_id": p["id"], **s})
    means = {c: float(np.mean(v)) for c, v in per_category.items()}
    result = {"benchmark": "wise", "version": setup.version, "judge_model": judge.model,
              "judge_prompt_from": str(setup.script), "per_category": means,
              "scored": sum(map(len, per_category.values())), "judge_errors": errors, "scores": rows}
    result["overall"] = wise_overall(means, setup.version) if set(WISE_WEIGHTS[setup.version]) <= set(means) else None
    return result


# --------------------------------------------------------------------------------------------------
# GEdit-Bench: its released data (a Hugging Face dataset folder) and the VIEScore prompts of the user's
# Step1X-Edit checkout (GEdit-Bench/viescore/vie_prompts.py), joined as VIEScore joins them for its
# text-image-editing task; SC = min(editing success, over-editing), PQ = min(naturalness, artifacts),
# O = sqrt(SC x PQ), means per task type, then their unweighted mean (calculate_statistics.py).

GEDIT_PROMPT_NAMES = ("_context_no_delimit", "_prompts_0shot_two_image_edit_rule", "_prompts_0shot_tie_rule_SC",
                      "_prompts_0shot_rule_PQ")


@dataclass
class GeditPrompts:
    source: Path
    sc: str         # with <instruction> to fill
    pq: str


def gedit_prompts(checkout: str | Path) -> GeditPrompts:
    """The SC and PQ prompts from a Step1X-Edit checkout (or the vie_prompts.py file itself)."""
    path = Path(checkout)
    if path.is_dir():
        path = next((p for p in (path / "GEdit-Bench" / "viescore" / "vie_prompts.py", path / "viescore" / "vie_prompts.py",
                                 path / "vie_prompts.py") if p.is_file()), path / "GEdit-Bench" / "viescore" / "vie_prompts.py")
    if not path.is_file():
        raise ValueError(f"{path} not found; pass your Step1X-Edit checkout (it holds GEdit-Bench/viescore/vie_prompts.py)")
    constants = python_constants(path)
    missing = [n for n in GEDIT_PROMPT_NAMES if n not in constants]
    if missing:
        raise ValueError(f"{path} lacks the VIEScore prompts {missing}; a newer version of GEdit-Bench?")
    context, two_image, sc_rule, pq_rule = (constants[n] for n in GEDIT_PROMPT_NAMES)
    return GeditPrompts(path, "\n".join([context, two_image, sc_rule]), "\n".join([context, pq_rule]))


def read_gedit_dataset(path: str | Path) -> list[dict]:
    """GEdit-Bench as released: a Hugging Face dataset folder (`save_to_disk`'s layout, or a snapshot
    `load_dataset` reads), split `train`. -> records {key, task_type, instruction, language,
    intersection_exist, source (PIL image)}."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} not found; pass your local copy of the GEdit-Bench dataset folder")
    try:
        import datasets
    except ImportError as e:
        raise ValueError("reading GEdit-Bench's released files needs the `datasets` package: pip install datasets") from e
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
    else:
        data = datasets.load_dataset(str(path))
    if isinstance(data, datasets.DatasetDict):
        data = data["train"] if "train" in data else next(iter(data.values()))
    missing = {"key", "task_type", "instruction", "instruction_language", "input_image"} - set(data.column_names)
    if missing:
        raise ValueError(f"{path} lacks GEdit-Bench's fields {sorted(missing)}; it has {data.column_names}")
    return [{"key": str(r["key"]), "task_type": r["task_type"], "instruction": r["instruction"],
             "language": r["instruction_language"], "intersection_exist": bool(r.get("Intersection_exist", False)),
             "source": r["input_image"]} for r in data]


def parse_viescore_reply(text: str) -> list[float]:
    """The `score` list of a VIEScore reply: the JSON object between its first `{` and last `}` (newlines
    dropped, a bare number wrapped in a list), every score from 0 to 10; else a JudgeError (VIEScore's own
    script falls back to a random guess; this counts the sample as a judge error instead)."""
    from arm.evaluate.judge import JudgeError

    text = text or ""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise JudgeError(f"no JSON object in the reply: {text[:200]!r}")
    try:
        obj = json.loads(text[start:end + 1].replace("\n", ""))
    except json.JSONDecodeError as e:
        raise JudgeError(f"reply is not valid JSON ({e}): {text[:200]!r}") from e
    scores = obj.get("score") if isinstance(obj, dict) else None
    scores = [scores] if isinstance(scores, (int, float)) and not isinstance(scores, bool) else scores
    if (not isinstance(scores, list) or not scores
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10 for v in scores)):
        raise JudgeError(f"no 'score' list of numbers from 0 to 10: {obj}")
    return [float(v) for v in scores]


def gedit_sample(sc_scores: list[float], pq_scores: list[float]) -> dict:
    sc, pq = min(sc_scores), min(pq_scores)
    return {"sc": sc, "pq": pq, "o": math.sqrt(sc * pq)}


def gedit_summary(samples: list[tuple[str, dict]]) -> dict:
    """(task type, {sc, pq, o}) per sample -> means per task type and their unweighted means G_SC, G_PQ, G_O."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for group, s in samples:
        groups[group].append(s)
    per_group = {g: {k: float(np.mean([s[k] for s in v])) for k in ("sc", "pq", "o")} for g, v in sorted(groups.items())}
    out = {"per_group": per_group}
    for k, name in (("sc", "G_SC"), ("pq", "G_PQ"), ("o", "G_O")):
        out[name] = float(np.mean([v[k] for v in per_group.values()])) if per_group else float("nan")
    return out


def score_gedit(prompts: GeditPrompts, records: list[dict], sources: list[np.ndarray], edited: list[np.ndarray],
                judge, language: str | None = "en") -> dict:
    """Each edit judged twice, as VIEScore does: SC with the source and the edit (resized to the source's
    size), PQ with the edit alone; the text first, then the images."""
    scored, rows, errors = [], [], []
    for r, src, out in zip(records, sources, edited):
        if language and r["language"] != language:
            continue
        out = np.asarray(Image.fromarray(np.asarray(out, np.uint8)).resize(src.shape[1::-1], Image.BICUBIC))
        sc = judge.ask(prompts.sc.replace("<instruction>", r["instruction"]), [src, out], parse_viescore_reply,
                       text_first=True)
        pq = judge.ask(prompts.pq, [out], parse_viescore_reply, text_first=True)
        if sc.scores is None or pq.scores is None:
            errors.append({"key": r["key"], "error": sc.error or pq.error})
            continue
        sample = gedit_sample(sc.scores, pq.scores)
        scored.append((r["task_type"], sample, r["intersection_exist"]))
        rows.append({"key": r["key"], "task_type": r["task_type"], "language": r["language"], **sample})
    result = {"benchmark": "gedit", "language": language, "judge_model": judge.model,
              "judge_prompts_from": str(prompts.source), "scored": len(scored), "judge_errors": errors,
              **gedit_summary([(g, s) for g, s, _ in scored]), "scores": rows}
    result["intersection"] = gedit_summary([(g, s) for g, s, both in scored if both])
    return result


def write_gedit_layout(out: Path, records: list[dict], sources: list[np.ndarray], edited: list[np.ndarray]) -> None:
    """GEdit-Bench's own layout, so its scripts can run on the same images:
    `fullset/<task_type>/<language>/<key>.png` and `<key>_SRCIMG.png`."""
    for r, src, image in zip(records, sources, edited):
        folder = out / "fullset" / r["task_type"] / r["language"]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"{r['key']}.png")
        Image.fromarray(np.asarray(src, np.uint8)).save(folder / f"{r['key']}_SRCIMG.png")


# --------------------------------------------------------------------------------------------------
# Running them with a pipeline


def run_geneval(pipe, metadata: str | Path, out: str | Path, images_per_prompt: int = 4, seed: int = 0,
                sampling=None) -> Path:
    records = read_geneval_metadata(metadata)
    images = pipe.generate([r["prompt"] for r in records for _ in range(images_per_prompt)], seed, sampling)
    grouped = [list(images[i * images_per_prompt:(i + 1) * images_per_prompt]) for i in range(len(records))]
    return write_geneval(records, grouped, out)


def run_wise(pipe, checkout: str | Path, judge, out: str | Path, seed: int = 0, sampling=None,
             version: str = "auto") -> dict:
    """Generate WISE's prompts, save them as `images/<prompt_id>.png` (its scripts' layout), judge them
    with the prompt read from the checkout's evaluation script, and write `wise.json`."""
    setup = wise_setup(checkout, version)
    prompts = read_wise_prompts(setup.prompt_files)
    images = pipe.generate([p["prompt"] for p in prompts], seed, sampling)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for p, image in zip(prompts, images):
        Image.fromarray(np.asarray(image, np.uint8)).save(out / "images" / f"{p['id']}.png")
    result = score_wise(setup, prompts, list(images), judge)
    (out / "wise.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_gedit(pipe, dataset: str | Path, prompts_checkout: str | Path, judge, out: str | Path, seed: int = 0,
              sampling=None, language: str | None = "en") -> dict:
    """Edit GEdit-Bench's sources (its released dataset folder), save them in its layout, judge them with
    the VIEScore prompts of the Step1X-Edit checkout, and write `gedit.json`."""
    from arm.images import square_rgb, to_rgb

    prompts = gedit_prompts(prompts_checkout)
    records = [r for r in read_gedit_dataset(dataset) if not language or r["language"] == language]
    if not records:
        raise ValueError(f"no GEdit-Bench records in language {language!r} in {dataset}")
    originals = [np.asarray(to_rgb(r["source"])) for r in records]
    model_inputs = np.stack([square_rgb(r["source"], pipe.image_size) for r in records])
    edited = pipe.edit(model_inputs, [r["instruction"] for r in records], seed, sampling)
    write_gedit_layout(Path(out), records, originals, list(edited))
    result = score_gedit(prompts, records, originals, list(edited), judge, language)
    (Path(out) / "gedit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
