"""Every world score as a pure function of images, scenes and specs (docs/world.md, Scores).

Constraint counting, written down once because GenEval accuracy, the WISE-style consistency, G_SC and
the RL rewards all rest on it:

- A generation prompt states *atoms*: each object's shape and each attribute it names (colour, size,
  position), the relation if any, and one atom for "exactly these objects, no extra". Consistency is the
  best fraction of atoms met over assignments of parsed objects to the prompt's objects; a prompt
  *passes* (GenEval-style accuracy) when every atom is met.
- An edit's *instruction atoms* are the attributes it changes, checked where it acts (recolor: the
  colour; resize: the size; reshape: the shape; move: the object at its new cell and its old cell
  empty; remove: the cell empty; add: shape, colour and size at the cell). Its *preservation atoms* are
  the edited object's unchanged attributes, every untouched object unchanged, and no extra object.
  G_SC = 10 * (instruction fraction) * (preservation fraction): a no-op scores 0, a perfect edit 10,
  and an over-edit (an untouched object changed) lowers it in proportion.

>>> from arm.world.scene import Obj, Scene
>>> from arm.world.texts import parse_prompt
>>> spec = parse_prompt("a large red circle at the center")
>>> generation_pass(spec, Scene((Obj(cell=4, shape="circle", color="red", size="large"),)))
True
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from arm.world.render import render
from arm.world.scene import Scene
from arm.world.texts import Edit, GenSpec, parse_caption, relation_holds
from arm.world.verifier import foreground_mask, off_palette_fraction, parse, to_array

# --------------------------------------------------------------------------------------------------
# Generation


def generation_constraints(spec: GenSpec, scene: Scene) -> tuple[int, int]:
    """(atoms met, atoms stated) for the best assignment of the scene's objects to the spec's.

    >>> from arm.world.scene import Obj
    >>> from arm.world.texts import parse_prompt
    >>> spec = parse_prompt("a red circle to the left of a blue square")  # 2 + 2 + relation + count
    >>> circle, square = Obj(0, "circle", "red", "small"), Obj(4, "square", "blue", "large")
    >>> generation_constraints(spec, Scene((circle, square))), generation_constraints(spec, Scene((circle,)))
    ((6, 6), (2, 6))
    """
    total = sum(s.atoms() for s in spec.objects) + (1 if spec.relation else 0) + 1
    objs = list(scene.objects)
    n = len(spec.objects)
    count_ok = int(len(objs) == n)
    best = 0
    # Assign to each spec object a distinct parsed object or None (missing); at most 4! x small.
    pool = objs + [None] * n
    seen = set()
    for perm in itertools.permutations(range(len(pool)), n):
        key = tuple(p if p < len(objs) else None for p in perm)
        if key in seen:
            continue
        seen.add(key)
        chosen = [pool[p] for p in perm]
        met = sum(s.met(o) for s, o in zip(spec.objects, chosen) if o is not None)
        if spec.relation:
            a, rel, b = spec.relation
            if chosen[a] is not None and chosen[b] is not None and relation_holds(chosen[a], rel, chosen[b]):
                met += 1
        best = max(best, met)
        if best + count_ok == total:
            break
    return best + count_ok, total


def generation_pass(spec: GenSpec, scene: Scene) -> bool:
    met, total = generation_constraints(spec, scene)
    return met == total


def consistency(spec: GenSpec, scene: Scene) -> float:
    met, total = generation_constraints(spec, scene)
    return met / total


# --------------------------------------------------------------------------------------------------
# Image quality


def realism(image: Image.Image | np.ndarray, parsed: Scene | None = None, size: int = 64) -> float:
    """IoU between the image's non-background pixels and a re-render of its parsed scene (1 for a
    clean render; lower for smudges, partial or malformed shapes). Two empty canvases score 1."""
    pixels = to_array(image, size)
    parsed = parse(pixels, size) if parsed is None else parsed
    ours = foreground_mask(pixels, size)
    theirs = foreground_mask(render(parsed, size), size)
    union = (ours | theirs).sum()
    return 1.0 if union == 0 else float((ours & theirs).sum() / union)


def cleanliness(image: Image.Image | np.ndarray, size: int = 64) -> float:
    """1 minus the fraction of pixels farther than 30 from the background and every palette colour."""
    return 1.0 - off_palette_fraction(image, size, tolerance=30.0)


def knowledge_score(spec: GenSpec, image: Image.Image | np.ndarray, size: int = 64) -> float:
    """WISE-style: 0.7 * consistency + 0.2 * realism + 0.1 * cleanliness."""
    pixels = to_array(image, size)
    parsed = parse(pixels, size)
    return 0.7 * consistency(spec, parsed) + 0.2 * realism(pixels, parsed, size) + 0.1 * cleanliness(pixels, size)


# --------------------------------------------------------------------------------------------------
# Editing


@dataclass(frozen=True)
class EditScore:
    instruction_met: int
    instruction_total: int
    preserved: int
    preservation_total: int
    g_sc: float
    g_pq: float

    @property
    def g_o(self) -> float:
        return math.sqrt(self.g_sc * self.g_pq)


def edit_atoms(source: Scene, edit: Edit, result: Scene) -> tuple[int, int, int, int]:
    """(instruction met, instruction total, preservation met, preservation total)."""
    target = edit.target
    instr_met = instr_total = pres_met = pres_total = 0
    touched = {c for c in (edit.source_cell, edit.target_cell) if c is not None}
    got_at = result.at
    if edit.type in ("recolor", "resize", "reshape"):
        want, got = target.at(edit.target_cell), got_at(edit.target_cell)
        changed = {"recolor": "color", "resize": "size", "reshape": "shape"}[edit.type]
        instr_total += 1
        instr_met += got is not None and getattr(got, changed) == getattr(want, changed)
        for attr in {"color", "size", "shape"} - {changed}:
            pres_total += 1
            pres_met += got is not None and getattr(got, attr) == getattr(want, attr)
    elif edit.type == "move":
        want, got = target.at(edit.target_cell), got_at(edit.target_cell)
        instr_total += 2
        instr_met += got is not None and got.key == want.key
        instr_met += got_at(edit.source_cell) is None
    elif edit.type == "remove":
        instr_total += 1
        instr_met += got_at(edit.source_cell) is None
    elif edit.type == "add":
        want, got = target.at(edit.target_cell), got_at(edit.target_cell)
        instr_total += 3
        if got is not None:
            instr_met += (got.shape == want.shape) + (got.color == want.color) + (got.size == want.size)
    else:
        raise ValueError(f"unknown edit type {edit.type!r}")
    # Every untouched object unchanged, and nothing where the target has nothing.
    for obj in target.objects:
        if obj.cell in touched:
            continue
        pres_total += 1
        got = got_at(obj.cell)
        pres_met += got is not None and got.key == obj.key
    empty = [c for c in range(9) if target.at(c) is None and c not in touched]
    pres_total += 1
    pres_met += all(got_at(c) is None for c in empty)
    return instr_met, instr_total, pres_met, pres_total


def edit_score(source: Scene, edit: Edit, image: Image.Image | np.ndarray, size: int = 64) -> EditScore:
    """GEdit-style G_SC and G_PQ (0 to 10) of an edited image; G_O = sqrt(G_SC * G_PQ).

    >>> from arm.world.scene import Obj
    >>> source = Scene((Obj(0, "circle", "red", "small"), Obj(4, "square", "blue", "large")))
    >>> target = Scene((Obj(0, "circle", "green", "small"), Obj(4, "square", "blue", "large")))
    >>> edit = Edit("recolor", "make the circle green", target, source_cell=0, target_cell=0)
    >>> done, noop = edit_score(source, edit, render(target)), edit_score(source, edit, render(source))
    >>> (done.g_sc, done.g_pq, done.g_o), (noop.g_sc, noop.g_o)
    ((10.0, 10.0, 10.0), (0.0, 0.0))
    """
    pixels = to_array(image, size)
    result = parse(pixels, size)
    im, it, pm, pt = edit_atoms(source, edit, result)
    g_sc = 10.0 * (im / it) * (pm / pt)
    g_pq = 10.0 * realism(pixels, result, size)
    return EditScore(im, it, pm, pt, g_sc, g_pq)


def g_o(scores: list[EditScore]) -> float:
    """Mean over samples of sqrt(G_SC * G_PQ)."""
    return float(np.mean([s.g_o for s in scores])) if scores else float("nan")


# --------------------------------------------------------------------------------------------------
# Understanding


def normalise_answer(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".?!").split())


def answer_correct(question_type: str, prediction: str, answer: str) -> bool:
    """Exact match after normalisation; `describe` compares the parsed scenes, so any caption naming the
    exact scene is right.

    >>> [answer_correct("where", p, "top left") for p in (" Top  Left.", "the top left")]
    [True, False]
    >>> answer_correct("describe", "A large blue square at the center and a small red circle at the top.",
    ...                "a small red circle at the top and a large blue square at the center")
    True
    """
    if question_type == "describe":
        try:
            return parse_caption(normalise_answer(prediction)) == parse_caption(normalise_answer(answer))
        except ValueError:
            return False
    return normalise_answer(prediction) == normalise_answer(answer)


def understanding_accuracy(records: list[tuple[str, str, str]]) -> dict[str, float]:
    """Accuracy per question type and overall from (question type, prediction, answer) triples."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for qtype, prediction, answer in records:
        hits[qtype].append(answer_correct(qtype, prediction, answer))
    out = {qtype: float(np.mean(v)) for qtype, v in sorted(hits.items())}
    out["overall"] = float(np.mean([x for v in hits.values() for x in v])) if hits else float("nan")
    return out


def generation_accuracy(results: list[tuple[str, bool]]) -> dict[str, float]:
    """Pass rate per category and overall from (category, passed) pairs."""
    by: dict[str, list[bool]] = defaultdict(list)
    for category, passed in results:
        by[category].append(passed)
    out = {c: float(np.mean(v)) for c, v in sorted(by.items())}
    out["overall"] = float(np.mean([x for v in by.values() for x in v])) if by else float("nan")
    return out

