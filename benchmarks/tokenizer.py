"""Tokenizer speed: encode and decode images per second at batch 1 and 64, and peak memory.

    python benchmarks/tokenizer.py                                 # the trained artifacts/tokenizer
    python benchmarks/tokenizer.py --checkpoint path/to/tokenizer  # another checkpoint

Prints a table and writes benchmarks/results/tokenizer.json. Without a trained checkpoint it measures a
randomly initialised model of the default configuration (same architecture, same cost).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from dataclasses import asdict
from pathlib import Path

import torch
from reporting import report


def _rate(fn, batch: torch.Tensor, min_seconds: float = 2.0) -> float:
    fn(batch)  # warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="artifacts/tokenizer")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tokenizer.json"))
    args = parser.parse_args()

    from arm.config import load_config
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.stage import model_config

    if (Path(args.checkpoint) / "model.safetensors").exists():
        model, source = VisualTokenizer.load(args.checkpoint), args.checkpoint
    else:
        model, source = VisualTokenizer(model_config(load_config(args.config), 384, 512)).eval(), "random init"
    size = model.cfg.image_size
    result = {"checkpoint": source, "threads": torch.get_num_threads(), "python": platform.python_version(),
              "config": asdict(model.cfg)}
    with torch.no_grad():
        for batch_size in (1, 64):
            images = torch.rand(batch_size, 3, size, size) * 2 - 1
            codes = model.encode(images)
            result[f"encode_images_per_s_batch{batch_size}"] = _rate(model.encode, images)
            result[f"decode_images_per_s_batch{batch_size}"] = _rate(model.decode, codes)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(result, args.out)


if __name__ == "__main__":
    main()
