"""Reading what `arm prepare` writes: image shards and tokenised examples per split.

    artifacts/prepare/
      tokenizer.json
      examples/<split>.jsonl     records with "text_ids" / "answer_ids"
      images/<split>-<k>.npz     "keys" (N,) str, "pixels" (N, S, S, 3) uint8
      summary.json               counts, skips by reason, vocabulary size

    load_images("artifacts/prepare", "train") -> (keys, pixels)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def shard_paths(prepare_dir: str | Path, split: str) -> list[Path]:
    return sorted((Path(prepare_dir) / "images").glob(f"{split}-*.npz"))


def load_images(prepare_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """All images of a split: keys (paths relative to the data root) and (N, S, S, 3) uint8 pixels."""
    keys, pixels = [], []
    for path in shard_paths(prepare_dir, split):
        with np.load(path) as shard:
            keys.extend(shard["keys"].tolist())
            pixels.append(shard["pixels"])
    if not pixels:
        return [], np.zeros((0, 0, 0, 3), np.uint8)
    return keys, np.concatenate(pixels)


def load_examples(prepare_dir: str | Path, split: str) -> list[dict]:
    path = Path(prepare_dir) / "examples" / f"{split}.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
