"""Why a describe-first model answers wrong, per question type: it saw the scene wrong (its own
description is not the scene), or it described the scene right and read the answer off it wrong.

Three greedy passes over the validation questions, on the images' codes from the visual tokenizer:
- own: the evaluation's way (describe, then answer after the model's own description);
- given: the answer after the reference caption instead of the model's own (what the model would
  answer if it saw perfectly: its reading alone);
- without the image: the same, with the image span cut out (what `pretrain.task_mix.read` trains).

Wrong own answers are split into those after a wrong description (seeing) and after a right one
(reading).

    python benchmarks/understanding_failures.py artifacts/pretrain        # after `dvc repro pretrain`
    python benchmarks/understanding_failures.py artifacts/rl --limit 300

Prints the table and writes benchmarks/results/understanding_failures.json.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reporting import report  # noqa: E402


def answers_after_caption(pipe, codes, captions: list[str], questions: list[str], with_image: bool) -> list[str]:
    """Greedy answers to `questions` asked after the given `captions` (one per question), the way a
    describe-first model is asked after its own; `with_image=False` leaves the image span out."""
    from arm.generate import Sampling

    ids = pipe.answer_after_descriptions(codes if with_image else None, [pipe.text_ids(c) for c in captions],
                                         [pipe.text_ids(q) for q in questions], 16, Sampling(temperature=0.0))
    return [pipe.decode_text(answer) for answer in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a describe-first unified model folder (arm pretrain or arm rl)")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--prepare", default="artifacts/prepare", help="the prepared data (arm prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="questions (default: all of the split's)")
    parser.add_argument("--out", default="benchmarks/results/understanding_failures.json")
    args = parser.parse_args()

    from arm.evaluate.samples import SplitData
    from arm.generate import Sampling
    from arm.pipeline import Pipeline
    from arm.world.scores import answer_correct

    pipe = Pipeline.load(args.model, args.tokenizer)
    if not pipe.info.describe_first:
        raise SystemExit(f"{args.model} answers directly (pretrain.describe_first=false): there is no description "
                         "to tell seeing from reading; this benchmark is for describe-first models")
    data = SplitData(args.prepare, args.split)
    records = data.task("vqa", args.limit)
    captions_by_image = {r["image"]: r["text"] for r in data.task("caption", None)}
    records = [r for r in records if r["image"] in captions_by_image]
    if not records:
        raise SystemExit(f"no {args.split} questions with captions in {args.prepare}: this needs world data (arm prepare)")
    codes = pipe.encode_images(data.images([r["image"] for r in records]))
    questions = [r["text"] for r in records]
    captions = [captions_by_image[r["image"]] for r in records]
    own = pipe.explain_codes(codes, questions, sampling=Sampling(temperature=0.0))
    given = answers_after_caption(pipe, codes, captions, questions, with_image=True)
    textual = answers_after_caption(pipe, codes, captions, questions, with_image=False)

    counts: dict[str, Counter] = defaultdict(Counter)
    for r, (answer, description), g, t, caption in zip(records, own, given, textual, captions):
        qtype = r["meta"]["question_type"]
        saw = answer_correct("describe", description or "", caption)
        right = answer_correct(qtype, answer, r["answer"])
        for group in (qtype, "all"):
            counts[group].update(n=1, own=right, described=saw, given=answer_correct(qtype, g, r["answer"]),
                                 without_image=answer_correct(qtype, t, r["answer"]),
                                 wrong_seeing=not right and not saw, wrong_reading=not right and saw)
    result: dict = {"model": args.model, "split": args.split, "questions": len(records)}
    for group, c in sorted(counts.items()):
        for what in ("own", "described", "given", "without_image", "wrong_seeing", "wrong_reading"):
            result[f"{group}: {what}"] = round(c[what] / c["n"], 3)
    report(result, args.out, width=36)


if __name__ == "__main__":
    main()
