"""Canonical texts of the Shapes world: captions, generation prompts with their constraints, edit
instructions with their target scenes, questions with answers, and text-only knowledge QA.

Generation prompts carry a `GenSpec`: the constraints the prompt states. A scene satisfies a prompt
when some assignment of its objects to the spec's objects meets every stated attribute and relation
and no object is left over (GenEval's rule). `parse_prompt` reads any canonical prompt back into its
spec, so prompts typed by a user are scored the same way as generated ones.

>>> spec = parse_prompt("a red circle at the top left and a small blue square at the center")
>>> [(o.color, o.shape, o.size, o.cell) for o in spec.objects]
[('red', 'circle', None, 0), ('blue', 'square', 'small', 4)]
>>> spec.text
'a red circle at the top left and a small blue square at the center'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from arm.world.scene import (
    COLORS, HOLDOUT_PAIRS, NUMBER_WORDS, PLURALS, POSITIONS, SEEN_THINGS, SHAPES,
    THING_COLOR, Obj, Scene, cell_row_col, sample_object, with_jitter,
)

GEN_CATEGORIES = ("single", "two", "three", "counting", "relation", "knowledge")
RELATIONS = ("to the left of", "to the right of", "above", "below")
EDIT_TYPES = ("recolor", "move", "remove", "add", "resize", "reshape")
QUESTION_TYPES = ("color", "shape", "where", "count_shape", "count_color", "exists", "describe")


# --------------------------------------------------------------------------------------------------
# Object phrases and captions


def object_phrase(shape: str, color: str | None = None, size: str | None = None, cell: int | None = None) -> str:
    """`a {size} {color} {shape} at the {position}`, each of size, colour and position optional."""
    words = ["a"] + [w for w in (size, color) if w] + [shape]
    text = " ".join(words)
    return text + (f" at the {POSITIONS[cell]}" if cell is not None else "")


def caption(scene: Scene) -> str:
    """The canonical caption: every object, row-major, fully specified, joined by ` and `."""
    return " and ".join(object_phrase(o.shape, o.color, o.size, o.cell) for o in scene.objects)


def relation_holds(a: Obj, relation: str, b: Obj) -> bool:
    """Strict grid relation of a to b, by column or row."""
    (ra, ca), (rb, cb) = cell_row_col(a.cell), cell_row_col(b.cell)
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


# --------------------------------------------------------------------------------------------------
# Referring expressions


def refer(obj: Obj, scene: Scene) -> str:
    """The shortest unique expression for `obj` in `scene` (without the article)."""
    others = [o for o in scene.objects if o.cell != obj.cell]
    if not any(o.shape == obj.shape for o in others):
        return obj.shape
    if not any(o.shape == obj.shape and o.color == obj.color for o in others):
        return f"{obj.color} {obj.shape}"
    if not any(o.shape == obj.shape and o.color == obj.color and o.size == obj.size for o in others):
        return f"{obj.size} {obj.color} {obj.shape}"
    return f"{obj.shape} at the {obj.position}"


def resolve(ref: str, scene: Scene) -> Obj:
    """The object a referring expression names; ValueError when none or several match."""
    m = re.fullmatch(r"(?:(small|large) )?(?:(\w+) )?(\w+)(?: at the (.+))?", ref)
    if not m:
        raise ValueError(f"cannot read the reference {ref!r}")
    size, color, shape, position = m.groups()
    cell = POSITIONS.index(position) if position else None
    hits = [o for o in scene.objects
            if o.shape == shape and (color is None or o.color == color)
            and (size is None or o.size == size) and (cell is None or o.cell == cell)]
    if len(hits) != 1:
        raise ValueError(f"{ref!r} matches {len(hits)} objects")
    return hits[0]


# --------------------------------------------------------------------------------------------------
# Generation prompts


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt says about one object; None = free."""

    shape: str
    color: str | None = None
    size: str | None = None
    cell: int | None = None

    def atoms(self) -> int:
        return 1 + sum(x is not None for x in (self.color, self.size, self.cell))

    def met(self, obj: Obj) -> int:
        return ((obj.shape == self.shape) + (self.color is not None and obj.color == self.color)
                + (self.size is not None and obj.size == self.size)
                + (self.cell is not None and obj.cell == self.cell))

    def matches(self, obj: Obj) -> bool:
        return self.met(obj) == self.atoms()


@dataclass(frozen=True)
class GenSpec:
    """A generation prompt: its text, category, object constraints and an optional relation
    (index a, relation, index b) between two of them."""

    text: str
    category: str
    objects: tuple[ObjectSpec, ...]
    relation: tuple[int, str, int] | None = None
    thing: str | None = None  # knowledge prompts: the thing whose colour is asked for

    def to_dict(self) -> dict:
        return {"text": self.text, "category": self.category,
                "objects": [vars(o) for o in self.objects],
                "relation": list(self.relation) if self.relation else None, "thing": self.thing}

    @classmethod
    def from_dict(cls, d: dict) -> "GenSpec":
        rel = d.get("relation")
        return cls(text=d["text"], category=d["category"],
                   objects=tuple(ObjectSpec(**o) for o in d["objects"]),
                   relation=(int(rel[0]), rel[1], int(rel[2])) if rel else None, thing=d.get("thing"))


def _drop(rng: np.random.Generator, value, p: float):
    return None if rng.random() < p else value


def _spec_of(obj: Obj, rng: np.random.Generator, p_drop: float) -> ObjectSpec:
    return ObjectSpec(obj.shape, _drop(rng, obj.color, p_drop), _drop(rng, obj.size, p_drop),
                      _drop(rng, obj.cell, p_drop))


def _phrase(s: ObjectSpec) -> str:
    return object_phrase(s.shape, s.color, s.size, s.cell)


def prompt_for_scene(scene: Scene, category: str, rng: np.random.Generator, p_drop: float = 0.25,
                     things: tuple[str, ...] = SEEN_THINGS) -> GenSpec:
    """A prompt of `category` that `scene` satisfies. The scene must fit the category (see
    `sample_scene_for_category`)."""
    objs = scene.objects
    if category in ("single", "two", "three"):
        specs = tuple(_spec_of(o, rng, p_drop) for o in objs)
        return GenSpec(" and ".join(_phrase(s) for s in specs), category, specs)
    if category == "counting":
        n = len(objs)
        shape, color = objs[0].shape, objs[0].color
        noun = shape if n == 1 else PLURALS[shape]
        specs = tuple(ObjectSpec(shape, color) for _ in objs)
        return GenSpec(f"{NUMBER_WORDS[n]} {color} {noun}", category, specs)
    if category == "relation":
        a, b = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        relation = [r for r in RELATIONS if relation_holds(a, r, b)]
        rel = relation[rng.integers(len(relation))]
        specs = (ObjectSpec(a.shape, a.color), ObjectSpec(b.shape, b.color))
        return GenSpec(f"a {a.color} {a.shape} {rel} a {b.color} {b.shape}", category, specs, (0, rel, 1))
    if category == "knowledge":
        (obj,) = objs
        options = [t for t in things if THING_COLOR[t] == obj.color]
        thing = options[rng.integers(len(options))]
        cell = _drop(rng, obj.cell, 0.5)
        text = f"a {obj.shape} with the color of {thing}" + (f" at the {POSITIONS[cell]}" if cell is not None else "")
        return GenSpec(text, category, (ObjectSpec(obj.shape, obj.color, None, cell),), thing=thing)
    raise ValueError(f"unknown generation category {category!r}; expected one of {GEN_CATEGORIES}")


def sample_scene_for_category(rng: np.random.Generator, category: str, jitter: float, *,
                              holdout: bool = False, max_objects: int = 3,
                              things: tuple[str, ...] = SEEN_THINGS) -> Scene:
    """A scene that a prompt of `category` can describe (counting: n identical colour-shape objects;
    relation: two objects in different rows or columns; knowledge: one object of a thing's colour)."""
    if category in ("single", "two", "three"):
        n = {"single": 1, "two": 2, "three": 3}[category]
        cells = rng.choice(9, size=n, replace=False)
        return Scene(tuple(sample_object(rng, int(c), jitter, holdout=holdout and i == 0)
                           for i, c in enumerate(cells)))
    if category == "counting":
        n = int(rng.integers(1, min(3, max_objects) + 1))
        first = sample_object(rng, 0, 0.0, holdout=holdout)
        cells = rng.choice(9, size=n, replace=False)
        return Scene(tuple(sample_object(rng, int(c), jitter, color=first.color, shape=first.shape,
                                         holdout=holdout) for c in cells))
    if category == "relation":
        cells = rng.choice(9, size=2, replace=False)  # two distinct cells differ in row or column
        return Scene(tuple(sample_object(rng, int(c), jitter, holdout=holdout and i == 0)
                           for i, c in enumerate(cells)))
    if category == "knowledge":
        color = THING_COLOR[things[rng.integers(len(things))]]
        return Scene((sample_object(rng, int(rng.integers(9)), jitter, color=color, holdout=holdout),))
    raise ValueError(f"unknown generation category {category!r}; expected one of {GEN_CATEGORIES}")


_OBJ_RE = (r"an? (?:(small|large) )?(?:(" + "|".join(COLORS) + r") )?(" + "|".join(SHAPES) + r")"
           r"(?: at the (" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r"))?")
_COUNT_RE = (r"(one|two|three|four) (" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")s?")
_REL_RE = (r"an? (" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r") (" + "|".join(RELATIONS)
           + r") an? (" + "|".join(COLORS) + r") (" + "|".join(SHAPES) + r")")
_KNOW_RE = (r"an? (" + "|".join(SHAPES) + r") with the colou?r of (.+?)"
            r"(?: at the (" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r"))?")


def parse_prompt(text: str) -> GenSpec:
    """Read a canonical generation prompt into its constraints; ValueError names what is not canonical."""
    t = " ".join(text.strip().lower().rstrip(".").split())
    if m := re.fullmatch(_COUNT_RE, t):
        n = NUMBER_WORDS.index(m[1])
        return GenSpec(t, "counting", tuple(ObjectSpec(m[3], m[2]) for _ in range(n)))
    if m := re.fullmatch(_REL_RE, t):
        specs = (ObjectSpec(m[2], m[1]), ObjectSpec(m[5], m[4]))
        return GenSpec(t, "relation", specs, (0, m[3], 1))
    if m := re.fullmatch(_KNOW_RE, t):
        if m[2] not in THING_COLOR:
            raise ValueError(f"unknown thing {m[2]!r} in {text!r}; known: {sorted(THING_COLOR)}")
        cell = POSITIONS.index(m[3]) if m[3] else None
        return GenSpec(t, "knowledge", (ObjectSpec(m[1], THING_COLOR[m[2]], None, cell),), thing=m[2])
    parts = t.split(" and ")
    specs = []
    for part in parts:
        m = re.fullmatch(_OBJ_RE, part)
        if not m:
            raise ValueError(f"not a canonical prompt: {text!r} (could not read {part!r})")
        size, color, shape, position = m.groups()
        specs.append(ObjectSpec(shape, color, size, POSITIONS.index(position) if position else None))
    if len(specs) > 3:
        raise ValueError(f"a prompt names at most three objects joined by 'and': {text!r}")
    return GenSpec(t, ("single", "two", "three")[len(specs) - 1], tuple(specs))


def parse_caption(text: str) -> Scene:
    """A canonical caption back to a scene (every attribute stated); ValueError when it is not one."""
    spec = parse_prompt(text) if text.strip() else GenSpec("", "single", ())
    objs = []
    for s in spec.objects:
        if s.color is None or s.size is None or s.cell is None or spec.category not in ("single", "two", "three"):
            raise ValueError(f"not a canonical caption: {text!r}")
        objs.append(Obj(cell=s.cell, shape=s.shape, color=s.color, size=s.size))
    try:
        return Scene(tuple(objs))
    except AssertionError as e:
        raise ValueError(f"caption puts two objects in one cell: {text!r}") from e


# --------------------------------------------------------------------------------------------------
# Edits


@dataclass(frozen=True)
class Edit:
    """An instruction applied to a source scene: the target scene and which cells it touches."""

    type: str
    instruction: str
    target: Scene
    # The edited object's cell in the source (None for add) and in the target (None for remove).
    source_cell: int | None
    target_cell: int | None

    def to_dict(self) -> dict:
        return {"type": self.type, "instruction": self.instruction, "target": self.target.to_dict(),
                "source_cell": self.source_cell, "target_cell": self.target_cell}

    @classmethod
    def from_dict(cls, d: dict) -> "Edit":
        return cls(d["type"], d["instruction"], Scene.from_dict(d["target"]), d["source_cell"], d["target_cell"])


def _choice(rng: np.random.Generator, items):
    items = list(items)
    return items[rng.integers(len(items))]


def sample_edit(scene: Scene, rng: np.random.Generator, jitter: float, *, max_objects: int = 3,
                allow_holdout: bool = False, types: tuple[str, ...] = EDIT_TYPES) -> Edit | None:
    """A random valid edit of `scene`: never a held-out pair unless allowed, at least one object left,
    at most `max_objects`. None when no edit type applies."""
    ok_pair = (lambda c, s: allow_holdout or (c, s) not in HOLDOUT_PAIRS)
    options = []
    for t in types:
        if t in ("recolor", "resize", "reshape", "move", "remove") and not scene.objects:
            continue
        if t == "remove" and len(scene.objects) < 2:
            continue
        if t in ("move", "add") and not scene.free_cells():
            continue
        if t == "add" and len(scene.objects) >= max_objects:
            continue
        options.append(t)
    rng.shuffle(options)
    for t in options:
        if t == "add":
            cell = _choice(rng, scene.free_cells())
            new = sample_object(rng, cell, jitter, holdout=False)
            instr = f"add {object_phrase(new.shape, new.color, new.size, new.cell)}"
            return Edit(t, instr, scene.add(new), None, cell)
        obj = _choice(rng, scene.objects)
        ref = refer(obj, scene)
        if t == "recolor":
            colors = [c for c in COLORS if c != obj.color and ok_pair(c, obj.shape)]
            new = replace(obj, color=_choice(rng, colors))
            return Edit(t, f"make the {ref} {new.color}", scene.replace_object(obj, new), obj.cell, obj.cell)
        if t == "resize":
            new = replace(obj, size="small" if obj.size == "large" else "large")
            return Edit(t, f"make the {ref} {new.size}", scene.replace_object(obj, new), obj.cell, obj.cell)
        if t == "reshape":
            shapes = [s for s in SHAPES if s != obj.shape and ok_pair(obj.color, s)]
            new = replace(obj, shape=_choice(rng, shapes))
            return Edit(t, f"turn the {ref} into a {new.shape}", scene.replace_object(obj, new), obj.cell, obj.cell)
        if t == "move":
            new = with_jitter(replace(obj, cell=_choice(rng, scene.free_cells())), rng, jitter)
            return Edit(t, f"move the {ref} to the {new.position}", scene.replace_object(obj, new), obj.cell, new.cell)
        if t == "remove":
            return Edit(t, f"remove the {ref}", scene.replace_object(obj, None), obj.cell, None)
    return None


# --------------------------------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class Question:
    type: str
    text: str
    answer: str


def sample_question(scene: Scene, rng: np.random.Generator, qtype: str | None = None,
                    allow_holdout: bool = False) -> Question:
    """A question about `scene` and its exact answer. Existence questions never name a held-out pair
    unless allowed."""
    qtype = qtype or _choice(rng, QUESTION_TYPES)
    if qtype in ("color", "shape", "where"):
        obj = _choice(rng, scene.objects)
        ref = refer(obj, scene)
        text = {"color": f"what color is the {ref}?", "shape": f"what shape is the {ref}?",
                "where": f"where is the {ref}?"}[qtype]
        return Question(qtype, text, {"color": obj.color, "shape": obj.shape, "where": obj.position}[qtype])
    if qtype == "count_shape":
        # Mostly shapes that are present, sometimes absent ones (answer zero).
        shape = _choice(rng, [o.shape for o in scene.objects]) if rng.random() < 0.8 else _choice(rng, SHAPES)
        n = sum(o.shape == shape for o in scene.objects)
        return Question(qtype, f"how many {PLURALS[shape]} are there?", NUMBER_WORDS[n])
    if qtype == "count_color":
        color = _choice(rng, [o.color for o in scene.objects]) if rng.random() < 0.8 else _choice(rng, COLORS)
        n = sum(o.color == color for o in scene.objects)
        return Question(qtype, f"how many {color} objects are there?", NUMBER_WORDS[n])
    if qtype == "exists":
        present = {(o.color, o.shape) for o in scene.objects}
        if rng.random() < 0.5:
            color, shape = _choice(rng, sorted(present))
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES
                      if (c, s) not in present and (allow_holdout or (c, s) not in HOLDOUT_PAIRS)]
            color, shape = _choice(rng, absent)
        return Question(qtype, f"is there a {color} {shape}?", "yes" if (color, shape) in present else "no")
    if qtype == "describe":
        return Question(qtype, "describe the image.", caption(scene))
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def knowledge_qa() -> list[tuple[str, str, bool]]:
    """Every (question, answer, held_out) of the text-only knowledge table."""
    from arm.world.scene import HELD_OUT_THINGS

    return [(f"what color is {thing}?", THING_COLOR[thing], thing in HELD_OUT_THINGS) for thing in THING_COLOR]

