"""Tokenizer ablations: each of L_feat, L_sig and L_cap switched off in turn, and the trainable conv
backbone instead of the frozen pretrained one, all else as in the preset.

    python benchmarks/tokenizer_ablations.py                        # all variants, ~8 min each on 2 cores
    python benchmarks/tokenizer_ablations.py --variants full no_sig  # some

Needs `arm prepare` first. Each variant trains into artifacts/ablations/<name>/; the table of the four
headline numbers is printed, written to benchmarks/results/tokenizer_ablations.json and into
docs/tokenizer.md between the ablation markers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "full": [],
    "no_feat": ["tokenizer.w_feat=0"],
    "no_sig": ["tokenizer.w_sig=0"],
    "no_cap": ["tokenizer.w_cap=0"],
    "conv_backbone": ["tokenizer.backbone=conv", "tokenizer.w_feat=0"],
}
COLUMNS = ("exact_recovery", "psnr", "retrieval_r1", "retrieval_r5", "probe_color", "probe_shape", "code_usage",
           "train_minutes")
BEGIN, END = "<!-- ablations:begin -->", "<!-- ablations:end -->"


def run(name: str, overrides: list[str], config: str) -> dict:
    root = Path("artifacts/ablations") / name
    (root / "prepare").parent.mkdir(parents=True, exist_ok=True)
    if not (root / "prepare").exists():
        shutil.copytree("artifacts/prepare", root / "prepare")
    cmd = [sys.executable, "-m", "arm", "tokenizer", "--config", config, f"run.artifacts_dir={root}",
           f"run.log_dir={root / 'logs'}", *overrides]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((root / "tokenizer" / "metrics.json").read_text())


def table(results: dict) -> str:
    lines = ["| variant | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for name, m in results.items():
        cells = [f"{m[c]:.3f}" if isinstance(m.get(c), float) else str(m.get(c, "")) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--full-from", help="take the full variant's metrics from this trained tokenizer folder "
                        "(e.g. artifacts/tokenizer after `dvc repro`) instead of training it again")
    args = parser.parse_args()
    if not Path("artifacts/prepare/summary.json").exists():
        sys.exit("run `arm prepare` (or `dvc repro prepare`) first")
    out = Path(__file__).parent / "results" / "tokenizer_ablations.json"
    # Keep the variants not rerun this time, so the table stays whole.
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.variants:
        if name == "full" and args.full_from:
            results[name] = json.loads((Path(args.full_from) / "metrics.json").read_text())
        else:
            results[name] = run(name, VARIANTS[name], args.config)
    results = {name: results[name] for name in VARIANTS if name in results}
    text = table(results)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    doc = Path("docs/tokenizer.md")
    body = doc.read_text()
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        doc.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
