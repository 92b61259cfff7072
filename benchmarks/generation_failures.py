"""How generation fails, per prompt category and guidance scale: one image per validation prompt, parsed
by the verifier, and counted by how many objects it holds against how many the prompt asks for
(missing, right number, extra) beside the pass rate. Guidance trades missing objects for extra ones.

    python benchmarks/generation_failures.py artifacts/pretrain                  # after `dvc repro pretrain`
    python benchmarks/generation_failures.py artifacts/rl --guidance 1 3 --limit 50

Prints the table and writes benchmarks/results/generation_failures.json.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reporting import report  # noqa: E402


def count_outcome(asked: int, drawn: int) -> str:
    """Whether an image holds fewer, as many or more objects than its prompt asks for.

    >>> [count_outcome(2, n) for n in (1, 2, 4)]
    ['missing', 'right number', 'extra']
    """
    return "missing" if drawn < asked else "extra" if drawn > asked else "right number"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a unified model folder (arm pretrain or arm rl)")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--prepare", default="artifacts/prepare", help="the prepared data (arm prepare)")
    parser.add_argument("--categories", nargs="+", default=["single", "two", "three", "counting", "relation"])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=100, help="validation prompts per category")
    parser.add_argument("--out", default="benchmarks/results/generation_failures.json")
    args = parser.parse_args()

    from arm.evaluate.samples import SplitData
    from arm.pipeline import Pipeline
    from arm.world.scores import generation_pass
    from arm.world.texts import GenSpec
    from arm.world.verifier import parse

    pipe = Pipeline.load(args.model, args.tokenizer)
    records = SplitData(args.prepare, "val").task("t2i", None)
    by_category = {c: [r for r in records if r["meta"]["spec"]["category"] == c][: args.limit]
                   for c in args.categories}
    if not any(by_category.values()):
        raise SystemExit(f"no validation prompts of {args.categories} in {args.prepare}: this needs world data")
    result: dict = {"model": args.model, "temperature": args.temperature, "prompts_per_category": args.limit}
    for scale in args.guidance:
        for category, chosen in by_category.items():
            if not chosen:
                continue
            sampling = pipe.sampling.overridden(generation_guidance=scale, temperature=args.temperature, top_k=0)
            images = pipe.generate([r["text"] for r in chosen], 0, sampling)
            outcomes: Counter = Counter()
            passed = 0
            for r, image in zip(chosen, images):
                spec = GenSpec.from_dict(r["meta"]["spec"])
                scene = parse(image, pipe.image_size)
                passed += generation_pass(spec, scene)
                outcomes[count_outcome(len(spec.objects), len(scene.objects))] += 1
            key = f"guidance {scale:g} {category}"
            result[f"{key}: pass"] = round(passed / len(chosen), 3)
            for outcome in ("missing", "right number", "extra"):
                result[f"{key}: {outcome}"] = round(outcomes[outcome] / len(chosen), 3)
    report(result, args.out, width=44)


if __name__ == "__main__":
    main()
