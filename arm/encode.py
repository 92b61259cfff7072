"""Stage `encode`: visual tokens for every prepared image, computed once (as LlamaGen extracts codes),
so training the unified model never runs the tokenizer.

    arm encode --config configs/default.yaml

Writes `artifacts/encode/<split>-<k>.npz` shards, each with `keys` (N,) str and `codes` (N, g, g) as
uint16 when the codebook fits (else int32), plus `summary.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from arm.config import SPLITS, ArmConfig
from arm.data.shards import shard_paths
from arm.images import to_tensor
from arm.outputs import clear_outputs, refuse_foreign_files
from arm.progress import progress
from arm.tokenizer.model import VisualTokenizer

OUTPUTS = (*(f"{split}-*.npz" for split in SPLITS), "summary.json")


def load_codes(encode_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """All codes of a split: keys and (N, g, g) integer token ids."""
    keys, codes = [], []
    for path in sorted(Path(encode_dir).glob(f"{split}-*.npz")):
        with np.load(path) as shard:
            keys.extend(shard["keys"].tolist())
            codes.append(shard["codes"])
    return keys, (np.concatenate(codes) if codes else np.zeros((0, 0, 0), np.uint16))


def encode_stage(cfg: ArmConfig, batch_size: int = 256) -> dict:
    prepare_dir, out = cfg.stage_dir("prepare"), cfg.stage_dir("encode")
    refuse_foreign_files(out, OUTPUTS, "encode")
    model = VisualTokenizer.load(cfg.stage_dir("tokenizer"))
    dtype = np.uint16 if model.codebook_size <= np.iinfo(np.uint16).max + 1 else np.int32
    clear_outputs(out, OUTPUTS)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        total = 0
        for path in progress(shard_paths(prepare_dir, split), desc=f"encode {split}"):
            with np.load(path) as shard:
                keys, pixels = shard["keys"], shard["pixels"]
            codes = []
            with torch.no_grad():
                for start in range(0, len(pixels), batch_size):
                    codes.append(model.encode(to_tensor(pixels[start:start + batch_size])).numpy().astype(dtype))
            np.savez(out / path.name, keys=keys, codes=np.concatenate(codes) if codes else np.zeros((0,), dtype))
            total += len(keys)
        counts[split] = total
    summary = {"images": counts, "codebook_size": model.codebook_size, "grid": model.cfg.grid,
               "dtype": np.dtype(dtype).name}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"encode: {counts} images -> {model.cfg.grid}x{model.cfg.grid} tokens each ({np.dtype(dtype).name})")
    return summary
