"""Draw what the default model does, for the top of the README: images it generates for a few prompts,
an edit of one of them, and its answers to questions about them. Reads the trained model (`artifacts/rl`
and `artifacts/tokenizer`, made by `dvc repro`) and samples with its own sampling.json.

    python docs/picture.py                          # writes docs/images/default.png
    python docs/picture.py --model artifacts/pretrain --out /tmp/pretrain.png
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a large red circle at the center", "a blue square to the left of a yellow triangle",
           "two green diamonds", "a small purple square at the top right"]
EDIT = (0, "make the circle blue")                       # edit the first prompt's image
QUESTIONS = [(1, "what color is the square?"), (2, "how many diamonds are there?"),
             (3, "where is the square?")]


def draw(images, captions: list[str], title: str, scale: int = 2, width_chars: int = 22):
    """One labelled row: each image scaled up (nearest), its caption wrapped under it, a title above."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    side = images[0].shape[0] * scale
    cell_w, line_h = max(side, 6 * width_chars + 8), 12
    lines = [textwrap.wrap(c, width_chars) for c in captions]
    caption_h = line_h * max(len(x) for x in lines) + 6
    row = Image.new("RGB", (cell_w * len(images), 18 + side + caption_h), "white")
    pen = ImageDraw.Draw(row)
    pen.text((4, 2), title, fill="black", font=font)
    for i, (image, text) in enumerate(zip(images, lines)):
        x = i * cell_w + (cell_w - side) // 2
        row.paste(Image.fromarray(image).resize((side, side), Image.NEAREST), (x, 18))
        pen.rectangle((x - 1, 17, x + side, 18 + side), outline=(190, 190, 190))  # the image's edge on white
        for k, line in enumerate(text):
            pen.text((i * cell_w + 4, 18 + side + 3 + k * line_h), line, fill="black", font=font)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "rl"))
    parser.add_argument("--tokenizer", default=str(ROOT / "artifacts" / "tokenizer"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "default.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from PIL import Image

    from arm.pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.tokenizer)
    generated = pipe.generate(PROMPTS, args.seed)
    k, instruction = EDIT
    edited = pipe.edit(generated[k:k + 1], [instruction], args.seed)[0]
    answers = pipe.understand(generated[[i for i, _ in QUESTIONS]], [q for _, q in QUESTIONS])
    rows = [draw(list(generated), PROMPTS, "text -> image"),
            draw([generated[k], edited], ["source", instruction], "image + instruction -> image"),
            draw([generated[i] for i, _ in QUESTIONS], [f"{q} -> {a}" for (_, q), a in zip(QUESTIONS, answers)],
                 "image + question -> answer")]
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * len(rows)), "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + 8
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}: seed {args.seed}, sampling {pipe.sampling}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
