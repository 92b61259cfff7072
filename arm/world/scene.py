"""Scene graphs of the Shapes world: the vocabulary, the objects, and seeded sampling.

A scene is a set of at most one object per cell of a 3 x 3 grid. Every attribute is discrete except the
jitter offsets, which are stored (as fractions of the canvas side, rounded to 1e-4) so that a scene
re-renders to identical pixels from its JSON form.

>>> import numpy as np
>>> scene = sample_scene(np.random.default_rng(0), num_objects=2)
>>> len(scene.objects)
2
>>> Scene.from_dict(scene.to_dict()) == scene
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
COLORS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
# Extent (circle diameter, square side, bounding-box side of triangle and diamond) as a fraction of S.
SIZES = {"small": 0.16, "large": 0.28}
SIZE_NAMES = tuple(SIZES)
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
PLURALS = {shape: shape + "s" for shape in SHAPES}

# (colour, shape) pairs that appear in no training image, prompt, edit or question.
HOLDOUT_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "diamond")})

# colour -> (things seen in generation training prompts, things held out of generation: text QA only)
KNOWLEDGE = {
    "red": (("a ripe tomato", "a fire truck"), ("a strawberry",)),
    "green": (("fresh grass", "a lime"), ("a frog",)),
    "blue": (("the clear sky", "the deep ocean"), ("a blueberry",)),
    "yellow": (("a ripe banana", "a lemon"), ("a school bus",)),
    "purple": (("an eggplant", "lavender flowers"), ("a plum",)),
    "orange": (("a carrot", "a pumpkin"), ("a basketball",)),
}
THING_COLOR = {thing: color for color, (seen, held) in KNOWLEDGE.items() for thing in seen + held}
SEEN_THINGS = tuple(thing for seen, _ in KNOWLEDGE.values() for thing in seen)
HELD_OUT_THINGS = tuple(thing for _, held in KNOWLEDGE.values() for thing in held)


def cell_row_col(cell: int) -> tuple[int, int]:
    """(row, column) of a cell numbered 0..8 row-major.

    >>> cell_row_col(5), POSITIONS[5]
    ((1, 2), 'right')
    """
    return divmod(cell, 3)


@dataclass(frozen=True, order=True)
class Obj:
    """One object. `cell` is 0..8 row-major; `dx`, `dy` are the jitter offsets as fractions of S.

    >>> obj = Obj(cell=2, shape="square", color="blue", size="small", dx=0.01)
    >>> obj.position, obj.key
    ('top right', (2, 'square', 'blue', 'small'))
    """

    cell: int
    shape: str
    color: str
    size: str
    dx: float = field(default=0.0, compare=False)
    dy: float = field(default=0.0, compare=False)

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def key(self) -> tuple[int, str, str, str]:
        """Identity without jitter: what every score compares."""
        return (self.cell, self.shape, self.color, self.size)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell,
                "dx": self.dx, "dy": self.dy}

    @classmethod
    def from_dict(cls, d: dict) -> "Obj":
        return cls(cell=int(d["cell"]), shape=d["shape"], color=d["color"], size=d["size"],
                   dx=float(d.get("dx", 0.0)), dy=float(d.get("dy", 0.0)))


@dataclass(frozen=True)
class Scene:
    """Objects sorted by cell. Equality ignores jitter (compares `Obj.key`s).

    >>> a = Scene((Obj(8, "circle", "red", "large"), Obj(0, "square", "blue", "small", dx=0.03)))
    >>> b = Scene((Obj(0, "square", "blue", "small"), Obj(8, "circle", "red", "large")))
    >>> [o.cell for o in a.objects], a == b
    ([0, 8], True)
    >>> a.free_cells()
    [1, 2, 3, 4, 5, 6, 7]
    """

    objects: tuple[Obj, ...] = ()

    def __post_init__(self):
        cells = [o.cell for o in self.objects]
        assert len(set(cells)) == len(cells), f"two objects in one cell: {cells}"
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Scene) and self.keys() == other.keys()

    def __hash__(self) -> int:
        return hash(self.keys())

    def keys(self) -> tuple:
        return tuple(o.key for o in self.objects)

    def at(self, cell: int) -> Obj | None:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    def free_cells(self) -> list[int]:
        used = {o.cell for o in self.objects}
        return [c for c in range(9) if c not in used]

    def replace_object(self, old: Obj, new: Obj | None) -> "Scene":
        rest = [o for o in self.objects if o.cell != old.cell]
        return Scene(tuple(rest + ([new] if new is not None else [])))

    def add(self, obj: Obj) -> "Scene":
        return Scene(self.objects + (obj,))

    def has_holdout_pair(self) -> bool:
        return any((o.color, o.shape) in HOLDOUT_PAIRS for o in self.objects)

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj.from_dict(o) for o in d["objects"]))


def sample_jitter(rng: np.random.Generator, jitter: float) -> tuple[float, float]:
    """(dx, dy), each uniform in [-jitter, jitter] (fractions of S) and rounded to 1e-4; (0, 0) for none.

    >>> dx, dy = sample_jitter(np.random.default_rng(0), 0.04)
    >>> abs(dx) <= 0.04 and abs(dy) <= 0.04 and round(dx, 4) == dx
    True
    >>> sample_jitter(np.random.default_rng(0), 0.0)
    (0.0, 0.0)
    """
    if jitter <= 0:
        return 0.0, 0.0
    dx, dy = rng.uniform(-jitter, jitter, size=2)
    return round(float(dx), 4), round(float(dy), 4)


def allowed_pairs(holdout: bool) -> list[tuple[str, str]]:
    """(colour, shape) pairs to draw from: the held-out pairs only, or every pair but them.

    >>> allowed_pairs(holdout=True)
    [('green', 'diamond'), ('purple', 'triangle'), ('orange', 'circle')]
    >>> len(allowed_pairs(holdout=False))  # 6 colours x 4 shapes, less the 3 held-out pairs
    21
    """
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in pairs if (p in HOLDOUT_PAIRS) == holdout]


def sample_object(rng: np.random.Generator, cell: int, jitter: float, *, holdout: bool = False,
                  color: str | None = None, shape: str | None = None, size: str | None = None) -> Obj:
    """An object in `cell`; unspecified attributes are drawn, never forming a held-out pair unless
    `holdout` asks for one."""
    pairs = [p for p in allowed_pairs(holdout)
             if (color is None or p[0] == color) and (shape is None or p[1] == shape)]
    assert pairs, f"no allowed pair for color={color} shape={shape} holdout={holdout}"
    c, s = pairs[rng.integers(len(pairs))]
    z = size if size is not None else SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
    dx, dy = sample_jitter(rng, jitter)
    return Obj(cell=cell, shape=s, color=c, size=z, dx=dx, dy=dy)


def sample_scene(rng: np.random.Generator, num_objects: int, jitter: float = 0.04, *,
                 holdout: bool = False) -> Scene:
    """A scene of `num_objects` objects in distinct random cells. With `holdout`, the first object is
    a held-out pair and the rest are ordinary.

    >>> rng = np.random.default_rng(0)
    >>> sample_scene(rng, 3).has_holdout_pair(), sample_scene(rng, 3, holdout=True).has_holdout_pair()
    (False, True)
    """
    cells = rng.choice(9, size=num_objects, replace=False)
    objs = [sample_object(rng, int(cell), jitter, holdout=holdout and i == 0) for i, cell in enumerate(cells)]
    return Scene(tuple(objs))


def with_jitter(obj: Obj, rng: np.random.Generator, jitter: float) -> Obj:
    dx, dy = sample_jitter(rng, jitter)
    return replace(obj, dx=dx, dy=dy)
