"""Real image sets that ship in a package, written out as a user's own files would be (pictures with
caption sidecars, a questions file), to go through `arm import` like any other data.

- `digits`: the 1,797 handwritten digits (8 x 8 pixels, 17 grey levels) of the UCI optical recognition
  of handwritten digits set, as scikit-learn ships them (`sklearn.datasets.load_digits`, no download),
  written by 43 people. Each becomes `digit-NNNN.png` (dark ink on white), a caption `a handwritten
  digit 7` and the question `which digit is this?` with its answer `7`.

    arm data example digits --out photos/
    arm import captions photos/ --out data && arm import qa photos/questions.jsonl --out data --append

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> export_digits(out, limit=3)
{'images': 3, 'questions': 3}
>>> (out / "digit-0002.txt").read_text()
'a handwritten digit 2'
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = ("digits",)
QUESTION = "which digit is this?"


def load_digits():
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ValueError("the digits example ships in scikit-learn: `pip install scikit-learn` "
                         "(installed with the project's dev extras, `make test` or `make lifecycle`)") from e
    return sklearn_digits()


def export_digits(out: str | Path, limit: int | None = None) -> dict[str, int]:
    """Write the digits as pictures with caption sidecars and a questions file into `out`."""
    digits = load_digits()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = digits.images[:limit], digits.target[:limit]
    questions = []
    for i, (ink, label) in enumerate(zip(images, labels)):
        name = f"digit-{i:04d}"
        # Ink 0..16 -> grey 255..0: dark strokes on white paper, as the forms were written.
        grey = np.round(255 - ink * (255 / 16)).astype(np.uint8)
        Image.fromarray(grey, "L").save(out / f"{name}.png")
        (out / f"{name}.txt").write_text(f"a handwritten digit {int(label)}")
        questions.append({"image": f"{name}.png", "question": QUESTION, "answer": str(int(label))})
    (out / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return {"images": len(images), "questions": len(questions)}


def export_example(name: str, out: str | Path, limit: int | None = None) -> dict[str, int]:
    if name != "digits":
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
    return export_digits(out, limit)
