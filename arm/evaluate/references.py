"""Scores for records the world's verifier does not know (a user's images and texts), against each
record's own reference, through the same `Pipeline` a user calls:

- understanding (`und/exact_match`, `und/token_f1`, per task): answers and captions against the
  reference text, after SQuAD's normalisation (lower case, no punctuation, no articles);
- editing (`edit/target_psnr`, `edit/kept_psnr`): PSNR of the edited image to the target image, and
  to the source on the pixels the target kept from the source (what an edit should leave alone);
- generation: the images for the grids, and `gen/agreement` (does the image show its prompt?) when the
  stage hands in an agreement judge (`arm.evaluate.agreement`); FID against the split's images is the
  stage's, over all generated images at once.

>>> exact_match("The red circle.", "red circle"), round(token_f1("a big red circle", "red circle"), 3)
(True, 0.8)
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from arm.evaluate.samples import generated_images, values_since
from arm.model.sequences import DESCRIBE

# A pixel counts as kept by the edit when no channel of the target moved more than this from the source.
KEPT_TOLERANCE = 12


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and the articles a/an/the removed, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (both empty: 1)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """PSNR in dB of two uint8 images (H, W, 3), over the (H, W) `mask` if given (None if it is empty);
    identical images give 100."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return None
        diff = diff[mask]
    mse = float(diff.mean())
    return 100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def kept_mask(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, W) True where the target kept the source's pixel (every channel within KEPT_TOLERANCE)."""
    return (np.abs(source.astype(np.int16) - target.astype(np.int16)) <= KEPT_TOLERANCE).all(-1)


def evaluate_understanding(pipe, data, settings, samples) -> dict:
    """Questions, captions and text questions without world meta, against their reference answers."""
    first = len(samples.scores)
    records = data.reference_task("vqa", settings.limit) + data.reference_task("caption", settings.limit)
    text = data.reference_task("text", settings.limit)
    if records:
        images = data.images([r["image"] for r in records])
        questions = [r["text"] if r["task"] == "vqa" else DESCRIBE for r in records]
        explained = pipe.explain(images, questions)
        for r, image, q, (prediction, description) in zip(records, images, questions, explained):
            reference = r["answer"] if r["task"] == "vqa" else r["text"]
            right = exact_match(prediction, reference)
            samples.add("und/exact_match", r["task"], right, r["id"])
            samples.add("und/token_f1", r["task"], token_f1(prediction, reference), r["id"])
            samples.understanding.append({"image": image, "question": q, "answer": reference,
                                          "prediction": prediction, "correct": right, "description": description})
    if text:
        predictions = pipe.understand(None, [r["text"] for r in text])
        for prediction, r in zip(predictions, text):
            samples.add("und/exact_match", "text", exact_match(prediction, r["answer"]), r["id"])
            samples.add("und/token_f1", "text", token_f1(prediction, r["answer"]), r["id"])
    return values_since(samples, first)


def evaluate_editing(pipe, data, settings, samples) -> dict:
    """Edits without world meta: PSNR to the target, and to the source where the target kept it."""
    records = data.reference_task("edit", settings.limit)
    if not records:
        return {}
    first = len(samples.scores)
    sources = data.images([r["source_image"] for r in records])
    targets = data.images([r["target_image"] for r in records])
    edited = pipe.edit(sources, [r["text"] for r in records], settings.seed, settings.sampling)
    for r, source, target, image in zip(records, sources, targets, edited):
        to_target = psnr(image, target)
        kept = psnr(image, source, kept_mask(source, target))
        samples.add("edit/target_psnr", None, to_target, r["id"])
        if kept is not None:
            samples.add("edit/kept_psnr", None, kept, r["id"])
        samples.editing.append({"source": source, "instruction": r["text"], "image": image, "target": target,
                                "scores": f"to target {to_target:.1f} dB"
                                          + (f" · kept {kept:.1f} dB" if kept is not None else "")})
    out = values_since(samples, first)
    out["edit/count"] = len(records)
    return out


def evaluate_generation(pipe, data, settings, samples, judge=None) -> dict:
    """Prompts without world meta: `samples_per_prompt` images each (kept in `samples.generation` for the
    grids and the stage's FID); with `judge`, whether each image shows its prompt (`gen/agreement`)."""
    records = data.reference_task("t2i", settings.limit)
    if not records:
        return {}
    first = len(samples.scores)
    images, items = generated_images(pipe, records, settings)
    agrees = judge.agrees(images, [r["text"] for r, _ in items]) if judge is not None else [None] * len(images)
    for image, (r, item), agreed in zip(images, items, agrees):
        if agreed is not None:
            samples.add("gen/agreement", None, agreed, item)
        samples.generation.append({"prompt": r["text"], "image": image, "passed": agreed, "reference": True,
                                   "verdict": None if agreed is None else ("shows it" if agreed else "does not")})
    out = values_since(samples, first)
    out["gen/count"] = len(images)
    return out
