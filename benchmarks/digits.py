"""The whole lifecycle on real handwriting, measured as one run: scikit-learn's handwritten digits
written out as a user's files, imported with `arm import`, then every stage with `configs/digits.yaml`,
each a fresh `arm` process as `dvc repro` starts it.

    python benchmarks/digits.py                          # about half an hour on a 2-core CPU
    python benchmarks/digits.py --limit 300 pretrain.max_steps=50 tokenizer.max_steps=50    # a quick look

Writes benchmarks/results/digits.json (the machine, each stage's minutes, the whole run's wall clock,
the images per split, every metric of `evaluate` with its interval) and docs/images/digits.png: for each
digit, four generated images under the prompt `a handwritten digit N`, and test pictures with their
tokenizer reconstructions. Work files go to --work (default: a temporary folder, removed after).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reporting import report

from arm.machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "tokenizer", "encode", "pretrain", "rl", "evaluate")


def arm(*args: str) -> float:
    """Run `arm ARGS` (this environment's), failing loudly; returns its minutes."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "arm", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"arm {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines()
                             if line.startswith(("prepare:", "pretrain:", "rl:", "evaluate:", "tokenizer:", "import")))[-3000:])
    return (time.perf_counter() - started) / 60


def picture(artifacts: Path, out: Path, seed: int = 0) -> None:
    """Above: four generated images for each digit, two digits a row (the prompts `a handwritten digit
    0` to `9` in order). Below: eight test pictures, and under them their tokenizer reconstructions."""
    from PIL import Image

    from arm.data.shards import load_images
    from arm.images import make_grid
    from arm.pipeline import Pipeline

    pipe = Pipeline.load(artifacts / "rl", artifacts / "tokenizer")
    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(4)]
    generated = make_grid(list(pipe.generate(prompts, seed)), columns=8)   # the model's own sampling
    _, test = load_images(artifacts / "prepare", "test")
    real = test[:8]
    pairs = make_grid(list(real) + list(pipe.decode_codes(pipe.encode_images(real))), columns=8)
    canvas = Image.new("RGB", (max(generated.width, pairs.width), generated.height + pairs.height + 8), (255, 255, 255))
    canvas.paste(generated, (0, 0))
    canvas.paste(pairs, (0, generated.height + 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=None, help="folder for the files (kept); default a temporary one")
    parser.add_argument("--limit", type=int, default=None, help="the first N digits only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "digits.json"))
    parser.add_argument("--picture", default=str(ROOT / "docs" / "images" / "digits.png"))
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="arm-digits-"))
    data, artifacts = work / "data", work / "artifacts"
    common = ["--config", "configs/digits.yaml", f"data.root={data}", f"run.artifacts_dir={artifacts}",
              f"run.log_dir={artifacts / 'logs'}", *args.overrides]
    result: dict = {"machine": cpu_description(), "preset": "configs/digits.yaml", "overrides": args.overrides,
                    "limit": args.limit}
    started = time.perf_counter()
    minutes = {"import": arm("data", "example", "digits", "--out", str(work / "photos"),
                             *(["--limit", str(args.limit)] if args.limit else []))}
    minutes["import"] += arm("import", "captions", str(work / "photos"), "--out", str(data))
    minutes["import"] += arm("import", "qa", str(work / "photos" / "questions.jsonl"), "--out", str(data), "--append")
    for stage in STAGES:
        minutes[stage] = arm(stage, *common)
        print(f"digits: {stage} in {minutes[stage]:.1f} min", file=sys.stderr)
    result["wall_minutes"] = round((time.perf_counter() - started) / 60, 2)
    result["stage_minutes"] = {k: round(v, 2) for k, v in minutes.items()}
    result["images_per_split"] = json.loads((artifacts / "prepare" / "summary.json").read_text())["images"]
    result["metrics"] = json.loads((artifacts / "evaluate" / "metrics.json").read_text())
    result["intervals"] = json.loads((artifacts / "evaluate" / "scores.json").read_text())
    # Paths inside the work folder are recorded relative to it (WORK/...): the results name no machine's folders.
    result["rl"] = json.loads((artifacts / "rl" / "metrics.json").read_text().replace(str(work), "WORK"))
    picture(artifacts, Path(args.picture))
    result["picture"] = str(Path(args.picture).relative_to(ROOT)) if Path(args.picture).is_relative_to(ROOT) else args.picture
    report(result, args.out, skip=("machine", "metrics", "intervals", "rl", "stage_minutes", "images_per_split"))
    print(json.dumps({"stage_minutes": result["stage_minutes"], "headline": {
        k: result["metrics"].get(k) for k in ("tok/psnr", "tok/rfid", "gen/agreement", "gen/agreement_real", "gen/fid",
                                              "gen/kid", "und/exact_match", "und/token_f1")}}, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
