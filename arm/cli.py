"""The `arm` command: one subcommand per lifecycle stage, plus data and config utilities.

    arm prepare --config configs/default.yaml [section.key=value ...]
    arm tokenizer | arm encode | arm pretrain | arm rl | arm evaluate | arm package (the next stages, same arguments)
    arm world generate --out data --num-scenes 10000 --size 64 --seed 0
    arm world parse image.png
    arm import captions|jsonl|edits|qa SRC --out data [--append | --overwrite]
    arm data ensure
    arm generate "a large red circle at the center" --out samples/ [--num 4 --seed 0]  (sampling: the model's)
    arm edit source.png "make the circle blue" --out edited.png
    arm understand image.png "what color is the circle?"      (no image: --text-only)
    arm config show --config configs/small.yaml

A user's mistake (bad config key, missing file, unusable data) prints one line saying what to change
and exits with status 2; a traceback means a bug in arm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/default.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML preset (default {DEFAULT_CONFIG})")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def _load(args):
    from arm.config import load_config

    return load_config(args.config, args.overrides)


def cmd_stage(args) -> None:
    from arm.stages import by_name

    by_name(args.command).run(_load(args), stop_at_step=getattr(args, "stop_at_step", None))


def cmd_evaluate(args) -> None:
    if args.compare:
        from arm.evaluate.compare import compare, format_table, write_report

        a, b = args.compare
        rows = compare(a, b)
        print(format_table(rows, a, b))
        if args.report:
            write_report(args.report, a, b, rows)
            print(f"wrote {args.report}")
        return
    cmd_stage(args)


def cmd_world_generate(args) -> None:
    from arm.config import load_config
    from arm.progress import progress
    from arm.world.dataset import WorldSpec, generate_world

    d = load_config(args.config if Path(args.config).exists() else None, args.overrides).data
    spec = WorldSpec(
        num_scenes=args.num_scenes if args.num_scenes is not None else d.num_scenes,
        num_eval_scenes=args.num_eval_scenes if args.num_eval_scenes is not None else d.num_eval_scenes,
        num_holdout_scenes=args.num_holdout_scenes if args.num_holdout_scenes is not None else d.num_holdout_scenes,
        size=args.size if args.size is not None else d.image_size,
        seed=args.seed if args.seed is not None else d.seed,
        jitter=d.jitter, max_objects=d.max_objects, questions_per_scene=d.questions_per_scene,
    )
    out = args.out or d.root
    total = sum(spec.count(s) for s in ("train", "val", "test", "holdout"))
    with progress(total=total, desc="world scenes") as bar:
        counts = generate_world(out, spec, overwrite=args.overwrite, progress=lambda done, _: bar.update(1))
    print(f"wrote {out}: " + json.dumps({s: sum(c.values()) for s, c in counts.items()}) + " records")
    if args.track:
        from arm.data.versioning import dvc_executable, world_meta, write_meta
        import subprocess

        subprocess.run([dvc_executable(), "add", str(out)], check=True)
        write_meta(Path(f"{Path(out).name}.dvc"), world_meta(spec))
        print(f"tracked {out} in {Path(out).name}.dvc with its generation parameters")


def cmd_world_parse(args) -> None:
    from PIL import Image

    from arm.world.texts import caption
    from arm.world.verifier import parse

    for path in args.images:
        with Image.open(path) as im:
            scene = parse(im, args.size)
        print(f"{path}: {caption(scene) or '(empty)'}")


def cmd_import(args) -> None:
    from arm.config import load_config
    from arm.data.importers import IMPORTERS
    from arm.data.manifest import Limits

    cfg = load_config(args.config if Path(args.config).exists() else None, args.overrides)
    mode = "append" if args.append else "overwrite" if args.overwrite else "new"
    out = args.out or cfg.data.root
    report = IMPORTERS[args.kind](args.src, out, Limits.from_config(cfg.data), mode=mode)
    print(f"import {args.kind}: {report.summary()}; report in {Path(out) / 'import_report.json'}")
    print(f"next: `dvc add {out}` to version it, then `dvc repro`")


def cmd_data_example(args) -> None:
    from arm.data.examples import export_example

    counts = export_example(args.name, args.out, args.limit)
    print(f"example {args.name}: {counts['images']} pictures with captions and {counts['questions']} questions in "
          f"{args.out}")
    print(f"next: `arm import captions {args.out} --out data` and "
          f"`arm import qa {Path(args.out) / 'questions.jsonl'} --out data --append`")


def cmd_data_ensure(args) -> None:
    from arm.data.versioning import ensure_data

    cfg = _load(args)
    how = ensure_data(cfg.data.root, cfg.data.manifest, args.dvc_file)
    print(f"data: {cfg.data.root} is {how}")


def cmd_config_show(args) -> None:
    from arm.config import to_yaml

    print(to_yaml(_load(args)), end="")


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="artifacts/pretrain", help="unified model folder (pretrain or rl output)")
    p.add_argument("--tokenizer", default="artifacts/tokenizer", help="visual tokenizer folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    """Overrides of the model's own sampling (its sampling.json); each left out keeps the model's value."""
    p.add_argument("--guidance", type=float, help="text guidance scale (1 = none; default: the model's)")
    p.add_argument("--temperature", type=float, help="default: the model's")
    p.add_argument("--top-k", type=int, help="0 = off; default: the model's")
    p.add_argument("--top-p", type=float, help="1 = off; default: the model's")


def _pipeline(args):
    from arm.pipeline import Pipeline

    return Pipeline.load(args.model, args.tokenizer, device=args.device)


def _sampling(args, pipe):
    """The model's sampling with the command line's overrides (--guidance is the task's text guidance)."""
    return pipe.sampling.overridden(generation_guidance=args.guidance, edit_guidance=args.guidance,
                                    edit_image_guidance=getattr(args, "image_guidance", None),
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _read_image(path: str, size: int):
    from PIL import Image, UnidentifiedImageError

    from arm.images import square_rgb

    try:
        with Image.open(path) as im:
            return square_rgb(im, size)      # as training saw its images
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}; pass a PNG or JPEG file") from e


def cmd_generate(args) -> None:
    from PIL import Image

    pipe = _pipeline(args)
    prompts = [p for p in args.prompts for _ in range(args.num)]
    images = pipe.generate(prompts, args.seed, _sampling(args, pipe))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        path = out / f"{i:04d}.png"
        Image.fromarray(image).save(path)
        print(f"{path}\t{prompt}")


def cmd_edit(args) -> None:
    import numpy as np
    from PIL import Image

    pipe = _pipeline(args)
    source = _read_image(args.image, pipe.image_size)
    edited = pipe.edit(np.stack([source]), [args.instruction], args.seed, _sampling(args, pipe))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(edited[0]).save(args.out)
    print(args.out)


def cmd_understand(args) -> None:
    import numpy as np

    pipe = _pipeline(args)
    if args.text_only:
        images, questions = None, [args.image] + list(args.questions)
    else:
        if not args.questions:
            raise ValueError("give a question after the image (or --text-only with questions alone)")
        images = np.stack([_read_image(args.image, pipe.image_size)] * len(args.questions))
        questions = list(args.questions)
    explained = pipe.explain(images, questions)   # answers are greedy
    for q, (a, description) in zip(questions, explained):
        # A describe-first model answered after its own description: show it, on stderr.
        if description is not None and description != a:
            print(f"({q}: described as {description!r})", file=sys.stderr)
        print(f"{q}\t{a}")


def cmd_bench(args) -> None:
    from arm.evaluate import public
    from arm.evaluate.judge import Judge, JudgeConfig

    pipe = _pipeline(args)
    seed, sampling = args.seed, _sampling(args, pipe)
    if args.benchmark == "geneval":
        out = public.run_geneval(pipe, args.source, args.out, args.num, seed, sampling)
        print(f"wrote {out}; score it with GenEval's evaluation/evaluate_images.py {out}")
        return
    if args.benchmark == "gedit" and not args.prompts:
        raise ValueError("arm bench gedit needs --prompts: your Step1X-Edit checkout (GEdit-Bench/viescore/vie_prompts.py)")
    e = _load(args).evaluate
    judge = Judge(JudgeConfig(args.judge_url or e.judge_base_url, args.judge_model or e.judge_model))
    try:
        if args.benchmark == "wise":
            result = public.run_wise(pipe, args.source, judge, args.out, seed, sampling, args.wise_version)
        else:
            result = public.run_gedit(pipe, args.source, args.prompts, judge, args.out, seed, sampling,
                                      args.language)
    finally:
        judge.close()
    summary = {k: v for k, v in result.items() if k not in ("judge_errors", "per_group", "per_category", "scores",
                                                            "intersection")}
    print(json.dumps(summary), f"judge errors: {len(result['judge_errors'])}")


def build_parser() -> argparse.ArgumentParser:
    from arm.stages import STAGES

    parser = argparse.ArgumentParser(prog="arm", description="Train, evaluate and serve a unified autoregressive "
                                     "multimodal model (ARM).")
    sub = parser.add_subparsers(dest="command", required=True)

    # One subcommand per lifecycle stage (arm/stages.py), all taking --config and overrides.
    for stage in STAGES:
        name = stage.name
        p = sub.add_parser(name, help=stage.summary)
        _add_config_args(p)
        if name == "evaluate":
            p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                           help="instead of evaluating, compare two evaluate folders (B - A with 95%% intervals)")
            p.add_argument("--report", metavar="FILE", help="with --compare: also write the table as an HTML page")
        if stage.resumable:
            p.add_argument("--stop-at-step", type=int, default=None,
                           help="stop after this many optimiser steps, keeping the checkpoint; run again "
                                "without it to resume")
        p.set_defaults(func=cmd_evaluate if name == "evaluate" else cmd_stage)

    p = sub.add_parser("generate", help="text -> images with the trained unified model")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--out", default="samples", help="folder for the PNGs")
    p.add_argument("--num", type=int, default=1, help="images per prompt")
    _inference_args(p)
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("edit", help="source image + instruction -> edited image")
    p.add_argument("image")
    p.add_argument("instruction")
    p.add_argument("--out", default="edited.png")
    p.add_argument("--image-guidance", type=float, help="source-image guidance scale (1 = none; default: the model's)")
    _inference_args(p)
    _sampling_args(p)
    p.set_defaults(func=cmd_edit)
    p = sub.add_parser("understand", help="answer questions about an image (or text-only questions)")
    p.add_argument("image", help="image file (with --text-only: the first question)")
    p.add_argument("questions", nargs="*")
    p.add_argument("--text-only", action="store_true")
    _inference_args(p)
    p.set_defaults(func=cmd_understand)

    p = sub.add_parser("bench", help="public benchmarks on your copy of their files: geneval, wise, gedit")
    p.add_argument("benchmark", choices=("geneval", "wise", "gedit"))
    p.add_argument("source", help="geneval: evaluation_metadata.jsonl; wise: your checkout of the WISE repository; "
                                  "gedit: your copy of the GEdit-Bench dataset folder")
    p.add_argument("--prompts", help="gedit: your Step1X-Edit checkout (its VIEScore prompts)")
    p.add_argument("--wise-version", default="auto", choices=("auto", "verified", "legacy"))
    p.add_argument("--language", default="en", choices=("en", "cn"), help="gedit: the instructions' language")
    p.add_argument("--out", default="artifacts/bench")
    p.add_argument("--num", type=int, default=4, help="geneval: images per prompt")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL (else evaluate.judge_base_url, $ARM_JUDGE_BASE_URL)")
    p.add_argument("--judge-model", help="the judge model, recorded with the scores (else evaluate.judge_model, "
                                         "$ARM_JUDGE_MODEL)")
    _inference_args(p)
    _sampling_args(p)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the preset whose evaluate section names the judge")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.set_defaults(func=cmd_bench)

    world = sub.add_parser("world", help="the Shapes world: generate a dataset, parse images").add_subparsers(
        dest="world_command", required=True)
    p = world.add_parser("generate", help="write the world dataset (images + manifest), deterministically")
    p.add_argument("--out", help="dataset folder (default: data.root)")
    p.add_argument("--num-scenes", type=int, help="training scenes (default: data.num_scenes)")
    p.add_argument("--num-eval-scenes", type=int, help="validation and test scenes each")
    p.add_argument("--num-holdout-scenes", type=int, help="compositional hold-out scenes")
    p.add_argument("--size", type=int, help="image side in pixels (default: data.image_size)")
    p.add_argument("--seed", type=int, help="world seed (default: data.seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a world generated earlier in --out (only its own files; other data is refused)")
    p.add_argument("--track", action="store_true", help="then `dvc add` it and record the parameters in its .dvc")
    _add_config_args(p)
    p.set_defaults(func=cmd_world_generate)
    p = world.add_parser("parse", help="print the scene the verifier reads in each image")
    p.add_argument("images", nargs="+")
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=cmd_world_parse)

    p = sub.add_parser("import", help="import your data into the manifest format")
    p.add_argument("kind", choices=("captions", "jsonl", "edits", "qa"))
    p.add_argument("src", help="folder (captions) or JSONL file (jsonl, edits, qa)")
    p.add_argument("--out", help="dataset folder (default: data.root)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true",
                      help="add to an existing manifest (its images stay: another picture of a name goes beside it)")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    _add_config_args(p)
    p.set_defaults(func=cmd_import)

    data = sub.add_parser("data", help="the versioned dataset").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("ensure", help="restore data/ from the DVC cache or regenerate it from data.dvc")
    p.add_argument("--dvc-file", default="data.dvc")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_ensure)
    p = data.add_parser("example", help="write a real image set that ships in a package as a user's files")
    p.add_argument("name", choices=("digits",))
    p.add_argument("--out", required=True, help="folder for the pictures, caption sidecars and questions.jsonl")
    p.add_argument("--limit", type=int, default=None, help="the first N images only")
    p.set_defaults(func=cmd_data_example)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("show", help="print the merged configuration")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Config overrides (section.key=value) may also come after options that follow a positional argument
    # (`arm bench wise WISE/ --out x evaluate.judge_model=m`), where argparse has already closed `overrides`.
    stray = [a for a in extra if "=" in a and not a.startswith("-")]
    if stray and hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + stray
    if len(stray) != len(extra) or (stray and not hasattr(args, "overrides")):
        parser.parse_args(argv)      # the usual error for what is left unrecognised
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"arm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
