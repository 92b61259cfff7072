"""Choose the sampling settings on the validation split (never on test): generation accuracy and edit
G_O for a grid of guidance scales, temperatures and top-k.

    python benchmarks/sampling_sweep.py                      # artifacts/pretrain, 96 records per task
    python benchmarks/sampling_sweep.py --model artifacts/rl --limit 200
    python benchmarks/sampling_sweep.py --model artifacts/rl --limit 500 --tasks edit \
        --guidance 2 3 5 --image-guidance 1 1.5 2 3 --temperature 0.5     # editing's two scales

Prints a table and writes benchmarks/results/sampling_sweep.json; put the winner in the config's
`evaluate` section (and the service's defaults).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="artifacts/pretrain")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--prepare", default="artifacts/prepare")
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7])
    parser.add_argument("--top-k", type=int, nargs="+", default=[0])
    parser.add_argument("--image-guidance", type=float, nargs="+", default=[1.5], help="editing's source-image scale")
    parser.add_argument("--tasks", nargs="+", choices=["gen", "edit"], default=["gen", "edit"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampling_sweep.json"))
    args = parser.parse_args()

    from arm.evaluate.world import EvalSettings, Samples, SplitData, evaluate_editing, evaluate_generation
    from arm.pipeline import Guidance, Pipeline

    pipe = Pipeline.load(args.model, args.tokenizer)
    data = SplitData(args.prepare, "val")
    rows = []
    print(f"{'guidance':>8} {'image':>5} {'temp':>5} {'top_k':>5} {'gen/acc':>8} {'edit/g_o':>8} {'seconds':>8}")
    nan = float("nan")
    # The source-image scale only changes editing: generation runs once per (guidance, temperature, top-k).
    for scale, temperature, top_k in itertools.product(args.guidance, args.temperature, args.top_k):
        gen_acc = None
        for image_scale in args.image_guidance:
            settings = EvalSettings(limit=args.limit, guidance=Guidance(scale, image_scale),
                                    temperature=temperature, top_k=top_k, seed=0)
            start = time.perf_counter()
            if "gen" in args.tasks and gen_acc is None:
                gen_acc = evaluate_generation(pipe, data, settings, Samples())["gen/acc"]
            g_o = evaluate_editing(pipe, data, settings, Samples())["edit/g_o"] if "edit" in args.tasks else nan
            row = {"guidance_scale": scale, "image_guidance_scale": image_scale, "temperature": temperature,
                   "top_k": top_k, "gen/acc": nan if gen_acc is None else gen_acc, "edit/g_o": g_o,
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"{scale:>8} {image_scale:>5} {temperature:>5} {top_k:>5} {row['gen/acc']:>8.3f} {g_o:>8.2f} "
                  f"{row['seconds']:>8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "split": "val", "limit": args.limit, "rows": rows},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
