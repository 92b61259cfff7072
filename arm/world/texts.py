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
    """`a {size} {color} {shape} at the {position}`, each of size, colour and position optional.

    >>> object_phrase("circle", "orange", "large", 8), object_phrase("diamond")
    ('a large orange circle at the bottom right', 'a diamond')
    """
    words = ["a"] + [w for w in (size, color) if w] + [shape]
    text = " ".join(words)
    return text + (f" at the {POSITIONS[cell]}" if cell is not None else "")


def caption(scene: Scene) -> str:
    """The canonical caption: every object, row-major, fully specified, joined by ` and `.

    >>> caption(Scene((Obj(7, "diamond", "yellow", "small"), Obj(1, "circle", "red", "large"))))
    'a large red circle at the top and a small yellow diamond at the bottom'
    """
    return " and ".join(object_phrase(o.shape, o.color, o.size, o.cell) for o in scene.objects)


def relation_holds(a: Obj, relation: str, b: Obj) -> bool:
    """Strict grid relation of a to b, by column or row.

    >>> a, b = Obj(0, "circle", "red", "small"), Obj(4, "square", "blue", "small")
    >>> [r for r in RELATIONS if relation_holds(a, r, b)]
    ['to the left of', 'above']
    """
    (ra, ca), (rb, cb) = cell_row_col(a.cell), cell_row_col(b.cell)
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


# --------------------------------------------------------------------------------------------------
# Referring expressions


def refer(obj: Obj, scene: Scene) -> str:
    """The shortest unique expression for `obj` in `scene` (without the article): the shape, else colour
    and shape, else size, colour and shape, else the shape and its position.

    >>> scene = Scene((Obj(0, "circle", "red", "small"), Obj(1, "circle", "red", "large"),
    ...                Obj(2, "circle", "blue", "small"), Obj(3, "square", "blue", "small")))
    >>> [refer(o, scene) for o in scene.objects]
    ['small red circle', 'large red circle', 'blue circle', 'square']
    """
    others = [o for o in scene.objects if o.cell != obj.cell]
    if not any(o.shape == obj.shape for o in others):
        return obj.shape
    if not any(o.shape == obj.shape and o.color == obj.color for o in others):
        return f"{obj.color} {obj.shape}"
    if not any(o.shape == obj.shape and o.color == obj.color and o.size == obj.size for o in others):
        return f"{obj.size} {obj.color} {obj.shape}"
    return f"{obj.shape} at the {obj.position}"


def resolve(ref: str, scene: Scene) -> Obj:
    """The object a referring expression names; ValueError when none or several match.

    >>> scene = Scene((Obj(0, "circle", "red", "small"), Obj(4, "circle", "blue", "large")))
    >>> resolve("blue circle", scene).cell
    4
    >>> resolve("circle", scene)
    Traceback (most recent call last):
    ValueError: 'circle' matches 2 objects
    """
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
    `sample_scene_for_category`).

    >>> scene = Scene((Obj(0, "square", "green", "large"), Obj(5, "square", "green", "small")))
    >>> prompt_for_scene(scene, "counting", np.random.default_rng(0)).text
    'two green squares'
    >>> knowledge = Scene((Obj(4, "circle", "yellow", "small"),))
    >>> prompt_for_scene(knowledge, "knowledge", np.random.default_rng(0)).text
    'a circle with the color of a lemon'
    """
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
    """Read a canonical generation prompt into its constraints; ValueError names what is not canonical.

    Case, surrounding spaces, a final full stop, `an` for `a` and `colour` for `color` are accepted.

    >>> spec = parse_prompt("An orange square to the left of a blue circle.")
    >>> spec.category, spec.relation
    ('relation', (0, 'to the left of', 1))
    >>> spec = parse_prompt("a diamond with the colour of a frog at the top")
    >>> spec.category, spec.thing, spec.objects[0]
    ('knowledge', 'a frog', ObjectSpec(shape='diamond', color='green', size=None, cell=1))
    >>> parse_prompt("three red circles").objects[0]
    ObjectSpec(shape='circle', color='red', size=None, cell=None)
    """
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
    """A canonical caption back to a scene (every attribute stated); ValueError when it is not one.

    >>> parse_caption("a small red circle at the top left").objects
    (Obj(cell=0, shape='circle', color='red', size='small', dx=0.0, dy=0.0),)
    >>> parse_caption("a red circle at the top left")
    Traceback (most recent call last):
    ValueError: not a canonical caption: 'a red circle at the top left'
    """
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
    at most `max_objects`. None when no edit type applies.

    >>> scene = Scene((Obj(4, "square", "blue", "large"),))
    >>> edit = sample_edit(scene, np.random.default_rng(0), 0.0, types=("resize",))
    >>> edit.instruction, edit.target.objects[0].size, (edit.source_cell, edit.target_cell)
    ('make the square small', 'small', (4, 4))
    >>> sample_edit(scene, np.random.default_rng(0), 0.0, types=("remove",)) is None  # never the only object
    True
    """
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
    unless allowed.

    >>> scene = Scene((Obj(0, "circle", "red", "small"), Obj(8, "circle", "blue", "large")))
    >>> sample_question(scene, np.random.default_rng(0), "count_shape")
    Question(type='count_shape', text='how many circles are there?', answer='two')
    >>> sample_question(scene, np.random.default_rng(0), "describe").answer
    'a small red circle at the top left and a large blue circle at the bottom right'
    """
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
    """Every (question, answer, held_out) of the text-only knowledge table.

    >>> qa = knowledge_qa()
    >>> len(qa), qa[0], qa[2]
    (18, ('what color is a ripe tomato?', 'red', False), ('what color is a strawberry?', 'red', True))
    """
    from arm.world.scene import HELD_OUT_THINGS

    return [(f"what color is {thing}?", THING_COLOR[thing], thing in HELD_OUT_THINGS) for thing in THING_COLOR]

