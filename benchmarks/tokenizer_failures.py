"""Where a tokenizer loses scenes: every validation image through decode(encode(x)), parsed by the
verifier, and each mismatch counted per object (shape, colour or size misread, object lost or added),
with the size of the objects it happens to.

    python benchmarks/tokenizer_failures.py artifacts/tokenizer            # after `dvc repro tokenizer`
    python benchmarks/tokenizer_failures.py artifacts/tokexp/x/tokenizer --limit 200

Prints the counts and writes benchmarks/results/tokenizer_failures.json.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reporting import report  # noqa: E402


def object_mismatches(truth, parsed) -> list[str]:
    """One label per object the parse got wrong; objects are matched by cell (one object per cell).

    >>> from arm.world.scene import Obj, Scene
    >>> truth = Scene((Obj(0, "triangle", "red", "small"), Obj(4, "square", "blue", "large")))
    >>> object_mismatches(truth, Scene((Obj(0, "circle", "red", "small"),)))
    ['small shape triangle -> circle', 'object lost']
    """
    want = {o.cell: o for o in truth.objects}
    got = {o.cell: o for o in parsed.objects}
    labels = []
    for cell in sorted(set(want) | set(got)):
        if cell not in got:
            labels.append("object lost")
        elif cell not in want:
            labels.append("object added")
        else:
            a, b = want[cell], got[cell]
            for part in ("shape", "color", "size"):
                if getattr(a, part) != getattr(b, part):
                    labels.append(f"{a.size} {part} {getattr(a, part)} -> {getattr(b, part)}")
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer", help="a tokenizer folder (model.safetensors + config.json)")
    parser.add_argument("--prepare", default="artifacts/prepare", help="the prepared data (arm prepare)")
    parser.add_argument("--limit", type=int, default=500, help="validation images")
    parser.add_argument("--out", default="benchmarks/results/tokenizer_failures.json")
    args = parser.parse_args()

    from arm.images import to_uint8
    from arm.tokenizer.data import load_captioned_images
    from arm.tokenizer.metrics import encode_all
    from arm.tokenizer.model import VisualTokenizer
    from arm.world.scene import Scene
    from arm.world.verifier import parse

    model = VisualTokenizer.load(args.tokenizer)
    val = load_captioned_images(args.prepare, "val", args.limit)
    size = model.cfg.image_size
    reconstructions = to_uint8(encode_all(model, val.pixels)["reconstruction"])
    counts: Counter = Counter()
    scenes = failures = 0
    for image, scene in zip(reconstructions, val.scenes):
        if scene is None:
            continue
        scenes += 1
        labels = object_mismatches(Scene.from_dict(scene), parse(image, size))
        failures += bool(labels)
        counts.update(labels)
    if not scenes:
        raise SystemExit(f"no validation image in {args.prepare} has a scene graph: this needs world data")
    result = {"tokenizer": args.tokenizer, "scenes": scenes, "failed_scenes": failures,
              "exact_recovery": round(1 - failures / scenes, 4)}
    result.update({f"count: {label}": n for label, n in counts.most_common()})
    report(result, args.out, width=44)


if __name__ == "__main__":
    main()
