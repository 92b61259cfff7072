"""How editing fails, per edit type: is the instruction carried out, are the untouched objects kept, and
how well does the model copy the source's tokens when it is shown the right target (teacher forcing)?

Two passes over the validation edits:
- sampled edits (the evaluation's guidance and temperature), parsed by the verifier: the share whose
  instruction is met in full, whose every untouched object and empty cell is kept, and both (G_SC = 10);
- one teacher-forced forward per edit: next-token accuracy and loss on the target's tokens, split by
  region. A target token equal to the source token in its cell is a copy; copies are split into those
  next to a changed token, background far from any change, and object tokens far from any change.

    python benchmarks/edit_failures.py artifacts/pretrain           # after `dvc repro pretrain`
    python benchmarks/edit_failures.py artifacts/rl --limit 200

Prints the table and writes benchmarks/results/edit_failures.json.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reporting import report  # noqa: E402

REGIONS = ("changed", "copy next to a change", "copy background far", "copy object far")


def token_regions(source: np.ndarray, target: np.ndarray, background: int) -> np.ndarray:
    """(g, g) source and target codes -> (g, g) index into REGIONS of each target token. "Next to" is
    the 8-neighbourhood of a changed token.

    >>> src = np.array([[0, 0, 0], [0, 5, 0], [0, 0, 7]]); tgt = src.copy(); tgt[0, 0] = 9
    >>> token_regions(src, tgt, background=0).tolist()
    [[0, 1, 2], [1, 1, 2], [2, 2, 3]]
    """
    changed = source != target
    g = source.shape[0]
    near = np.zeros_like(changed)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.zeros_like(changed)
            shifted[max(dy, 0):g + min(dy, 0), max(dx, 0):g + min(dx, 0)] = \
                changed[max(-dy, 0):g + min(-dy, 0), max(-dx, 0):g + min(-dx, 0)]
            near |= shifted
    far = np.where(source == background, 2, 3)
    return np.where(changed, 0, np.where(near, 1, far))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a unified model folder (arm pretrain or arm rl)")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--prepare", default="artifacts/prepare", help="the prepared data (arm prepare)")
    parser.add_argument("--encode", default="artifacts/encode", help="the codes of every image (arm encode)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--image-guidance", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=None, help="validation edits (default: all)")
    parser.add_argument("--out", default="benchmarks/results/edit_failures.json")
    args = parser.parse_args()

    import torch

    from arm.encode import load_codes
    from arm.evaluate.samples import SplitData
    from arm.model.sequences import editing_sequence
    from arm.pipeline import Pipeline
    from arm.world.scene import Scene
    from arm.world.scores import edit_atoms
    from arm.world.texts import Edit
    from arm.world.verifier import parse

    pipe = Pipeline.load(args.model, args.tokenizer)
    data = SplitData(args.prepare, "val")
    records = data.task("edit", args.limit)
    if not records:
        raise SystemExit(f"no validation edits in {args.prepare}: this needs world data (arm prepare)")
    sources = data.images([r["source_image"] for r in records])
    sampling = pipe.sampling.overridden(edit_guidance=args.guidance, edit_image_guidance=args.image_guidance,
                                        temperature=args.temperature, top_k=0)
    edited = pipe.edit(sources, [r["text"] for r in records], 0, sampling)
    sampled: dict[str, Counter] = defaultdict(Counter)
    for r, image in zip(records, edited):
        met, total, kept, kept_total = edit_atoms(Scene.from_dict(r["meta"]["scene"]),
                                                  Edit.from_dict(r["meta"]["edit"]), parse(image, pipe.image_size))
        for group in (r["meta"]["edit"]["type"], "all"):
            sampled[group].update(n=1, instruction=met == total, kept=kept == kept_total,
                                  both=met == total and kept == kept_total)

    keys, codes = load_codes(args.encode, "val")
    index = {k: i for i, k in enumerate(keys)}
    g = codes.shape[1]
    background = int(np.bincount(codes.reshape(-1).astype(np.int64)).argmax())  # the white patch's code
    forced: dict[str, Counter] = defaultdict(Counter)
    vocab, model = pipe.vocab, pipe.engine.model
    for r in records:
        source = codes[index[r["source_image"]]].astype(np.int64)
        target = codes[index[r["target_image"]]].astype(np.int64)
        ids, labels = editing_sequence(vocab, source.reshape(-1), pipe.text_ids(r["text"]), target.reshape(-1))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        start = len(ids) - g * g - 1                     # the target's first code; the last id is <|eoi|>
        logp = logits[start - 1:start - 1 + g * g].log_softmax(-1)   # (g*g, V): position t predicts t + 1
        want = torch.as_tensor(target.reshape(-1) + vocab.image_offset)
        right = (logp.argmax(-1) == want).numpy()
        nll = (-logp.gather(1, want[:, None]).squeeze(1)).numpy()
        regions = token_regions(source, target, background).reshape(-1)
        for k, name in enumerate(REGIONS):
            chosen = regions == k
            forced[name].update(n=int(chosen.sum()), right=int(right[chosen].sum()))
            forced[name]["nll"] += float(nll[chosen].sum())

    result: dict = {"model": args.model, "edits": len(records), "guidance": args.guidance,
                    "image_guidance": args.image_guidance, "temperature": args.temperature}
    for group, c in sorted(sampled.items()):
        for what in ("instruction", "kept", "both"):
            result[f"sampled {group}: {what}"] = round(c[what] / c["n"], 3)
    for name in REGIONS:
        c = forced[name]
        result[f"forced {name}: tokens"] = c["n"]
        result[f"forced {name}: accuracy"] = round(c["right"] / max(c["n"], 1), 3)
        result[f"forced {name}: loss"] = round(c["nll"] / max(c["n"], 1), 3)
    report(result, args.out, width=44)


if __name__ == "__main__":
    main()
